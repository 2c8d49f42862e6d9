"""`aap demo --page` serves a page that uses our SDK: in Chromium, accept analytics, click
around, and the demo's report lists what the page sent."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import expect

from aap.runner import free_port
from tests.e2e.browser import wait_for


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_demo_page_sends_what_the_visitor_does(browser: Any, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.out"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "aap", "demo", "--page", "--page-port",
                                 str(port), "--duration", "600"],
                                stdout=f, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(lambda: _up(url) or proc.poll() is not None, timeout=180, what="the demo page")
        assert proc.poll() is None, log.read_text()
        ctx = browser.new_context()
        page = ctx.new_page()
        page.goto(url)
        # AAP's consent banner opens from "Privacy settings…"; Escape closes it with
        # nothing recorded (and, before consent, the click is not sent)
        page.click("#settings")
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        expect(dialog.get_by_role("button", name="Reject all")).to_be_visible()
        expect(dialog).to_contain_text("Product analytics")  # the purposes, from the portal
        page.keyboard.press("Escape")
        expect(dialog).to_have_count(0)
        page.click("#buy")  # before consent: not sent
        page.click("#accept")
        assert "analytics" in page.inner_text("#state")
        page.click("a[data-route='/pricing']")
        page.click("#buy")
        page.fill("input[name=email]", "visitor@example.com")
        page.click("#newsletter button")
        # the SDK flushes every second, the demo prints the count as it changes: wait for
        # all seven events to be in the warehouse (however long a loaded machine takes),
        # so the report after Ctrl-C has nothing left to wait for
        wait_for(lambda: "events in the warehouse: 7" in log.read_text()
                 or proc.poll() is not None, timeout=180, what="the seven events")
        ctx.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert proc.returncode == 0, out
    report = out[out.index("What the page sent"):]
    counts = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 3 and cells[1].isdigit():
            counts[cells[0]] = int(cells[1])
    # clicks: the Pricing link, "Buy", "Subscribe" (the two before consent, "Buy" and
    # "Accept", are not sent); pages: the one shown at consent, then /pricing
    assert counts == {"$page": 2, "Element Clicked": 3, "Product Added": 1,
                      "Form Submitted": 1}, report
    assert "visitor@example.com" not in out
