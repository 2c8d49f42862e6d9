"""Body decoding: bombs are cut off while inflating, not after."""

from __future__ import annotations

import asyncio
import gzip
import tracemalloc
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aap.asgi import content_length, read_raw
from aap.collect.body import decode_content
from aap.errors import BadRequest, PayloadTooLarge

MiB = 1024 * 1024


@pytest.mark.slow
def test_bomb_is_cut_off_while_inflating() -> None:
    comp = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    bomb = b"".join([*(comp.compress(bytes(MiB)) for _ in range(512)), comp.flush()])
    assert len(bomb) < 1 * MiB
    tracemalloc.start()
    with pytest.raises(PayloadTooLarge):
        decode_content(bomb, "gzip", 2 * MiB)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 6 * MiB  # inflating all of it would need 512 MiB


@given(st.binary(max_size=5000), st.sampled_from(["", "gzip", "deflate"]))
def test_round_trip_and_limit(data: bytes, enc: str) -> None:
    body = {"": data, "gzip": gzip.compress(data), "deflate": zlib.compress(data)}[enc]
    if enc == "" and data[:2] == b"\x1f\x8b":
        return  # magic bytes mean gzip whatever the header
    assert decode_content(body, enc, 5000) == data
    if enc and len(data) > 10:
        with pytest.raises(PayloadTooLarge):
            decode_content(body, enc, len(data) - 1)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_claiming_gzip_give_400_or_decode(data: bytes) -> None:
    try:
        decode_content(data, "gzip", MiB)
    except BadRequest:
        pass


@given(st.text(max_size=30))
def test_content_length_is_a_plain_decimal_or_nothing(value: str) -> None:
    got = content_length(value)
    if value.isascii() and value.isdigit() and len(value) <= 18:
        assert got == int(value)
    else:
        assert got is None  # "²", "١٢", 5,000 digits: never an exception


def _depth(v: object) -> int:
    if isinstance(v, list):
        return 1 + max(map(_depth, v), default=0)
    if isinstance(v, dict):
        return 1 + max(map(_depth, v.values()), default=0)
    return 0


TRICKY = st.text(alphabet='[]{}"\\/ab', max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
    max_leaves=30)


@given(json_values, st.booleans(), st.integers(0, 3))
def test_json_depth_is_the_nesting_outside_strings(value: object, ascii_only: bool,
                                                   indent: int) -> None:
    """Brackets, quotes and backslashes inside strings (and keys) never count."""
    import json

    from aap.jsonlimits import check_depth, depth

    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent or None)
    assert depth(text.encode()) == depth(text) == _depth(value)
    limit = _depth(value)
    check_depth(text.encode(), limit=limit)  # at the limit: accepted
    if limit:
        with pytest.raises(BadRequest) as info:
            check_depth(text.encode(), limit=limit - 1)
        assert info.value.code == "too_deep"


def _receive(chunks: list[bytes], then: str = "http.request") -> Any:
    """An ASGI receive that sends ``chunks`` as one request body (the last without
    ``more_body``), or ends with a disconnect when ``then`` says so."""
    msgs = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    if then == "http.disconnect":
        msgs.append({"type": "http.disconnect"})
    elif msgs:
        msgs[-1]["more_body"] = False
    else:
        msgs.append({"type": "http.request", "body": b"", "more_body": False})
    it = iter(msgs)

    async def receive() -> dict[str, Any]:
        return next(it, {"type": "http.disconnect"})

    return receive


@given(st.lists(st.binary(max_size=40), max_size=6), st.integers(0, 200))
def test_read_raw_joins_the_chunks_up_to_the_limit(chunks: list[bytes], limit: int) -> None:
    body = b"".join(chunks)
    if len(body) > limit:
        with pytest.raises(PayloadTooLarge):
            asyncio.run(read_raw(_receive(chunks), None, limit))
    else:
        assert asyncio.run(read_raw(_receive(chunks), None, limit)) == body


def test_read_raw_refuses_a_declared_size_over_the_limit_and_a_cut_body() -> None:
    with pytest.raises(PayloadTooLarge, match="request body is 101 bytes; the limit is 100"):
        asyncio.run(read_raw(_receive([b"x" * 101]), 101, 100))
    with pytest.raises(BadRequest) as info:
        asyncio.run(read_raw(_receive([b"half"], then="http.disconnect"), None, 100))
    assert info.value.code == "disconnected"


def test_unknown_encodings_and_truncated_gzip_are_400() -> None:
    with pytest.raises(BadRequest) as info:
        decode_content(b"abc", "br", MiB)
    assert info.value.code == "bad_encoding"
    assert decode_content(b"abc", " Identity ", MiB) == b"abc"
    with pytest.raises(BadRequest, match="truncated"):
        decode_content(gzip.compress(b"x" * 1000)[:-12], "gzip", MiB)
