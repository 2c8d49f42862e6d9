"""The admin part of the REST API (role admin): sources and health.

``GET /sources`` lists the sources without any key (only the first characters of the
write key, as ``aap sources list`` does); ``POST /sources`` takes the options of ``aap
sources create`` and answers the write key (and the server key, when asked for) once:
the registry keeps only their digests. ``PATCH /sources/{name or id}`` changes origins,
rate limit, purposes and bases, CNIL mode and controller group; ``POST
/sources/{name or id}/server_key`` replaces its server key (answered once). Every change
is audited (``source.created``, ``source.updated``, ``source.controller_set``,
``source.server_key_created``).

``GET /health`` gathers what an operator looks at: the log (size, lag per consumer
group), the tiers (hot rows and bytes, warm and cold files, rows and bytes), free disk,
the processor (position, last write, failures, dead letters) and which processes are up.
The core answers it from its own parts (:class:`HealthParts`).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from aap import errors
from aap.datadir import DataDir
from aap.log.base import Log
from aap.sources import Source, SourceExists, Sources
from aap.store.warehouse import Warehouse

MAX_NAME = 100
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\?#%]")
"""Characters a source name may not hold: controls, and what would break the portal's
``/portal/{source name}`` path. Markup is allowed: a name is text, shown as text."""
MAX_ORIGINS = 100


class NewSource(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    origins: list[str] = msgspec.field(default_factory=lambda: ["*"])
    rate_limit: float | None = None
    historical: bool = False
    purposes: dict[str, str] | None = None
    """Purpose id → lawful basis (default: ``analytics`` on consent, or the CNIL mode's)."""
    mode: str = "standard"
    controller: str | None = None
    server_key: bool = False


class SourcePatch(msgspec.Struct, forbid_unknown_fields=True):
    origins: list[str] | None = None
    rate_limit: float | None = None
    purposes: dict[str, str] | None = None
    mode: str | None = None
    controller: str | msgspec.UnsetType | None = msgspec.UNSET
    """A group name, ``null`` for "its own controller", absent for no change."""


def check_name(name: str) -> str:
    if not name.strip():
        raise errors.BadRequest("a source needs a non-empty name", code="invalid_name")
    if (len(name) > MAX_NAME or name != name.strip() or _BAD_NAME.search(name)
            or not name.isprintable()):
        raise errors.BadRequest(
            f"a source name is 1 to {MAX_NAME} characters, without leading or trailing"
            " spaces, control or format characters (such as U+202E) or any of / \\ ? # %",
            {"name": name},
            code="invalid_name")
    return name


def check_origins(origins: list[str]) -> tuple[str, ...]:
    """``*`` or browser origins (``https://host[:port]``): nothing else reaches the
    ``Origin`` check of the collector."""
    if len(origins) > MAX_ORIGINS:
        raise errors.BadRequest(f"at most {MAX_ORIGINS} origins", code="invalid_origin")
    for origin in origins:
        if origin != "*" and not _is_origin(origin):
            raise errors.BadRequest(
                f"{origin!r} is not an origin: give '*' or scheme://host[:port]"
                " (http or https, no path, query or spaces)", {"origin": origin},
                code="invalid_origin")
    return tuple(dict.fromkeys(origins)) or ("*",)


def _is_origin(origin: str) -> bool:
    if len(origin) > 300 or any(c.isspace() or not c.isprintable() for c in origin):
        return False
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname)
            and f"{parts.scheme}://{parts.netloc}" == origin
            and not parts.username and not parts.password)


def source_json(s: Source) -> dict[str, Any]:
    """A source as the API shows it: never a key, only the first characters of the
    write key and whether there is a server key."""
    return {"id": s.id, "name": s.name, "key_hint": s.key_hint, "created_at": s.created_at,
            "origins": list(s.allowed_origins), "rate_limit": s.rate_limit,
            "historical": s.historical, "purposes": dict(s.purposes), "mode": s.mode,
            "controller": s.controller, "scope": s.scope,
            "server_key": s.server_key_hint is not None}


def _decode(body: bytes, typ: type) -> Any:
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as exc:
        raise errors.BadRequest(f"invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise errors.BadRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None


class SourcesAPI:
    """``/sources``: the handlers (``params, body, role`` → answer) on a registry."""

    def __init__(self, data_dir: Path) -> None:
        self.sources = Sources(data_dir)

    def list_sources(self, actor: str) -> Any:
        return {"sources": [source_json(s) for s in self.sources.list()]}

    def create_source(self, body: bytes, actor: str) -> Any:
        req: NewSource = _decode(body, NewSource)
        name = check_name(req.name)
        origins = check_origins(req.origins)
        if req.mode not in ("standard", "cnil"):
            raise errors.BadRequest("mode is 'standard' or 'cnil'", code="invalid_mode")
        try:
            src, key = self.sources.create(
                name, allowed_origins=origins, rate_limit=req.rate_limit,
                historical=req.historical, purposes=req.purposes, mode=req.mode,
                actor=actor, controller=req.controller)
        except SourceExists as exc:
            raise errors.Conflict(str(exc), code="source_exists") from None
        except ValueError as exc:
            raise errors.BadRequest(str(exc), code="invalid_source") from None
        out = {**source_json(src), "write_key": key}
        if req.server_key:
            src, secret = self.sources.new_server_key(src.name, actor)
            out.update(source_json(src), server_key=True, server_key_secret=secret)
        return out

    def _find(self, ref: str) -> Source:
        src = self.sources.by_name(ref) or self.sources.by_id(ref)
        if src is None:
            raise errors.NotFound(f"no source named {ref!r}", code="no_source")
        return src

    def update_source(self, ref: str, body: bytes, actor: str) -> Any:
        req: SourcePatch = _decode(body, SourcePatch)
        src = self._find(ref)
        if req.mode is not None and req.mode not in ("standard", "cnil"):
            raise errors.BadRequest("mode is 'standard' or 'cnil'", code="invalid_mode")
        origins = check_origins(req.origins) if req.origins is not None else None
        try:
            src = self.sources.update(src.name, allowed_origins=origins,
                                      rate_limit=req.rate_limit, purposes=req.purposes,
                                      mode=req.mode, actor=actor)
            if not isinstance(req.controller, msgspec.UnsetType) \
                    and req.controller != src.controller:
                src = self.sources.set_controller(src.name, req.controller, actor)
        except ValueError as exc:
            raise errors.BadRequest(str(exc), code="invalid_source") from None
        return source_json(src)

    def new_server_key(self, ref: str, actor: str) -> Any:
        """A new server (secret) key for the source, replacing the old one; answered once."""
        src, secret = self.sources.new_server_key(self._find(ref).name, actor)
        return {**source_json(src), "server_key_secret": secret}


@dataclass
class HealthParts:
    """What the core's health answer is made from."""

    data_dir: Path
    log: Log
    warehouse: Warehouse
    processor: Any
    """The :class:`~aap.process.processor.Processor` (``position``, ``failures``,
    ``last_write_at``)."""
    processor_alive: Any
    """() → whether the processor's thread runs."""
    workers: int
    started_at: float
    publisher: Any = None
    """The :class:`~aap.store.publish.Publisher` (``AAP_PUBLISH_SECONDS``), else None."""


def health(parts: HealthParts) -> dict[str, Any]:
    st = parts.log.stats()
    tiers = parts.warehouse.tier_stats()
    cur = parts.warehouse.con.cursor()
    try:
        dead, dead_events = cur.execute(
            "SELECT count(*), coalesce(sum(events), 0) FROM dead_letters").fetchone() or (0, 0)
    finally:
        cur.close()
    disk = shutil.disk_usage(parts.data_dir)
    proc = parts.processor
    return {
        "log": {"size_bytes": st.size_bytes, "records": st.head_offset,
                "events": st.total_events, "lag_events": dict(st.lag_events),
                "lag_max": max(st.lag_events.values(), default=0)},
        "tiers": {"hot": {"rows": tiers["hot"][1], "bytes": _hot_bytes(parts.warehouse)},
                  **{t: {"files": f, "rows": r, "bytes": b} for t, (f, r, b) in
                     ((t, tiers.get(t, (0, 0, 0))) for t in ("warm", "cold"))}},
        "disk": {"free_bytes": disk.free, "total_bytes": disk.total},
        "processor": {"running": bool(parts.processor_alive()), "position": proc.position,
                      "last_write_at": getattr(proc, "last_write_at", None),
                      "failures": proc.failures, "dead_letters": int(dead),
                      "dead_letter_events": int(dead_events)},
        "publishing": _publishing(parts.publisher),
        "core": {"up": True, "pid": os.getpid(),
                 "uptime_s": round(time.time() - parts.started_at, 1)},
        "workers": {"configured": parts.workers,
                    "up": _workers_up(DataDir(parts.data_dir).metrics)},
        "at": round(time.time(), 3),
    }


def _publishing(publisher: Any) -> dict[str, Any] | None:
    """The publisher's state (None: publishing is off): ``stopped`` is why it publishes
    nothing more (erasures lost here), else null."""
    if publisher is None:
        return None
    return {"every_s": publisher.interval, "published_rows": publisher.published_rows,
            "last_listed_at": publisher.last_listed_at, "stopped": publisher.stopped}


def _hot_bytes(wh: Warehouse) -> int:
    """The hot tier's DuckDB file and its write-ahead log."""
    return sum(p.stat().st_size for p in wh.path.parent.glob(wh.path.name + "*")
               if p.is_file())


def _workers_up(metrics: Path) -> int:
    """Collector workers alive: the pids of the metrics files (one set per worker, see
    :mod:`aap.collect.metrics`) that still run."""
    pids = set()
    for p in metrics.glob("*_*.db"):
        tail = p.stem.rsplit("_", 1)[-1]
        if tail.isdigit() and int(tail) != os.getpid():
            pids.add(int(tail))
    up = 0
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        up += 1
    return up
