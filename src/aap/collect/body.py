"""Reading a request body: size limits, gzip/deflate by header or by magic bytes, and
decompression bombs cut off while inflating."""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from aap.errors import BadRequest, PayloadTooLarge

Receive = Callable[[], Awaitable[dict[str, Any]]]

GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 256 * 1024


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


def decode_content(body: bytes, content_encoding: str, limit: int) -> bytes:
    """Inflate gzip/deflate bodies, stopping as soon as the output passes ``limit``."""
    enc = content_encoding.strip().lower()
    if body[:2] == GZIP_MAGIC or enc in ("gzip", "x-gzip"):
        return _inflate(body, zlib.MAX_WBITS | 16, limit, "gzip")
    if enc == "deflate":
        return _inflate(body, zlib.MAX_WBITS, limit, "deflate")
    if enc not in ("", "identity"):
        raise BadRequest(f"unsupported Content-Encoding {content_encoding!r}", code="bad_encoding")
    return body


def _inflate(body: bytes, wbits: int, limit: int, name: str) -> bytes:
    d = zlib.decompressobj(wbits)
    out: list[bytes] = []
    size = 0
    data = body
    try:
        while True:
            piece = d.decompress(data, _CHUNK)
            size += len(piece)
            if size > limit:
                raise PayloadTooLarge(
                    f"decompressed body is over the limit of {limit} bytes", code="payload_too_large"
                )
            out.append(piece)
            data = d.unconsumed_tail
            if d.eof or (not data and not piece):
                break
        if not d.eof:
            raise BadRequest(f"{name} body is truncated", code="bad_encoding")
    except zlib.error as exc:
        raise BadRequest(f"{name} body is not valid: {exc}", code="bad_encoding") from None
    return b"".join(out)
