"""PostHog's capture API, as posthog-js, the server SDKs (Python, Node, Go, …) and the
iOS and Android SDKs send it.

Bodies: a JSON object with ``batch``, a bare array of events, or one event; gzip by the
magic bytes whatever the Content-Type (posthog-js sends ``text/plain``); form bodies
``data=<base64>`` (``compression=base64`` in the query or the form). The project key is
``api_key`` (or ``token``) in the body, else ``properties.token`` of the events.

Each PostHog event becomes a Segment-shaped :class:`~aap.collect.segment.WireMessage`:

- ``$identify`` → identify (``userId`` = ``distinct_id``, ``anonymousId`` =
  ``$anon_distinct_id``, traits from ``$set_once`` then ``$set``; ``$set`` on any other
  event goes to its traits too, the processor reads those of identifies);
- ``$create_alias`` / ``$merge_dangerously`` → alias (``previousId`` = ``alias``);
- ``$set`` / ``$set_once`` → identify with traits; ``$groupidentify`` → group;
- ``$pageview`` → page, ``$screen`` → screen; anything else → track (``$pageleave``
  keeps its name and gets the page context too).

A ``distinct_id`` is an ``anonymousId`` when posthog-js says the person is not
identified (``$is_identified: false``, or ``distinct_id == $device_id``); otherwise it
is a ``userId``. Ids never stay in the properties (``$anon_distinct_id``,
``$device_id``, ``alias`` move out; the collector seals ids and personal traits).
``$ip`` goes to ``context.ip`` (truncated by the collector, never stored);
``$session_id`` stays in the properties (the processor's session id). The mobile SDKs'
device properties (``$os_name``, ``$device_model``, ``$app_version``, ``$screen_width``,
``$network_wifi``, ``$locale``, ``$timezone``, …) stay too, and are copied into the
context where Segment's mobile SDKs put them (:data:`MOBILE`). The send time
(``sent_at`` per event, per batch, or ``sent_at`` / ``_`` in the query) corrects the
device's clock like Segment's ``sentAt``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import msgspec

from aap.collect.body import GZIP_MAGIC, decode_content
from aap.collect.segment import Parsed, Rejection, WireMessage
from aap.errors import BadRequest
from aap.jsonlimits import check_depth

CAPTURE_PATHS = ("/batch/", "/batch", "/e/", "/e", "/i/v0/e/", "/i/v0/e", "/capture/",
                 "/capture", "/track/", "/track", "/engage/", "/engage")
FLAGS_PATHS = ("/flags/", "/flags", "/decide/", "/decide")
CONFIG_PREFIX = "/array/"

SUPPORTED_COMPRESSION = ["gzip", "gzip-js", "base64"]
MAX_OFFSET_MS = 10**11
"""An event's ``offset`` (milliseconds before it was sent) is used only below this."""
MAX_EPOCH = 1e14
"""A number taken for a time is below this (in milliseconds: the year 5138)."""
EPOCH_MS_ABOVE = 1e11
"""A number above this is in milliseconds since the epoch, else in seconds."""
MAX_QUERY_TIME_DIGITS = 15
_json_decoder = msgspec.json.Decoder()
_DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, ValueError)


def unwrap(body: bytes, query: dict[str, list[str]], content_type: str, limit: int) -> bytes:
    """The JSON text of a PostHog body: form ``data=`` fields, base64 and gzip undone."""
    stripped = body.lstrip()
    compression = (query.get("compression") or [""])[0]
    if stripped[:5] == b"data=" or "x-www-form-urlencoded" in content_type:
        try:
            form = parse_qs(body.decode("ascii"), strict_parsing=False)
        except UnicodeDecodeError:
            raise BadRequest("the form body is not ASCII", code="invalid_form") from None
        if "data" not in form:
            raise BadRequest("the form body has no `data` field", code="invalid_form")
        compression = (form.get("compression") or [compression])[0]
        body = form["data"][0].replace(" ", "+").encode("utf-8")
        stripped = body.strip()
        if compression != "gzip-js" and stripped[:1] not in (b"{", b"["):
            compression = "base64"
    if compression == "base64":
        data = b"".join(stripped.split()).replace(b" ", b"+")
        try:
            body = base64.b64decode(data + b"=" * (-len(data) % 4), validate=True,
                                    altchars=b"-_" if b"-" in data or b"_" in data else None)
        except (binascii.Error, ValueError):
            raise BadRequest("the body is not valid base64", code="bad_encoding") from None
    elif compression == "lz64":
        raise BadRequest("lz64 compression is not supported: send gzip-js or base64",
                         code="bad_encoding")
    if body[:2] == GZIP_MAGIC:
        body = decode_content(body, "", limit)
    return body


def parse(body: bytes, query: dict[str, list[str]], content_type: str, limit: int,
          max_event_bytes: int, *, engage: bool = False) -> Parsed:
    """PostHog events as wire messages; the key found in the body, if any."""
    text = unwrap(body, query, content_type, limit)
    if not text.strip():
        raise BadRequest("the request body is empty", code="empty_body")
    check_depth(text)
    try:
        doc = _json_decoder.decode(text)
    except _DECODE_ERRORS as exc:
        raise BadRequest("the body is not valid JSON", str(exc), code="invalid_json") from None
    events, key, sent_at = _events_and_key(doc)
    messages: list[tuple[int, WireMessage]] = []
    rejected: list[Rejection] = []
    now = datetime.now(UTC)
    batch_sent = _time(sent_at) or _query_time(query)
    for i, ev in enumerate(events):
        if not isinstance(ev, dict):
            rejected.append(Rejection(i, "wrong_type", "an event must be a JSON object"))
            continue
        props = ev.get("properties")
        ev_key = (props.get("token") if isinstance(props, dict) else None) or ev.get("api_key") \
            or ev.get("$token")
        if key is None and isinstance(ev_key, str) and ev_key:
            key = ev_key
        elif isinstance(ev_key, str) and ev_key and ev_key != key:
            rejected.append(Rejection(i, "write_key_mismatch",
                                      "the event's token differs from the request's api_key"))
            continue
        if len(msgspec.json.encode(ev)) > max_event_bytes:
            rejected.append(Rejection(i, "event_too_large",
                                      f"event is over the limit of {max_event_bytes} bytes"))
            continue
        m = to_message(ev, now, batch_sent, engage=engage)
        if isinstance(m, Rejection):
            rejected.append(Rejection(i, m.reason, m.detail))
        else:
            messages.append((i, m))
    return Parsed(messages, rejected, key or None)


def _events_and_key(doc: Any) -> tuple[list[Any], str | None, Any]:
    """The events of a body, its project key and its send time, if any."""
    key: Any = None
    sent_at: Any = None
    if isinstance(doc, dict) and isinstance(doc.get("batch"), list):
        events, key, sent_at = doc["batch"], doc.get("api_key") or doc.get("token"), \
            doc.get("sent_at")
    elif isinstance(doc, list):
        events = doc
    elif isinstance(doc, dict):
        events = [doc]
        key = doc.get("api_key") or doc.get("token") or doc.get("$token")
    else:
        raise BadRequest("expected a JSON object with `batch`, an array of events or one event",
                         code="invalid_batch")
    if not events:
        raise BadRequest("the request holds no event", code="invalid_batch")
    if key is not None and not isinstance(key, str):
        raise BadRequest("`api_key` must be a string", code="wrong_type")
    return events, key, sent_at


def _time(v: Any) -> datetime | None:
    if isinstance(v, str) and v:
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < MAX_EPOCH:
        return datetime.fromtimestamp(v / 1000 if v > EPOCH_MS_ABOVE else v, UTC)
    return None


def _query_time(query: dict[str, list[str]]) -> datetime | None:
    """posthog-js may put the send time in the query: ``sent_at`` (POST) or ``_`` (GET),
    in milliseconds."""
    for name in ("sent_at", "_"):
        v = (query.get(name) or [""])[0]
        if v.isdigit() and len(v) <= MAX_QUERY_TIME_DIGITS:
            return _time(int(v))
    return None


def _id(v: Any) -> str | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return str(v)
    return v if isinstance(v, str) and v.strip() else None


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


@dataclass(frozen=True)
class _Ids:
    """The ids taken out of an event's properties."""

    distinct: str
    anon_id: Any
    device_id: Any
    alias: Any
    ip: Any


def to_message(ev: dict[str, Any], now: datetime, batch_sent: datetime | None, *,
               engage: bool = False) -> WireMessage | Rejection:
    props = dict(_dict(ev.get("properties")))
    name = ev.get("event")
    if engage and name is None:
        name = "$set"
        props.setdefault("$set", ev.get("$set") or {})
        props.setdefault("$set_once", ev.get("$set_once") or {})
    if not isinstance(name, str) or not name.strip():
        return Rejection(0, "missing_event", "a PostHog event needs a non-empty `event`")
    distinct = _id(ev.get("distinct_id")) or _id(ev.get("$distinct_id")) \
        or _id(props.get("distinct_id"))
    if distinct is None:
        return Rejection(0, "missing_identity", "the event has no `distinct_id`")
    for k in ("$set", "$set_once"):
        if k in ev and k not in props:
            props[k] = ev[k]
    ids, traits = _take_ids(name, distinct, props)
    m = WireMessage(type="track", event=name, properties=props, traits=traits or None)
    if _anonymous(name, ids, props):
        m.anonymous_id = distinct
    else:
        m.user_id = distinct
    if name in _SPECIAL_EVENTS:
        m.event = None
        _SPECIAL_EVENTS[name](m, ids, props)
    m.context = _context(props, ids.ip)
    m.message_id = _id(ev.get("uuid"))
    return _set_times(m, ev, now, batch_sent)


def _take_ids(name: str, distinct: str, props: dict[str, Any]
              ) -> tuple[_Ids, dict[str, Any]]:
    """Identifiers and person properties leave the properties: they become the message's
    ids and traits, which the collector seals (never kept in plain text)."""
    props.pop("token", None)
    props.pop("distinct_id", None)
    ip = props.pop("$ip", None)
    anon_id = props.pop("$anon_distinct_id", None)
    device_id = props.pop("$device_id", None)
    alias = props.pop("alias", None) if name in _ALIASES else None
    traits = {**_dict(props.pop("$set_once", None)), **_dict(props.pop("$set", None))}
    return _Ids(distinct, anon_id, device_id, alias, ip), traits


def _anonymous(name: str, ids: _Ids, props: dict[str, Any]) -> bool:
    """posthog-js says the person is not identified, or the id is the device's, or a
    server SDK's group identify without a person ("$company_acme" is nobody's id)."""
    return props.get("$is_identified") is False or (
        ids.device_id == ids.distinct and props.get("$is_identified") is not True) or (
        name == "$groupidentify"
        and ids.distinct == f"${props.get('$group_type')}_{props.get('$group_key')}")


def _identify(m: WireMessage, ids: _Ids, props: dict[str, Any]) -> None:
    m.type = "identify"
    m.user_id, m.anonymous_id = ids.distinct, _id(ids.anon_id)


def _alias(m: WireMessage, ids: _Ids, props: dict[str, Any]) -> None:
    m.type = "alias"
    m.user_id, m.anonymous_id = ids.distinct, None
    m.previous_id = _id(ids.alias)


def _set(m: WireMessage, ids: _Ids, props: dict[str, Any]) -> None:
    m.type = "identify"


def _group(m: WireMessage, ids: _Ids, props: dict[str, Any]) -> None:
    m.type = "group"
    m.group_id = _id(props.get("$group_key"))
    m.traits = {**_dict(props.get("$group_set")), "group_type": props.get("$group_type")}


def _page(m: WireMessage, ids: _Ids, props: dict[str, Any]) -> None:
    m.type = "page"
    m.name = _str(props.get("title"))


def _screen(m: WireMessage, ids: _Ids, props: dict[str, Any]) -> None:
    m.type = "screen"
    m.name = _str(props.get("$screen_name"))


_ALIASES = ("$create_alias", "$merge_dangerously")
_SPECIAL_EVENTS: dict[str, Callable[[WireMessage, _Ids, dict[str, Any]], None]] = {
    "$identify": _identify, "$create_alias": _alias, "$merge_dangerously": _alias,
    "$set": _set, "$set_once": _set, "$groupidentify": _group, "$pageview": _page,
    "$screen": _screen,
}
"""Events that are not a track; every other event keeps its name."""

Field = tuple[str, str, Callable[[Any], Any]]
"""(source field, target field, converter): a field the converter turns to None is left
out."""


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _referrer(v: Any) -> str | None:
    return None if v == "$direct" else _str(v)


def _mapped(source: dict[str, Any], fields: tuple[Field, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, target, convert in fields:
        if (x := convert(source.get(field))) is not None:
            out[target] = x
    return out


PAGE: tuple[Field, ...] = (("$current_url", "url", _str), ("$pathname", "path", _str),
                           ("$referrer", "referrer", _referrer), ("title", "title", _str))


def _scalar(v: Any) -> str | int | float | None:
    return v if isinstance(v, (str, int, float)) and not isinstance(v, bool) else None


def _number(v: Any) -> int | float | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _flag(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


MOBILE: tuple[tuple[str, tuple[Field, ...]], ...] = (
    ("os", (("$os_name", "name", _str), ("$os_version", "version", _str))),
    ("device", (("$device_manufacturer", "manufacturer", _str),
                ("$device_model", "model", _str), ("$device_name", "name", _str),
                ("$device_type", "type", _str))),
    ("app", (("$app_name", "name", _str), ("$app_version", "version", _str),
             ("$app_build", "build", _scalar), ("$app_namespace", "namespace", _str))),
    ("screen", (("$screen_width", "width", _number), ("$screen_height", "height", _number),
                ("$screen_density", "density", _number))),
    ("network", (("$network_wifi", "wifi", _flag), ("$network_cellular", "cellular", _flag),
                 ("$network_bluetooth", "bluetooth", _flag),
                 ("$network_carrier", "carrier", _str))),
)
"""The device properties of the iOS and Android SDKs (``PostHogContext.swift``,
``PostHogAndroidContext.kt``), copied into the context where Segment's and RudderStack's
mobile SDKs put the same facts (``context.os.name``, ``context.device.model``, …)."""
LOCALE: tuple[Field, ...] = (("$locale", "locale", _str), ("$timezone", "timezone", _str))


def _context(props: dict[str, Any], ip: Any) -> dict[str, Any]:
    page = _mapped(props, PAGE)
    ctx: dict[str, Any] = {"page": page} if page else {}
    for name, fields in MOBILE:
        if found := _mapped(props, fields):
            ctx[name] = found
    ctx.update(_mapped(props, LOCALE))
    if isinstance(props.get("$lib"), str):
        ctx["library"] = {"name": props["$lib"], "version": props.get("$lib_version")}
    agent = _str(props.get("$raw_user_agent")) or _str(props.get("$user_agent"))  # Android
    if agent:
        ctx["userAgent"] = agent
    if isinstance(ip, str):
        ctx["ip"] = ip
    return ctx


def _set_times(m: WireMessage, ev: dict[str, Any], now: datetime,
               batch_sent: datetime | None) -> WireMessage | Rejection:
    """The event's time (ISO 8601 or epoch; else ``offset`` milliseconds before now) and
    its send time (its own, else the batch's)."""
    ts = _time(ev.get("timestamp"))
    if ts is None and ev.get("timestamp") not in (None, ""):
        return Rejection(0, "invalid_time", "`timestamp` is neither an ISO 8601 time nor "
                         "milliseconds since the epoch")
    offset = ev.get("offset")
    if ts is None and isinstance(offset, int) and not isinstance(offset, bool) \
            and 0 <= offset < MAX_OFFSET_MS:
        ts = now - timedelta(milliseconds=offset)
    m.timestamp = ts
    m.sent_at = _time(ev.get("sent_at")) or batch_sent
    return m


def flags_response() -> dict[str, Any]:
    """What ``/flags`` and ``/decide`` answer: no flags, nothing quota-limited."""
    return {
        "featureFlags": {}, "featureFlagPayloads": {}, "flags": {},
        "errorsWhileComputingFlags": False, "requestId": None,
        "config": {"enable_collect_everything": True},
        "supportedCompression": SUPPORTED_COMPRESSION,
        "sessionRecording": False, "autocapture_opt_out": False, "capturePerformance": False,
        "heatmaps": False, "surveys": False, "siteApps": [], "toolbarParams": {},
        "isAuthenticated": False, "editorParams": {}, "elementsChainAsString": True,
    }


def remote_config(token: str) -> dict[str, Any]:
    """``/array/{token}/config``: what posthog-js reads at start-up."""
    return {"token": token, "supportedCompression": SUPPORTED_COMPRESSION,
            "hasFeatureFlags": False, "captureDeadClicks": False, "capturePerformance": False,
            "autocapture_opt_out": False, "autocaptureExceptions": False, "analytics": {},
            "elementsChainAsString": True, "sessionRecording": False, "heatmaps": False,
            "surveys": False, "defaultIdentifiedOnly": True, "siteApps": []}


def flags_key(body: bytes, query: dict[str, list[str]], content_type: str, limit: int
              ) -> str | None:
    """The project key of a ``/flags`` or ``/decide`` request (body or query)."""
    for name in ("token", "api_key"):
        if query.get(name):
            return query[name][0]
    if not body.strip():
        return None
    text = unwrap(body, query, content_type, limit)
    check_depth(text)
    try:
        doc = _json_decoder.decode(text)
    except _DECODE_ERRORS as exc:
        raise BadRequest("the body is not valid JSON", str(exc), code="invalid_json") from None
    if not isinstance(doc, dict):
        raise BadRequest("expected a JSON object", code="invalid_body")
    key = doc.get("token") or doc.get("api_key")
    if key is not None and not isinstance(key, str):
        raise BadRequest("`token` must be a string", code="wrong_type")
    return key or None
