"""The Snowplow tracker protocol, as the JavaScript, Python, iOS, Android and other
Snowplow trackers send it.

``POST /com.snowplowanalytics.snowplow/tp2`` takes a ``payload_data`` document
(``{"schema": "iglu:…/payload_data/jsonschema/1-0-x", "data": [events]}``, every value a
string); ``GET /i?e=pv&…`` takes one event in the query string (the collector answers a
1x1 GIF). Snowplow trackers send no key: the tracker's app id (``aid``) carries the
source's write key.

Event types: ``pv`` (page view → page), ``pp`` (page ping → track ``page_ping``), ``se``
(structured → track named by ``se_ac``), ``ue`` (self-describing → track named by the
schema's name, ``ue_pr`` / ``ue_px``), ``tr`` (transaction → track ``Order Completed``)
and ``ti`` (transaction item → track ``Order Item``). ``co`` / ``cx`` contexts land in
``context.contexts``. ``uid`` → userId, ``duid`` → anonymousId, ``sid`` →
``context.sessionId``, ``eid`` → messageId, ``ttm`` (the true time, kept as sent) or ``dtm`` (the device's
clock) → timestamp, ``stm`` → sentAt (so ``dtm`` is corrected for clock skew).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from aap.collect.segment import Parsed, Rejection, WireMessage
from aap.errors import BadRequest
from aap.jsonlimits import check_depth

TP2_PATH = "/com.snowplowanalytics.snowplow/tp2"
GET_PATHS = ("/i", "/com.snowplowanalytics.snowplow/i")
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
"""A transparent 1x1 GIF."""

EVENT_TYPES = ("pv", "pp", "se", "ue", "tr", "ti")
MAX_SCREEN_DIGITS = 6
_json = msgspec.json.Decoder()
_DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, ValueError)


def parse_post(body: bytes, max_event_bytes: int) -> Parsed:
    if not body.strip():
        raise BadRequest("the request body is empty", code="empty_body")
    check_depth(body)
    try:
        doc = _json.decode(body)
    except _DECODE_ERRORS as exc:
        raise BadRequest("the body is not valid JSON", str(exc), code="invalid_json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise BadRequest("expected a payload_data document: {\"schema\": …, \"data\": [events]}",
                         code="invalid_batch")
    schema = doc.get("schema")
    if schema is not None and (not isinstance(schema, str)
                               or "/payload_data/" not in schema):
        raise BadRequest(f"unexpected schema {schema!r}: expected payload_data",
                         code="invalid_batch")
    if not doc["data"]:
        raise BadRequest("the payload holds no event", code="invalid_batch")
    return _parse_events(doc["data"], max_event_bytes)


def parse_query(params: dict[str, list[str]], max_event_bytes: int) -> Parsed:
    if not params:
        raise BadRequest("no event in the query string", code="empty_body")
    return _parse_events([{k: v[0] for k, v in params.items()}], max_event_bytes)


def _parse_events(events: list[Any], max_event_bytes: int) -> Parsed:
    messages: list[tuple[int, WireMessage]] = []
    rejected: list[Rejection] = []
    key: str | None = None
    for i, ev in enumerate(events):
        aid = ev.get("aid") if isinstance(ev, dict) and isinstance(ev.get("aid"), str) else None
        if key is None and aid:
            key = aid
        elif aid and aid != key:
            rejected.append(Rejection(i, "write_key_mismatch",
                                      "the event's app id (aid) differs from the request's"))
            continue
        if not isinstance(ev, dict) or not all(isinstance(v, str) for v in ev.values()):
            rejected.append(Rejection(i, "wrong_type",
                                      "an event must be an object whose values are all strings"))
            continue
        if sum(len(k) + len(v) for k, v in ev.items()) > max_event_bytes:
            rejected.append(Rejection(i, "event_too_large",
                                      f"event is over the limit of {max_event_bytes} bytes"))
            continue
        try:
            m = to_message(ev)
        except BadRequest as exc:
            rejected.append(Rejection(i, exc.code, exc.message))
            continue
        messages.append((i, m))
    return Parsed(messages, rejected, key)


def _ms(v: str | None, field: str) -> datetime | None:
    if not v:
        return None
    try:
        if len(v) > 20:  # no millisecond count has more digits
            raise ValueError(v)
        ms = int(v)
    except ValueError:
        raise BadRequest(f"`{field}` must be milliseconds since the epoch",
                         code="invalid_time") from None
    try:
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        raise BadRequest(f"`{field}` {v} is out of any calendar", code="timestamp_out_of_range"
                         ) from None


def _b64json(v: str, field: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(v.strip() + "=" * (-len(v.strip()) % 4))
    except (binascii.Error, ValueError):
        raise BadRequest(f"`{field}` is not URL-safe base64 of JSON", code="invalid_json") from None
    check_depth(raw, f"`{field}`")
    try:
        return _json.decode(raw)
    except _DECODE_ERRORS:
        raise BadRequest(f"`{field}` is not URL-safe base64 of JSON", code="invalid_json") from None


def _plain_json(v: str, field: str) -> Any:
    check_depth(v, f"`{field}`")
    try:
        return _json.decode(v)
    except _DECODE_ERRORS:
        raise BadRequest(f"`{field}` is not valid JSON", code="invalid_json") from None


def _self_describing(ev: dict[str, str], plain: str, b64: str) -> Any:
    if ev.get(plain):
        return _plain_json(ev[plain], plain)
    if ev.get(b64):
        return _b64json(ev[b64], b64)
    return None


def _number(v: str | None) -> float | int | None:
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except ValueError:
        return None
    if f != f or f in (float("inf"), float("-inf")):
        return None
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def _schema_name(schema: Any) -> str:
    """``iglu:com.acme/link_click/jsonschema/1-0-0`` → ``link_click``."""
    if isinstance(schema, str):
        parts = schema.removeprefix("iglu:").split("/")
        if len(parts) >= 2 and parts[1]:
            return parts[1]
    raise BadRequest("a self-describing event needs a schema", code="missing_event")


Field = tuple[str, str, Callable[[str], Any]]
"""(source field, target field, converter): a field absent or empty, or converted to
None, is left out."""


def _text(v: str) -> str:
    return v


def _library(v: str) -> dict[str, str]:
    return {"name": "snowplow", "version": v}


def _screen(res: str) -> dict[str, int] | None:
    """``1920x1080`` → width and height (pixels, not 10**400: at most six digits each)."""
    w, x, h = res.partition("x")
    if x and w.isdigit() and h.isdigit() and len(w) <= MAX_SCREEN_DIGITS \
            and len(h) <= MAX_SCREEN_DIGITS:
        return {"width": int(w), "height": int(h)}
    return None


def _mapped(ev: dict[str, str], fields: tuple[Field, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for source, target, convert in fields:
        v = ev.get(source)
        if v and (x := convert(v)) is not None:
            out[target] = x
    return out


PAGE: tuple[Field, ...] = (("url", "url", _text), ("page", "title", _text),
                           ("refr", "referrer", _text))
CONTEXT: tuple[Field, ...] = (
    ("sid", "sessionId", _text), ("ua", "userAgent", _text), ("ip", "ip", _text),
    ("lang", "locale", _text), ("tz", "timezone", _text), ("tv", "library", _library),
    ("p", "platform", _text), ("res", "screen", _screen),
)
PAGE_PING: tuple[Field, ...] = (("pp_mix", "mix", _number), ("pp_max", "max", _number),
                                ("pp_miy", "miy", _number), ("pp_may", "may", _number))
STRUCTURED: tuple[Field, ...] = (
    ("se_ca", "category", _text), ("se_ac", "action", _text), ("se_la", "label", _text),
    ("se_pr", "property", _text), ("se_va", "value", _number),
)
TRANSACTION: tuple[Field, ...] = (
    ("tr_id", "order_id", _text), ("tr_af", "affiliation", _text),
    ("tr_tt", "revenue", _number), ("tr_tx", "tax", _number), ("tr_sh", "shipping", _number),
    ("tr_ci", "city", _text), ("tr_st", "state", _text), ("tr_co", "country", _text),
    ("tr_cu", "currency", _text),
)
TRANSACTION_ITEM: tuple[Field, ...] = (
    ("ti_id", "order_id", _text), ("ti_sk", "sku", _text), ("ti_sk", "product_id", _text),
    ("ti_nm", "name", _text), ("ti_ca", "category", _text), ("ti_pr", "price", _number),
    ("ti_qu", "quantity", _number), ("ti_cu", "currency", _text),
)


def to_message(ev: dict[str, str]) -> WireMessage:
    e = ev.get("e")
    if e not in EVENT_TYPES:
        raise BadRequest(f"event type `e` must be one of {', '.join(EVENT_TYPES)}",
                         code="invalid_type")
    m = WireMessage(type="track", user_id=ev.get("uid") or None,
                    anonymous_id=ev.get("duid") or None, message_id=ev.get("eid") or None)
    if m.user_id is None and m.anonymous_id is None:
        raise BadRequest("the event has neither `uid` nor `duid`: set a user id or a domain "
                         "user id on the tracker's subject", code="missing_identity")
    true_time = _ms(ev.get("ttm"), "ttm")
    if true_time is not None:  # a true timestamp is kept as it is: no clock-skew correction
        m.timestamp = true_time
    else:  # the device's clock: corrected by (received - sent) like Segment's sentAt
        m.timestamp, m.sent_at = _ms(ev.get("dtm"), "dtm"), _ms(ev.get("stm"), "stm")
    m.context = _context(ev)
    m.properties = {}
    _EVENTS[e](m, ev)
    return m


def _context(ev: dict[str, str]) -> dict[str, Any]:
    page = _mapped(ev, PAGE)
    ctx: dict[str, Any] = {"page": page} if page else {}
    ctx.update(_mapped(ev, CONTEXT))
    contexts = _self_describing(ev, "co", "cx")
    if contexts is not None:
        data = contexts.get("data") if isinstance(contexts, dict) else None
        if not isinstance(data, list):
            raise BadRequest("`co`/`cx` must be a contexts document with a `data` array",
                             code="wrong_type")
        ctx["contexts"] = data
    return ctx


def _page_view(m: WireMessage, ev: dict[str, str]) -> None:
    m.type = "page"
    m.name = ev.get("page") or None


def _page_ping(m: WireMessage, ev: dict[str, str]) -> None:
    m.event = "page_ping"
    m.properties = _mapped(ev, PAGE_PING)


def _structured(m: WireMessage, ev: dict[str, str]) -> None:
    if not ev.get("se_ac"):
        raise BadRequest("a structured event needs an action `se_ac`", code="missing_event")
    m.event = ev["se_ac"]
    m.category = ev.get("se_ca") or None
    m.properties = _mapped(ev, STRUCTURED)


def _unstructured(m: WireMessage, ev: dict[str, str]) -> None:
    sdj = _self_describing(ev, "ue_pr", "ue_px")
    inner = sdj.get("data") if isinstance(sdj, dict) else None
    if not isinstance(inner, dict):
        raise BadRequest("a self-describing event needs `ue_pr` or `ue_px` with "
                         "{\"data\": {\"schema\", \"data\"}}", code="missing_event")
    m.event = _schema_name(inner.get("schema"))
    data = inner.get("data")
    m.properties = dict(data) if isinstance(data, dict) else {"data": data}
    m.properties["schema"] = inner["schema"]


def _transaction(m: WireMessage, ev: dict[str, str]) -> None:
    m.event = "Order Completed"
    m.properties = _mapped(ev, TRANSACTION)


def _transaction_item(m: WireMessage, ev: dict[str, str]) -> None:
    m.event = "Order Item"
    m.properties = _mapped(ev, TRANSACTION_ITEM)


_EVENTS: dict[str, Callable[[WireMessage, dict[str, str]], None]] = {
    "pv": _page_view, "pp": _page_ping, "se": _structured, "ue": _unstructured,
    "tr": _transaction, "ti": _transaction_item,
}
