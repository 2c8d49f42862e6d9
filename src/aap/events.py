"""The canonical event, as the collector appends it to the log.

Every wire format decodes into Segment-shaped messages
(:class:`aap.collect.segment.WireMessage`: PostHog and Snowplow map their fields onto
them), which :func:`aap.collect.segment.to_event` converts into :class:`Event`. Field
names follow the Segment spec in camelCase on the wire of the log too, so a stored event
reads like what was sent.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import zstandard

MESSAGE_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})

EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)
"""No time an event carries (or is corrected to) may be before this: the collector refuses it."""
MAX_FUTURE = timedelta(minutes=5)
"""The skew allowance: an event's corrected time further than this after its receive time
is clamped to it (the processor's ``time`` step); a historical source's time as sent is
refused beyond it."""
MAX_CLOCK_AHEAD = timedelta(days=365)
"""A time field as sent (``timestamp``, ``sentAt``) further than this after the receive
time is refused: no clock skew explains it."""


def time_out_of_range(timestamp: datetime | None, sent_at: datetime | None,
                      received_at: datetime, *, historical: bool = False) -> str | None:
    """Why an event's times are out of bounds (``None`` when they are in bounds): every
    time as sent between :data:`EARLIEST_TIME` and :data:`MAX_CLOCK_AHEAD` after receipt;
    the time the processor will use (``timestamp + (receivedAt - sentAt)``, or as sent
    for a historical source) not before :data:`EARLIEST_TIME`, and for a historical source
    not more than :data:`MAX_FUTURE` after receipt."""
    latest = received_at + MAX_CLOCK_AHEAD
    for name, t in (("timestamp", timestamp), ("sentAt", sent_at)):
        if t is not None and not EARLIEST_TIME <= t <= latest:
            return (f"`{name}` {t.isoformat()} is not between {EARLIEST_TIME.date()} and a "
                    "year after it was received")
    if timestamp is None:
        return None
    if historical:
        if timestamp > received_at + MAX_FUTURE:
            return (f"`timestamp` {timestamp.isoformat()} is in the future (a historical "
                    "source keeps times as sent)")
        return None
    corrected = timestamp + (received_at - sent_at) if sent_at is not None else timestamp
    if corrected < EARLIEST_TIME:
        return (f"`timestamp` corrected for the clock's skew (receivedAt - sentAt) is "
                f"{corrected.isoformat()}, before {EARLIEST_TIME.date()}")
    return None


class Geo(msgspec.Struct, omit_defaults=True, frozen=True):
    """Coarse location only: never coordinates, postal codes or an accuracy radius."""

    country: str | None = None
    region: str | None = None
    city: str | None = None


class Event(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    # -- as the client sent it (Segment spec) --
    type: str
    message_id: str
    user_id: str | None = None
    anonymous_id: str | None = None
    previous_id: str | None = None
    group_id: str | None = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    timestamp: datetime | None = None
    sent_at: datetime | None = None
    context: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    traits: dict[str, Any] = {}
    integrations: dict[str, Any] = {}
    # -- set by the collector --
    received_at: datetime
    source: str
    ip: str | None = None
    """The client address truncated by :mod:`aap.privacy.ip`; never the raw one."""
    geo: Geo | None = None
    gpc: bool = False
    """The request carried ``Sec-GPC: 1``."""
    dnt: bool = False
    """The request carried ``DNT: 1``."""
    purposes: dict[str, str] = {}
    """Purpose → lawful basis: what the event may be used for (set by the consent gate)."""
    # -- set when the event is sealed (aap.privacy.sealing): raw ids leave, keys stay --
    user_key: int | None = None
    anonymous_key: int | None = None
    previous_key: int | None = None
    sealed: dict[str, bytes] = {}
    """``fields`` → the personal fields and addresses taken out of the event, sealed (see
    :mod:`aap.privacy.sealing`; the raw ids are in the keystore)."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[Event])
_msgpack_decoder = msgspec.msgpack.Decoder(list[Event])
_local = threading.local()  # zstd (de)compressors are not thread-safe


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    pair = getattr(_local, "zstd", None)
    if pair is None:
        pair = _local.zstd = (zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor())
    return pair


def encode_events(events: list[Event], *, compress: bool = True) -> bytes:
    """A log record's payload: the events as one JSON array, compressed with zstd (level 1)
    unless ``compress`` is false (a log that compresses its batches of records itself:
    Kafka, whose records hold one device stream's events of a request, often one).

    JSON rather than a binary format because the processor reads whole chunks of records
    with DuckDB's JSON reader, straight into columns, without a Python object per event
    (see :mod:`aap.process.prepare`). Encoding costs the collector what msgpack did
    (~0.55 µs an event; zstd ~0.1 µs more), and the compressed record is slightly
    smaller. A zstd frame per record of one event costs far more (~9 µs an event, on a
    slow machine) and compresses little."""
    raw = _encoder.encode(events)
    return _zstd()[0].compress(raw) if compress else raw


def payload_bytes(payload: bytes) -> bytes:
    """The uncompressed events of a payload (what canary scans search): a JSON array, or
    msgpack in records written before the log held JSON (:func:`is_json`). A payload
    stored uncompressed is a JSON array already; a zstd frame never starts with ``[``."""
    return payload if is_json(payload) else _zstd()[1].decompress(payload)


def is_json(raw: bytes) -> bool:
    """Whether uncompressed payload bytes are a JSON array. The other kind is the msgpack
    array the first versions wrote, which never starts with ``[`` (0x5B is a positive
    fixint in msgpack, not an array header)."""
    return raw[:1] == b"["


def json_payload(payload: bytes) -> bytes:
    """The payload's events as a JSON array (records in msgpack are converted)."""
    raw = payload_bytes(payload)
    return raw if is_json(raw) else _encoder.encode(_msgpack_decoder.decode(raw))


def decode_events(payload: bytes) -> list[Event]:
    raw = payload_bytes(payload)
    return (_decoder if is_json(raw) else _msgpack_decoder).decode(raw)
