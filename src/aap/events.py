"""The canonical event, as the collector appends it to the log.

The wire formats (``aap.collect.segment`` and later others) decode into their own
structs and convert into :class:`Event`. Field names follow the Segment spec in
camelCase on the wire of the log too, so a stored event reads like what was sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

MESSAGE_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})


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


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[Event])


def encode_events(events: list[Event]) -> bytes:
    return _encoder.encode(events)


def decode_events(payload: bytes) -> list[Event]:
    return _decoder.decode(payload)
