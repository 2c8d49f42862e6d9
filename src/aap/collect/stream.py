"""WebSocket ingestion: ``GET /v1/stream`` (protocol ``aap.v1``, see README, Collector).

The write key comes in ``Sec-WebSocket-Protocol`` (``aap.v1, key.<write key>``) or in
the first message (``{"auth": "<write key>"}``), never in the URL. Each further message
is ``{"seq": n, "batch": [...]}`` (Segment-style events, as ``POST /v1/batch`` takes
them); it goes through the collector's one ingestion path
(:meth:`~aap.collect.app.Collector.accept_batch`: rate limit, validation, IP truncation,
consent gate, sealing, durable append), and the answer is
``{"ack": n, "accepted", "rejected"}`` once its events are durable, or
``{"nack": n, "code", "retry_after"}`` under back-pressure (what HTTP answers 503 or
429): the client sends it again later. A client resends, after a reconnect, what was
not acknowledged; the processor's dedup on ``messageId`` makes that exactly-once.

A message that breaks the protocol closes the connection with 1008 (policy) or 1009
(too big), with a reason; the acks of the messages being stored go out first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from aap import errors
from aap.api.openapi import Op, documented
from aap.asgi import Connection, Request, Response, WebSocket, shared_state_unavailable
from aap.collect.segment import Parsed, parse_batch
from aap.jsonlimits import check_depth
from aap.settings import StreamSettings
from aap.store.meta import unavailable

if TYPE_CHECKING:
    from aap.settings import Settings
    from aap.sources import Source

logger = logging.getLogger("aap.collect.stream")

PATH = "/v1/stream"
PROTOCOL = "aap.v1"
KEY_PREFIX = "key."
"""``Sec-WebSocket-Protocol: aap.v1, key.<write key>``: the key as a second subprotocol
(the one way a browser can send it in the handshake); the server answers ``aap.v1``."""

NORMAL, GOING_AWAY, POLICY, TOO_BIG, INTERNAL = 1000, 1001, 1008, 1009, 1011
"""Close codes (RFC 6455, 7.4.1)."""


class Head(msgspec.Struct):
    """What the protocol reads of a message before its batch (unknown fields skipped)."""

    seq: int | None = None
    auth: str | None = None
    pong: Any = None


_head = msgspec.json.Decoder(Head)


class Closing(Exception):
    """End the connection with this close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class Ingestion(Protocol):
    """What a stream needs of the collector (:class:`~aap.collect.app.Collector`): its
    write keys, origin check, back-pressure check and ingestion path."""

    settings: Settings

    def source(self, key: str) -> Source: ...

    def check_origin(self, req: Connection, source: Source) -> None: ...

    async def check_health(self) -> None: ...

    async def accept_batch(self, conn: Connection, source: Source, parsed: Parsed,
                           body: bytes | None) -> dict[str, Any]: ...


class Streams:
    """The WebSocket connections of one worker and their caps."""

    def __init__(self, collector: Ingestion, limits: StreamSettings) -> None:
        self.collector = collector
        self.limits = limits
        self.open = 0
        self.by_source: dict[str, int] = {}

    @documented(Op("WebSocket ingestion (protocol aap.v1, see README): a plain GET is"
                   " answered 426", errors=(426,), security=("writeKey", "")))
    async def http(self, req: Request) -> Response:
        raise errors.UpgradeRequired(
            f"{PATH} is a WebSocket endpoint: connect with the subprotocol {PROTOCOL}",
            code="upgrade_required")

    async def serve(self, ws: WebSocket) -> None:
        """One connection, from its handshake to its close."""
        if ws.path != PATH:  # the one WebSocket endpoint: no other stream opens
            await ws.deny(errors.no_endpoint(ws.path))
            return
        if ws.subprotocols and PROTOCOL not in ws.subprotocols:
            await ws.deny(errors.BadRequest(f"offer the subprotocol {PROTOCOL}",
                                            code="bad_subprotocol"))
            return
        if not await ws.accept(PROTOCOL if ws.subprotocols else None):
            return
        self.open += 1
        try:
            await _Stream(self, ws).run()
        finally:
            self.open -= 1

    def take(self, source: Source) -> None:
        """Count a connection of ``source``; Closing when the source has its cap."""
        n = self.by_source.get(source.id, 0)
        cap = self.limits.stream_connections_per_source
        if n >= cap:
            raise Closing(POLICY, f"source {source.name} has its {cap} connections"
                                  " (AAP_STREAM_CONNECTIONS_PER_SOURCE)")
        self.by_source[source.id] = n + 1

    def release(self, source: Source) -> None:
        n = self.by_source.get(source.id, 0) - 1
        if n > 0:
            self.by_source[source.id] = n
        else:
            self.by_source.pop(source.id, None)


class _Stream:
    """One connection: a reader task fills a one-message inbox (so that a client whose
    messages wait for a slot is not read further), the main loop checks each message and
    starts its store, at most ``stream_max_unacked`` at once."""

    def __init__(self, streams: Streams, ws: WebSocket) -> None:
        self.streams = streams
        self.collector = streams.collector
        self.limits = streams.limits
        self.ws = ws
        self.inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue(maxsize=1)
        self.slots = asyncio.Semaphore(self.limits.stream_max_unacked)
        self.storing: set[asyncio.Task[None]] = set()
        self.failure: Closing | None = None
        self.main: asyncio.Task[tuple[int, str]] | None = None
        self.key = ""
        self.source: Source | None = None

    async def run(self) -> None:
        reader = asyncio.create_task(self._read())
        self.main = asyncio.create_task(self._serve())
        code, reason = INTERNAL, "internal error"
        try:
            try:
                code, reason = await self.main
            except asyncio.CancelledError:
                if self.failure is None:
                    raise  # the server is stopping
                code, reason = self.failure.code, self.failure.reason
            except Closing as exc:
                code, reason = exc.code, exc.reason
            except Exception:
                logger.exception("stream failed")
            if self.storing:  # the acks of what is being stored go out before the close
                await asyncio.gather(*self.storing, return_exceptions=True)
            # granian sends no close frame while a receive is pending: end the reader first
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await self.ws.close(code, reason)
        finally:
            reader.cancel()
            self.main.cancel()
            if self.source is not None:
                self.streams.release(self.source)

    async def _read(self) -> None:
        while True:
            msg = await self.ws.receive()
            await self.inbox.put(msg)
            if msg is None:
                return

    async def _serve(self) -> tuple[int, str]:
        lim = self.limits
        if self.ws.scope.get("query_string"):
            raise Closing(POLICY, "the URL takes no query string: the write key goes in"
                                  " Sec-WebSocket-Protocol or the first message, never the URL")
        if self.streams.open > lim.stream_connections_per_worker:
            raise Closing(POLICY, f"this worker has its {lim.stream_connections_per_worker}"
                                  " connections (AAP_STREAM_CONNECTIONS_PER_WORKER)")
        key = next((p[len(KEY_PREFIX):] for p in self.ws.subprotocols
                    if p.startswith(KEY_PREFIX)), None)
        if key is None:
            raw = await self._next(lim.stream_idle_timeout_s)
            if raw is None:
                return NORMAL, ""
            key = self._head(raw)[1].auth
            if not key:
                raise Closing(POLICY, 'the first message must be {"auth": "<write key>"}'
                                      " (or send it in Sec-WebSocket-Protocol as key.<write key>)")
        self.source = self._authenticate(key)
        await self.ws.send_json({"ready": {
            "max_message_bytes": lim.stream_max_message_bytes,
            "max_events": lim.stream_max_events, "max_unacked": lim.stream_max_unacked,
            "ping_interval_s": lim.stream_ping_interval_s}})
        return await self._loop(self.source)

    def _authenticate(self, key: str) -> Source:
        try:
            source = self.collector.source(key)
            self.collector.check_origin(self.ws, source)
        except errors.AAPError as exc:
            raise Closing(POLICY, exc.message) from None
        self.streams.take(source)
        self.key = key
        return source

    async def _next(self, timeout: float) -> str | bytes | None:
        try:
            async with asyncio.timeout(timeout):
                return await self.inbox.get()
        except TimeoutError:
            raise Closing(NORMAL, f"idle: no message in {timeout:g} s") from None

    async def _loop(self, source: Source) -> tuple[int, str]:
        lim = self.limits
        loop = asyncio.get_running_loop()
        last_batch = last_message = loop.time()
        pinged_at: float | None = None
        pings = 0
        while True:
            busy = bool(self.storing)
            due = pinged_at + lim.stream_ping_interval_s if pinged_at is not None \
                else last_message + lim.stream_ping_interval_s
            if not busy:
                due = min(due, last_batch + lim.stream_idle_timeout_s)
            try:
                async with asyncio.timeout(max(0.0, due - loop.time())):
                    raw = await self.inbox.get()
            except TimeoutError:
                now = loop.time()
                if not self.storing and now >= last_batch + lim.stream_idle_timeout_s:
                    return NORMAL, f"idle: no batch in {lim.stream_idle_timeout_s:g} s"
                if pinged_at is not None:
                    if now >= pinged_at + lim.stream_ping_interval_s:
                        return GOING_AWAY, (f"no answer to ping in"
                                            f" {lim.stream_ping_interval_s:g} s")
                elif now >= last_message + lim.stream_ping_interval_s:
                    pings += 1
                    pinged_at = now
                    await self.ws.send_json({"ping": pings})
                continue
            if raw is None:
                return NORMAL, ""  # the client left
            last_message, pinged_at = loop.time(), None
            data, head = self._head(raw)
            if head.seq is None:
                if head.pong is not None:
                    continue
                raise Closing(POLICY, 'a message is {"seq": n, "batch": [...]}'
                                      ' (or {"pong": n})')
            parsed = self._parse(head.seq, data)
            last_batch = last_message
            await self.slots.acquire()
            task = asyncio.create_task(self._store(source, head.seq, parsed, data))
            self.storing.add(task)
            task.add_done_callback(self._stored)

    def _stored(self, task: asyncio.Task[None]) -> None:
        self.storing.discard(task)
        self.slots.release()

    def _head(self, raw: str | bytes) -> tuple[bytes, Head]:
        data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
        limit = self.limits.stream_max_message_bytes
        if len(data) > limit:
            raise Closing(TOO_BIG, f"message is {len(data)} bytes; the limit is {limit}"
                                   " (AAP_STREAM_MAX_MESSAGE_BYTES)")
        try:
            check_depth(data, "the message")
            return data, _head.decode(data)
        except errors.AAPError as exc:
            raise Closing(POLICY, exc.message) from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise Closing(POLICY, f"the message is not a JSON object of the protocol: {exc}"
                          ) from None

    def _parse(self, seq: int, data: bytes) -> Parsed:
        try:
            parsed = parse_batch(data, self.collector.settings.collector.max_event_bytes)
        except errors.AAPError as exc:
            raise Closing(POLICY, f"message {seq}: {exc.message}") from None
        n = len(parsed.messages) + len(parsed.rejected)
        limit = self.limits.stream_max_events
        if n > limit:
            raise Closing(TOO_BIG, f"message {seq} has {n} events; the limit is {limit}"
                                   " (AAP_STREAM_MAX_EVENTS)")
        if parsed.write_key not in (None, self.key):
            raise Closing(POLICY, f"message {seq}: its writeKey is not the connection's")
        return parsed

    async def _store(self, source: Source, seq: int, parsed: Parsed, data: bytes) -> None:
        """Store one message through the collector's ingestion path, then answer it."""
        answer: dict[str, Any]
        try:
            await self.collector.check_health()
            out = await self.collector.accept_batch(self.ws, source, parsed, data)
            answer = {"ack": seq, "accepted": out["accepted"],
                      "rejected": out.get("rejected", [])}
            if "not_stored" in out:
                answer["not_stored"] = out["not_stored"]
        except errors.TransientError as exc:
            answer = {"nack": seq, "code": exc.code, "retry_after": exc.retry_after}
        except errors.BadRequest as exc:
            if exc.code != "invalid_events":
                return self._fail(Closing(POLICY, f"message {seq}: {exc.message}"))
            answer = {"ack": seq, "accepted": 0, "rejected": exc.detail}
        except errors.AAPError as exc:
            return self._fail(Closing(POLICY, f"message {seq}: {exc.message}"))
        except Exception as exc:
            if not unavailable(exc):
                logger.exception("storing a stream message failed")
                return self._fail(Closing(INTERNAL, "internal error"))
            logger.warning("a stream message waits for the shared state: %s", errors.one_line(exc))
            gone = shared_state_unavailable()  # not stored: the client sends it again
            answer = {"nack": seq, "code": gone.code, "retry_after": gone.retry_after}
        await self.ws.send_json(answer)

    def _fail(self, closing: Closing) -> None:
        if self.failure is None:
            self.failure = closing
            if self.main is not None:
                self.main.cancel()
