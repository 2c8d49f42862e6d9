"""API keys of people and programs, with roles.

A key is ``aap_<id>_<secret>`` (a 256-bit secret), shown once. The registry (table
``api_keys`` of ``meta.db``, beside the sources, or of the shared state on PostgreSQL when
``AAP_META_URL`` is set: :mod:`aap.store.meta`) keeps the id, the role and a scrypt hash
of the secret (n=2^14, r=8, p=1, a per-key salt): a stolen registry does not give the
keys away, and guessing is slow. A process remembers the keys it verified (as their
SHA-256), so a client pays the slow hash once per process, but every request reads the
key's row again: revoking a key or changing its role takes effect on the next request
(in every process that shares the registry).

Roles, each including the ones before it: ``viewer`` (saved insights only), ``analyst``
(any query), ``privacy`` (personal columns, rights requests), ``admin`` (everything,
sources and keys).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from pathlib import Path

import msgspec

from aap.datadir import DataDir
from aap.privacy.audit import AuditLog
from aap.store.meta import open_meta
from aap.store.migrations import Schema

ROLES = ("viewer", "analyst", "privacy", "admin")
MAX_VERIFIED = 10_000
"""Keys remembered as verified (so that scrypt runs once per key), cleared beyond."""
_KEY = re.compile(r"^aap_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
"""
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    salt BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
"""
SCHEMA = Schema("api_keys", _SCHEMA, postgres=_PG_SCHEMA, steps=(), shares_file=True)
"""The registry's schema versions (:mod:`aap.store.migrations`)."""


class ApiKey(msgspec.Struct, frozen=True):
    id: str
    name: str
    role: str
    created_at: int
    revoked_at: int | None = None


def role_at_least(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def _scrypt(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


class ApiKeys:
    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        """``url``: the shared-state database (``None``: ``AAP_META_URL``; empty: the
        SQLite file under the data dir)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        self._db = open_meta(DataDir(data_dir).meta_db, url)
        self._db.migrate(SCHEMA)
        self._verified: dict[str, bytes] = {}
        self.audit = AuditLog(data_dir)

    def create(self, role: str, name: str = "", actor: str = "admin") -> tuple[ApiKey, str]:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        k = ApiKey(key_id, name or role, role, int(time.time()))
        self._db.execute("INSERT INTO api_keys (id, name, role, salt, hash, created_at)"
                         " VALUES (?, ?, ?, ?, ?, ?)",
                         (k.id, k.name, k.role, salt, _scrypt(secret, salt), k.created_at))
        self.audit.append(actor, "key.created", {"key_id": k.id, "role": k.role})
        return k, f"aap_{key_id}_{secret}"

    def verify(self, key: str) -> ApiKey | None:
        """The key's record if the key is valid and not revoked."""
        m = _KEY.match(key)
        if not m:
            return None
        key_id, secret = m.groups()
        row = self._db.fetchone(
            "SELECT id, name, role, created_at, revoked_at, salt, hash FROM api_keys WHERE id = ?",
            (key_id,))
        if row is None or row[4] is not None:
            return None
        digest = hashlib.sha256(key.encode()).digest()
        known = self._verified.get(key_id)
        if known is None or not hmac.compare_digest(known, digest):
            if not hmac.compare_digest(_scrypt(secret, bytes(row[5])), bytes(row[6])):
                return None
            if len(self._verified) > MAX_VERIFIED:
                self._verified.clear()
            self._verified[key_id] = digest
        return ApiKey(row[0], row[1], row[2], row[3], row[4])

    def get(self, key_id: str) -> ApiKey | None:
        """The key's record as it is now (revoked or not), or None."""
        row = self._db.fetchone("SELECT id, name, role, created_at, revoked_at FROM api_keys"
                                " WHERE id = ?", (key_id,))
        return ApiKey(*row) if row is not None else None

    def list(self) -> list[ApiKey]:
        return [ApiKey(*r) for r in self._db.fetchall(
            "SELECT id, name, role, created_at, revoked_at FROM api_keys ORDER BY created_at, id")]

    def revoke(self, key_id: str, actor: str = "admin") -> bool:
        changed = self._db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND"
                                   " revoked_at IS NULL", (int(time.time()), key_id))
        if changed > 0:
            self.audit.append(actor, "key.revoked", {"key_id": key_id})
        return changed > 0

    def close(self) -> None:
        self._db.close()
