"""`aap demo --page` serves a page that uses our SDK: in Chromium, accept analytics, click
around, and the demo's report lists what the page sent."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import httpx

from aap.runner import free_port
from tests.e2e.browser import wait_for


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_demo_page_sends_what_the_visitor_does(browser: Any) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "aap", "demo", "--page", "--page-port",
                             str(port), "--duration", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(lambda: _up(url) or proc.poll() is not None, timeout=60, what="the demo page")
        assert proc.poll() is None
        ctx = browser.new_context()
        page = ctx.new_page()
        page.goto(url)
        page.click("#buy")  # before consent: not sent
        page.click("#accept")
        assert "analytics" in page.inner_text("#state")
        page.click("a[data-route='/pricing']")
        page.click("#buy")
        page.fill("input[name=email]", "visitor@example.com")
        page.click("#newsletter button")
        page.wait_for_timeout(2500)  # the SDK flushes every second
        ctx.close()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
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
