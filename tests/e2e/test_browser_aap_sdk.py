"""Our browser SDK (served by the collector at /sdk.js) in headless Chromium against the
real server, whose source rests on consent (so the server's consent gate is in the loop):
consent before anything, withdrawal, GPC, single-page-app navigation, autocapture of
clicks and forms without values, offline then online, page hide, gzip."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.datadir import DataDir
from aap.log.sqlite import SQLiteLog
from aap.privacy.consent import ConsentLedger, Statement
from aap.privacy.ids import IdHasher
from tests.conftest import Running, slow_fixture, start
from tests.e2e.browser import PageServer, wait_for, wait_rows
from tests.e2e.warehouse import Row

SHOP = """<!doctype html><html><head><title>AAP test shop</title></head><body>
<nav><a id="to-pricing" href="#/pricing">Pricing</a>
<button data-aap="buy">Buy <b>now</b></button></nav>
<input id="secret" type="text">
<form id="signup" name="signup" onsubmit="event.preventDefault()">
  <input name="email" type="email"><button type="submit">Sign up</button></form>
<form id="survey" name="survey"><input name="opinion" type="text">
  <select name="size"><option>small</option><option>large</option></select></form>
<script src="{aap}/sdk.js"></script>
<script>aap.init({key}, {{host: {aap_js}, flushInterval: {flush}}});</script>
</body></html>"""


class Tab:
    """A fresh browser context (empty storage) with one page, and every request it
    makes to the collector."""

    def __init__(self, browser: Any, running: Running, site: PageServer, *, gpc: bool = False,
                 flush: int = 200, on_page: Any = None) -> None:
        self.running = running
        self.context = browser.new_context()
        if gpc:
            self.context.add_init_script(
                "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl',"
                " {get: () => true})")
        self.page = self.context.new_page()
        self.requests: list[tuple[str, str, bytes | None]] = []
        self.statuses: list[tuple[str, int]] = []
        self.page.on("request", self._seen)
        self.page.on("response", lambda r: self.statuses.append(
            (r.url[len(running.url):].split("?")[0], r.status))
            if r.url.startswith(running.url) else None)
        if on_page is not None:  # before the page loads
            on_page(self.page)
        self.url = f"{site.url}/shop?flush={flush}"
        self.page.goto(self.url)

    def _seen(self, req: Any) -> None:
        if req.url.startswith(self.running.url):
            path = req.url[len(self.running.url):].split("?")[0]
            if path != "/sdk.js":
                self.requests.append((req.method, path, req.post_data_buffer))

    def js(self, code: str) -> Any:
        return self.page.evaluate(code)

    def storage(self) -> dict[str, Any]:
        return self.js("({local: Object.keys(localStorage), session: Object.keys(sessionStorage),"
                       " cookie: document.cookie})")

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.requests]

    def pause(self, ms: int = 300) -> None:
        self.page.wait_for_timeout(ms)

    def anon(self) -> str:
        return str(self.js("JSON.parse(localStorage.aap_ids).a"))

    def close(self) -> None:
        self.context.close()


@slow_fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A source whose analytics purpose rests on consent (AAP's default)."""
    r = start(tmp_path_factory.mktemp("srv"), source_args=("--basis", "consent"))
    yield r
    r.server.stop()


def ledger(running: Running, anonymous_id: str, channel: str | None = None) -> list[Statement]:
    """The consent ledger's statements about this browser's anonymous id (those the SDK
    made with ``POST /v1/consent`` have the channel ``aap.js``; the gate also records the
    preferences events carry, with the channel ``event``)."""
    subject = IdHasher.for_data_dir(running.data_dir).key(anonymous_id)
    return [st for _, st in ConsentLedger(running.data_dir).since(0)
            if st.subject == subject and channel in (None, st.channel)]


@pytest.fixture(scope="module")
def site(running: Running) -> Iterator[PageServer]:
    def shop(q: dict[str, str]) -> str:
        return SHOP.format(aap=running.url, key=json.dumps(running.key),
                           aap_js=json.dumps(running.url), flush=int(q.get("flush", "200")))

    s = PageServer({"shop": shop})
    yield s
    s.close()


@pytest.fixture
def tab(browser: Any, running: Running, site: PageServer) -> Iterator[Tab]:
    t = Tab(browser, running, site)
    yield t
    t.close()


def _anon_rows(t: Tab, check: Any) -> list[Row]:
    anon = t.anon()
    logged = [e for e in t.running.stored() if e.anonymous_id == anon]
    assert logged, "nothing from this browser reached the log"
    return wait_rows(t.running.server, logged[0].message_id, check)


def test_nothing_is_sent_or_stored_before_consent(tab: Tab) -> None:
    tab.page.click("button[data-aap=buy]")
    tab.page.fill("#secret", "typed-secret-4711")
    tab.page.select_option("select[name=size]", "large")
    tab.pause(800)
    assert tab.paths() == []  # not one request to the collector
    assert tab.storage() == {"local": [], "session": [], "cookie": ""}
    assert tab.js("aap.consent.get()") == {}
    tab.js("aap.track('Never Sent'); aap.identify('nobody'); aap.flush()")
    tab.pause(300)
    assert tab.paths() == []
    assert tab.storage()["local"] == []

    tab.js("aap.consent.set({analytics: true, marketing: false})")
    wait_for(lambda: "/v1/batch" in tab.paths() or tab.pause() or False, what="first batch")
    assert tab.paths()[0] == "/v1/consent"
    # the queue leaves storage once the batch is answered (the request may still be out)
    wait_for(lambda: sorted(tab.storage()["local"]) == ["aap_consent", "aap_ids", "aap_s"],
             what="the sent queue to leave localStorage")
    tab.page.click("button[data-aap=buy]")
    tab.js("aap.identify('web-user-1', {plan: 'pro'}); aap.track('Plan Chosen', {plan: 'pro'});"
           " aap.group('org-web-1', {size: 3}); aap.alias('web-login-1'); aap.flush()")
    expected = ["$page", "Element Clicked", "$identify", "Plan Chosen", "$group", "$alias"]
    rows = _anon_rows(tab, lambda rs: len(rs) >= len(expected))
    assert sorted(r.event for r in rows) == sorted(expected)  # nothing missing, nothing extra
    assert len({r.person_id for r in rows}) == 1
    by = {r.event: r for r in rows}
    assert by["$page"].path == "/shop" and by["$page"].name == "AAP test shop"
    assert by["$page"].library_name == "aap.js"
    click = by["Element Clicked"].properties
    assert click == {"tag": "button", "text": "Buy now", "selector": 'button[data-aap="buy"]'}
    assert by["Plan Chosen"].properties == {"plan": "pro"}
    (st,) = ledger(tab.running, tab.anon(), "aap.js")
    assert st.purposes == {"analytics": True, "marketing": False}
    assert (st.channel, st.policy_version) == ("aap.js", "1")
    now = datetime.now(UTC)
    assert all(now - timedelta(minutes=2) < r.timestamp <= now + timedelta(seconds=5) for r in rows)
    assert len({r.session_id for r in rows}) == 1
    for e in tab.running.stored():  # typed text and field values never leave the page
        assert "typed-secret-4711" not in json.dumps(e.properties) + json.dumps(e.context)
        assert "large" not in json.dumps(e.properties)
    ids = {e.message_id for e in tab.running.stored() if e.anonymous_id == tab.anon()}
    assert all(mid[14] == "7" for mid in ids if mid)  # UUIDv7 message ids


def test_withdrawal_stops_at_once_and_clears_the_device(tab: Tab) -> None:
    tab.js("aap.consent.set({analytics: true}); aap.track('Before Withdrawal'); aap.flush()")
    anon = tab.anon()
    rows = _anon_rows(tab, lambda rs: any(r.event == "Before Withdrawal" for r in rs))
    tab.pause(300)
    sent_before = len(tab.requests)
    tab.js("aap.consent.set({analytics: false})")
    assert tab.storage()["local"] == ["aap_consent"]  # only the choice itself stays
    assert tab.js("aap.consent.get()") == {"analytics": False}
    tab.js("aap.track('After Withdrawal'); aap.page(); aap.flush()")
    tab.page.click("button[data-aap=buy]")
    wait_for(lambda: "/v1/consent" in [p for _, p, _ in tab.requests[sent_before:]],
             what="the withdrawal")  # however long a loaded machine takes
    tab.pause(1000)  # then nothing else may follow
    after = tab.requests[sent_before:]
    assert [p for _, p, _ in after] == ["/v1/consent"]
    body = json.loads(after[0][2] or b"{}")
    assert body["anonymousId"] == anon and body["purposes"] == {"analytics": False}
    wait_for(lambda: len(ledger(tab.running, anon, "aap.js")) == 2,
             what="the withdrawal in the ledger")
    assert [st.purposes for st in ledger(tab.running, anon, "aap.js")] == [
        {"analytics": True}, {"analytics": False}]
    assert ledger(tab.running, anon)[-1].purposes == {"analytics": False}  # the latest wins
    assert not any(e.event == "After Withdrawal" for e in tab.running.stored())
    # and the processor takes the withdrawn purpose off what was stored before: the
    # person's events, left with no purpose, are erased (Art. 17(1)(b))
    before = [r.message_id for r in rows]
    marks = ", ".join("?" for _ in before)
    wait_for(lambda: tab.running.server.sql(
        f"SELECT count(*) FROM events WHERE message_id IN ({marks})", before) == [[0]],
        timeout=120, what="the withdrawn events to leave the warehouse")
    tab.page.reload()
    tab.pause(500)
    assert tab.storage()["local"] == ["aap_consent"]
    assert tab.js("aap.consent.get()") == {"analytics": False}


def test_global_privacy_control_keeps_marketing_and_sharing_off(browser: Any,
                                                                running: Running,
                                                                site: PageServer) -> None:
    t = Tab(browser, running, site, gpc=True)
    try:
        t.js("aap.consent.set({analytics: true, marketing: true, partner_sharing: true});"
             " aap.track('With GPC'); aap.flush()")
        assert t.js("aap.consent.get()") == {"analytics": True, "marketing": False,
                                             "partner_sharing": False}
        rows = _anon_rows(t, lambda rs: any(r.event == "With GPC" for r in rs))
        ev = next(r for r in rows if r.event == "With GPC")
        assert ev.gpc is True
        (st,) = ledger(running, t.anon(), "aap.js")
        assert st.purposes == {"analytics": True, "marketing": False, "partner_sharing": False}
        logged = next(e for e in running.stored() if e.message_id == ev.message_id)
        assert logged.context["consent"]["categoryPreferences"]["marketing"] is False
    finally:
        t.close()


def test_single_page_app_navigation_and_forms(tab: Tab) -> None:
    tab.js("aap.consent.set({analytics: true})")
    tab.pause(300)
    tab.js("history.pushState({}, '', '/shop/settings')")
    tab.page.click("#to-pricing")  # a hash route
    tab.page.select_option("select[name=size]", "large")  # a form is started...
    tab.js("history.pushState({}, '', '/shop/checkout')")  # ...and left: abandoned
    tab.page.fill("input[name=email]", "someone@example.com")
    tab.page.click("#signup button")
    tab.page.go_back()  # popstate
    tab.js("aap.flush()")
    want = ["$page", "$page", "$page", "$page", "$page", "Element Clicked",
            "Element Clicked", "Form Abandoned", "Form Submitted"]
    rows = _anon_rows(tab, lambda rs: len(rs) >= len(want))
    assert sorted(r.event for r in rows) == sorted(want)
    pages = [r for r in rows if r.event == "$page"]
    urls = [r.properties["url"].split("/", 3)[3] for r in pages]
    assert urls == ["shop?flush=200", "shop/settings", "shop/settings#/pricing",
                    "shop/checkout", "shop/settings#/pricing"]
    assert pages[1].properties["referrer"].endswith("/shop?flush=200")  # the previous view
    assert pages[1].path == "/shop/settings"
    forms = {r.event: r.properties for r in rows if r.event.startswith("Form")}
    assert forms["Form Abandoned"] == {"selector": "#survey", "id": "survey", "name": "survey",
                                       "fields": 2}
    assert forms["Form Submitted"] == {"selector": "#signup", "id": "signup", "name": "signup",
                                       "fields": 2}
    link = next(r.properties for r in rows if r.event == "Element Clicked"
                and r.properties["tag"] == "a")
    assert link["selector"] == "#to-pricing" and link["text"] == "Pricing"
    assert link["href"].endswith("#/pricing")
    assert "someone@example.com" not in json.dumps([r.properties for r in rows])


def test_offline_queue_is_kept_and_sent_when_back_online(tab: Tab) -> None:
    tab.js("aap.consent.set({analytics: true}); aap.flush()")
    _anon_rows(tab, lambda rs: any(r.event == "$page" for r in rs))
    tab.context.set_offline(True)
    tab.js("aap.track('Offline One'); aap.track('Offline Two'); aap.flush()")
    # kept on the device once the send failed (later on a loaded machine)
    wait_for(lambda: tab.js("JSON.parse(localStorage.aap_q || '[]').length") == 2
             or tab.pause() or False, what="the offline queue")
    queued = tab.js("JSON.parse(localStorage.aap_q).map(m => m.event)")
    assert queued == ["Offline One", "Offline Two"]  # kept on the device, capped
    assert not any(e.event and e.event.startswith("Offline") for e in tab.running.stored())
    tab.context.set_offline(False)
    rows = _anon_rows(tab, lambda rs: sum(r.event.startswith("Offline") for r in rs) == 2)
    assert sorted(r.event for r in rows if r.event.startswith("Offline")) == [
        "Offline One", "Offline Two"]
    logged = [e.event for e in tab.running.stored() if e.event and e.event.startswith("Offline")]
    assert logged == ["Offline One", "Offline Two"]  # in the order they happened
    wait_for(lambda: tab.js("localStorage.aap_q === undefined") or tab.pause() or False,
             what="the queue to empty")


def test_page_hide_sends_the_queue(browser: Any, running: Running,
                                   site: PageServer) -> None:
    t = Tab(browser, running, site, flush=600_000)  # no timer flush during the test
    try:
        t.js("aap.consent.set({analytics: true}); aap.track('Last Words', {n: 1})")
        anon = t.anon()
        t.pause(300)
        assert "/v1/batch" not in t.paths()
        t.page.goto("about:blank")  # pagehide: the queue leaves with sendBeacon
        wait_for(lambda: any(e.event == "Last Words" for e in running.stored()),
                 what="the beacon")
        logged = [e for e in running.stored() if e.anonymous_id == anon]
        assert sorted(e.event or "" for e in logged) == ["", "Last Words"]
    finally:
        t.close()


def test_large_batches_are_gzipped(tab: Tab) -> None:
    # Record the first bytes of each body the page hands to fetch (the real fetch still
    # sends it): Playwright does not expose Blob bodies.
    tab.js("""window.__heads = []; const real = window.fetch;
        window.fetch = function (url, opts) {
          const b = opts && opts.body;
          if (b instanceof Blob) b.slice(0, 2).arrayBuffer().then(
              (x) => __heads.push([...new Uint8Array(x)]));
          else __heads.push(typeof b);
          return real.apply(this, arguments);
        };""")
    tab.js("aap.consent.set({analytics: true});"
           " for (let i = 0; i < 5; i++) aap.track('Big', {blob: 'x'.repeat(1000), i});"
           " aap.flush()")
    rows = _anon_rows(tab, lambda rs: sum(r.event == "Big" for r in rs) == 5)
    assert sorted(r.properties["i"] for r in rows if r.event == "Big") == [0, 1, 2, 3, 4]
    assert [0x1F, 0x8B] in tab.js("window.__heads")  # gzip, by CompressionStream


def test_retries_with_backoff_while_the_server_answers_503(browser: Any, tmp_path: Path) -> None:
    """A real 503 (back-pressure: a consumer group far behind) until the consumer catches
    up: the SDK keeps the events and retries, and they arrive once."""
    r = start(tmp_path, source_args=("--basis", "consent"),
              env={"AAP_MAX_CONSUMER_LAG": "5", "AAP_HEALTH_INTERVAL_MS": "50"})
    log = SQLiteLog(DataDir(r.data_dir).log)
    site = PageServer({"shop": lambda q: SHOP.format(
        aap=r.url, key=json.dumps(r.key), aap_js=json.dumps(r.url), flush=200)})
    t = Tab(browser, r, site)
    try:
        log.commit("slow-consumer", 0)
        filler = {"batch": [{"type": "track", "event": "Filler", "userId": "f",
                             "context": {"consent": {"categoryPreferences": {"analytics": True}}}}
                            for _ in range(10)]}
        assert r.post("/v1/batch", json=filler).status_code == 200
        wait_for(lambda: httpx.get(r.url + "/healthz").status_code == 503, what="back-pressure")
        t.js("aap.consent.set({analytics: true}); aap.track('Retried'); aap.flush()")
        wait_for(lambda: ("/v1/batch", 503) in t.statuses or t.pause() or False,
                 what="a 503 answer")
        t.pause(1500)
        assert not any(e.event == "Retried" for e in r.stored())
        assert t.js("JSON.parse(localStorage.aap_q).map(m => m.event || m.type)") == [
            "page", "Retried"]  # kept for the next try
        log.commit("slow-consumer", log.stats().head_offset)  # the consumer caught up
        wait_for(lambda: any(e.event == "Retried" for e in r.stored()) or t.pause() or False,
                 timeout=120, what="the retried batch")
        t.pause(300)  # let Playwright deliver the last response events
        assert ("/v1/batch", 200) in t.statuses
        anon = t.anon()
        assert sorted(e.event or e.type for e in r.stored() if e.anonymous_id == anon) == [
            "Retried", "page"]
        # the consent statement got its own 503 and is retried on its own backoff
        wait_for(lambda: bool(ledger(r, anon, "aap.js")) or t.pause() or False,
                 timeout=120, what="the retried consent statement")
        assert [st.purposes for st in ledger(r, anon, "aap.js")] == [{"analytics": True}]
    finally:
        t.close()
        site.close()
        log.close()
        r.server.stop()


def test_offline_queue_is_capped(tab: Tab) -> None:
    tab.js("aap.consent.set({analytics: true})")
    tab.context.set_offline(True)
    tab.js(f"aap.init({json.dumps(tab.running.key)}, {{host: {json.dumps(tab.running.url)},"
           " maxQueue: 3}); for (let i = 1; i <= 5; i++) aap.track('E' + i)")
    tab.pause(300)
    assert tab.js("JSON.parse(localStorage.aap_q).map(m => m.event)") == ["E3", "E4", "E5"]
    tab.context.set_offline(False)
