"""Headless Chromium (Debian's package, driven by Playwright with ``executable_path``) and
a small web server on 127.0.0.1 for the test pages, on another port than the collector
so every SDK call is a real cross-origin request."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from aap.runner import ServerProcess
from tests.e2e.warehouse import Row, persons_rows

CHROMIUM = Path("/usr/bin/chromium")
SDK_JS = Path(__file__).parents[2] / "sdk" / "js"
ASSETS = {
    "/posthog.js": SDK_JS / "node_modules" / "posthog-js" / "dist" / "array.full.js",
    "/analytics-next.js": SDK_JS / "build" / "analytics-next.js",
}
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


class PageServer:
    """Serves ``pages[name](query)`` as HTML at ``/name`` (any sub-path: single-page apps),
    and the vendors' bundles at :data:`ASSETS`."""

    def __init__(self, pages: dict[str, Callable[[dict[str, str]], str]]) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path in ASSETS:
                    body, ctype = ASSETS[url.path].read_bytes(), "application/javascript"
                else:
                    name = url.path.strip("/").split("/")[0]
                    if name not in server.pages:
                        self.send_error(404)
                        return
                    q = {k: v[0] for k, v in parse_qs(url.query).items()}
                    body, ctype = server.pages[name](q).encode(), "text/html; charset=utf-8"
                self.send_response(200)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: Any) -> None:
                pass

        self.pages = pages
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_rows(server: ServerProcess, anchor: str, check: Callable[[list[Row]], bool],
              timeout: float = 120.0) -> list[Row]:
    """The rows of the person who has event ``anchor``, once ``check`` holds for them."""
    deadline = time.monotonic() + timeout
    rows: list[Row] = []
    while time.monotonic() < deadline:
        server.wait_processed()
        rows = persons_rows(server, [anchor])
        if rows and check(rows):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"the warehouse never held what was expected: {rows}")


def wait_for(cond: Callable[[], bool], timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
