"""Keys per person, for encrypting raw identifiers and personal traits at rest.

Every identifier a person uses (a userId, an anonymousId) is a *subject*, known by its
keyed hash (:class:`aap.privacy.ids.IdHasher`). Each subject has its own data key
(AES-256-GCM, from the ``cryptography`` package), created on first sight and stored
only wrapped by the master key. The raw id, and personal traits, are kept only sealed
under that data key — in the durable log too. Destroying a subject's data key
(crypto-shredding, :meth:`Keystore.destroy`) makes every copy sealed under it
unreadable at once, including copies in backups and exports outside AAP.

The master key is a file (``DATA_DIR/keys/master.key``, 0600, made on first use) or the
``AAP_MASTER_KEY`` setting (32 bytes, base64); a KMS can stand behind the
same two calls (:class:`MasterKey`). Data keys live wrapped in
``DATA_DIR/keys/keystore.db`` (SQLite with ``secure_delete``, so a destroyed key's
bytes are overwritten, and its WAL checkpointed away), or, when ``AAP_META_URL`` is set,
in PostgreSQL (:mod:`aap.store.meta`), shared by every process: there a destroyed key is
deleted at once, and its dead tuple (a key *wrapped* by the master key, which never
goes to PostgreSQL) stays in the table's files until VACUUM reuses the space, and in
the WAL until it is recycled (see README, "Shared state on PostgreSQL").
"""

from __future__ import annotations

import json
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aap.datadir import DataDir
from aap.privacy.ids import key_of
from aap.store.meta import POSTGRESQL, Bulk, Fetch, MetaDB, Tx, open_meta
from aap.store.migrations import Schema, sql_step

_SCHEMA = """
CREATE TABLE IF NOT EXISTS data_keys (
    subject INTEGER PRIMARY KEY,
    wrapped BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS identifiers (
    subject INTEGER PRIMARY KEY,
    sealed BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS personal_traits (
    subject INTEGER PRIMARY KEY,
    sealed BLOB NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS forgotten (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    subject INTEGER NOT NULL,
    forgotten_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS destroyed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    subject INTEGER NOT NULL UNIQUE,
    destroyed_at INTEGER NOT NULL
);
"""
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS data_keys (
    subject BIGINT PRIMARY KEY,
    wrapped BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS identifiers (
    subject BIGINT PRIMARY KEY,
    sealed BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS personal_traits (
    subject BIGINT PRIMARY KEY,
    sealed BYTEA NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS forgotten (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject BIGINT NOT NULL,
    forgotten_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS destroyed (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject BIGINT NOT NULL UNIQUE,
    destroyed_at BIGINT NOT NULL
);
"""
SCHEMA = Schema("data_keys", _SCHEMA, postgres=_PG_SCHEMA, steps=(
    # a keystore of before schema versions: the tables it lacks (CREATE … IF NOT EXISTS)
    sql_step(_SCHEMA),
))
"""The keystore's schema versions (:mod:`aap.store.migrations`)."""
_PRAGMAS = ("PRAGMA synchronous=FULL", "PRAGMA secure_delete=ON")
_NONCE = 12
FORGET_NOTICE_S = 1.0
"""How soon every process learns that subjects were forgotten (see :meth:`Keystore.forget`)."""


class KeyDestroyed(Exception):
    """The subject's data key was destroyed: what was sealed under it is gone."""


class MasterKey(Protocol):
    def wrap(self, subject: int, data_key: bytes) -> bytes: ...

    def unwrap(self, subject: int, wrapped: bytes) -> bytes: ...


class LocalMasterKey:
    """A 256-bit key from ``AAP_MASTER_KEY`` or a 0600 file."""

    def __init__(self, data_dir: Path) -> None:
        key = key_of("master_key", DataDir(data_dir).master_key)
        if len(key) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._aead = AESGCM(key)

    def wrap(self, subject: int, data_key: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, data_key, b"aap-dk" + _subject(subject))

    def unwrap(self, subject: int, wrapped: bytes) -> bytes:
        return self._aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:],
                                  b"aap-dk" + _subject(subject))


def _subject(subject: int) -> bytes:
    return struct.pack(">q", subject)


class Keystore:
    def __init__(self, data_dir: Path, master: MasterKey | None = None,
                 cache_size: int = 200_000, url: str | None = None) -> None:
        """``url``: the shared-state database (``None``: ``AAP_META_URL``; empty: the
        SQLite file under the data dir)."""
        paths = DataDir(data_dir)
        paths.keys.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = paths.keystore_db
        self.master = master or LocalMasterKey(data_dir)
        self._db = open_meta(self.path, url, pragmas=_PRAGMAS, mode=0o600)
        self._sql = Bulk(self._db.dialect == POSTGRESQL)
        """Lookups of many subjects: one array on PostgreSQL (psycopg parses a statement
        of a hundred ``?`` slowly), ``IN`` lists on SQLite."""
        self._cache: OrderedDict[int, AESGCM] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.destroyed: set[int] = set()
        self._destroyed_seq = 0
        self._forgotten_seq = 0
        self._forgotten_due = 0.0
        self._db.migrate(SCHEMA)
        # Only what is forgotten from now on concerns this instance's caches (an id
        # forgotten earlier may have come back as a new subject since).
        row = self._db.fetchone("SELECT coalesce(max(seq), 0) FROM forgotten")
        self._forgotten_seq = int(row[0]) if row else 0

    def shared_with(self, db: MetaDB) -> bool:
        """Whether this keystore is on the shared database ``db`` is on (PostgreSQL): then
        its destroyed ids are every processor's erasures."""
        return self._db.dialect == POSTGRESQL and self._db.where == db.where

    # -- data keys --

    def keys_for(self, subjects: Iterable[int], create: bool = True) -> dict[int, AESGCM]:
        """The data keys of these subjects, made (durably, in one transaction) where
        missing if ``create``. Destroyed subjects are left out."""
        want = set(subjects) - self.destroyed
        out: dict[int, AESGCM] = {}
        with self._lock:
            for s in want:
                k = self._cache.get(s)
                if k is not None:
                    out[s] = k
        missing = [s for s in want if s not in out]
        if not missing:
            return out
        rows = self._load(self._db.fetchall, missing)
        new = [s for s in missing if s not in rows]
        made: dict[bytes, bytes] = {}  # wrapped → raw, for the keys made here
        if new and create:
            now = int(time.time())

            def make(tx: Tx) -> dict[bytes, bytes]:
                # On PostgreSQL a concurrent destroy() or keys_for() of the same subjects
                # makes one of the two SERIALIZABLE transactions fail and run again.
                destroyed = self._destroyed_among(tx.fetchall, new)
                fresh = [(s, AESGCM.generate_key(256)) for s in new if s not in destroyed]
                wrapped = [(s, self.master.wrap(s, raw), now) for s, raw in fresh]
                tx.executemany("INSERT INTO data_keys VALUES (?, ?, ?)"
                               " ON CONFLICT (subject) DO NOTHING", wrapped)
                return {w: raw for (_, raw), (_, w, _) in zip(fresh, wrapped, strict=True)}

            made = self._db.write(make)
            rows.update(self._load(self._db.fetchall, new))  # another process may have won
        with self._lock:
            for s, wrapped_key in rows.items():
                raw_key = made.get(wrapped_key)  # ours (not another process's) needs no unwrap
                k = AESGCM(raw_key if raw_key is not None else self.master.unwrap(s, wrapped_key))
                out[s] = k
                self._cache[s] = k
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return out

    def _load(self, fetch: Fetch, subjects: list[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for cond, params in self._sql.among(subjects):
            out.update((s, bytes(w)) for s, w in fetch(
                f"SELECT subject, wrapped FROM data_keys WHERE subject {cond}", params))
        return out

    def _destroyed_among(self, fetch: Fetch, subjects: list[int]) -> set[int]:
        """Which of these subjects were destroyed (by any process): no key is made again."""
        out: set[int] = set()
        for cond, params in self._sql.among(subjects):
            out.update(s for (s,) in fetch(
                f"SELECT subject FROM destroyed WHERE subject {cond}", params))
        return out

    def destroy(self, subjects: Iterable[int]) -> int:
        """Crypto-shred: delete the data keys (their bytes overwritten) and remember the
        subjects as destroyed, so no key is made for them again. Returns how many keys
        were destroyed."""
        subs = sorted(set(subjects))
        n = self._shred(subs, "destroyed", lambda tx, now: tx.executemany(
            "INSERT INTO destroyed (subject, destroyed_at) VALUES (?, ?)"
            " ON CONFLICT (subject) DO NOTHING", [(s, now) for s in subs]))
        with self._lock:
            self.destroyed.update(subs)
        return n

    def forget(self, subjects: Iterable[int]) -> int:
        """Retention: delete the data keys, sealed ids and personal traits of subjects
        whose data has all expired (bytes overwritten), without suppressing them — an id
        that comes back later is a new subject. Other processes drop their cached keys
        within :data:`FORGET_NOTICE_S` (:meth:`refresh_forgotten`); the notice itself is
        deleted after a day. Returns how many keys were deleted."""
        subs = sorted(set(subjects))

        def notice(tx: Tx, now: int) -> None:
            tx.executemany("INSERT INTO forgotten (subject, forgotten_at) VALUES (?, ?)",
                           [(s, now) for s in subs])
            tx.execute("DELETE FROM forgotten WHERE forgotten_at < ?", (now - 86_400,))

        return self._shred(subs, "forgotten", notice)

    def _shred(self, subs: list[int], table: str, record: Callable[[Tx, int], object]
               ) -> int:
        """In one transaction: delete the subjects' data keys, sealed ids and personal
        traits (on SQLite ``secure_delete`` overwrites the bytes, and the WAL is truncated
        after), and ``record`` why in ``table``; their cached keys are dropped. Returns
        how many keys went. The writers of ``table`` take turns (:meth:`Tx.lock`), so
        its ``seq`` grows in commit order and :meth:`refresh_destroyed` and
        :meth:`refresh_forgotten` miss no row."""
        now = int(time.time())

        def shred(tx: Tx) -> int:
            tx.lock(table)
            n = 0
            for i in range(0, len(subs), 500):
                part = subs[i:i + 500]
                marks = ",".join("?" * len(part))
                n += tx.execute(f"DELETE FROM data_keys WHERE subject IN ({marks})", part)
                tx.execute(f"DELETE FROM identifiers WHERE subject IN ({marks})", part)
                tx.execute(f"DELETE FROM personal_traits WHERE subject IN ({marks})", part)
            record(tx, now)
            return n

        n = self._db.write(shred)
        self._db.shredded()
        with self._lock:
            for s in subs:
                self._cache.pop(s, None)
        return n

    def refresh_forgotten(self, force: bool = False) -> set[int]:
        """Subjects forgotten by any process since the last look (at most every
        :data:`FORGET_NOTICE_S` unless ``force``); their cached keys are dropped."""
        now = time.monotonic()
        if not force and now < self._forgotten_due:
            return set()
        self._forgotten_due = now + FORGET_NOTICE_S
        rows = self._db.fetchall("SELECT seq, subject FROM forgotten WHERE seq > ? ORDER BY seq",
                                 (self._forgotten_seq,))
        if not rows:
            return set()
        with self._lock:
            for _, s in rows:
                self._cache.pop(s, None)
            self._forgotten_seq = rows[-1][0]
        return {s for _, s in rows}

    def refresh_destroyed(self) -> set[int]:
        """Learn subjects destroyed by other processes since the last look."""
        rows = self._db.fetchall("SELECT seq, subject FROM destroyed WHERE seq > ? ORDER BY seq",
                                 (self._destroyed_seq,))
        if rows:
            with self._lock:
                for seq, s in rows:
                    self.destroyed.add(s)
                    self._cache.pop(s, None)
                    self._destroyed_seq = seq
        return self.destroyed

    # -- the raw identifiers, each sealed once under its own key --

    def remember(self, raw_ids: dict[int, str]) -> None:
        """Keep each subject's raw id, sealed under the subject's key (once; in one
        transaction). Destroyed subjects are skipped."""
        keys = self.keys_for(raw_ids)
        rows = [(s, self.seal(keys[s], s, "id", raw.encode())) for s, raw in raw_ids.items()
                if s in keys]
        if not rows:
            return
        self._db.write(lambda tx: tx.executemany(
            "INSERT INTO identifiers VALUES (?, ?) ON CONFLICT (subject) DO NOTHING", rows))

    def identifier(self, subject: int) -> str | None:
        """The raw id of a subject, or ``None`` once its key is destroyed."""
        row = self._db.fetchone("SELECT sealed FROM identifiers WHERE subject = ?", (subject,))
        if row is None:
            return None
        try:
            return self.open(subject, "id", bytes(row[0])).decode()
        except KeyDestroyed:
            return None

    # -- rectified personal traits (Art. 16), sealed under each of the person's ids --

    def personal_traits(self, subjects: Iterable[int]) -> dict[str, Any]:
        """The rectified personal traits kept for these subjects (one person's ids),
        opened; the most recent rectification wins. Destroyed subjects give nothing."""
        subs = sorted(set(subjects))
        out: dict[str, Any] = {}
        if not subs:
            return out
        rows = self._db.fetchall(
            f"SELECT subject, sealed FROM personal_traits WHERE subject IN"
            f" ({','.join('?' * len(subs))}) ORDER BY updated_at, subject", subs)
        for subject, sealed in rows:
            try:
                out.update(json.loads(self.open(subject, "personal_traits", bytes(sealed))))
            except KeyDestroyed:
                continue
        return out

    def rectify_personal_traits(self, subjects: Iterable[int], patch: dict[str, Any]
                                ) -> dict[str, Any]:
        """Merge ``patch`` (``None`` removes a trait) into the person's rectified personal
        traits and keep the result sealed under each of their live subjects' keys (the
        old sealed values are overwritten: ``secure_delete``). Returns the traits now
        kept; nothing is kept for a person whose keys are all destroyed."""
        keys = self.keys_for(subjects, create=False)
        if not keys:
            return {}
        traits = {**self.personal_traits(keys), **patch}
        traits = {k: v for k, v in traits.items() if v is not None}
        now = time.time_ns()
        plain = json.dumps(traits, sort_keys=True).encode()
        rows = [(s, self.seal(k, s, "personal_traits", plain), now) for s, k in keys.items()]
        self._db.write(lambda tx: tx.executemany(
            "INSERT INTO personal_traits VALUES (?, ?, ?) ON CONFLICT (subject) DO UPDATE"
            " SET sealed = excluded.sealed, updated_at = excluded.updated_at", rows))
        self._db.shredded()  # on SQLite the old values leave the WAL too
        return traits

    # -- sealing --

    def seal(self, key: AESGCM, subject: int, kind: str, plaintext: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + key.encrypt(nonce, plaintext, kind.encode() + _subject(subject))

    def open(self, subject: int, kind: str, sealed: bytes) -> bytes:
        """The plaintext, or :class:`KeyDestroyed` if the subject's key is gone."""
        keys = self.keys_for([subject], create=False)
        key = keys.get(subject)
        if key is None:
            raise KeyDestroyed(f"no data key for subject {subject}")
        try:
            return key.decrypt(sealed[:_NONCE], sealed[_NONCE:], kind.encode() + _subject(subject))
        except InvalidTag:
            raise KeyDestroyed(f"the sealed {kind} does not open under subject {subject}'s key"
                               ) from None

    def close(self) -> None:
        self._db.close()
