"""Helpers of the web app's browser tests (shared by every page's tests): the web
fixture's record, console/page error collection, axe-core and screenshots."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aap.runner import ServerProcess

ROOT = Path(__file__).parents[3]
STATIC = ROOT / "src" / "aap" / "web" / "static"
AXE_JS = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "build" / "screenshots"
ROLES = ("viewer", "analyst", "privacy", "admin")
WIDTHS = (1280, 375)
TIMEOUT_MS = 30_000
"""What every expect(...) in these tests may wait: generous, the machine is shared."""


@dataclass
class Web:
    """The session's server, filled with the demo's traffic and processed."""

    server: ServerProcess
    write_key: str
    source: str
    keys: dict[str, str]
    """role → API key (secret)"""
    key_ids: dict[str, str]
    people: int
    events_sent: int
    events_stored: int

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir


@dataclass
class Watch:
    """What went wrong in a page: console errors, uncaught errors, failed loads of the
    page's own files (documents, scripts, styles, images, fonts) and any 5xx answer. An
    API's 4xx (fetch/XHR) is not an error here: the app shows it (ApiErrorBox), and
    tests that expect one say so."""

    errors: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        def on_console(msg: Any) -> None:
            if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
                self.errors.append(f"console: {msg.text}")

        def on_response(resp: Any) -> None:
            if resp.status >= 500 or (resp.status >= 400 and resp.request.resource_type in (
                    "document", "script", "stylesheet", "image", "font")):
                self.errors.append(f"{resp.status} {resp.request.method} {resp.url}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("response", on_response)


def axe_check(page: Any, *, context: str | None = None) -> list[dict[str, Any]]:
    """Runs axe-core in the page (evaluated by the driver: the page's CSP allows no
    inline script); fails on a serious or critical violation. Returns all violations."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(AXE_JS.read_text())
    result = page.evaluate(
        "async (ctx) => JSON.stringify(await window.axe.run(ctx ? document.querySelector(ctx)"
        " : document, {resultTypes: ['violations']}))", context)
    violations: list[dict[str, Any]] = json.loads(result)["violations"]
    bad = [v for v in violations if v.get("impact") in ("serious", "critical")]
    assert not bad, "axe: " + "; ".join(
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(str(n.get("target")) for n in v["nodes"][:3]) for v in bad)
    return violations


def assert_fits(page: Any, width: int, *, context: object = None) -> None:
    """Nothing on ``page`` is wider than ``width`` (no sideways scroll; 1 px for
    rounding). Fails naming the innermost elements that stick out, with their text."""
    scroll = page.evaluate("document.documentElement.scrollWidth")
    if scroll <= width + 1:
        return
    wide = page.evaluate("""(w) => {
        const sticks = (e) => e.getBoundingClientRect().right > w + 1;
        const clipped = (e) => {  // inside a box that clips it and does not stick out
            for (let a = e.parentElement; a; a = a.parentElement) {
                if (getComputedStyle(a).overflowX !== 'visible' && !sticks(a)) return true;
            }
            return false;
        };
        const out = [...document.querySelectorAll('body *')]
            .filter((e) => sticks(e) && !clipped(e));
        return out.filter((e) => !out.some((o) => o !== e && e.contains(o))).slice(0, 6)
            .map((e) => `${e.tagName}.${e.className}: ${(e.textContent || '').slice(0, 60)}`);
    }""", width)
    raise AssertionError(f"{scroll} px wide at {width} ({context}): {wide}")


def screenshot(page: Any, name: str) -> list[Path]:
    """Full-page screenshots at 1280 and 375 px wide into build/screenshots/NAME-W.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size or {"width": 1280, "height": 800}
    out = []
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 800})
        page.wait_for_timeout(100)  # one layout pass after the resize (charts re-size)
        path = SCREENSHOTS / f"{name}-{width}.png"
        page.screenshot(path=str(path), full_page=True)
        out.append(path)
    page.set_viewport_size(size)
    return out


def csrf(page: Any, url: str) -> str:
    """The CSRF token of the page's session."""
    r = page.request.get(url + "/api/v1/session")
    assert r.ok, r.text()
    token: str = r.json()["csrf"]
    return token
