"""``aap demo --page``: the real server on a temporary data dir, and a small shop page that
uses AAP's browser SDK (loaded from the server's ``/sdk.js``). Open it, accept or decline
analytics, click around, and watch what reaches the warehouse."""

from __future__ import annotations

import http.server
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from aap.lifecycle import STOP_GRACE_S, interrupt_on_sigterm
from aap.runner import ServerProcess, create_source

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>AAP demo shop</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }}
 nav a {{ margin-right: 1rem; }} button {{ font: inherit; padding: .3rem .8rem; }}
 #banner {{ border: 1px solid #888; padding: 1rem; margin: 1rem 0; background: #f6f6f6; }}
 #state {{ font-family: monospace; }}
</style></head>
<body>
<div id="banner">
  <p>This demo page measures how it is used only if you agree. No cookies; your choice is
  kept in this browser, and you can change it at any time.</p>
  <button id="accept" data-aap="accept">Accept analytics</button>
  <button id="decline" data-aap="decline">Decline</button>
  <button id="withdraw" data-aap="withdraw">Withdraw consent</button>
  <button id="settings" data-aap="settings">Privacy settings…</button>
  <p>Consent: <span id="state"></span></p>
</div>
<nav><a href="/" data-route="/">Home</a><a href="/pricing" data-route="/pricing">Pricing</a>
<a href="/docs" data-route="/docs">Docs</a></nav>
<h1 id="title">Home</h1>
<p><button id="buy" data-aap="buy">Buy the starter kit</button></p>
<form id="newsletter" name="newsletter" onsubmit="event.preventDefault(); this.reset()">
  <label>Email <input name="email" type="email" autocomplete="off"></label>
  <button type="submit">Subscribe</button>
</form>
<script src="{aap}/sdk.js"></script>
<script>
  aap.init({key}, {{ host: {aap_js}, source: {source}, flushInterval: 1000,
                     policyVersion: "demo-1" }});
  const show = () => document.getElementById("state").textContent = JSON.stringify(aap.consent.get());
  show();
  document.getElementById("accept").onclick = () => {{ aap.consent.set({{ analytics: true }}); show(); }};
  document.getElementById("decline").onclick = () => {{ aap.consent.set({{ analytics: false }}); show(); }};
  document.getElementById("withdraw").onclick = () => {{ aap.consent.set({{ analytics: false }}); show(); }};
  // AAP's own consent banner (granular purposes, accept and reject of equal weight)
  document.getElementById("settings").onclick = () => aap.consent.show().then(show);
  document.getElementById("buy").onclick = () =>
    aap.track("Product Added", {{ product_id: "sku-1", price: 19 }});
  for (const a of document.querySelectorAll("a[data-route]")) a.onclick = (e) => {{
    e.preventDefault();
    history.pushState({{}}, "", a.dataset.route);
    document.getElementById("title").textContent = a.textContent;
    document.title = a.textContent + " - AAP demo shop";
  }};
</script>
</body></html>
"""


SOURCE = "demo-page"


def page_html(aap_url: str, key: str) -> str:
    return PAGE.format(aap=aap_url, key=json.dumps(key), aap_js=json.dumps(aap_url),
                       source=json.dumps(SOURCE))


class DemoSite:
    """Serves the demo page at every path (it is a single-page app)."""

    def __init__(self, html: str, port: int = 0, host: str = "127.0.0.1") -> None:
        body = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/favicon.ico":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


EVENTS_SQL = ("SELECT event, count(*), count(DISTINCT person_id) FROM events"
              " GROUP BY event ORDER BY 2 DESC, 1")


REPORT_S = 3.0
"""After Ctrl-C, how long the report may take before the demo stops without it (the
whole stop stays within 10 s: this, then at most ``STOP_GRACE_S + 1`` for the server)."""


Rows = list[list[object]]


def _rows(server: ServerProcess, timeout: float) -> Rows | None:
    """The report's rows once the processor has caught up, or ``None`` if the core has
    not answered within ``timeout`` (a loaded machine): the demo goes on."""
    try:
        server.wait_processed(timeout=timeout)
        return server.sql(EVENTS_SQL, timeout=timeout)
    except (TimeoutError, httpx.HTTPError, RuntimeError):
        return None


def _report(rows: Rows, console: Console, note: str = "") -> None:
    table = Table(title="What the page sent (the warehouse)" + note)
    for col in ("event", "events", "persons"):
        table.add_column(col)
    for name, count, persons in rows:
        table.add_row(str(name), str(count), str(persons))
    console.print(table)


def _watch(server: ServerProcess, console: Console, deadline: float | None) -> Rows:
    """Counts the events in the warehouse every second, until Ctrl-C or ``deadline``;
    returns the last rows counted."""
    rows: Rows = []
    seen = -1
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(1.0)
            got = _rows(server, timeout=30)
            n = sum(int(r[1]) for r in got) if got is not None else seen  # type: ignore[call-overload]
            if got is not None and n != seen:
                rows, seen = got, n
                console.print(f"events in the warehouse: {seen}")
    except KeyboardInterrupt:
        pass
    return rows


def _final_report(server: ServerProcess, rows: Rows, console: Console) -> None:
    try:
        final = _rows(server, REPORT_S)
    except KeyboardInterrupt:  # a second Ctrl-C: what was last counted
        final = None
    if final is not None:
        _report(final, console)
    else:  # a busy machine: the core did not answer in time
        _report(rows, console, f" as last counted: the core did not answer"
                               f" within {REPORT_S:.0f} s")


def run_page_demo(page_port: int = 8080, duration: float | None = None,
                  keep: bool = False) -> int:
    """Until Ctrl-C (or SIGTERM, or ``duration``); then the report, if the warehouse
    answers within :data:`REPORT_S` seconds, and the server is stopped."""
    interrupt_on_sigterm()
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="aap-demo-page-"))
    data = tmp / "data"
    try:
        key = create_source(data, SOURCE)
        with ServerProcess(data, workers=1) as server:
            site = DemoSite(page_html(server.url, key), page_port)
            try:
                console.print(f"[bold]AAP demo page[/bold]: open [cyan]{site.url}[/cyan] in a"
                              f" browser (AAP at {server.url}, data dir {data})")
                console.print("accept analytics, click around, then press Ctrl-C to see what"
                              " arrived")
                deadline = None if duration is None else time.monotonic() + duration
                _final_report(server, _watch(server, console, deadline), console)
            finally:
                site.close()
                console.print(f"stopping the server (at most {STOP_GRACE_S + 1:.0f} s)")
        return 0
    finally:
        if keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
