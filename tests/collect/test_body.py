"""Body decoding: bombs are cut off while inflating, not after."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aap.collect.body import decode_content
from aap.errors import BadRequest, PayloadTooLarge

MiB = 1024 * 1024


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
