"""kill -9 of the whole server while WebSocket clients stream, three times: each client
reconnects and resends what was not acknowledged (the same messages, the same message
ids), and every event is in the warehouse exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from aap.runner import ServerProcess, create_source, free_port

pytestmark = pytest.mark.slow  # servers killed and started again

CYCLES = 3
CLIENTS = 4
BATCH = 20
IN_FLIGHT = 8


class Client:
    """One stream client: its messages not yet acknowledged survive its connections."""

    def __init__(self, n: int, key: str) -> None:
        self.n, self.key = n, key
        self.seq = 0
        self.unacked: dict[int, str] = {}
        self.sent_ids: list[str] = []
        self.resent = 0

    def new_message(self) -> str:
        self.seq += 1
        ids = [f"ws-c{self.n}-s{self.seq}-e{i}" for i in range(BATCH)]
        self.sent_ids += ids
        msg = json.dumps({"seq": self.seq, "batch": [
            {"type": "track", "event": "Stream Crash", "userId": f"u{self.n}", "messageId": mid,
             "properties": {"i": i}} for i, mid in enumerate(ids)]})
        self.unacked[self.seq] = msg
        return msg

    async def session(self, url: str, *, more: bool) -> None:
        """Resend what is unacknowledged, then (``more``) keep sending new messages until
        the connection dies; else until everything is acknowledged."""
        ws_url = url.replace("http://", "ws://") + "/v1/stream"
        with contextlib.suppress(ConnectionClosed, OSError):
            async with connect(ws_url, subprotocols=["aap.v1", "key." + self.key],  # type: ignore[list-item]
                               open_timeout=60) as ws:
                assert "ready" in json.loads(await ws.recv())
                for _, msg in sorted(self.unacked.items()):
                    self.resent += 1
                    await ws.send(msg)

                async def send() -> None:
                    while more:
                        if len(self.unacked) < IN_FLIGHT:
                            await ws.send(self.new_message())
                        else:
                            await asyncio.sleep(0.002)

                sender = asyncio.create_task(send())
                try:
                    while more or self.unacked:
                        answer = json.loads(await asyncio.wait_for(ws.recv(), 120))
                        assert "ack" in answer, answer
                        assert answer["accepted"] == BATCH
                        self.unacked.pop(answer["ack"])
                finally:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)


async def _cycle(server: ServerProcess, clients: list[Client], rng: random.Random) -> None:
    sessions = [asyncio.create_task(c.session(server.url, more=True)) for c in clients]
    await asyncio.sleep(rng.uniform(0.5, 2.0))
    server.kill()  # SIGKILL to master and workers at once, mid-stream
    await asyncio.gather(*sessions)


def test_kill_9_mid_stream_then_resend_is_exactly_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = create_source(data, "stream-crash", "--basis", "legitimate_interest")
    rng = random.Random(4321)
    port = free_port()
    clients = [Client(n, key) for n in range(CLIENTS)]
    for _ in range(CYCLES):
        server = ServerProcess(data, port=port, workers=2).start()
        asyncio.run(_cycle(server, clients, rng))
    assert any(c.unacked for c in clients), "a kill should leave messages unacknowledged"

    server = ServerProcess(data, port=port, workers=2).start()
    try:
        async def drain() -> None:
            await asyncio.gather(*(c.session(server.url, more=False) for c in clients))

        asyncio.run(drain())
        assert not any(c.unacked for c in clients)  # all acknowledged in the end
        server.wait_processed()
        rows = server.sql("SELECT message_id, count(*) FROM events WHERE event = ?"
                          " GROUP BY message_id", ["Stream Crash"])
    finally:
        server.stop()
    sent = [mid for c in clients for mid in c.sent_ids]
    assert len(sent) > CYCLES * CLIENTS * BATCH  # the load was real
    counts = {str(mid): int(n) for mid, n in rows}  # type: ignore[call-overload]
    assert set(counts) == set(sent), "nothing lost"
    assert set(counts.values()) == {1}, "nothing doubled"
    assert sum(c.resent for c in clients) > 0
