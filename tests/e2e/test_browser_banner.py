"""The consent banner of AAP's browser SDK (``aap.consent.show()``, which loads
/sdk-banner.js) in headless Chromium, on a page of another origin than the real server,
whose source asks consent for analytics and marketing: reject all stores nothing, one
purpose accepted is exactly what the ledger records, keyboard only, French and German,
axe, equal weight of accepting and refusing, and a strict CSP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aap.privacy.consent import ConsentLedger, Statement
from aap.privacy.ids import IdHasher
from aap.privacy.plain import TEXTS
from tests.conftest import Running, slow_fixture, start
from tests.e2e.browser import PageServer, wait_for

AXE = Path(__file__).parents[2] / "web" / "node_modules" / "axe-core" / "axe.min.js"
NONCE = "b4nn3r-t3st"
PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">{csp}
<title>Banner shop</title></head><body>
<main><h1>Banner shop</h1><button id="open" type="button">Privacy choices</button></main>
<script src="{aap}/sdk.js"></script>
<script nonce="{nonce}">
aap.init({key}, {{host: {aap_js}, source: "test-source", autocapture: false, flushInterval: 100}});
window.violations = [];
document.addEventListener("securitypolicyviolation", (e) => window.violations.push(
  e.violatedDirective + " " + e.blockedURI));
document.getElementById("open").addEventListener("click", () => {{
  window.choice = undefined;
  aap.consent.show({opts}).then((c) => {{ window.choice = c; }});
}});
</script></body></html>"""
STRICT = ("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';"
          " script-src 'nonce-{nonce}' {aap}; connect-src {aap}; style-src 'none'\">")
BANNER = "[data-aap-banner]"
DIALOG = BANNER + " [role=dialog]"
ACTIVE = ("(() => { const a = document.querySelector('[data-aap-banner]')?.shadowRoot"
          "?.activeElement; return a ? (a.getAttribute('role') || a.getAttribute('name')"
          " || a.textContent) : document.activeElement.id; })()")


@slow_fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = start(tmp_path_factory.mktemp("srv"), source_args=(
        "--basis", "consent", "--purpose", "analytics", "--purpose", "marketing"))
    yield r
    r.server.stop()


@pytest.fixture(scope="module")
def site(running: Running) -> Iterator[PageServer]:
    def page(q: dict[str, str]) -> str:
        csp = STRICT.format(nonce=NONCE, aap=running.url) if q.get("csp") else ""
        opts = json.dumps({"lang": q["lang"]} if "lang" in q else {})
        return PAGE.format(csp=csp, aap=running.url, nonce=NONCE, key=json.dumps(running.key),
                           aap_js=json.dumps(running.url), opts=opts)

    s = PageServer({"shop": page})
    yield s
    s.close()


class Tab:
    def __init__(self, browser: Any, running: Running, site: PageServer, query: str = "",
                 **context: Any) -> None:
        self.running = running
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and not m.location.get(
            "url", "").endswith("/favicon.ico") and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.sent: list[str] = []
        self.page.on("request", lambda r: r.url.startswith(running.url) and self.sent.append(
            r.url[len(running.url):].split("?")[0]))
        self.page.goto(f"{site.url}/shop?{query}")

    def js(self, code: str) -> Any:
        return self.page.evaluate(code)

    def open(self) -> None:
        self.page.click("#open")
        self.page.locator(DIALOG).wait_for(timeout=30_000)

    def closed(self) -> None:
        self.page.locator(BANNER).wait_for(state="detached", timeout=30_000)

    def anon(self) -> str:
        return str(self.js("JSON.parse(localStorage.aap_ids).a"))

    def close(self) -> None:
        self.context.close()
        assert self.errors == []


@pytest.fixture
def tab(browser: Any, running: Running, site: PageServer) -> Iterator[Tab]:
    t = Tab(browser, running, site)
    yield t
    t.close()


def ledger(running: Running, anonymous_id: str) -> list[Statement]:
    subject = IdHasher.for_data_dir(running.data_dir).key(anonymous_id)
    return [st for _, st in ConsentLedger(running.data_dir).since(0)
            if st.subject == subject and st.channel == "aap.js"]


def test_reject_all_sends_and_stores_nothing(tab: Tab) -> None:
    tab.open()
    tab.page.locator(DIALOG + " button", has_text="Reject all").click()
    tab.closed()
    assert tab.js("window.choice") == {"analytics": False, "marketing": False}
    assert tab.js("aap.consent.get()") == {"analytics": False, "marketing": False}
    tab.js("aap.track('After Reject'); aap.page(); aap.flush()")
    tab.page.wait_for_timeout(800)  # nothing may follow; there is nothing to wait for
    assert [p for p in tab.sent if p.startswith("/v1/") and not p.startswith("/v1/portal/")
            ] == []
    assert tab.js("Object.keys(localStorage)") == ["aap_consent"]
    assert not any(e.event == "After Reject" for e in tab.running.stored())


def test_one_purpose_accepted_is_exactly_what_the_ledger_has(tab: Tab) -> None:
    tab.open()
    tab.page.locator(DIALOG + " label", has_text=TEXTS["analytics"]["en"][0]).click()
    tab.page.locator(DIALOG + " button", has_text="Save choices").click()
    tab.closed()
    assert tab.js("window.choice") == {"analytics": True, "marketing": False}
    anon = tab.anon()
    wait_for(lambda: len(ledger(tab.running, anon)) == 1, what="the statement in the ledger")
    (st,) = ledger(tab.running, anon)
    assert st.purposes == {"analytics": True, "marketing": False}
    assert [p for p, granted in st.purposes.items() if granted] == ["analytics"]
    tab.js("aap.track('After Save'); aap.flush()")
    wait_for(lambda: any(e.event == "After Save" and e.anonymous_id == anon
                         for e in tab.running.stored()), what="the event in the log")
    ev = next(e for e in tab.running.stored() if e.event == "After Save")
    assert list(ev.purposes or {}) == ["analytics"]


def test_keyboard_only(tab: Tab) -> None:
    kb = tab.page.keyboard
    tab.page.focus("#open")
    kb.press("Enter")
    tab.page.locator(DIALOG).wait_for(timeout=30_000)
    assert tab.js(ACTIVE) == "dialog"  # focus moved in
    order = ["analytics", "marketing", "Accept all", "Reject all", "Save choices"]
    seen = []
    for _ in range(len(order) + 1):
        kb.press("Tab")
        seen.append(tab.js(ACTIVE))
    assert seen == [*order, order[0]]  # Tab wraps inside the dialog
    kb.press("Shift+Tab")
    assert tab.js(ACTIVE) == "Save choices"  # Shift-Tab too
    for _ in range(4):
        kb.press("Shift+Tab")
    assert tab.js(ACTIVE) == "analytics"
    kb.press("Space")  # ticks analytics
    kb.press("Tab")
    kb.press("Tab")
    kb.press("Tab")
    kb.press("Tab")
    assert tab.js(ACTIVE) == "Save choices"
    kb.press("Enter")
    tab.closed()
    assert tab.js("window.choice") == {"analytics": True, "marketing": False}
    assert tab.js(ACTIVE) == "open"  # focus returned
    # Escape closes without a choice; focus returns; the earlier choice stands
    kb.press("Enter")
    tab.page.locator(DIALOG).wait_for(timeout=30_000)
    checked = tab.js("[...document.querySelector('[data-aap-banner]').shadowRoot"
                     ".querySelectorAll('input')].map(i => i.checked)")
    assert checked == [True, False]  # the current choice, shown
    kb.press("Escape")
    tab.closed()
    tab.page.wait_for_function("window.choice === null", timeout=30_000)
    assert tab.js(ACTIVE) == "open"
    assert tab.js("aap.consent.get()") == {"analytics": True, "marketing": False}
    kb.press("Space")  # Space works on the page's button as on the banner's
    tab.page.locator(DIALOG).wait_for(timeout=30_000)
    kb.press("Tab")
    kb.press("Tab")
    kb.press("Tab")
    assert tab.js(ACTIVE) == "Accept all"
    kb.press("Space")
    tab.closed()
    assert tab.js("aap.consent.get()") == {"analytics": True, "marketing": True}


@pytest.mark.parametrize("lang,via", [("fr", "option"), ("de", "option"), ("de", "browser")])
def test_french_and_german(browser: Any, running: Running, site: PageServer, lang: str,
                           via: str) -> None:
    t = (Tab(browser, running, site, f"lang={lang}") if via == "option"
         else Tab(browser, running, site, locale="de-DE"))
    try:
        t.open()
        words = {"fr": ("Tout accepter", "Tout refuser", "Enregistrer mes choix"),
                 "de": ("Alle akzeptieren", "Alle ablehnen", "Auswahl speichern")}[lang]
        buttons = t.page.locator(DIALOG + " button").all_inner_texts()
        assert [b.strip() for b in buttons] == list(words)
        dialog = t.page.locator(DIALOG)
        assert dialog.get_attribute("lang") == lang
        text = dialog.inner_text()
        for pid in ("analytics", "marketing"):
            assert TEXTS[pid][lang][0] in text and TEXTS[pid][lang][1] in text
    finally:
        t.close()


def test_axe_and_equal_weight(tab: Tab) -> None:
    tab.open()
    tab.page.add_script_tag(path=str(AXE))
    result = tab.js("axe.run(document).then(r => ({violations: r.violations.map(v =>"
                    " ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target)})),"
                    " inShadow: r.passes.flatMap(v => v.nodes).filter(n =>"
                    " Array.isArray(n.target[0])).length}))")
    bad = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
    assert bad == []
    assert result["inShadow"] > 0  # axe did look inside the banner's shadow root
    boxes = [b.bounding_box() for b in tab.page.locator(DIALOG + " button").all()]
    accept, reject, save = boxes
    assert accept and reject and save
    for side in ("width", "height", "y"):  # equal weight, same row (to the subpixel)
        assert accept[side] == pytest.approx(reject[side], abs=0.5)
        assert save[side] == pytest.approx(accept[side], abs=0.5)
    styles = tab.js("[...document.querySelector('[data-aap-banner]').shadowRoot"
                    ".querySelectorAll('button')].map(b => { const s = getComputedStyle(b);"
                    " return [s.backgroundColor, s.color, s.fontSize, s.fontWeight]; })")
    assert styles[0] == styles[1] == styles[2]


def test_a_strict_csp_blocks_nothing_and_the_banner_is_styled(browser: Any, running: Running,
                                                               site: PageServer) -> None:
    t = Tab(browser, running, site, "csp=1")
    try:
        t.open()
        bg = t.js("getComputedStyle(document.querySelector('[data-aap-banner]').shadowRoot"
                  ".querySelector('button')).backgroundColor")
        assert bg == "rgb(31, 79, 153)"  # the banner's own stylesheet applies
        assert t.js("window.violations") == []
        t.page.locator(DIALOG + " button", has_text="Accept all").click()
        t.closed()
        anon = t.anon()
        wait_for(lambda: len(ledger(running, anon)) == 1, what="the statement in the ledger")
        assert t.js("window.violations") == []
    finally:
        t.close()


def test_narrow_screen(browser: Any, running: Running, site: PageServer) -> None:
    t = Tab(browser, running, site, viewport={"width": 375, "height": 740})
    try:
        t.open()
        dialog = t.page.locator(DIALOG).bounding_box()
        assert dialog and dialog["width"] <= 375
        accept, reject = (t.page.locator(DIALOG + " button", has_text=n).bounding_box()
                          for n in ("Accept all", "Reject all"))
        assert accept and reject
        assert accept["width"] == pytest.approx(reject["width"], abs=0.5)
        assert accept["y"] == reject["y"]
    finally:
        t.close()
