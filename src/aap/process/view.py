"""What the processor reads of a logged event: :class:`aap.events.Event` without the
fields no step uses, and of ``context`` only the fields enrichment and sessions need.

Decoding into these structs skips everything else in the record without building it,
which is most of the cost of reading the log. The fields are typed loosely on purpose:
clients send all kinds of values, and a value of an unexpected type must not make a
record unreadable; the steps check types where they use a value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from aap.events import Geo, payload_bytes


class PageView(msgspec.Struct, frozen=True):
    url: Any = None
    referrer: Any = None
    path: Any = None


class CampaignView(msgspec.Struct, frozen=True):
    source: Any = None
    medium: Any = None
    name: Any = None
    campaign: Any = None
    term: Any = None
    content: Any = None


class LibraryView(msgspec.Struct, frozen=True):
    name: Any = None
    version: Any = None


Other = str | int | float | bool | list[Any] | None
"""Any value that is not a JSON object (an object decodes into the struct)."""


class ContextView(msgspec.Struct, frozen=True):
    page: PageView | Other = None
    campaign: CampaignView | Other = None
    library: LibraryView | Other = None
    user_agent: Any = msgspec.field(default=None, name="userAgent")
    session_id: Any = msgspec.field(default=None, name="sessionId")
    session_id_snake: Any = msgspec.field(default=None, name="session_id")


_NO_CONTEXT = ContextView()


class EventView(msgspec.Struct, rename="camel", kw_only=True):
    type: str
    message_id: str
    source: str
    received_at: datetime
    user_id: str | None = None
    anonymous_id: str | None = None
    previous_id: str | None = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    timestamp: datetime | None = None
    sent_at: datetime | None = None
    context: ContextView | Other = _NO_CONTEXT
    properties: dict[str, Any] = {}
    traits: dict[str, Any] = {}
    geo: Geo | None = None
    gpc: bool = False
    dnt: bool = False
    purposes: dict[str, str] = {}
    user_key: int | None = None
    anonymous_key: int | None = None
    previous_key: int | None = None


_decoder = msgspec.msgpack.Decoder(list[EventView])


def decode(payload: bytes) -> list[EventView]:
    """The events of one log record's payload (see :func:`aap.events.encode_events`)."""
    return _decoder.decode(payload_bytes(payload))
