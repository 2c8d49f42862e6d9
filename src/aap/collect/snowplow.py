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
    ctx: dict[str, Any] = {}
    page = {k: ev[p] for k, p in (("url", "url"), ("title", "page"), ("referrer", "refr"))
            if ev.get(p)}
    if page:
        ctx["page"] = page
    if ev.get("sid"):
        ctx["sessionId"] = ev["sid"]
    if ev.get("ua"):
        ctx["userAgent"] = ev["ua"]
    if ev.get("ip"):
        ctx["ip"] = ev["ip"]
    if ev.get("lang"):
        ctx["locale"] = ev["lang"]
    if ev.get("tz"):
        ctx["timezone"] = ev["tz"]
    if ev.get("tv"):
        ctx["library"] = {"name": "snowplow", "version": ev["tv"]}
    if ev.get("p"):
        ctx["platform"] = ev["p"]
    res = ev.get("res", "")
    if "x" in res:
        w, _, h = res.partition("x")
        if w.isdigit() and h.isdigit() and len(w) <= 6 and len(h) <= 6:  # pixels, not 10**400
            ctx["screen"] = {"width": int(w), "height": int(h)}
    contexts = _self_describing(ev, "co", "cx")
    if contexts is not None:
        data = contexts.get("data") if isinstance(contexts, dict) else None
        if not isinstance(data, list):
            raise BadRequest("`co`/`cx` must be a contexts document with a `data` array",
                             code="wrong_type")
        ctx["contexts"] = data
    m.context = ctx
    props: dict[str, Any] = {}
    if e == "pv":
        m.type = "page"
        m.name = ev.get("page") or None
    elif e == "pp":
        m.event = "page_ping"
        for k in ("pp_mix", "pp_max", "pp_miy", "pp_may"):
            if (n := _number(ev.get(k))) is not None:
                props[k.removeprefix("pp_")] = n
    elif e == "se":
        if not ev.get("se_ac"):
            raise BadRequest("a structured event needs an action `se_ac`", code="missing_event")
        m.event = ev["se_ac"]
        m.category = ev.get("se_ca") or None
        props = {k: v for k, v in (("category", ev.get("se_ca")), ("action", ev["se_ac"]),
                                   ("label", ev.get("se_la")), ("property", ev.get("se_pr")),
                                   ("value", _number(ev.get("se_va")))) if v not in (None, "")}
    elif e == "ue":
        sdj = _self_describing(ev, "ue_pr", "ue_px")
        inner = sdj.get("data") if isinstance(sdj, dict) else None
        if not isinstance(inner, dict):
            raise BadRequest("a self-describing event needs `ue_pr` or `ue_px` with "
                             "{\"data\": {\"schema\", \"data\"}}", code="missing_event")
        m.event = _schema_name(inner.get("schema"))
        data = inner.get("data")
        props = dict(data) if isinstance(data, dict) else {"data": data}
        props["schema"] = inner["schema"]
    elif e == "tr":
        m.event = "Order Completed"
        props = {k: v for k, v in (
            ("order_id", ev.get("tr_id")), ("affiliation", ev.get("tr_af")),
            ("revenue", _number(ev.get("tr_tt"))), ("tax", _number(ev.get("tr_tx"))),
            ("shipping", _number(ev.get("tr_sh"))), ("city", ev.get("tr_ci")),
            ("state", ev.get("tr_st")), ("country", ev.get("tr_co")),
            ("currency", ev.get("tr_cu"))) if v not in (None, "")}
    elif e == "ti":
        m.event = "Order Item"
        props = {k: v for k, v in (
            ("order_id", ev.get("ti_id")), ("sku", ev.get("ti_sk")),
            ("product_id", ev.get("ti_sk")), ("name", ev.get("ti_nm")),
            ("category", ev.get("ti_ca")), ("price", _number(ev.get("ti_pr"))),
            ("quantity", _number(ev.get("ti_qu"))), ("currency", ev.get("ti_cu")))
            if v not in (None, "")}
    m.properties = props
    return m
