"""The web app's quality sweep across every page (overview, insights, SQL, live,
dashboards, privacy center, admin, the portal), each as the role that sees it, against
the real server with the demo's traffic:

- hostile text (markup and script payloads sent through the collector and the API into
  every field a page shows) is shown as text, and nothing of it runs or becomes an element;
- the CSP forbids inline script, and a script injected into the page is refused (a
  securitypolicyviolation event fires) and does not run;
- no console error, no serious or critical axe-core violation at 1280 and 375 px, nothing
  wider than the viewport; screenshots of both widths in build/screenshots/;
- the keyboard alone reaches the nav and the page's main control, with a visible focus,
  and activating that control does what a click does.

The per-page files test what each page computes; this file is the sweep across them."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from aap.privacy.tokens import SubjectTokens
from aap.sources import Sources
from tests.conftest import slow_fixture
from tests.e2e.web.conftest import watch
from tests.e2e.web.helpers import ROLES, TIMEOUT_MS, Watch, Web, assert_fits
from tests.e2e.web.hostile import (
    IMG,
    ORIGIN,
    PAYLOADS,
    SCRIPT,
    SPY,
    SVG,
    Hostile,
    api,
    assert_inert,
    plant,
    send,
)

expect.set_options(timeout=TIMEOUT_MS)
SLOW_MS = 120_000
"""A first chart or a lookup on a busy machine may take longer than one expect."""


@dataclass
class Plain:
    """The sweep's ordinary state: a saved insight on a dashboard, a portal link."""

    board: int
    portal_token: str


@slow_fixture(scope="module")
def hostile(web: Web) -> Hostile:
    return plant(web)


@slow_fixture(scope="module")
def plain(web: Web) -> Plain:
    insight = api(web, "analyst", "POST", "/insights", json={
        "name": "Page views by browser", "query": {
            "kind": "trends", "series": [{"event": "$page"}], "breakdown": "browser",
            "breakdown_limit": 4, "date_from": "-7d"}})
    board = api(web, "analyst", "POST", "/dashboards",
                json={"name": "Traffic", "insights": [insight["id"]]})
    src = Sources(web.data_dir).by_name(web.source)
    assert src is not None
    token = SubjectTokens(web.data_dir).issue(src.id, {"userId": f"sweep-{uuid.uuid4().hex[:8]}"},
                                              ttl_s=3600)
    return Plain(board["id"], token)


@dataclass
class Visit:
    page: Any
    watch: Watch
    """its console and page errors (asserted empty when the test ends)"""
    dialogs: list[str] = field(default_factory=list)
    response: Any = None


@pytest.fixture
def visit(web: Web, web_browser: Any, signed_in: Callable[..., Any]
          ) -> Iterator[Callable[..., Visit]]:
    """``visit(role, path, width=1280)``: a page signed in as ``role`` (None: nobody, as
    the portal's visitors), with dialogs and CSP refusals recorded from the first byte;
    console and page errors fail the test (``signed_in``'s, or the same check here)."""
    anonymous: list[tuple[Any, Watch]] = []

    def make(role: str | None, path: str, width: int = 1280) -> Visit:
        if role is None:
            ctx = web_browser.new_context(viewport={"width": width, "height": 800})
            ctx.set_default_timeout(TIMEOUT_MS)
            page = ctx.new_page()
            w = Watch()
            w.attach(page)
            anonymous.append((ctx, w))
        else:
            page = signed_in(role, "/api/v1/session", width=width)  # JSON: no page yet
            w = watch(page)
        v = Visit(page, w)
        page.on("dialog", lambda d: (v.dialogs.append(d.message), d.dismiss()))
        page.add_init_script(SPY)
        v.response = page.goto(web.url + path)
        return v

    yield make
    problems = [e for _, w in anonymous for e in w.errors]
    for ctx, _ in anonymous:
        ctx.close()
    assert problems == [], problems


# -- hostile text stays text ------------------------------------------------------------


def shows(page: Any, text: str) -> None:
    """``text`` is on the page as visible text (inside some element's text)."""
    expect(page.get_by_text(text).locator("visible=true").first).to_be_visible(timeout=SLOW_MS)


def sql_run(page: Any, query: str) -> None:
    expect(page.locator(".cm-content")).to_be_visible(timeout=SLOW_MS)
    page.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(query)
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator(".sql-result")).to_be_visible(timeout=SLOW_MS)


def lookup(page: Any, user: str, result: str) -> None:
    panel = page.get_by_role("tabpanel")
    panel.get_by_label("Identifier", exact=True).fill(user)
    panel.get_by_role("button", name="Look up").click()
    expect(page.locator(result)).to_be_visible(timeout=SLOW_MS)


HOSTILE_PAGES = ("overview", "live", "insights", "sql", "dashboards", "privacy-person",
                 "privacy-consent", "admin", "portal")


@pytest.mark.parametrize("name", HOSTILE_PAGES)
def test_hostile_text_is_shown_as_text_and_never_runs(web: Web, hostile: Hostile,
                                                       visit: Callable[..., Visit],
                                                       name: str) -> None:
    texts: tuple[str, ...] = PAYLOADS
    if name == "overview":  # every list of the hostile source's visits: paths, referrers,
        filters = json.dumps([["source", hostile.source]])  # campaigns; the chip: its name
        v = visit("analyst", f"/?range=7d&filters={quote(filters)}")
        expect(v.page.locator('[data-breakdown="utm_campaigns"] li')).to_have_count(
            len(PAYLOADS), timeout=SLOW_MS)
        texts = (*PAYLOADS, hostile.source)
    elif name == "live":
        v = visit("analyst", "/live")
        expect(v.page.locator('[data-listening="1"]')).to_have_count(1, timeout=SLOW_MS)
        user = f"xss-live-{uuid.uuid4().hex[:8]}"
        send(web, hostile.write_key, [{**e, "userId": user} for p in PAYLOADS
                                      for e in _track(p)])
        expect(v.page.locator("tbody tr")).not_to_have_count(0, timeout=SLOW_MS)
        for p in PAYLOADS:
            expect(v.page.locator("tr").filter(has_text=p).first).to_be_visible(timeout=SLOW_MS)
        texts = (*PAYLOADS, hostile.source)
    elif name == "insights":
        v = visit("analyst", f"/insights?id={hostile.insight}")
        expect(v.page.locator(".result figure.chart[data-render-ms]")).to_have_count(
            1, timeout=SLOW_MS)
        texts = (*PAYLOADS, hostile.insight_name)
    elif name == "sql":
        v = visit("analyst", "/sql")
        events = ", ".join(f"'{p}'" for p in PAYLOADS)
        sql_run(v.page, "SELECT event, path, referrer_domain, utm_campaign FROM events"
                        f" WHERE event IN ({events}) ORDER BY event")
    elif name == "dashboards":
        v = visit("viewer", f"/dashboards?id={hostile.board}")
        expect(v.page.locator("article.tile figure.chart[data-render-ms]")).to_have_count(
            1, timeout=SLOW_MS)
        texts = (*PAYLOADS, hostile.board_name, hostile.insight_name)
    elif name == "privacy-person":
        v = visit("privacy", "/privacy?tab=person")
        lookup(v.page, hostile.users[0], "#person-result")
        texts = (IMG,)  # the person's traits and events hold the first payload
    elif name == "privacy-consent":
        v = visit("privacy", "/privacy?tab=consent")
        lookup(v.page, hostile.users[1], "#consent-history")
        texts = (hostile.source, SVG, SCRIPT)  # source, channel, policy version
    elif name == "admin":
        v = visit("admin", "/admin")
        texts = (hostile.source, ORIGIN)
    else:
        v = visit(None, f"/portal/{quote(hostile.source)}#token={hostile.token(web)}")
        expect(v.page.locator("button[data-purpose=analytics]")).to_be_visible(timeout=SLOW_MS)
        texts = (hostile.source,)
    for text in texts:
        shows(v.page, text)
    assert_inert(v.page, v.dialogs)


def _track(payload: str) -> list[dict[str, Any]]:
    return [{"type": "track", "event": payload, "properties": {"path": "/" + payload},
             "context": {"consent": {"categoryPreferences": {"analytics": True}}}}]


# -- every page: the sweep ------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    role: str | None
    path: str
    ready: str
    """What is on the page once it has drawn its data."""


def spec(name: str, plain: Plain) -> Spec:
    return {
        "overview": Spec("analyst", "/?range=7d", "#ov-chart-title + .chart[data-render-ms]"),
        "insights": Spec("analyst", "/insights", ".result figure.chart[data-render-ms]"),
        "sql": Spec("analyst", "/sql", ".cm-content"),
        "live": Spec("analyst", "/live", '[data-listening="1"]'),
        "dashboards": Spec("viewer", f"/dashboards?id={plain.board}",
                           "article.tile figure.chart[data-render-ms]"),
        "privacy": Spec("privacy", "/privacy", "#panel-requests form"),
        "admin": Spec("admin", "/admin", ".health-tiles[data-render-ms]"),
        "portal": Spec(None, f"/portal/demo-site#token={plain.portal_token}",
                       "button[data-purpose=analytics]"),
    }[name]


PAGES = ("overview", "insights", "sql", "live", "dashboards", "privacy", "admin", "portal")


def open_page(visit: Callable[..., Visit], plain: Plain, name: str, width: int = 1280
              ) -> Visit:
    s = spec(name, plain)
    v = visit(s.role, s.path, width)
    expect(v.page.locator(s.ready).first).to_be_visible(timeout=SLOW_MS)
    expect(v.page.locator(".loading")).to_have_count(0, timeout=SLOW_MS)
    return v


def test_every_page_is_in_the_sweep() -> None:
    """The sweep's pages are the app's (the nav's, per role) and the portal."""
    from aap.web.app import PAGES as APP_PAGES

    paths = [spec(n, Plain(0, "")).path.split("?")[0] for n in PAGES]
    assert set(paths[:-1]) == set(APP_PAGES) and paths[-1].startswith("/portal/")


@pytest.mark.parametrize("name", PAGES)
def test_page_loads_clean_passes_axe_and_fits_both_widths(
        plain: Plain, visit: Callable[..., Visit], axe_check: Any, screenshot: Any,
        name: str) -> None:
    v = open_page(visit, plain, name)
    page = v.page
    for width in (1280, 375):
        page.set_viewport_size({"width": width, "height": 800})
        expect(page.locator(spec(name, plain).ready).first).to_be_visible()
        axe_check(page)
        assert_fits(page, width, context=name)
    shots = screenshot(page, name)
    assert [p.name for p in shots] == [f"{name}-1280.png", f"{name}-375.png"]
    assert all(p.stat().st_size > 1000 for p in shots)
    assert v.watch.errors == []


@pytest.mark.parametrize("name", PAGES)
def test_csp_forbids_inline_script_and_an_injected_one_is_refused(
        plain: Plain, visit: Callable[..., Visit], name: str) -> None:
    v = open_page(visit, plain, name)
    policy = v.response.headers["content-security-policy"]
    script_src = re.search(r"script-src ([^;]*)", policy)
    assert script_src and script_src.group(1).split() == ["'self'"], policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "default-src 'self'" in policy and "object-src 'none'" in policy
    refused = v.page.evaluate("""() => new Promise((done) => {
        document.addEventListener('securitypolicyviolation',
            (e) => done({directive: e.effectiveDirective, blocked: e.blockedURI}), {once: true});
        const s = document.createElement('script');
        s.textContent = 'window.__injected = 1';
        document.body.appendChild(s);
    })""")
    assert refused == {"directive": "script-src-elem", "blocked": "inline"}
    assert v.page.evaluate("() => typeof window.__injected") == "undefined"
    v.watch.errors.clear()  # the console's word on the refused script was the point


# -- the keyboard alone -------------------------------------------------------------

FOCUSED = """() => {
    const e = document.activeElement;
    if (!e || e === document.body) return null;
    const ring = (el) => {
        const s = getComputedStyle(el);
        return (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0)
            || s.boxShadow !== 'none';
    };
    // a text editor's content (CodeMirror) may show the ring on the box around it
    let box = e.isContentEditable ? e.parentElement : null;
    while (box && !(box.matches(':focus-within') && ring(box))) box = box.parentElement;
    return {
        what: e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
            + ' "' + (e.getAttribute('aria-label') || e.textContent || '').trim().slice(0, 30) + '"',
        href: e.getAttribute('href'),
        visible: e.matches(':focus-visible') && (ring(e) || box !== null),
    };
}"""


def tab_to(page: Any, target: Any, limit: int = 150) -> list[dict[str, Any]]:
    """Presses Tab until ``target`` has the focus; every stop on the way is returned,
    and each must show where the focus is."""
    stops: list[dict[str, Any]] = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        stop = page.evaluate(FOCUSED)
        if stop is None:
            continue
        stops.append(stop)
        if target.evaluate("(e) => e === document.activeElement"):
            break
    else:
        raise AssertionError(f"Tab never reached {target}: {[s['what'] for s in stops]}")
    unseen = [s["what"] for s in stops if not s["visible"]]
    assert unseen == [], f"focus not visible on {unseen}"
    return stops


NAV_ROLE = {"/": "analyst", "/insights": "analyst", "/sql": "analyst", "/live": "analyst",
            "/dashboards": "viewer", "/privacy": "privacy", "/admin": "admin"}


@pytest.mark.parametrize("name", PAGES)
def test_the_keyboard_alone_reaches_and_works_the_main_control(
        web: Web, plain: Plain, visit: Callable[..., Visit], name: str) -> None:
    v = open_page(visit, plain, name)
    page = v.page
    role = spec(name, plain).role
    if name == "overview":
        target = page.locator("#ov-compare")
        stops = tab_to(page, target)
        page.keyboard.press("Space")
        expect(page).to_have_url(re.compile(r"compare=1"))
    elif name == "insights":
        target = page.get_by_role("button", name="Add series")
        stops = tab_to(page, target)
        page.keyboard.press("Enter")
        expect(page.locator("#series-1-event")).to_be_visible()
    elif name == "sql":
        target = page.get_by_role("button", name="Run", exact=True)
        stops = tab_to(page, target)
        page.keyboard.press("Enter")
        expect(page.locator(".sql-result")).to_be_visible(timeout=SLOW_MS)
    elif name == "live":
        target = page.locator("#live-event")
        stops = tab_to(page, target)
        page.keyboard.type("Signed Up")
        page.keyboard.press("Enter")
        expect(page).to_have_url(re.compile(r"event=Signed\+Up|event=Signed%20Up"))
    elif name == "dashboards":
        target = page.get_by_role("button", name="Refresh", exact=True)
        stops = tab_to(page, target)
        with page.expect_response(lambda r: "/api/v1/insights/" in r.url) as rerun:
            page.keyboard.press("Enter")
        assert rerun.value.status == 200
    elif name == "privacy":
        target = page.get_by_role("tab", name="Requests")
        stops = tab_to(page, target)
        page.keyboard.press("End")
        page.keyboard.press("Enter")
        expect(page.get_by_role("tab", name="Person lookup")).to_have_attribute(
            "aria-selected", "true")
        expect(page).to_have_url(re.compile(r"tab=person"))
    elif name == "admin":
        target = page.get_by_role("button", name="Refresh", exact=True)
        stops = tab_to(page, target)
        with page.expect_response(lambda r: r.url == web.url + "/api/v1/health") as got:
            page.keyboard.press("Enter")
        assert got.value.status == 200
    else:
        target = page.locator("button[data-purpose=analytics]")
        stops = tab_to(page, target)
        page.keyboard.press("Space")
        expect(target).to_have_attribute("aria-pressed", "true")
    if role is not None:  # the skip link first, then the nav's links for the role
        assert stops[0]["what"].startswith('a "Skip to content'), stops[0]
        order = {r: i for i, r in enumerate(ROLES)}
        want = {p for p, need in NAV_ROLE.items() if order[role] >= order[need]}
        assert want <= {s["href"] for s in stops}, [s["href"] for s in stops]
