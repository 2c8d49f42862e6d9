"""The Segment HTTP Tracking API (also spoken by RudderStack and Jitsu SDKs).

``/v1/batch`` (and the browser's ``/v1/b``) take ``{"batch": [...]}``; ``/v1/track``,
``/v1/identify``, … (and the short forms ``/v1/t``, ``/v1/i``, …) take one message.
Each message is validated on its own: a bad one is rejected with its index and reason,
the good ones of the same batch are stored.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec
import uuid_utils

from aap.errors import BadRequest, PayloadTooLarge, Unauthorized
from aap.events import MESSAGE_TYPES, Event
from aap.jsonlimits import check_depth

SINGLE_PATHS = {
    "/v1/track": "track", "/v1/t": "track",
    "/v1/identify": "identify", "/v1/i": "identify",
    "/v1/page": "page", "/v1/p": "page",
    "/v1/screen": "screen", "/v1/s": "screen",
    "/v1/group": "group", "/v1/g": "group",
    "/v1/alias": "alias", "/v1/a": "alias",
}  # fmt: skip
BATCH_PATHS = ("/v1/batch", "/v1/b")

Id = str | int | None


class WireMessage(msgspec.Struct, rename="camel"):
    type: str | None = None
    message_id: Id = None
    user_id: Id = None
    anonymous_id: Id = None
    previous_id: Id = None
    group_id: Id = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    timestamp: datetime | None = None
    sent_at: datetime | None = None
    context: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    write_key: str | None = None
    channel: str | None = None
    """RudderStack: where the event was sent from (``server``, ``web``, ``mobile``)."""
    original_timestamp: datetime | None = None
    """RudderStack's name for the time the event happened (``timestamp`` wins)."""


class WireBatch(msgspec.Struct, rename="camel"):
    batch: list[msgspec.Raw] | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    sent_at: datetime | None = None
    write_key: str | None = None


class TypedBatch(WireBatch, rename="camel"):
    """The fast path: a batch decoded in one call when every event is well-formed."""

    batch: list[WireMessage] | None = None  # type: ignore[assignment]


_batch_decoder = msgspec.json.Decoder(WireBatch)
_typed_decoder = msgspec.json.Decoder(TypedBatch)
_message_decoder = msgspec.json.Decoder(WireMessage)

_DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, ValueError)


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    reason: str
    """A short code, counted in the metrics."""
    detail: str


class Parsed(NamedTuple):
    messages: list[tuple[int, WireMessage]]
    rejected: list[Rejection]
    write_key: str | None


def parse_batch(body: bytes, max_event_bytes: int) -> Parsed:
    if not body.strip():
        raise BadRequest("the request body is empty", code="empty_body")
    _check_utf8(body)
    check_depth(body)
    if len(body) <= max_event_bytes:  # then no event can be over the limit either
        try:
            tb = _typed_decoder.decode(body)
        except _DECODE_ERRORS:
            pass  # find out which events are wrong, one by one, below
        else:
            if tb.batch is not None:
                return Parsed([(i, _merge(m, tb)) for i, m in enumerate(tb.batch)], [],
                              tb.write_key)
    wb: WireBatch = _decode_or_400(_batch_decoder, body, "the batch does not have the expected shape",
                                   "invalid_batch")
    if wb.batch is None:
        raise BadRequest("the body has no `batch` array", code="invalid_batch")
    messages: list[tuple[int, WireMessage]] = []
    rejected: list[Rejection] = []
    for i, raw in enumerate(wb.batch):
        if len(raw) > max_event_bytes:
            rejected.append(Rejection(i, "event_too_large",
                                      f"event is {len(raw)} bytes; the limit is {max_event_bytes}"))
            continue
        try:
            m = _message_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            rejected.append(Rejection(i, "wrong_type", str(exc)))
            continue
        except _DECODE_ERRORS as exc:
            rejected.append(Rejection(i, "invalid_json", str(exc)))
            continue
        messages.append((i, _merge(m, wb)))
    return Parsed(messages, rejected, wb.write_key)


def _merge(m: WireMessage, wb: WireBatch) -> WireMessage:
    """Apply the batch-level ``context``, ``integrations`` and ``sentAt`` to a message."""
    if wb.context:
        m.context = {**wb.context, **(m.context or {})}
    if wb.integrations and m.integrations is None:
        m.integrations = wb.integrations
    if m.sent_at is None:
        m.sent_at = wb.sent_at
    return m


def _decode_or_400(decoder: Any, body: bytes, shape_message: str, shape_code: str) -> Any:
    """Decode the whole body; a wrong shape or malformed JSON is the client's error."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(shape_message, str(exc), code=shape_code) from None
    except _DECODE_ERRORS as exc:
        raise BadRequest("the body is not valid JSON", str(exc), code="invalid_json") from None


def _check_utf8(body: bytes) -> None:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("the body is not valid UTF-8", str(exc), code="invalid_json") from None


def parse_single(body: bytes, message_type: str, max_event_bytes: int) -> Parsed:
    if not body.strip():
        raise BadRequest("the request body is empty", code="empty_body")
    if len(body) > max_event_bytes:
        raise PayloadTooLarge(f"event is {len(body)} bytes; the limit is {max_event_bytes}")
    check_depth(body)
    m: WireMessage = _decode_or_400(_message_decoder, body,
                                    "the message has a field of the wrong type", "wrong_type")
    m.type = message_type
    return Parsed([(0, m)], [], m.write_key)


def basic_write_key(authorization: str) -> str:
    """The write key of an ``Authorization: Basic base64(KEY:)`` header (401 if none)."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise Unauthorized("use HTTP Basic auth with the write key as user name",
                           code="bad_auth_scheme")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("the Basic auth value is not valid base64", code="bad_auth") from None
    key = decoded.partition(":")[0]
    if not key:
        raise Unauthorized("no write key in the Basic auth user name", code="missing_write_key")
    return key


def _id(v: Id) -> str | None:
    if v is None:
        return None
    s = v if isinstance(v, str) else str(v)
    return s if s.strip() else None


def _utc(dt: datetime | None) -> datetime | None:
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def to_event(m: WireMessage, *, source: str, received_at: datetime) -> Event | str:
    """The canonical event, or the reason it is rejected."""
    mtype = m.type
    if mtype not in MESSAGE_TYPES:
        return "invalid_type"
    user_id, anonymous_id = _id(m.user_id), _id(m.anonymous_id)
    if user_id is None and anonymous_id is None:
        return "missing_identity"
    if mtype == "track" and not (m.event and m.event.strip()):
        return "missing_event"
    previous_id = _id(m.previous_id)
    if mtype == "alias" and previous_id is None:
        return "missing_previous_id"
    group_id = _id(m.group_id)
    if mtype == "group" and group_id is None:
        return "missing_group_id"
    context, traits = _context_and_traits(m, mtype)
    return Event(
        type=mtype,
        message_id=_id(m.message_id) or str(uuid_utils.uuid7()),
        user_id=user_id,
        anonymous_id=anonymous_id,
        previous_id=previous_id,
        group_id=group_id,
        event=m.event,
        name=_view_name(m) if mtype in ("page", "screen") else m.name,
        category=m.category,
        timestamp=_utc(m.timestamp or m.original_timestamp),
        sent_at=_utc(m.sent_at),
        context=context,
        properties=m.properties or {},
        traits=traits or {},
        integrations=m.integrations or {},
        received_at=received_at,
        source=source,
    )


def _view_name(m: WireMessage) -> str | None:
    """A page's or screen's name: ``name``, else where RudderStack's mobile SDKs put it
    (``properties.name``, and the same in ``event``)."""
    if m.name is not None:
        return m.name
    prop = (m.properties or {}).get("name")
    if isinstance(prop, str) and prop.strip():
        return prop
    return m.event if m.event and m.event.strip() else None


def _context_and_traits(m: WireMessage, mtype: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    context = m.context or {}
    traits = m.traits
    if "traits" in context:
        # RudderStack sends identify traits in context.traits (and its web SDK repeats
        # them on every event): they become the identify's traits, where personal ones
        # are sealed, and never stay in the context in plain text.
        ctx_traits = context["traits"]
        context = {k: v for k, v in context.items() if k != "traits"}
        if not traits and mtype in ("identify", "group") and isinstance(ctx_traits, dict):
            traits = ctx_traits
    if m.channel is not None and "channel" not in context:
        context = {**context, "channel": m.channel}
    return context, traits


REASON_TEXT = {
    "invalid_type": "`type` must be one of " + ", ".join(sorted(MESSAGE_TYPES)),
    "missing_identity": "the message has neither `userId` nor `anonymousId`",
    "missing_event": "a track message needs a non-empty `event`",
    "missing_previous_id": "an alias message needs `previousId`",
    "missing_group_id": "a group message needs `groupId`",
}
