"""AAP's browser SDK with ``transport: "websocket"`` in headless Chromium against the real
server (its source rests on consent): nothing before consent, batches over
``/v1/stream`` with the key never in the URL, the queue kept until the ack, withdrawal
stops the stream, and a refused stream falls back to HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Running, slow_fixture, start
from tests.e2e.browser import PageServer, wait_for
from tests.e2e.test_browser_aap_sdk import SHOP, Tab

STREAM_SHOP = SHOP.replace("flushInterval: {flush}", 'flushInterval: {flush}, transport: "websocket"')


class StreamTab(Tab):
    """A tab that also records its WebSockets and the frames they carry."""

    def __init__(self, browser: Any, running: Running, site: PageServer) -> None:
        self.sockets: list[dict[str, Any]] = []
        super().__init__(browser, running, site,
                         on_page=lambda page: page.on("websocket", self._socket))

    def _socket(self, ws: Any) -> None:
        seen: dict[str, Any] = {"url": ws.url, "sent": [], "received": [], "closed": False}
        ws.on("framesent", lambda payload: seen["sent"].append(json.loads(payload)))
        ws.on("framereceived", lambda payload: seen["received"].append(json.loads(payload)))
        ws.on("close", lambda _: seen.update(closed=True))
        self.sockets.append(seen)


def _site(running: Running) -> PageServer:
    return PageServer({"shop": lambda q: STREAM_SHOP.format(
        aap=running.url, key=json.dumps(running.key), aap_js=json.dumps(running.url),
        flush=200)})


@slow_fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = start(tmp_path_factory.mktemp("srv"), source_args=("--basis", "consent"))
    yield r
    r.server.stop()


def _events(running: Running, anon: str) -> list[str]:
    return sorted(e.event or e.type for e in running.stored() if e.anonymous_id == anon)


def test_batches_stream_after_consent_and_stop_at_withdrawal(browser: Any,
                                                             running: Running) -> None:
    site = _site(running)
    t = StreamTab(browser, running, site)
    try:
        t.js("aap.track('Never Sent'); aap.flush()")
        t.pause(500)
        assert t.sockets == [] and t.paths() == []  # no consent: no stream, no request

        t.js("aap.consent.set({analytics: true}); aap.track('Streamed', {n: 1}); aap.flush()")
        anon = t.anon()
        wait_for(lambda: "Streamed" in _events(running, anon) or t.pause() or False,
                 what="the streamed event")
        (sock,) = t.sockets
        assert sock["url"] == running.url.replace("http://", "ws://") + "/v1/stream"
        assert running.key not in sock["url"]  # the key is in the subprotocol, not the URL
        assert "/v1/batch" not in t.paths()  # every batch went over the stream
        assert t.paths() == ["/v1/consent"]
        wait_for(lambda: any("ack" in m for m in sock["received"]) or t.pause() or False,
                 what="an ack")
        batches = [m for m in sock["sent"] if "batch" in m]
        assert {m["seq"] for m in batches} == {m["ack"] for m in sock["received"] if "ack" in m}
        wait_for(lambda: "aap_q" not in t.storage()["local"] or t.pause() or False,
                 what="the acknowledged queue to leave localStorage")
        assert _events(running, anon) == ["Streamed", "page"]

        t.js("aap.consent.set({analytics: false}); aap.track('After Withdrawal'); aap.flush()")
        wait_for(lambda: sock["closed"] or t.pause() or False, what="the stream to close")
        t.pause(800)
        assert "After Withdrawal" not in _events(running, anon)
        assert len(t.sockets) == 1  # and no new stream
    finally:
        t.close()
        site.close()


def test_a_refused_stream_falls_back_to_http(browser: Any, tmp_path: Path) -> None:
    """One worker that takes one stream: a first tab holds it, the second tab's stream is
    closed with 1008 and its events go over HTTP instead, consent rules unchanged."""
    r = start(tmp_path, workers=1, source_args=("--basis", "consent"),
              env={"AAP_STREAM_CONNECTIONS_PER_WORKER": "1"})
    site = _site(r)
    holder = StreamTab(browser, r, site)
    t = StreamTab(browser, r, site)
    try:
        holder.js("aap.consent.set({analytics: true}); aap.track('Holder'); aap.flush()")
        wait_for(lambda: any("ack" in m for s in holder.sockets for m in s["received"])
                 or holder.pause() or False, what="the holder's stream")

        t.js("aap.track('Before Consent'); aap.flush()")
        t.pause(300)
        assert t.sockets == [] and t.paths() == []
        t.js("aap.consent.set({analytics: true}); aap.track('Fell Back'); aap.flush()")
        anon = t.anon()
        wait_for(lambda: "Fell Back" in _events(r, anon) or t.pause() or False,
                 what="the event over HTTP")
        assert t.sockets and not any("ack" in m for s in t.sockets for m in s["received"])
        assert "/v1/batch" in t.paths()
        assert _events(r, anon) == ["Fell Back", "page"]
    finally:
        t.close()
        holder.close()
        site.close()
        r.server.stop()
