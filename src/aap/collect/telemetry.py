"""Device telemetry: ``POST /v1/devices/telemetry`` and the MQTT bridge's messages.

A device sends a compact JSON batch of readings, ``[{"name", "ts", "values"}, ...]`` (a
single reading object is a batch of one), gzip allowed, with its device key
(``Authorization: Bearer dk_…``). Limits suit small devices
(``AAP_DEVICE_MAX_REQUEST_BYTES``, ``AAP_DEVICE_MAX_READINGS``).

Each reading becomes a ``track`` event named for the reading (``temperature``), its
values its properties (a location coarsened first, :mod:`aap.privacy.devices`), with
``device_id`` (the device's pseudonym, sealed as device ids are) as property and as
anonymousId, ``device`` (its handle, a keyed hash: devices can be counted) as property,
and the owner's userId when a person owns the device, so the owner's consent governs it. Its messageId
is derived from the device, the time and the name: a reading sent twice (a retry, an
MQTT redelivery) is one event (the processor's dedup). The events then take the
collector's one ingestion path (:meth:`aap.collect.app.Collector.accept_batch`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from aap import errors
from aap.asgi import Connection
from aap.collect.keys import KeyLookups
from aap.collect.ratelimit import RateLimiter
from aap.collect.segment import Parsed, Rejection, WireMessage
from aap.devices import Device, Devices
from aap.jsonlimits import check_depth
from aap.privacy.devices import Handles, Owners, coarsen_location
from aap.settings import DeviceSettings
from aap.sources import Source, Sources

AcceptBatch = Callable[[Connection, Source, Parsed, bytes | None], Awaitable[dict[str, Any]]]
"""The collector's one ingestion path (:meth:`aap.collect.app.Collector.accept_batch`)."""

PATH = "/v1/devices/telemetry"
MAX_VALUES = 32
"""Values in one reading."""


def reading_id(device_id: str, ts: datetime, name: str) -> str:
    """The reading's messageId: the same reading sent again gets the same id."""
    digest = hashlib.sha256(f"{device_id}|{ts.isoformat()}|{name}".encode()).hexdigest()
    return "rd_" + digest[:32]


def _time(ts: Any) -> datetime | str:
    if isinstance(ts, bool) or ts is None:
        return "`ts` is missing: seconds since 1970 (a number) or an ISO 8601 time"
    if isinstance(ts, (int, float)):
        if not math.isfinite(ts) or not 0 <= ts < 2**33:
            return "`ts` is not a time in seconds since 1970"
        return datetime.fromtimestamp(ts, UTC)
    if isinstance(ts, str):
        try:
            t = datetime.fromisoformat(ts)
        except ValueError:
            return f"`ts` {ts[:40]!r} is not an ISO 8601 time"
        return t if t.tzinfo else t.replace(tzinfo=UTC)
    return "`ts` must be a number or a string"


def _values(values: Any) -> dict[str, Any] | str:
    if not isinstance(values, dict) or not values:
        return "`values` must be a non-empty object of numbers, strings or booleans"
    if len(values) > MAX_VALUES:
        return f"`values` has {len(values)} entries; the most is {MAX_VALUES}"
    for k, v in values.items():
        if not k or len(k) > 64 or k in ("device_id", "device"):
            return f"value name {k[:70]!r} must be 1 to 64 characters (not device_id or device)"
        if isinstance(v, float) and not math.isfinite(v):
            return f"value {k!r} is not a finite number"
        if not isinstance(v, (int, float, str, bool)) or (isinstance(v, str) and len(v) > 200):
            return f"value {k!r} must be a number, a boolean or a string of at most 200"
    return values


def parse_readings(body: bytes, device: Device, handle: str, owner: str | None,
                   settings: DeviceSettings) -> Parsed:
    """A device's batch as the collector's messages (each bad reading rejected alone)."""
    if not body.strip():
        raise errors.BadRequest("the request body is empty", code="empty_body")
    check_depth(body)
    try:
        doc = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise errors.BadRequest("the body is not valid JSON", str(exc),
                                code="invalid_json") from None
    readings = [doc] if isinstance(doc, dict) else doc
    if not isinstance(readings, list) or not readings:
        raise errors.BadRequest("the body must be a reading {name, ts, values} or a non-empty"
                                " array of them", code="invalid_batch")
    if len(readings) > settings.device_max_readings:
        raise errors.PayloadTooLarge(
            f"{len(readings)} readings; the most in one batch is"
            f" {settings.device_max_readings} (AAP_DEVICE_MAX_READINGS)", code="too_many_readings")
    messages: list[tuple[int, WireMessage]] = []
    rejected: list[Rejection] = []
    for i, r in enumerate(readings):
        problem = _reading(r, device, handle, owner, settings)
        if isinstance(problem, str):
            rejected.append(Rejection(i, "invalid_reading", problem))
        else:
            messages.append((i, problem))
    return Parsed(messages, rejected, None)


def _reading(r: Any, device: Device, handle: str, owner: str | None,
             settings: DeviceSettings) -> WireMessage | str:
    if not isinstance(r, dict):
        return "a reading is an object {name, ts, values}"
    unknown = set(r) - {"name", "ts", "values"}
    if unknown:
        return f"unknown fields {sorted(unknown)}: a reading has name, ts and values"
    name = r.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        return "`name` must be a string of 1 to 100 characters"
    ts = _time(r.get("ts"))
    if isinstance(ts, str):
        return ts
    values = _values(r.get("values"))
    if isinstance(values, str):
        return values
    props = coarsen_location(values, settings.device_location_decimals)
    return WireMessage(type="track", event=name, message_id=reading_id(device.id, ts, name),
                       user_id=owner, anonymous_id=device.id, timestamp=ts,
                       properties={**props, "device_id": device.id, "device": handle},
                       context={"library": {"name": "aap-devices"}})


class Telemetry:
    """Device readings into the collector: the REST endpoint and the MQTT bridge's."""

    def __init__(self, data_dir: Path, settings: DeviceSettings, sources: Sources,
                 accept_batch: AcceptBatch, limiter: RateLimiter,
                 key_lookups_per_second: float) -> None:
        self.settings = settings
        self.sources = sources
        self.accept_batch = accept_batch
        self.devices = Devices(data_dir)
        self.owners = Owners(data_dir)
        self.handles = Handles(data_dir)
        self.keys = KeyLookups("device", self.devices.by_key, limiter, key_lookups_per_second)
        """A revoked key stops working within :data:`aap.collect.keys.KNOWN_TTL_S`."""

    def device(self, authorization: str | None) -> Device:
        scheme, _, key = (authorization or "").partition(" ")
        if not authorization:
            raise errors.Unauthorized("no device key: send Authorization: Bearer <device key>",
                                      code="missing_device_key")
        if scheme.lower() != "bearer" or not key.strip():
            raise errors.Unauthorized("send the device key as Authorization: Bearer <key>",
                                      code="bad_auth_scheme")
        found = self.keys.get(key.strip())
        if found is None:
            raise errors.Unauthorized("unknown or revoked device key", code="unknown_device_key")
        return found

    async def accept(self, conn: Connection, device: Device, body: bytes) -> dict[str, Any]:
        """A device's batch through the collector's one ingestion path; the answer once the
        readings are durable."""
        source = self.sources.by_id(device.source_id)
        if source is None:
            raise errors.Unauthorized("the device's source no longer exists",
                                      code="unknown_device_key")
        owner = None
        if device.owner_subject is not None:
            owner = self.owners.user_id(device.owner_subject)
            if owner is None:  # the owner was erased: nothing of theirs is stored again
                parsed = parse_readings(body, device, "", None, self.settings)
                return {"success": True, "accepted": 0,
                        "not_stored": {"erased_subject": len(parsed.messages)}}
        parsed = parse_readings(body, device, self.handles.of(device.id), owner, self.settings)
        return await self.accept_batch(conn, source, parsed, None)

    def close(self) -> None:
        self.devices.close()
        self.owners.close()
