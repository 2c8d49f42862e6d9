"""``GET /v1/stream``: WebSocket ingestion with the ``websockets`` client against a real
server. Every message goes through the HTTP batch path: the write key (never in the URL),
limits, consent gate, IP truncation and sealing, and an ack only once durable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from aap.runner import create_source
from tests.conftest import Running, slow_fixture, start, unsealed_log
from tests.privacy.test_ip_canary import forms, scan

pytestmark = pytest.mark.slow  # a server end to end

ORIGIN = "https://shop.example"


def ws_url(running: Running, query: str = "") -> str:
    return running.url.replace("http://", "ws://") + "/v1/stream" + query


def track(mid: str, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Streamed", "userId": "u-stream", "messageId": mid,
            **extra}


@asynccontextmanager
async def stream(running: Running, key: str | None = None, *, first_message: bool = False,
                 query: str = "", origin: str | None = None,
                 **kw: Any) -> AsyncIterator[ClientConnection]:
    """A connection authenticated with ``key`` (the running source's by default): in
    Sec-WebSocket-Protocol, or in the first message."""
    key = key or running.key
    protocols = ["aap.v1"] if first_message else ["aap.v1", "key." + key]
    async with connect(ws_url(running, query), subprotocols=protocols,  # type: ignore[list-item]
                       origin=origin, open_timeout=60, **kw) as ws:  # type: ignore[arg-type]
        if first_message:
            await ws.send(json.dumps({"auth": key}))
        yield ws


async def answer(ws: ClientConnection) -> dict[str, Any]:
    """The next answer of the server, pings answered on the way."""
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if "ping" in msg:
            await ws.send(json.dumps({"pong": msg["ping"]}))
            continue
        return msg  # type: ignore[no-any-return]


async def closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the server closes; its close code and reason."""
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 60)
    return ws.close_code, ws.close_reason


def stored_ids(running: Running) -> list[str]:
    return [e.message_id for e in running.stored()]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@slow_fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("stream")
    r = start(tmp, workers=1, env={"AAP_STREAM_MAX_MESSAGE_BYTES": "65536",
                                   "AAP_STREAM_MAX_EVENTS": "50",
                                   "AAP_TRUSTED_PROXIES": "127.0.0.1/32"})
    yield r
    r.server.stop()


@slow_fixture(scope="module")
def keys(srv: Running) -> dict[str, str]:
    """Write keys of more sources of the same server, by what sets them apart."""
    data = srv.data_dir
    return {"limited": create_source(data, "limited", "--basis", "legitimate_interest",
                                     "--rate-limit", "5"),
            "consent": create_source(data, "needs-consent"),
            "origin": create_source(data, "shop", "--basis", "legitimate_interest",
                                    "--origin", ORIGIN)}


async def ready_when_room(running: Running, key: str) -> tuple[dict[str, Any], Any]:
    """A connection of ``key`` once the server has released the ones closed before (a
    close reaches the client a moment before the server's count goes down)."""
    for _ in range(200):
        cm = stream(running, key)
        ws = await cm.__aenter__()
        try:
            return await answer(ws), cm
        except ConnectionClosed:
            await cm.__aexit__(None, None, None)
            await asyncio.sleep(0.05)
    raise AssertionError("the closed connections were never released")


# -- auth and acks --


@pytest.mark.parametrize("first_message", [False, True], ids=["subprotocol", "first-message"])
def test_ack_arrives_once_the_events_are_durable(srv: Running, first_message: bool) -> None:
    tag = f"durable-{first_message}"

    async def go() -> tuple[dict[str, Any], dict[str, Any], list[str], str | None]:
        async with stream(srv, first_message=first_message) as ws:
            ready = await answer(ws)
            await ws.send(json.dumps({"seq": 7, "batch": [track(f"{tag}-{i}") for i in range(3)]}))
            ack = await answer(ws)
            # read the log the moment the ack is in: the events must already be there
            return ready, ack, stored_ids(srv), ws.subprotocol

    ready, ack, ids, protocol = run(go())
    assert protocol == "aap.v1"
    assert ready["ready"]["max_events"] == 50
    assert ack == {"ack": 7, "accepted": 3, "rejected": []}
    assert {f"{tag}-{i}" for i in range(3)} <= set(ids)


def test_invalid_events_are_acked_with_their_reasons(srv: Running) -> None:
    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with stream(srv) as ws:
            await answer(ws)
            await ws.send(json.dumps({"seq": 1, "batch": [{"type": "track", "userId": "u"}]}))
            first = await answer(ws)
            await ws.send(json.dumps({"seq": 2, "batch": [track("invalid-then-ok"),
                                                          {"type": "nope", "userId": "u"}]}))
            return first, await answer(ws)  # the connection stays open after a rejection

    first, second = run(go())
    assert first["ack"] == 1 and first["accepted"] == 0
    assert first["rejected"][0]["reason"] == "missing_event"
    assert second["accepted"] == 1 and second["rejected"][0]["index"] == 1
    assert "invalid-then-ok" in stored_ids(srv)


@pytest.mark.parametrize("query", ["?writeKey=KEY", "?key=KEY", "?x=1"])
def test_a_key_in_the_url_is_refused(srv: Running, query: str) -> None:
    async def go() -> tuple[int | None, str | None]:
        async with connect(ws_url(srv, query.replace("KEY", srv.key)), open_timeout=60) as ws:
            return await closed(ws)  # at once: before any message

    code, reason = run(go())
    assert code == 1008 and "never the URL" in (reason or "")


@pytest.mark.parametrize(("first", "fragment"), [
    ({"auth": "wk_no_such_key"}, "unknown write key"),
    ({"seq": 1, "batch": []}, '{"auth"'),
])
def test_a_missing_or_unknown_key_closes_1008(srv: Running, first: dict[str, Any],
                                              fragment: str) -> None:
    async def go() -> tuple[int | None, str | None]:
        async with connect(ws_url(srv), open_timeout=60) as ws:
            await ws.send(json.dumps(first))
            return await closed(ws)

    code, reason = run(go())
    assert code == 1008 and fragment in (reason or "")


def test_origin_of_the_source_applies(srv: Running, keys: dict[str, str]) -> None:
    key = keys["origin"]

    async def go(origin: str) -> dict[str, Any] | tuple[int | None, str | None]:
        async with stream(srv, key, origin=origin) as ws:
            try:
                return await answer(ws)
            except ConnectionClosed:
                return ws.close_code, ws.close_reason

    assert "ready" in run(go(ORIGIN))  # type: ignore[operator]
    code, reason = run(go("https://evil.example"))
    assert code == 1008 and "https://evil.example" in (reason or "")


# -- bad frames and limits --


@pytest.mark.parametrize(("frame", "code", "fragment"), [
    ("not json", 1008, "not a JSON object"),
    (json.dumps({"seq": 2, "batch": "nope"}), 1008, "message 2"),
    (json.dumps({"batch": [track("no-seq")]}), 1008, '{"seq": n'),
    (json.dumps({"seq": 2, "batch": [track(f"many-{i}") for i in range(51)]}), 1009,
     "51 events; the limit is 50"),
    (json.dumps({"seq": 2, "batch": [track("big", properties={"x": "y" * 70_000})]}), 1009,
     "the limit is 65536"),
    ("[" * 10_000, 1008, "the message is nested 10000 levels deep"),
    (json.dumps({"seq": 2, "batch": [track("other-key")], "writeKey": "wk_other"}), 1008,
     "writeKey"),
], ids=["not-json", "batch-not-array", "no-seq", "too-many-events", "too-many-bytes",
        "too-deep", "other-write-key"])
def test_bad_frames_close_with_a_code_and_reason_after_the_acks_due(
        srv: Running, frame: str, code: int, fragment: str) -> None:
    mid = f"before-bad-{code}-{fragment[:6]}"

    async def go() -> tuple[dict[str, Any], int | None, str | None]:
        async with stream(srv) as ws:
            await answer(ws)
            await ws.send(json.dumps({"seq": 1, "batch": [track(mid)]}))
            await ws.send(frame)  # right behind it: the ack of seq 1 still comes first
            ack = await answer(ws)
            return (ack, *await closed(ws))

    ack, got, reason = run(go())
    assert ack["ack"] == 1 and ack["accepted"] == 1
    assert got == code and fragment in (reason or ""), reason
    assert mid in stored_ids(srv)


def test_rate_limit_answers_nack_with_retry_after(srv: Running, keys: dict[str, str]) -> None:
    key = keys["limited"]  # 5 events/s

    async def go() -> list[dict[str, Any]]:
        async with stream(srv, key) as ws:
            await answer(ws)
            await ws.send(json.dumps({"seq": 1, "batch": [track(f"rl-a{i}") for i in range(5)]}))
            await ws.send(json.dumps({"seq": 2, "batch": [track(f"rl-b{i}") for i in range(5)]}))
            return [await answer(ws), await answer(ws)]

    answers = sorted(run(go()), key=lambda a: a.get("ack", a.get("nack")))
    assert answers[0] == {"ack": 1, "accepted": 5, "rejected": []}
    assert answers[1] == {"nack": 2, "code": "rate_limited", "retry_after": 1}
    ids = stored_ids(srv)
    assert "rl-a0" in ids and not any(i.startswith("rl-b") for i in ids)


def test_other_paths_open_no_stream(srv: Running) -> None:
    """The one WebSocket endpoint is /v1/stream: the dashboard's live view and any other
    path refuse the handshake (no second, unauthenticated stream)."""
    for path in ("/api/v1/live", "/v1/streams", "/"):
        async def go(path: str = path) -> None:
            async with connect(srv.url.replace("http://", "ws://") + path, open_timeout=60):
                pass

        with pytest.raises(InvalidStatus) as info:
            run(go())
        assert info.value.response.status_code == 404
        assert json.loads(info.value.response.body)["code"] == "not_found"
    r = httpx.get(srv.url + "/v1/stream")
    assert r.status_code == 426 and r.json()["code"] == "upgrade_required"


# -- the one ingestion path: consent gate, IP truncation, sealing --


def test_consent_gate_applies_to_streamed_events(srv: Running, keys: dict[str, str]) -> None:
    key = keys["consent"]  # analytics needs consent: none was given

    async def go() -> dict[str, Any]:
        async with stream(srv, key) as ws:
            await answer(ws)
            await ws.send(json.dumps({"seq": 1, "batch": [track("no-consent-1")]}))
            return await answer(ws)

    ack = run(go())
    assert ack["accepted"] == 0 and ack["not_stored"] == {"no_lawful_basis": 1}
    assert "no-consent-1" not in stored_ids(srv)


def test_ips_truncated_and_personal_data_sealed(srv: Running) -> None:
    ip, ctx_ip, email = "203.0.113.77", "198.51.100.213", "canary.stream@example.com"

    async def go() -> dict[str, Any]:
        async with stream(srv, additional_headers={"X-Forwarded-For": ip}) as ws:
            await answer(ws)
            await ws.send(json.dumps({"seq": 1, "batch": [
                track("canary-1"),
                track("canary-2", context={"ip": ctx_ip}),
                {"type": "identify", "userId": "u-stream", "messageId": "canary-3",
                 "traits": {"email": email}}]}))
            return await answer(ws)

    assert run(go())["accepted"] == 3
    by_id = {e.message_id: e for e in srv.stored()}
    assert by_id["canary-1"].ip == "203.0.113.0" and by_id["canary-2"].ip == "198.51.100.0"
    assert by_id["canary-3"].traits["email"] == email  # sealed on disk, unsealed here
    assert scan(srv.data_dir, b"canary-3"), "the scan must see stored events"
    assert scan(srv.data_dir, email.encode()) == []
    for form in forms(ip) + forms(ctx_ip):
        assert scan(srv.data_dir, form) == [], form


# -- a slow consumer --


def test_a_client_reading_no_ack_holds_up_no_one_and_loses_nothing(srv: Running) -> None:
    n = 60

    async def go() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with stream(srv, max_queue=1) as slow:
            await answer(slow)
            for seq in range(n):  # more than stream_max_unacked, and no ack read meanwhile
                await slow.send(json.dumps({"seq": seq, "batch": [track(f"slow-{seq}")]}))
            async with stream(srv) as other:
                await answer(other)
                await other.send(json.dumps({"seq": 1, "batch": [track("not-held-up")]}))
                other_ack = await answer(other)
            acks = [await answer(slow) for _ in range(n)]
        return other_ack, acks

    other_ack, acks = run(go())
    assert other_ack["ack"] == 1 and other_ack["accepted"] == 1
    assert sorted(a["ack"] for a in acks) == list(range(n))
    ids = stored_ids(srv)
    assert all(ids.count(f"slow-{seq}") == 1 for seq in range(n))


# -- caps, timeouts and back-pressure: servers of their own --


def test_connection_caps_per_source_and_per_worker(tmp_path: Path) -> None:
    r = start(tmp_path, workers=1, env={"AAP_STREAM_CONNECTIONS_PER_SOURCE": "2",
                                        "AAP_STREAM_CONNECTIONS_PER_WORKER": "3"})
    other = create_source(r.data_dir, "other", "--basis", "legitimate_interest")
    try:
        async def go() -> list[Any]:
            out: list[Any] = []
            async with stream(r) as a, stream(r) as b:
                out += [await answer(a), await answer(b)]
                async with stream(r) as c:  # a third of the same source
                    out.append(await closed(c))
                d_ready, d_cm = await ready_when_room(r, other)  # the worker's third
                out.append(d_ready)
                async with stream(r, other) as e:  # the worker's fourth
                    out.append(await closed(e))
                await d_cm.__aexit__(None, None, None)
            f_ready, f_cm = await ready_when_room(r, r.key)  # all released again
            g_ready, g_cm = await ready_when_room(r, r.key)
            out.append([f_ready, g_ready])
            await f_cm.__aexit__(None, None, None)
            await g_cm.__aexit__(None, None, None)
            return out

        a, b, c, d, e, again = run(go())
        assert "ready" in a and "ready" in b and "ready" in d
        assert c[0] == 1008 and "has its 2 connections" in c[1]
        assert e[0] == 1008 and "this worker has its 3 connections" in e[1]
        assert all("ready" in x for x in again)
    finally:
        r.server.stop()


def test_ping_idle_and_back_pressure(tmp_path: Path) -> None:
    # no disk is ever free enough: every batch meets back-pressure (HTTP would answer 503)
    r = start(tmp_path, workers=1, healthy=False,
              env={"AAP_STREAM_IDLE_TIMEOUT_S": "3", "AAP_STREAM_PING_INTERVAL_S": "1",
                   "AAP_MIN_FREE_DISK_MB": str(10**9)})
    try:
        async def go() -> list[Any]:
            out: list[Any] = []
            async with stream(r) as ws:  # back-pressure: nack, nothing stored
                await answer(ws)
                await ws.send(json.dumps({"seq": 3, "batch": [track("pressed")]}))
                out.append(await answer(ws))
            async with stream(r) as ws:  # pings not answered
                out.append(json.loads(await ws.recv()))  # ready
                out.append(json.loads(await ws.recv()))  # the ping
                out.append(await closed(ws))
            async with stream(r) as ws:  # pings answered, but no batch
                await answer(ws)
                with pytest.raises(ConnectionClosed):
                    await answer(ws)
                out.append((ws.close_code, ws.close_reason))
            async with connect(ws_url(r), open_timeout=60) as ws:  # never authenticates
                out.append(await closed(ws))
            return out

        nack, ready, ping, unanswered, idle, no_auth = run(go())
        assert nack == {"nack": 3, "code": "backpressure", "retry_after": 1}
        assert "ready" in ready and ping == {"ping": 1}
        assert unanswered == (1001, "no answer to ping in 1 s")
        assert idle == (1000, "idle: no batch in 3 s")
        assert no_auth == (1000, "idle: no message in 3 s")
        assert "pressed" not in [e.message_id for e in unsealed_log(r.data_dir)]
    finally:
        r.server.stop()
