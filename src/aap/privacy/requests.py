"""Data-subject requests: a durable queue, worked off one at a time by the core.

``POST /api/v1/privacy/requests`` (role ``privacy``) adds a request and answers
``{"id", "status": "pending"}``; ``GET /api/v1/privacy/requests/{id}`` shows its status
(``pending``, ``running``, ``done``, ``failed``) and, once done, its result (the receipt
of an erasure, the summary of an access); ``GET …/{id}/export`` is the zip of an access
request (opened from its sealed copy; each download is audited). Requests live in
``DATA_DIR/privacy/requests.db`` with the subject only as a
keyed hash, never the raw id; a request still pending when the core stops runs when it
starts again.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from aap import errors
from aap.datadir import DataDir
from aap.jsonlimits import check_depth
from aap.privacy import exports
from aap.privacy.audit import AuditLog
from aap.privacy.keystore import KeyDestroyed, Keystore
from aap.privacy.rights import Rights, Scope
from aap.privacy.scrub import is_personal_trait
from aap.store.migrations import Schema, migrate_sqlite, unversioned_columns

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
    scope TEXT
);
"""
_ADDED = (("filed_by", "TEXT"), ("lift", "INTEGER NOT NULL DEFAULT 0"), ("sealed_traits", "BLOB"),
          ("scope", "TEXT"))
"""Columns added after the first release (and before schema versions)."""

SCHEMA = Schema("requests", _SCHEMA, steps=(unversioned_columns("requests", _ADDED),))
"""The queue's schema versions (:mod:`aap.store.migrations`)."""


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

    def __init__(self, data_dir: Path) -> None:
        paths = DataDir(data_dir)
        paths.privacy.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = paths.requests_db
        self._con = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                    check_same_thread=False)
        self._con.execute("PRAGMA journal_mode=WAL")
        migrate_sqlite(self._con, SCHEMA)
        self._lock = threading.Lock()
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
        with self._lock:
            self._con.execute(
                "INSERT INTO requests (id, type, subject_keys, named, traits, created_at, status,"
                " filed_by, lift, sealed_traits, scope)"
                " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                (rid, kind, json.dumps(keys), json.dumps(named),
                 json.dumps(plain) if traits else None, int(time.time()), filed_by, int(lift),
                 sealed, scope))
        return rid

    def _keys(self) -> Keystore:
        if self._keystore is None:
            self._keystore = Keystore(self.data_dir)
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
        row = self._con.execute("SELECT subject_keys, scope FROM requests WHERE id = ?", (rid,)
                                ).fetchone()
        if row is None:
            raise errors.NotFound(f"no privacy request {rid}")
        return list(json.loads(row[0])), row[1]

    def mine(self, key: int, scopes: tuple[str, ...], limit: int = 200) -> list[dict[str, Any]]:
        """The requests about subject ``key`` filed in one of ``scopes`` (a person's own,
        for the privacy portal), newest first: what :meth:`get` says of each."""
        marks = ",".join("?" * len(scopes))
        rows = self._con.execute(
            f"SELECT id, subject_keys FROM requests WHERE scope IN ({marks})"
            " ORDER BY created_at DESC, rowid DESC", scopes).fetchall()
        ids = [r[0] for r in rows if key in json.loads(r[1])][:limit]
        return [self.get(rid) for rid in ids]

    def get(self, rid: str) -> dict[str, Any]:
        row = self._con.execute(
            "SELECT id, type, created_at, status, finished_at, result, error FROM requests"
            " WHERE id = ?", (rid,)).fetchone()
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
        where, args = ["1"], []
        if status:
            where.append("status = ?")
            args.append(status)
        if kind:
            where.append("type = ?")
            args.append(kind)
        if before:
            if self._con.execute("SELECT 1 FROM requests WHERE id = ?", (before,)
                                 ).fetchone() is None:
                raise errors.BadRequest(f"`before`: no privacy request {before}",
                                        code="invalid_query")
            where.append("(created_at, id) < (SELECT created_at, id FROM requests WHERE id = ?)")
            args.append(before)
        rows = self._con.execute(
            f"SELECT id, filed_by, scope, lift FROM requests WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit + 1)).fetchall()
        out = [{**self.get(r[0]), "filed_by": r[1] or "", "scope": r[2], "lift": bool(r[3])}
               for r in rows[:limit]]
        return {"requests": out, "next": out[-1]["id"] if len(rows) > limit else None}

    def export(self, rid: str, actor: str) -> bytes:
        """The zip of a finished access request, opened from its sealed copy; the read is
        recorded in the audit log (who, which request, how many bytes)."""
        row = self._con.execute("SELECT type, status, result FROM requests WHERE id = ?",
                                (rid,)).fetchone()
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
            self._audit = AuditLog(self.data_dir)
        self._audit.append(actor, "privacy.export_downloaded", {"request": rid,
                                                                "bytes": len(data)})
        return data


class Requests(RequestStore):
    """The core's side: files requests from the REST API and works the queue off."""

    def __init__(self, data_dir: Path, rights: Rights,
                 scopes: Callable[[], dict[str, str]] | None = None) -> None:
        """``scopes``: reads source id → consent scope (:meth:`aap.sources.Sources.scopes`),
        for the requests people file themselves through a source."""
        super().__init__(data_dir)
        self.rights = rights
        self.scopes = scopes
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aap-privacy-requests",
                                        daemon=True)

    def start(self) -> None:
        self._con.execute("UPDATE requests SET status = 'pending' WHERE status = 'running'")
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

    def _run(self) -> None:
        while not self._stop.is_set():
            row = self._con.execute(
                "SELECT id, type, subject_keys, named, traits, filed_by, lift, sealed_traits,"
                " scope FROM requests"
                " WHERE status = 'pending' ORDER BY created_at, id LIMIT 1").fetchone()
            if row is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            rid, kind, keys_json, named_json, traits_json, filed_by, lift, sealed, scope = row
            self._con.execute("UPDATE requests SET status = 'running' WHERE id = ?", (rid,))
            try:
                keys = json.loads(keys_json)
                actor = f"{filed_by}/request:{rid}" if filed_by else f"request:{rid}"
                within = self._scope(scope)
                if kind == "erasure":
                    result = self.rights.erase_keys(keys, json.loads(named_json), actor, within)
                elif kind == "access":
                    result = self.rights.access_keys(keys, json.loads(named_json), actor,
                                                     within)
                elif kind == "rectification":
                    traits = {**json.loads(traits_json), **self._open_personal(sealed)}
                    result = self.rights.rectify_keys(keys, traits, actor)
                else:
                    result = self.rights.flag_keys(keys, kind, actor, lift=bool(lift))
                self._con.execute(
                    "UPDATE requests SET status = 'done', finished_at = ?, result = ? WHERE id = ?",
                    (int(time.time()), json.dumps(result, default=str), rid))
            except Exception as exc:  # the request fails, the worker goes on
                logger.exception("privacy request %s failed", rid)
                self._con.execute(
                    "UPDATE requests SET status = 'failed', finished_at = ?, error = ?"
                    " WHERE id = ?", (int(time.time()), f"{type(exc).__name__}: {exc}", rid))
