"""Sources, their keys and their controller.

A write key (``wk_…``) is a random 192-bit token shown once when the source is created;
only its SHA-256 digest is stored. (A fast digest is safe for a key of that entropy; the
API keys of people use a slow hash.) A write key is **public**: a page ships it to every
browser. A source can also get a **server key** (``sk_…``, same kind of token, same
storage), which only the site's backend holds: it sends events like the write key, and
a consent statement sent with it may change the person's stored history (see
:mod:`aap.privacy.consent`).

Consent is given to a controller. Each source is its own controller unless an admin
puts it in a **controller group** (``aap sources controller NAME GROUP``): consent
statements and self-service requests made through one source of a group apply to every
source of the group, and to no other source.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

import msgspec
import msgspec.structs

from aap.datadir import DataDir
from aap.privacy.audit import AuditLog
from aap.privacy.cnil import CNIL, source_errors
from aap.privacy.purposes import Basis, Registry
from aap.settings import CollectorSettings
from aap.store.meta import is_conflict, open_meta
from aap.store.migrations import Schema, unversioned_columns

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL UNIQUE,
    key_hint TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    allowed_origins TEXT NOT NULL,
    rate_limit REAL NOT NULL,
    historical INTEGER NOT NULL DEFAULT 0,
    purposes TEXT NOT NULL DEFAULT '{"analytics": "consent"}',
    mode TEXT NOT NULL DEFAULT 'standard',
    controller TEXT,
    server_key_hash TEXT UNIQUE,
    server_key_hint TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS sources_server_key ON sources (server_key_hash);
"""

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    id TEXT PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    key_hash TEXT NOT NULL UNIQUE,
    key_hint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    allowed_origins TEXT NOT NULL,
    rate_limit DOUBLE PRECISION NOT NULL,
    historical INTEGER NOT NULL DEFAULT 0,
    purposes TEXT NOT NULL DEFAULT '{"analytics": "consent"}',
    mode TEXT NOT NULL DEFAULT 'standard',
    controller TEXT,
    server_key_hash TEXT UNIQUE,
    server_key_hint TEXT
);
"""

SCHEMA = Schema("sources", _SCHEMA, postgres=_PG_SCHEMA, steps=(
    # registries made before these columns existed (and before schema versions)
    unversioned_columns("sources", (
        ("historical", "INTEGER NOT NULL DEFAULT 0"),
        ("purposes", """TEXT NOT NULL DEFAULT '{"analytics": "consent"}'"""),
        ("mode", "TEXT NOT NULL DEFAULT 'standard'"),
        ("controller", "TEXT"), ("server_key_hash", "TEXT"), ("server_key_hint", "TEXT"))),
))
"""The registry's schema versions (:mod:`aap.store.migrations`)."""


class Source(msgspec.Struct, frozen=True):
    id: str
    name: str
    key_hint: str
    created_at: int
    allowed_origins: tuple[str, ...] = ("*",)
    rate_limit: float = 0.0
    """Events per second the source may send; 0 means unlimited."""
    historical: bool = False
    """A historical import: timestamps are kept as sent, not corrected for clock skew."""
    purposes: tuple[tuple[str, str], ...] = (("analytics", "consent"),)
    """The purposes the source's events serve, each with its lawful basis."""
    mode: str = "standard"
    """``cnil``: consent-exempt anonymous audience measurement (:mod:`aap.privacy.cnil`)."""
    controller: str | None = None
    """The controller group the source belongs to (``None``: it is its own controller)."""
    server_key_hint: str | None = None
    """The first characters of the source's server key, if it has one."""
    server_key: bool = False
    """This copy of the source was found by its server (secret) key, not its public write
    key: the request comes from the site's backend."""

    @property
    def scope(self) -> str:
        """What consent statements and self-service requests made through this source are
        scoped to: its controller group (``controller:GROUP``), else the source itself."""
        return f"controller:{self.controller}" if self.controller else self.id

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scopes whose statements govern this source's events: its own id (statements
        made before it joined a group, and before statements had scopes) and its group."""
        return (self.id, self.scope) if self.controller else (self.id,)

    def allows_origin(self, origin: str) -> bool:
        return "*" in self.allowed_origins or origin in self.allowed_origins


GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_group(group: str) -> str:
    if not GROUP_NAME.match(group):
        raise ValueError("a controller group is 1 to 64 letters, digits, '.', '_' or '-'")
    return group


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class SourceExists(ValueError):
    pass


class Sources:
    """The source registry: a small SQLite database beside the log, or the shared state
    on PostgreSQL when ``AAP_META_URL`` is set (:mod:`aap.store.meta`)."""

    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.path = DataDir(data_dir).meta_db
        self._db = open_meta(self.path, url)
        self._db.migrate(SCHEMA)

    def create(
        self, name: str, *, allowed_origins: tuple[str, ...] = ("*",),
        rate_limit: float | None = None,
        historical: bool = False, purposes: dict[str, str] | None = None,
        mode: str = "standard", actor: str = "admin", controller: str | None = None,
    ) -> tuple[Source, str]:
        """Create a source; returns it with its write key (the only time the key is seen).

        ``purposes``: purpose id → lawful basis (default ``{"analytics": "consent"}``);
        every purpose must be in the registry and every basis one of :class:`Basis`.
        ``rate_limit``: events/s, 0 for unlimited; None takes
        ``AAP_DEFAULT_SOURCE_RATE_LIMIT``."""
        if rate_limit is None:
            rate_limit = CollectorSettings.load().default_source_rate_limit
        if not name.strip():
            raise ValueError("a source needs a non-empty name")
        purposes = self._checked_purposes(mode, purposes)
        if rate_limit < 0:
            raise ValueError("rate limit must be 0 (unlimited) or positive")
        if controller is not None:
            check_group(controller)
        key = "wk_" + secrets.token_urlsafe(24)
        src = Source(
            id="src_" + secrets.token_hex(6),
            name=name,
            key_hint=key[:7] + "…",
            created_at=int(time.time()),
            allowed_origins=tuple(allowed_origins) or ("*",),
            rate_limit=float(rate_limit),
            historical=historical,
            purposes=tuple(purposes.items()),
            mode=mode,
            controller=controller,
        )
        self._insert(src, key, purposes)
        AuditLog(self.data_dir).append(actor, "source.created", {
            "source": src.id, "name": src.name, "purposes": purposes,
            "historical": historical, "mode": mode, "controller": controller})
        return src, key

    def _insert(self, src: Source, key: str, purposes: dict[str, str]) -> None:
        try:
            self._db.execute(
                "INSERT INTO sources (id, name, key_hash, key_hint, created_at, allowed_origins,"
                " rate_limit, historical, purposes, mode, controller)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (src.id, src.name, hash_key(key), src.key_hint, src.created_at,
                 json.dumps(list(src.allowed_origins)), src.rate_limit, int(src.historical),
                 json.dumps(purposes), src.mode, src.controller),
            )
        except Exception as exc:
            if not is_conflict(exc):
                raise
            raise SourceExists(f"a source named {src.name!r} already exists") from None

    def _checked_purposes(self, mode: str, purposes: dict[str, str] | None
                          ) -> dict[str, str]:
        """The source's purposes (the mode's default when none are given), each in the
        registry with a known lawful basis, and allowed in this mode."""
        registry = Registry.for_data_dir(self.data_dir)
        exempt = {p.id for p in registry.purposes.values() if p.cnil_exempt}
        default = (dict.fromkeys(sorted(exempt), "legitimate_interest") if mode == CNIL
                   else {"analytics": "consent"})
        purposes = dict(purposes or default)
        for pid, basis in purposes.items():
            registry.get(pid)
            if basis not in {b.value for b in Basis}:
                raise ValueError(f"unknown lawful basis {basis!r}; use one of "
                                 + ", ".join(b.value for b in Basis))
        problem = source_errors(mode, purposes, exempt)
        if problem:
            raise ValueError(problem)
        return purposes

    def set_rate_limit(self, name: str, rate_limit: float, *, actor: str = "admin") -> Source:
        """Change a source's rate limit (events/s, 0 for unlimited); the collector's
        workers pick it up within :data:`aap.collect.keys.KNOWN_TTL_S`."""
        if rate_limit < 0:
            raise ValueError("rate limit must be 0 (unlimited) or positive")
        src = next((s for s in self.list() if s.name == name), None)
        if src is None:
            raise ValueError(f"no source named {name!r}")
        self._db.execute("UPDATE sources SET rate_limit = ? WHERE id = ?",
                          (float(rate_limit), src.id))
        AuditLog(self.data_dir).append(actor, "source.updated", {
            "source": src.id, "rate_limit": float(rate_limit)})
        return msgspec.structs.replace(src, rate_limit=float(rate_limit))

    def update(self, name: str, *, allowed_origins: tuple[str, ...] | None = None,
               rate_limit: float | None = None, purposes: dict[str, str] | None = None,
               mode: str | None = None, actor: str = "admin") -> Source:
        """Change what is given (origins, rate limit, purposes and bases, mode) and audit
        it as ``source.updated``. A new mode without purposes takes that mode's default
        purposes; the purposes are checked as at creation."""
        src = self.by_name(name)
        if src is None:
            raise ValueError(f"no source named {name!r}")
        if rate_limit is not None and rate_limit < 0:
            raise ValueError("rate limit must be 0 (unlimited) or positive")
        new_mode = mode or src.mode
        if purposes is None and new_mode == src.mode:
            purposes = dict(src.purposes)
        checked = self._checked_purposes(new_mode, purposes)
        changed: dict[str, Any] = {}
        if allowed_origins is not None:
            changed["allowed_origins"] = list(allowed_origins) or ["*"]
        if rate_limit is not None:
            changed["rate_limit"] = float(rate_limit)
        if checked != dict(src.purposes):
            changed["purposes"] = checked
        if new_mode != src.mode:
            changed["mode"] = new_mode
        if not changed:
            return src
        self._db.execute(
            "UPDATE sources SET allowed_origins = ?, rate_limit = ?, purposes = ?, mode = ?"
            " WHERE id = ?",
            (json.dumps(changed.get("allowed_origins", list(src.allowed_origins))),
             changed.get("rate_limit", src.rate_limit), json.dumps(checked), new_mode, src.id))
        AuditLog(self.data_dir).append(actor, "source.updated", {"source": src.id, **changed})
        out = self.by_id(src.id)
        assert out is not None
        return out

    def by_key(self, key: str) -> Source | None:
        """The source of a write key or of a server key (then with ``server_key`` set)."""
        digest = hash_key(key)
        row = self._db.fetchone(
            f"SELECT {_COLUMNS}, server_key_hash = ? FROM sources"
            " WHERE key_hash = ? OR server_key_hash = ?", (digest, digest, digest))
        if not row:
            return None
        src = _row(row)
        return msgspec.structs.replace(src, server_key=True) if row[-1] else src

    def by_id(self, source_id: str) -> Source | None:
        row = self._db.fetchone(f"SELECT {_COLUMNS} FROM sources WHERE id = ?", (source_id,))
        return _row(row) if row else None

    def by_name(self, name: str) -> Source | None:
        row = self._db.fetchone(f"SELECT {_COLUMNS} FROM sources WHERE name = ?", (name,))
        return _row(row) if row else None

    def list(self) -> list[Source]:
        rows = self._db.fetchall(f"SELECT {_COLUMNS} FROM sources ORDER BY created_at, name")
        return [_row(r) for r in rows]

    def new_server_key(self, name: str, actor: str = "admin") -> tuple[Source, str]:
        """Give the source a new server key (the old one, if any, stops working); returns
        the source and the key (the only time it is seen)."""
        src = self.by_name(name)
        if src is None:
            raise ValueError(f"no source named {name!r}")
        key = "sk_" + secrets.token_urlsafe(24)
        self._db.execute("UPDATE sources SET server_key_hash = ?, server_key_hint = ?"
                          " WHERE id = ?", (hash_key(key), key[:7] + "…", src.id))
        AuditLog(self.data_dir).append(actor, "source.server_key_created", {"source": src.id})
        return msgspec.structs.replace(src, server_key_hint=key[:7] + "…"), key

    def set_controller(self, name: str, group: str | None, actor: str = "admin") -> Source:
        """Put the source in a controller group (``None``: it is its own controller)."""
        src = self.by_name(name)
        if src is None:
            raise ValueError(f"no source named {name!r}")
        if group is not None:
            check_group(group)
        self._db.execute("UPDATE sources SET controller = ? WHERE id = ?", (group, src.id))
        AuditLog(self.data_dir).append(actor, "source.controller_set",
                                       {"source": src.id, "controller": group})
        return msgspec.structs.replace(src, controller=group)

    def scopes(self) -> dict[str, str]:
        """Source id → its consent scope (see :attr:`Source.scope`)."""
        return {s.id: s.scope for s in self.list()}

    def close(self) -> None:
        self._db.close()


_COLUMNS = ("id, name, key_hint, created_at, allowed_origins, rate_limit, historical, purposes,"
            " mode, controller, server_key_hint")


def _row(r: tuple[Any, ...]) -> Source:
    return Source(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), float(r[5]), bool(r[6]),
                  tuple(json.loads(r[7]).items()), r[8], r[9], r[10])
