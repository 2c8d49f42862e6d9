"""Input rows → Segment-shaped messages (:class:`~aap.collect.segment.WireMessage`),
which the collector's one ingestion path then validates, gates, scrubs, seals and
appends (:mod:`aap.imports.run`).

A row the mapping cannot make a message of is refused with a reason. A row with no
message id gets one derived from its content, so that importing it again (the same
file, or a re-export of it) gives the same id and the processor keeps one copy.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import msgspec

from aap.collect import posthog
from aap.collect.segment import Rejection, WireMessage
from aap.imports import mapping as mappings
from aap.imports.mapping import ID_FIELDS, Mapping, ObjectSpec, Path_

Row = dict[str, Any]
Converter = Callable[[Row], "WireMessage | Rejection"]
_json = msgspec.json.Encoder(decimal_format="number", order="deterministic", enc_hook=str)
_size = msgspec.json.Encoder(decimal_format="number", enc_hook=str)
_decode = msgspec.json.Decoder()
MS_ABOVE = 100_000_000_000
"""An epoch number above this is in milliseconds (in seconds it would be after 5138)."""
US_ABOVE = 100_000_000_000_000


def message_id(row: Row) -> str:
    """A message id derived from the row's content (the same row, the same id)."""
    digest = hashlib.blake2b(_json.encode(row), digest_size=16)
    return "imp-" + digest.hexdigest()


_SIMPLE = frozenset({str, int, float, bool, type(None)})


def too_large(row: Row, limit: int) -> Rejection | None:
    """The collector's limit on one event's size (``AAP_MAX_EVENT_BYTES``), on the row as
    JSON."""
    size = len(_size.encode(row))
    if size <= limit:
        return None
    return Rejection(0, "event_too_large", f"the row is {size} bytes as JSON; the limit is"
                     f" {limit}")


def plain(v: Any) -> Any:
    """A value JSON can carry (an input's dates, decimals and bytes as text or numbers)."""
    if type(v) in _SIMPLE or isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, (datetime, date, time)):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode()
    return str(v)


def get(row: Row, path: Path_) -> Any:
    v: Any = row.get(path[0])
    for key in path[1:]:
        v = _object(v).get(key)
    return v


def _object(v: Any) -> dict[str, Any]:
    """An object value, or a JSON object held as text (PostHog's ``properties``)."""
    if isinstance(v, dict):
        return v
    if isinstance(v, (str, bytes)) and v[:1] in ("{", b"{"):
        try:
            out = _decode.decode(v)
        except msgspec.DecodeError:
            return {}
        return out if isinstance(out, dict) else {}
    return {}


def timestamp(v: Any, unit: str) -> datetime | None:
    """The time a value names: a date-time, an ISO 8601 text, or an epoch number (in
    ``unit``, or told apart by size with ``auto``); None when it names none."""
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=UTC)
    if isinstance(v, str) and unit in ("auto", "iso"):
        text = v.strip()
        if unit == "auto" and text.lstrip("-").replace(".", "", 1).isdigit():
            return timestamp(float(text), unit)
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    if isinstance(v, str) and unit != "iso":
        try:
            return timestamp(float(v), unit)
        except ValueError:
            return None
    if isinstance(v, (int, float)) and not isinstance(v, bool) and unit != "iso":
        scale = {"s": 1, "ms": 1e3, "us": 1e6}.get(unit) or (
            1e6 if abs(v) > US_ABOVE else 1e3 if abs(v) > MS_ABOVE else 1)
        try:
            return datetime.fromtimestamp(v / scale, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _id(v: Any) -> str | int | None:
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (str, int)):
        return v
    return str(plain(v))


def getter(path: Path_) -> Callable[[Row], Any]:
    """Reads a path from a row (a plain column at the cost of one ``dict.get``)."""
    if len(path) == 1:
        key = path[0]
        return lambda row: row.get(key)
    return lambda row: get(row, path)


def build(mapping: Mapping) -> Converter:
    """The converter of a mapping: one row in, one message (or why not) out."""
    scalars = mapping.scalars
    ts_path = scalars["timestamp"]
    ts_get, unit = getter(ts_path), mapping.timestamp_unit
    texts: list[tuple[str, Callable[[Row], Any]]] = [
        (k, getter(scalars[k])) for k in ("event", "name") if k in scalars]
    ids: list[tuple[str, Callable[[Row], Any]]] = [
        (k, getter(scalars[k])) for k in ID_FIELDS if k in scalars]
    type_get = getter(scalars["type"]) if "type" in scalars else None
    consumed = mapping.consumed()
    objects = [(key, _collector(spec, consumed)) for key, spec in mapping.objects.items()]
    default_type = mapping.default_type

    def convert(row: Row) -> WireMessage | Rejection:
        raw_ts = ts_get(row)
        ts = raw_ts if type(raw_ts) is datetime and raw_ts.tzinfo else timestamp(raw_ts, unit)
        if ts is None:
            return Rejection(0, "invalid_timestamp" if raw_ts not in (None, "") else
                             "missing_timestamp", f"`{'.'.join(ts_path)}` is not a time:"
                             f" {str(raw_ts)[:40]!r}")
        kw: dict[str, Any] = {"timestamp": ts, "type": (
            str(type_get(row) or "") if type_get else "") or default_type}
        for key, read in texts:
            v = read(row)
            kw[key] = v if v is None or type(v) is str else str(plain(v))
        for key, read in ids:
            v = read(row)
            kw[key] = v if type(v) is str else _id(v)
        for key, collect in objects:
            kw[key] = collect(row)
        if kw.get("message_id") is None:
            kw["message_id"] = message_id(row)
        return WireMessage(**kw)

    return convert


def _collector(spec: ObjectSpec, consumed: list[Path_]) -> Callable[[Row], dict[str, Any]]:
    """Reads an object field of the message from a row: a whole object column (less the
    paths read elsewhere), or named columns (each read by a getter made once)."""
    if spec.whole is not None:
        whole, n = spec.whole, len(spec.whole)
        drop = [path[n] for path in consumed if len(path) == n + 1 and path[:n] == whole]

        def collect_whole(row: Row) -> dict[str, Any]:
            out = dict(_object(get(row, whole)))
            for key in drop:  # an id read elsewhere never stays here in clear
                out.pop(key, None)
            return {k: plain(v) for k, v in out.items()}
        return collect_whole
    named = [(name, getter(path)) for name, path in spec.named]

    def collect_named(row: Row) -> dict[str, Any]:
        out = {}
        for name, read in named:
            v = read(row)
            if v is not None:
                out[name] = v if type(v) in _SIMPLE else plain(v)
        return out
    return collect_named


def segment_message(row: Row) -> WireMessage | Rejection:
    """A row of Segment's S3 archive: the message as Segment received it."""
    try:
        m = msgspec.convert(row, WireMessage, strict=False)
    except msgspec.ValidationError as exc:
        return Rejection(0, "wrong_type", str(exc))
    if m.message_id is None:
        m.message_id = message_id(row)
    m.sent_at = None  # a historical source keeps the times as sent
    return m


def posthog_message(row: Row) -> WireMessage | Rejection:
    """A row of PostHog's events export (``properties`` a JSON text in Parquet and
    JSON lines): converted as the PostHog capture endpoint converts a live event."""
    ev = dict(row)
    ev["properties"] = _object(ev.get("properties"))
    if isinstance(ev.get("timestamp"), datetime):
        ev["timestamp"] = ev["timestamp"].isoformat()
    got = posthog.to_message(ev, datetime.now(UTC), None)
    if isinstance(got, WireMessage):
        got.sent_at = None
        if got.message_id is None:
            got.message_id = message_id(row)
    return got


@dataclass(frozen=True)
class Recipe:
    """How rows become messages, in a form that can go to another process (an import's
    workers each build their converter from it)."""

    preset: str | None = None
    """``segment`` or ``posthog``: whole messages as that tool exported them."""
    mapping: str | None = None
    """Otherwise a mapping's TOML text (already checked where it was read)."""

    def build(self) -> Converter:
        if self.preset == "segment":
            return segment_message
        if self.preset == "posthog":
            return posthog_message
        if self.mapping is None:
            raise ValueError("a recipe needs a preset or a mapping")
        return build(mappings.parse(self.mapping, "the mapping"))

    @property
    def text(self) -> str:
        """What the import's identity records of it."""
        return f"preset:{self.preset}" if self.preset else str(self.mapping)
