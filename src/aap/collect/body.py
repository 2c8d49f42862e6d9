"""Decoding a request body: gzip/deflate by header or by magic bytes, and decompression
bombs cut off while inflating (reading it, with its size limit: :mod:`aap.asgi`)."""

from __future__ import annotations

import zlib

from aap.errors import BadRequest, PayloadTooLarge

GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 256 * 1024


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
