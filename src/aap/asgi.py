"""What both processes' ASGI apps share (the collector's and the core's): the ASGI
types, reading a body (with its size limit and deadline), the request and the response
as handlers see them, the house error body (:func:`error_response`), sending an
answer, the lifespan protocol, and a WebSocket connection (:class:`WebSocket`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from aap import errors
from aap.errors import BadRequest, PayloadTooLarge
from aap.jsonlimits import too_deep
from aap.store.meta import SharedStateUnavailable, unavailable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_json = msgspec.json.Encoder()
Handler = Callable[["Request"], Awaitable["Response"]]
"""A route of the collector: the answer to a request, or it raises."""


def content_length(value: str | None) -> int | None:
    """The declared body size, or ``None`` when absent or not a plain decimal number
    (``²`` and 5,000-digit values are digits to ``str.isdigit``, not to ``int``)."""
    if value and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


async def read_raw(receive: Receive, content_length: int | None, limit: int) -> bytes:
    """The body as sent. Over ``limit`` bytes → 413 (the rest of the body is discarded)."""
    if content_length is not None and content_length > limit:
        await _discard(receive, limit * 4)
        raise PayloadTooLarge(f"request body is {content_length} bytes; the limit is {limit}")
    parts: list[bytes] = []
    size = 0
    more = True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise BadRequest("client disconnected before the body was complete", code="disconnected")
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            await _discard(receive, limit * 4)
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        if chunk:
            parts.append(chunk)
        more = msg.get("more_body", False)
    return b"".join(parts)


async def _discard(receive: Receive, budget: int) -> None:
    """Read and drop what the client is still sending, so it can read our answer."""
    seen = 0
    while seen <= budget:
        msg = await receive()
        if msg["type"] != "http.request":
            return
        seen += len(msg.get("body", b""))
        if not msg.get("more_body", False):
            return


async def read_body(receive: Receive) -> bytes:
    """The whole body, with no limit: for the core's socket, whose callers are local
    (the collector's workers bound the public bodies before they pass them on)."""
    parts: list[bytes] = []
    more = True
    while more:
        msg = await receive()
        parts.append(msg.get("body", b""))
        more = msg.get("more_body", False)
    return b"".join(parts)


def timed(receive: Receive, seconds: float) -> Receive:
    """``receive`` with a deadline for the whole body: a client that sends it too slowly
    (slowloris) is answered 408 rather than held forever."""
    deadline = asyncio.get_running_loop().time() + seconds

    async def receive_by_deadline() -> dict[str, Any]:
        try:
            async with asyncio.timeout_at(deadline):
                return await receive()
        except TimeoutError:
            raise errors.RequestTimeout(
                f"the request body did not arrive within {seconds:g} s",
                code="body_timeout") from None

    return receive_by_deadline


class Connection:
    """What an HTTP request and a WebSocket connection share: the scope, the path, the
    headers (lower-case names) and the peer's address."""

    __slots__ = ("cors", "headers", "path", "scope")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.path: str = scope["path"]
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                        for k, v in scope["headers"]}
        self.cors = True

    @property
    def peer(self) -> str | None:
        client = self.scope.get("client")
        return client[0] if client else None


class Request(Connection):
    __slots__ = ("method", "receive")

    def __init__(self, scope: Scope, receive: Receive, body_timeout_s: float = 30.0) -> None:
        super().__init__(scope)
        self.receive = timed(receive, body_timeout_s)
        self.method: str = scope["method"]


CLOSE_REASON_BYTES = 123
"""Longest close reason a WebSocket close frame carries (RFC 6455, 5.5.1)."""
CLOSE_WAIT_S = 5.0
"""How long a server's close waits for the client's."""


class WebSocket(Connection):
    """One WebSocket connection (an ASGI ``websocket`` scope): accept it or deny it,
    receive messages, send JSON, close it with a code and a reason."""

    __slots__ = ("_lock", "_receive", "_send", "accepted", "closed", "subprotocols")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        super().__init__(scope)
        self._receive, self._send = receive, send
        self._lock = asyncio.Lock()
        self.subprotocols: list[str] = list(scope.get("subprotocols") or [])
        self.accepted = False
        self.closed = False

    async def accept(self, subprotocol: str | None = None) -> bool:
        """Complete the handshake; False when the client left before it."""
        msg = await self._receive()
        if msg["type"] != "websocket.connect":
            self.closed = True
            return False
        await self._send({"type": "websocket.accept", "subprotocol": subprotocol})
        self.accepted = True
        return True

    async def deny(self, exc: errors.AAPError) -> None:
        """Refuse the handshake: the house error body with its status where the server
        can answer one (the ``websocket.http.response`` extension), else a plain 403."""
        msg = await self._receive()
        self.closed = True
        if msg["type"] != "websocket.connect":
            return
        if "websocket.http.response" in self.scope.get("extensions", {}):
            resp = error_response(exc)
            await self._send({"type": "websocket.http.response.start", "status": resp.status,
                              "headers": [(k.encode(), v.encode()) for k, v in resp.headers]})
            await self._send({"type": "websocket.http.response.body", "body": resp.body})
        else:
            await self._send({"type": "websocket.close", "code": 1008})

    async def receive(self) -> str | bytes | None:
        """The next message (text or binary), or None once the client is gone."""
        while not self.closed:
            msg = await self._receive()
            if msg["type"] == "websocket.receive":
                text = msg.get("text")
                return text if text is not None else msg.get("bytes") or b""
            if msg["type"] == "websocket.disconnect":
                self.closed = True
        return None

    async def send_json(self, data: Any) -> bool:
        """Send one text message; False when the connection is gone."""
        async with self._lock:
            if self.closed:
                return False
            try:
                await self._send({"type": "websocket.send", "text": _json.encode(data).decode()})
            except Exception:  # the client went away (servers raise their own types)
                self.closed = True
                return False
            return True

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code`` and ``reason`` (cut to what a close frame holds)."""
        async with self._lock:
            if self.closed:
                return
            self.closed = True
            cut = reason.encode()[:CLOSE_REASON_BYTES].decode("utf-8", "ignore")
            try:
                await self._send({"type": "websocket.close", "code": code, "reason": cut})
                # the closing handshake: wait for the client's close (what it sent
                # meanwhile is dropped), so that the TCP close resets nothing unread
                async with asyncio.timeout(CLOSE_WAIT_S):
                    while (await self._receive())["type"] != "websocket.disconnect":
                        pass
            except Exception:  # already gone, or no answer in time
                pass


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, content_type: str = "application/json",
                 headers: list[tuple[str, str]] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = [("content-type", content_type), *(headers or [])]

    @classmethod
    def json(cls, status: int, data: Any, headers: list[tuple[str, str]] | None = None
             ) -> Response:
        return cls(status, _json.encode(data), headers=headers)


INTERNAL_ERROR = errors.AAPError("internal error", "see the server log")
"""What a request that failed on a bug answers (500): the house body, no more."""


def as_error(exc: BaseException) -> errors.AAPError:
    """The :class:`~aap.errors.AAPError` an exception answers as: itself, 400 for JSON
    nested too deep (a backstop: every parser checks the depth first), else 500."""
    if isinstance(exc, errors.AAPError):
        return exc
    if isinstance(exc, RecursionError):
        return too_deep()
    return INTERNAL_ERROR


def failed(exc: BaseException, where: str, logger: logging.Logger) -> Response:
    """The answer to a request that raised: an error of the house as itself; the shared
    state not usable now (PostgreSQL of ``AAP_META_URL`` down or restarting, a SQLite file
    locked too long) a 503 with Retry-After, logged on one line (nothing about the request
    was wrong, and a client that retries gets its answer once it is back); anything else a
    bug: logged with its traceback, answered 500 with the house body."""
    if not isinstance(exc, (errors.AAPError, RecursionError)):
        if unavailable(exc):
            logger.warning("%s: the shared state cannot be used now (%s)", where,
                           errors.one_line(exc))
            exc = shared_state_unavailable()
        else:
            logger.exception("unexpected error on %s", where)
    return error_response(exc)


def shared_state_unavailable() -> SharedStateUnavailable:
    """What a request that needed the shared state while it could not be used is
    answered (503, ``shared_state_unavailable``, Retry-After)."""
    return SharedStateUnavailable(
        "the shared state (AAP_META_URL) cannot be used now: try again later", retry_after=2)


def error_response(exc: BaseException) -> Response:
    """The answer to an error, the same in both processes: the house body
    ``{"code", "message", "detail"}``, with Retry-After on a transient error, Allow on
    405 and ``Connection: close`` when the body did not arrive in time."""
    err = as_error(exc)
    headers = []
    if isinstance(err, errors.TransientError):
        headers.append(("retry-after", str(err.retry_after)))
    if isinstance(err, errors.MethodNotAllowed) and isinstance(err.detail, list):
        headers.append(("allow", ", ".join(err.detail)))
    if isinstance(err, errors.RequestTimeout):
        headers.append(("connection", "close"))
    return Response.json(err.status, err.body(), headers)


async def send_response(send: Send, resp: Response) -> None:
    await send({"type": "http.response.start", "status": resp.status,
                "headers": [(k.encode(), v.encode()) for k, v in resp.headers]})
    await send({"type": "http.response.body", "body": resp.body})


async def lifespan(receive: Receive, send: Send, startup: Callable[[], Awaitable[None]],
                   shutdown: Callable[[], Awaitable[None]]) -> None:
    """The ASGI lifespan protocol: ``startup`` before the first request, ``shutdown``
    when the server stops."""
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await startup()
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
