"""Web app sessions: an API key (or a one-time sign-in link) exchanged for a cookie.

A session token is 256 random bits, sent once in the ``aap_session`` cookie and kept only
as its SHA-256 (table ``web_sessions`` beside the API keys: in ``meta.db``, or in the
shared state on PostgreSQL when ``AAP_META_URL`` is set, :mod:`aap.store.meta`, where
every collector sees the sessions any of them made): a stolen registry gives no session
away. The CSRF token is derived from the session token (an
HMAC of it), so it is not stored either; the page reads it from ``POST`` or ``GET
/api/v1/session`` and sends it as ``X-CSRF-Token``.

A session is worth what its key is worth, now: each request reads the key again (its
role as it is now; a revoked key ends every session made from it), and a session ends at
``expires_at`` (``AAP_SESSION_TTL_S``) or when it is signed out.

A one-time sign-in link (``aap demo`` prints one) is a token for one session of a key:
:func:`create_link` stores its SHA-256 and an expiry (15 minutes); the first ``POST
/api/v1/session`` with ``{"link": token}`` consumes it, later ones fail.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path

import msgspec

from aap.api.keys import ApiKey, ApiKeys
from aap.datadir import DataDir
from aap.store.meta import MetaDB, open_meta
from aap.store.migrations import Schema

COOKIE = "aap_session"
LINK_TTL_S = 15 * 60
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS web_sessions (
    token_hash BLOB PRIMARY KEY,
    key_id TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    ended_at INTEGER
);
CREATE INDEX IF NOT EXISTS web_sessions_key ON web_sessions (key_id);
CREATE TABLE IF NOT EXISTS web_links (
    token_hash BLOB PRIMARY KEY,
    key_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
"""
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS web_sessions (
    token_hash BYTEA PRIMARY KEY,
    key_id TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ended_at BIGINT
);
CREATE INDEX IF NOT EXISTS web_sessions_key ON web_sessions (key_id);
CREATE TABLE IF NOT EXISTS web_links (
    token_hash BYTEA PRIMARY KEY,
    key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
"""
SCHEMA = Schema("web_sessions", _SCHEMA, postgres=_PG_SCHEMA, steps=(), shares_file=True)
"""The sessions' and links' schema versions (:mod:`aap.store.migrations`)."""


class WebSession(msgspec.Struct, frozen=True):
    """A live session: its key as it is now, and the CSRF token the page must send."""

    key: ApiKey
    csrf: str
    expires_at: int

    def public(self) -> dict[str, str]:
        """What ``/api/v1/session`` answers."""
        return {"role": self.key.role, "csrf": self.csrf, "key_id": self.key.id,
                "name": self.key.name}


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _plausible(token: str) -> bool:
    return 16 <= len(token) <= 128 and set(token) <= _TOKEN_CHARS


def csrf_of(token: str) -> str:
    """The CSRF token of a session token (an HMAC of it: nothing to store)."""
    return hmac.new(token.encode(), b"aap csrf", hashlib.sha256).hexdigest()


def _open(data_dir: Path, url: str | None) -> MetaDB:
    db = open_meta(DataDir(data_dir).meta_db, url)
    db.migrate(SCHEMA)
    return db


def create_link(data_dir: Path, key_id: str, ttl: int = LINK_TTL_S,
                url: str | None = None) -> str:
    """A one-time sign-in token for a session of key ``key_id``, valid ``ttl`` seconds
    (``url``: the shared-state database, ``None``: ``AAP_META_URL``)."""
    token = secrets.token_urlsafe(32)
    now = int(time.time())
    db = _open(data_dir, url)
    try:
        db.execute("INSERT INTO web_links (token_hash, key_id, created_at, expires_at)"
                   " VALUES (?, ?, ?, ?)", (_hash(token), key_id, now, now + ttl))
    finally:
        db.close()
    return token


class Sessions:
    """The session registry of one process (a collector worker)."""

    def __init__(self, data_dir: Path, keys: ApiKeys, ttl_s: int, url: str | None = None
                 ) -> None:
        self._db = _open(data_dir, url)
        self.keys = keys
        self.ttl_s = ttl_s

    def create(self, key: ApiKey, via: str) -> tuple[str, WebSession]:
        """A new session of ``key`` (``via``: how it signed in, for the audit log); the
        cookie's token and the session."""
        token = secrets.token_urlsafe(32)
        now = int(time.time())
        # rows of sessions and links a day past their end are of no use: dropped here
        # (each statement on its own: sessions made at once by other processes do not
        # make this one wait or run again)
        self._db.execute("DELETE FROM web_sessions WHERE expires_at < ?", (now - 86400,))
        self._db.execute("DELETE FROM web_links WHERE expires_at < ?", (now - 86400,))
        self._db.execute("INSERT INTO web_sessions (token_hash, key_id, role, created_at,"
                         " expires_at) VALUES (?, ?, ?, ?, ?)",
                         (_hash(token), key.id, key.role, now, now + self.ttl_s))
        self.keys.audit.append(f"key:{key.id}", "session.created",
                               {"key_id": key.id, "role": key.role, "via": via})
        return token, WebSession(key, csrf_of(token), now + self.ttl_s)

    def get(self, token: str) -> WebSession | None:
        """The live session of a cookie's token: None when unknown, ended, expired, or
        when its key is revoked."""
        if not _plausible(token):
            return None
        row = self._db.fetchone(
            "SELECT key_id, expires_at, ended_at FROM web_sessions WHERE token_hash = ?",
            (_hash(token),))
        if row is None or row[2] is not None or row[1] <= time.time():
            return None
        key = self.keys.get(row[0])
        if key is None or key.revoked_at is not None:
            return None
        return WebSession(key, csrf_of(token), row[1])

    def end(self, token: str) -> bool:
        """Signs a session out (revoked here, whatever the browser keeps)."""
        session = self.get(token)
        if session is None:
            return False
        self._db.execute("UPDATE web_sessions SET ended_at = ? WHERE token_hash = ?",
                         (int(time.time()), _hash(token)))
        self.keys.audit.append(f"key:{session.key.id}", "session.ended",
                               {"key_id": session.key.id})
        return True

    def consume_link(self, token: str) -> ApiKey | None:
        """The key of a one-time link, which is used up by this call; None when the
        link is unknown, used, expired, or its key revoked."""
        if not _plausible(token):
            return None
        now = int(time.time())
        # one conditional statement: of two processes given the same link at once, one
        # changes the row and the other finds it used
        rows = self._db.write(lambda tx: tx.fetchall(
            "UPDATE web_links SET used_at = ? WHERE token_hash = ? AND used_at IS NULL"
            " AND expires_at > ? RETURNING key_id", (now, _hash(token), now)))
        if not rows:
            return None
        key = self.keys.get(rows[0][0])
        return key if key is not None and key.revoked_at is None else None

    def close(self) -> None:
        self._db.close()


def cookie_token(headers: dict[str, str]) -> str | None:
    """The ``aap_session`` cookie of a request, if it sent one."""
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value.strip('"')
    return None


def cross_site(headers: dict[str, str]) -> bool:
    """A browser says the request comes from another origin (``Sec-Fetch-Site``): a page
    of another site, or of another port of this host (same-site, but not ours). Such a
    request is not served with the cookie, whatever it carries."""
    return headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


def csrf_ok(headers: dict[str, str], session: WebSession) -> bool:
    return hmac.compare_digest(headers.get("x-csrf-token", "").encode("utf-8", "replace"),
                               session.csrf.encode())
