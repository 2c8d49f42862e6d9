"""The core's clients (:mod:`aap.core.client`) over a real Unix socket.

A server that closes a kept-alive connection as the next request goes out on it: a GET is
sent again on a fresh connection and answered; a POST is not sent twice. And the core's
uvicorn keeps idle connections longer than its clients keep them, so it does not close
one a client is about to reuse (httpx and uvicorn both default to 5 s: a request could
meet the close, seen once as a 503 ``core_unavailable`` through the proxy)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aap.core.client import AsyncCoreClient, CoreClient, core_socket
from aap.core.supervisor import core_config

OK = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n"
      b"\r\n{\"ok\":true}")


class DroppingCore:
    """A Unix-socket HTTP server whose odd-numbered connections (the 1st, 3rd…) answer
    their first request and close without answering the second; the others answer each
    request. It records (connection number, request line) for every request it read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[tuple[int, str]] = []
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_unix_server(self._serve, path=str(self.path)))
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                length = next((int(v) for k, _, v in (x.partition(":") for x in lines)
                               if k.lower() == "content-length"), 0)
                if length:
                    await reader.readexactly(length)
                self.seen.append((number, lines[0]))
                if number % 2 and answered == 1:
                    break
                writer.write(OK)
                await writer.drain()
                answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    def __enter__(self) -> DroppingCore:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    core_socket(tmp_path).parent.mkdir(parents=True)
    yield tmp_path


def test_a_get_the_core_dropped_is_sent_again_on_a_fresh_connection(data_dir: Path) -> None:
    with DroppingCore(core_socket(data_dir)) as core, \
            CoreClient(data_dir, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/healthz")
        assert r.status_code == 200 and r.json() == {"ok": True}
        assert core.seen == [(1, "GET /healthz HTTP/1.1"), (1, "GET /healthz HTTP/1.1"),
                             (2, "GET /healthz HTTP/1.1")]


def test_a_post_the_core_dropped_is_not_sent_twice(data_dir: Path) -> None:
    with DroppingCore(core_socket(data_dir)) as core, \
            CoreClient(data_dir, timeout=10) as client:
        assert client.post("/internal/sql", json={"sql": "select 1"}).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/internal/sql", json={"sql": "select 1"})
        assert [n for n, _ in core.seen] == [1, 1]


def test_the_async_client_sends_a_dropped_get_again_and_not_a_post(data_dir: Path) -> None:
    async def run() -> list[int]:
        client = AsyncCoreClient(data_dir, timeout=10)
        try:
            statuses = [(await client.request("GET", "/internal/api/v1/insights")).status_code
                        for _ in range(2)]
            await client.aclose()
            client = AsyncCoreClient(data_dir, timeout=10)
            statuses.append((await client.request("POST", "/internal/api/v1/query",
                                                  content=b"{}")).status_code)
            with pytest.raises(httpx.RemoteProtocolError):
                await client.request("POST", "/internal/api/v1/query", content=b"{}")
            return statuses
        finally:
            await client.aclose()

    with DroppingCore(core_socket(data_dir)) as core:
        assert asyncio.run(run()) == [200, 200, 200]
        # the GET went out again on connection 2; connection 3 answered the first POST
        # and dropped the second, which was not sent again
        assert core.seen == [(1, "GET /internal/api/v1/insights HTTP/1.1"),
                             (1, "GET /internal/api/v1/insights HTTP/1.1"),
                             (2, "GET /internal/api/v1/insights HTTP/1.1"),
                             (3, "POST /internal/api/v1/query HTTP/1.1"),
                             (3, "POST /internal/api/v1/query HTTP/1.1")]


def test_the_core_keeps_idle_connections_longer_than_its_clients(data_dir: Path) -> None:
    config = core_config(lambda scope, receive, send: None)

    async def expiry() -> float:
        client = AsyncCoreClient(data_dir, timeout=10)
        pool = client._client()._transport._pool  # type: ignore[attr-defined]
        await client.aclose()
        return float(pool._keepalive_expiry)

    sync = CoreClient(data_dir, timeout=10)
    sync_expiry = sync.http._transport._pool._keepalive_expiry  # type: ignore[attr-defined]
    sync.close()
    clients = max(sync_expiry, asyncio.run(expiry()))
    assert config.timeout_keep_alive >= clients + 10, (config.timeout_keep_alive, clients)
