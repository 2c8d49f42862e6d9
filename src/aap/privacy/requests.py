"""Data-subject requests: a durable queue, worked off one at a time by the core.

``POST /api/v1/privacy/requests`` (role ``privacy``) adds a request and answers
``{"id", "status": "pending"}``; ``GET /api/v1/privacy/requests/{id}`` shows its status
(``pending``, ``running``, ``done``, ``failed``) and, once done, its result (the receipt
of an erasure, the summary of an access); ``GET …/{id}/export`` is the zip of an access
request (opened from its sealed copy; each download is audited). Requests live in
``DATA_DIR/privacy/requests.db``, or with ``AAP_META_URL`` in the shared-state database
(:mod:`aap.store.meta`), with the subject only as a keyed hash, never the raw id, and a
rectification's personal traits sealed; a request still pending when the core stops runs
when it starts again.

Every core works the queue off, so several cores sharing the database never run a
request twice: a worker *claims* a request with a conditional ``UPDATE`` (``pending`` →
``running``, or a ``running`` one whose lease ran out), which only one worker's
statement can win, and renews its lease (:data:`LEASE_S`) while the request runs. A
request left ``running`` by a worker that died is run again once its lease has run out
(on the SQLite file, where one core owns the data dir, at once when the core starts).
Each result is written only by the worker that holds the claim.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from aap import errors
from aap.datadir import DataDir
from aap.errors import one_line
from aap.jsonlimits import check_depth
from aap.privacy import exports
from aap.privacy.audit import AuditLog
from aap.privacy.keystore import KeyDestroyed, Keystore
from aap.privacy.rights import Reached, Rights, Scope
from aap.privacy.scrub import is_personal_trait
from aap.store.meta import SQLITE, MetaDB, log_failure, open_meta, transient
from aap.store.migrations import Schema, sql_step, unversioned_columns

logger = logging.getLogger("aap.privacy")

TYPES = ("access", "erasure", "rectification", "restriction", "objection")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    subject_keys TEXT NOT NULL,
    named TEXT NOT NULL,
    traits TEXT,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    finished_at INTEGER,
    result TEXT,
    error TEXT,
    filed_by TEXT,
    lift INTEGER NOT NULL DEFAULT 0,
    sealed_traits BLOB,
    scope TEXT,
    claimed_by TEXT,
    lease_until INTEGER,
    reach TEXT
);
"""
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    subject_keys TEXT NOT NULL,
    named TEXT NOT NULL,
    traits TEXT,
    created_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    finished_at BIGINT,
    result TEXT,
    error TEXT,
    filed_by TEXT,
    lift INTEGER NOT NULL DEFAULT 0,
    sealed_traits BYTEA,
    scope TEXT,
    claimed_by TEXT,
    lease_until BIGINT,
    reach TEXT,
    rowid BIGINT GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, created_at);
"""
"""On PostgreSQL, ``rowid`` stands for SQLite's implicit one: the order requests were
filed in."""
_ADDED = (("filed_by", "TEXT"), ("lift", "INTEGER NOT NULL DEFAULT 0"), ("sealed_traits", "BLOB"),
          ("scope", "TEXT"))
"""Columns added after the first release (and before schema versions)."""

SCHEMA = Schema("requests", _SCHEMA, postgres=_PG_SCHEMA, steps=(
    unversioned_columns("requests", _ADDED),
    sql_step("ALTER TABLE requests ADD COLUMN claimed_by TEXT;\n"
             "ALTER TABLE requests ADD COLUMN lease_until INTEGER;\n"),
    sql_step("ALTER TABLE requests ADD COLUMN reach TEXT;\n"),
))
"""The queue's schema versions (:mod:`aap.store.migrations`)."""
RELEASED_WAIT_S = 2.0
"""How long the worker waits after it put a request back (the shared state or the tier
store away) before it claims again: not a loop of attempts, each of which records its
erasure again, while the part is away."""
LEASE_S = 60.0
"""How long a worker's claim on a running request lasts unless renewed (every third of
it while the request runs); then another worker may claim it."""


class Subject(msgspec.Struct, forbid_unknown_fields=True):
    userId: str | None = None
    anonymousId: str | None = None


_R = TypeVar("_R")


def decode_request(body: bytes, typ: type[_R]) -> _R:
    """A rights request's JSON body (the API's or a subject's own), or a 400 naming the
    problem."""
    check_depth(body)
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as exc:
        raise errors.BadRequest(f"invalid privacy request: {exc}",
                                code="invalid_request") from None
    except msgspec.DecodeError:
        raise errors.BadRequest("the body is not valid JSON", code="invalid_json") from None


class NewRequest(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    subject: Subject
    traits: dict[str, Any] | None = None
    lift: bool = False
    """With ``restriction``: lift it; with ``objection``: the objection is withdrawn."""


class RequestStore:
    """The queue's database, shared by the core (which works it off) and the collector
    (where people file their own requests with a subject token)."""

    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        """``url``: the shared-state database (``None``: ``AAP_META_URL``; empty: the
        SQLite file under the data dir)."""
        paths = DataDir(data_dir)
        paths.privacy.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = paths.requests_db
        self._url = url
        self._db: MetaDB = open_meta(self.path, url)
        self._db.migrate(SCHEMA)
        self.data_dir = data_dir
        self._keystore: Keystore | None = None
        self._audit: AuditLog | None = None

    def add(self, kind: str, keys: list[int], named: dict[str, Any],
            traits: dict[str, Any] | None, filed_by: str = "", lift: bool = False,
            scope: str | None = None) -> str:
        """Queue a request; ``scope``: the source or ``controller:GROUP`` a self-service
        request was filed through (only tokens of that scope see it)."""
        if kind not in TYPES:
            raise errors.BadRequest(f"`type` must be one of {', '.join(TYPES)}",
                                    code="invalid_request")
        if kind == "rectification" and not traits:
            raise errors.BadRequest("a rectification needs `traits`", code="invalid_request")
        if lift and kind not in ("restriction", "objection"):
            raise errors.BadRequest("`lift` goes with a restriction or an objection",
                                    code="invalid_request")
        rid = "pr_" + secrets.token_hex(8)
        plain, sealed = self._seal_personal(keys, traits or {})
        self._db.execute(
            "INSERT INTO requests (id, type, subject_keys, named, traits, created_at, status,"
            " filed_by, lift, sealed_traits, scope)"
            " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
            (rid, kind, json.dumps(keys), json.dumps(named),
             json.dumps(plain) if traits else None, int(time.time()), filed_by, int(lift),
             sealed, scope))
        return rid

    def _keys(self) -> Keystore:
        if self._keystore is None:
            self._keystore = Keystore(self.data_dir, url=self._url)
        return self._keystore

    def _seal_personal(self, keys: list[int], traits: dict[str, Any]
                       ) -> tuple[dict[str, Any], bytes | None]:
        """Personal traits of a rectification wait in the queue sealed under the person's
        first id's key (``subject || sealed``), never in clear."""
        personal = {k: v for k, v in traits.items() if is_personal_trait(k, v)}
        if not personal:
            return traits, None
        ks = self._keys()
        ks.refresh_destroyed()
        key = ks.keys_for(keys[:1], create=True).get(keys[0])
        if key is None:
            raise errors.BadRequest("this person was erased: there is nothing to rectify",
                                    code="erased_subject")
        blob = ks.seal(key, keys[0], "request_traits", json.dumps(personal).encode())
        return ({k: v for k, v in traits.items() if k not in personal},
                struct.pack(">q", keys[0]) + blob)

    def _open_personal(self, sealed: bytes | None) -> dict[str, Any]:
        if not sealed:
            return {}
        subject = int(struct.unpack(">q", sealed[:8])[0])
        out: dict[str, Any] = json.loads(self._keys().open(subject, "request_traits", sealed[8:]))
        return out

    def owner(self, rid: str) -> tuple[list[int], str | None]:
        """The subject keys of a request and the scope it was filed through (``None``: by
        the API or the CLI)."""
        row = self._db.fetchone("SELECT subject_keys, scope FROM requests WHERE id = ?", (rid,))
        if row is None:
            raise errors.NotFound(f"no privacy request {rid}")
        return list(json.loads(row[0])), row[1]

    def mine(self, key: int, scopes: tuple[str, ...], limit: int = 200) -> list[dict[str, Any]]:
        """The requests about subject ``key`` filed in one of ``scopes`` (a person's own,
        for the privacy portal), newest first: what :meth:`get` says of each."""
        marks = ",".join("?" * len(scopes))
        rows = self._db.fetchall(
            f"SELECT id, subject_keys FROM requests WHERE scope IN ({marks})"
            " ORDER BY created_at DESC, rowid DESC", scopes)
        ids = [r[0] for r in rows if key in json.loads(r[1])][:limit]
        return [self.get(rid) for rid in ids]

    def get(self, rid: str) -> dict[str, Any]:
        row = self._db.fetchone(
            "SELECT id, type, created_at, status, finished_at, result, error FROM requests"
            " WHERE id = ?", (rid,))
        if row is None:
            raise errors.NotFound(f"no privacy request {rid}")
        out: dict[str, Any] = {"id": row[0], "type": row[1], "created_at": row[2],
                               "status": row[3], "finished_at": row[4]}
        if row[5]:
            result = json.loads(row[5])
            result.pop("path", None)
            out["result"] = result
        if row[6]:
            out["error"] = row[6]
        return out

    def list(self, status: str | None = None, kind: str | None = None, limit: int = 50,
             before: str | None = None) -> dict[str, Any]:
        """The queue, newest first: ``limit`` requests filed before request ``before``
        (paging), of this ``status`` and ``kind`` when given. Each as :meth:`get` shows
        it, with who filed it and through which scope; never the subject (the queue only
        holds its keyed hashes)."""
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        if status:
            where.append("status = ?")
            args.append(status)
        if kind:
            where.append("type = ?")
            args.append(kind)
        if before:
            if self._db.fetchone("SELECT 1 FROM requests WHERE id = ?", (before,)) is None:
                raise errors.BadRequest(f"`before`: no privacy request {before}",
                                        code="invalid_query")
            where.append("(created_at, id) < (SELECT created_at, id FROM requests WHERE id = ?)")
            args.append(before)
        rows = self._db.fetchall(
            f"SELECT id, filed_by, scope, lift FROM requests WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit + 1))
        out = [{**self.get(r[0]), "filed_by": r[1] or "", "scope": r[2], "lift": bool(r[3])}
               for r in rows[:limit]]
        return {"requests": out, "next": out[-1]["id"] if len(rows) > limit else None}

    def export(self, rid: str, actor: str) -> bytes:
        """The zip of a finished access request, opened from its sealed copy; the read is
        recorded in the audit log (who, which request, how many bytes)."""
        row = self._db.fetchone("SELECT type, status, result FROM requests WHERE id = ?",
                                (rid,))
        if row is None:
            raise errors.NotFound(f"no privacy request {rid}")
        if row[0] != "access":
            raise errors.NotFound(f"request {rid} is an {row[0]}, not an access request",
                                  code="not_an_access_request")
        if row[1] != "done":
            raise errors.Conflict(f"request {rid} is {row[1]}", code="not_done")
        path = json.loads(row[2]).get("path")
        gone = errors.NotFound(f"the export of {rid} is gone: the person was erased",
                               code="export_erased")
        if not path or not Path(path).exists():
            raise gone
        ks = self._keys()
        ks.refresh_destroyed()
        try:
            data = exports.read(ks, Path(path))
        except KeyDestroyed:
            raise gone from None
        if self._audit is None:
            self._audit = AuditLog(self.data_dir, url=self._url)
        self._audit.append(actor, "privacy.export_downloaded", {"request": rid,
                                                                "bytes": len(data)})
        return data


class _Reach:
    """What an erasure request's runs found, kept in its row (``reach``) until it is done
    (:meth:`aap.privacy.rights.Rights.erase_keys`)."""

    def __init__(self, requests: Requests, rid: str, kept: str | None) -> None:
        self.requests, self.rid, self.kept = requests, rid, kept

    def found(self) -> Reached:
        if not self.kept:
            return Reached(set(), set())
        doc = json.loads(self.kept)
        return Reached({int(p) for p in doc["persons"]}, {int(k) for k in doc["keys"]},
                       int(doc.get("destroyed", 0)), int(doc.get("runs", 0)))

    def keep(self, reached: Reached) -> None:
        kept = json.dumps({"persons": sorted(reached.persons), "keys": sorted(reached.keys),
                           "destroyed": reached.destroyed, "runs": reached.runs})
        if kept != self.kept and self.requests._db.execute(
                "UPDATE requests SET reach = ? WHERE id = ? AND claimed_by = ?"
                " AND status = 'running'", (kept, self.rid, self.requests.worker)) != 1:
            raise RuntimeError(f"privacy request {self.rid}: the lease ran out and another"
                               " worker claimed it")
        self.kept = kept


class Requests(RequestStore):
    """The core's side: files requests from the REST API and works the queue off."""

    def __init__(self, data_dir: Path, rights: Rights,
                 scopes: Callable[[], dict[str, str]] | None = None, url: str | None = None,
                 lease_s: float = LEASE_S) -> None:
        """``scopes``: reads source id → consent scope (:meth:`aap.sources.Sources.scopes`),
        for the requests people file themselves through a source."""
        super().__init__(data_dir, url)
        self.rights = rights
        self.scopes = scopes
        self.lease_s = lease_s
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        """Who claims requests: this worker, unlike any other (of any process or machine)."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aap-privacy-requests",
                                        daemon=True)

    def start(self) -> None:
        if self._db.dialect == SQLITE:  # the only core of this data dir: no claim is alive
            self._db.execute("UPDATE requests SET status = 'pending', claimed_by = NULL,"
                             " lease_until = NULL WHERE status = 'running'")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    # -- the API --

    def submit(self, body: bytes, actor: str) -> dict[str, Any]:
        req = decode_request(body, NewRequest)
        users = [req.subject.userId] if req.subject.userId else []
        anons = [req.subject.anonymousId] if req.subject.anonymousId else []
        if not users and not anons:
            raise errors.BadRequest("`subject` needs a userId or an anonymousId",
                                    code="missing_identity")
        named = {"userId": bool(users), "anonymousId": bool(anons)}
        rid = self.add(req.type, self.rights.subject_keys(users, anons), named, req.traits,
                       actor, req.lift)
        self._wake.set()
        return {"id": rid, "status": "pending"}

    # -- the worker --

    def _scope(self, scope: str | None) -> Scope | None:
        """A self-service request's scope and the sources in it (``None``: the request
        was filed by the API or the CLI and acts on every source)."""
        if scope is None:
            return None
        now = self.scopes() if self.scopes is not None else {}
        return scope, tuple(sorted({scope} & set(now) | {s for s, sc in now.items()
                                                          if sc == scope}))

    def claim(self) -> tuple[Any, ...] | None:
        """The oldest request no live worker holds, claimed by this worker (``running``,
        leased for :attr:`lease_s`), or ``None``. Workers that pick the same request race
        on the conditional ``UPDATE``: the first to commit wins, the others change no row
        (on PostgreSQL a second ``UPDATE`` waits for the first and re-checks the
        condition on the row it committed) and try the next request."""
        while True:
            now = time.time()
            found = self._db.fetchone(
                "SELECT id FROM requests WHERE status = 'pending'"
                " OR (status = 'running' AND lease_until < ?) ORDER BY created_at, id LIMIT 1",
                (int(now),))
            if found is None:
                return None
            if self._db.execute(
                    "UPDATE requests SET status = 'running', claimed_by = ?, lease_until = ?"
                    " WHERE id = ? AND (status = 'pending'"
                    " OR (status = 'running' AND lease_until < ?))",
                    (self.worker, int(now + self.lease_s) + 1, found[0], int(now))) == 1:
                return self._db.fetchone(
                    "SELECT id, type, subject_keys, named, traits, filed_by, lift,"
                    " sealed_traits, scope, reach FROM requests WHERE id = ?", (found[0],))

    @contextmanager
    def _leased(self, rid: str) -> Iterator[None]:
        """Renews this worker's lease on ``rid`` every third of :attr:`lease_s` while the
        body runs."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.lease_s / 3):
                try:
                    self._db.execute("UPDATE requests SET lease_until = ? WHERE id = ? AND"
                                     " claimed_by = ? AND status = 'running'",
                                     (int(time.time() + self.lease_s) + 1, rid,
                                      self.worker))
                except Exception as exc:  # the next renewal tries again
                    log_failure(logger, f"privacy request {rid}: the lease was not renewed",
                                exc)

        renewer = threading.Thread(target=renew, name="aap-privacy-lease", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()

    def _finish(self, rid: str, sql: str, params: tuple[Any, ...]) -> None:
        """Writes the outcome, if this worker still holds the claim."""
        if self._db.execute(f"{sql} WHERE id = ? AND claimed_by = ?",
                            (*params, rid, self.worker)) != 1:
            logger.error("privacy request %s: its lease ran out and another worker claimed"
                         " it; this worker's outcome is dropped", rid)

    def _release(self, rid: str) -> None:
        """A request this worker could not finish for now is pending again, for the next
        claim; if that cannot be written either, its lease runs out and it is claimed
        again all the same."""
        with contextlib.suppress(Exception):
            self._db.execute("UPDATE requests SET status = 'pending', claimed_by = NULL,"
                             " lease_until = NULL WHERE id = ? AND claimed_by = ?"
                             " AND status = 'running'", (rid, self.worker))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                row = self.claim()
                if row is not None:
                    with self._leased(row[0]):
                        released = self._work(row)
                    if released:
                        self._stop.wait(RELEASED_WAIT_S)
                    continue
            except Exception as exc:  # the shared state away: the worker goes on
                log_failure(logger, "privacy requests: the queue cannot be worked now", exc)
            self._wake.wait(1.0)
            self._wake.clear()

    def _work(self, row: tuple[Any, ...]) -> bool:
        """Runs a claimed request to its end; ``True`` when it was put back instead (a
        part it needs is away)."""
        rid, kind, keys_json, named_json, traits_json, filed_by, lift, sealed, scope, \
            reach_json = row
        try:
            keys = json.loads(keys_json)
            actor = f"{filed_by}/request:{rid}" if filed_by else f"request:{rid}"
            within = self._scope(scope)
            if kind == "erasure":
                result = self.rights.erase_keys(keys, json.loads(named_json), actor, within,
                                                _Reach(self, rid, reach_json))
            elif kind == "access":
                result = self.rights.access_keys(keys, json.loads(named_json), actor, within)
            elif kind == "rectification":
                traits = {**json.loads(traits_json), **self._open_personal(sealed)}
                result = self.rights.rectify_keys(keys, traits, actor)
            else:
                result = self.rights.flag_keys(keys, kind, actor, lift=bool(lift))
            self._finish(rid, "UPDATE requests SET status = 'done', finished_at = ?, result = ?,"
                         " reach = NULL",
                         (int(time.time()), json.dumps(result, default=str)))
        except Exception as exc:  # the request fails, the worker goes on
            # the shared state or the tier store (S3) away: not the request's fault; it
            if transient(exc, self.rights.wh.tiers):  # runs again, here or elsewhere
                logger.warning("privacy request %s waits for the shared state or the tier"
                               " store: %s", rid, one_line(exc))
                self._release(rid)
                return True
            logger.exception("privacy request %s failed", rid)
            self._finish(rid, "UPDATE requests SET status = 'failed', finished_at = ?, error = ?,"
                         " reach = NULL",
                         (int(time.time()), f"{type(exc).__name__}: {exc}"))
        return False
