"""Saved cohorts and saved insights, in the registry beside the sources (``meta.db``), or
in the shared state on PostgreSQL when ``AAP_META_URL`` is set (:mod:`aap.store.meta`).

A static cohort is a list of distinct ids (userId / anonymousId values); only their keyed
hashes are stored (the same keys the processor uses), and a query resolves them through
``person_ids`` and ``person_overrides``, so merged persons are counted once. A
behavioural cohort is a definition (did an event at least n times in the last d days,
and/or person property filters), evaluated when a query runs; persons who objected to
profiling (Art. 21, the ``objected`` flag) are never members. An erasure takes the
person's ids out of every static cohort (:meth:`Cohorts.forget`).
"""

from __future__ import annotations

import builtins
import time
from pathlib import Path
from typing import Any

import msgspec

from aap.datadir import DataDir
from aap.errors import NotFound
from aap.privacy.ids import IdHasher
from aap.query.common import CohortDef
from aap.query.models import CohortSpec, Filter
from aap.store.meta import Tx, insert_returning_id, open_meta
from aap.store.migrations import Schema

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cohorts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    definition TEXT NOT NULL,
    size_hint INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS saved_insights (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    query TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"""
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS cohorts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    definition TEXT NOT NULL,
    size_hint BIGINT,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS saved_insights (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    query TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
"""
SCHEMA = Schema("cohorts", _SCHEMA, postgres=_PG_SCHEMA, steps=(), shares_file=True)
"""The schema versions of cohorts and saved insights (:mod:`aap.store.migrations`). Ids
are never used again (SQLite's ``AUTOINCREMENT``, PostgreSQL's identity columns)."""


class Stored(msgspec.Struct):
    id_keys: list[int] | None = None
    event: str | None = None
    min_count: int = 1
    days: int = 30
    person_filters: list[Filter] = []


class Cohorts:
    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        """``url``: the shared-state database (``None``: ``AAP_META_URL``; empty: the
        SQLite file under the data dir)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self._db = open_meta(DataDir(data_dir).meta_db, url)
        self._db.migrate(SCHEMA)
        self._hasher: IdHasher | None = None

    def create(self, spec: CohortSpec) -> dict[str, Any]:
        if spec.static is not None:
            if self._hasher is None:
                self._hasher = IdHasher.for_data_dir(self.data_dir)
            keys = sorted({self._hasher.key(i) for i in spec.static.ids})
            stored, kind, size = Stored(id_keys=keys), "static", len(keys)
        else:
            bh = spec.behavioural
            assert bh is not None
            pf = [msgspec.structs.replace(f, type="person") for f in bh.person_filters]
            stored = Stored(event=bh.event, min_count=bh.min_count, days=bh.days,
                            person_filters=pf)
            kind, size = "behavioural", None
        params = (spec.name, kind, msgspec.json.encode(stored).decode(), size, int(time.time()))
        new_id = insert_returning_id(
            self._db, "INSERT INTO cohorts (name, kind, definition, size_hint, created_at)"
            " VALUES (?, ?, ?, ?, ?)", params)
        return {"id": new_id, "name": spec.name, "kind": kind}

    def get(self, cohort_id: int) -> CohortDef:
        if not 0 < cohort_id < 2**63:  # SQLite's integers: no such row, not an overflow
            raise NotFound(f"no cohort with id {cohort_id}", code="unknown_cohort")
        row = self._db.fetchone("SELECT id, name, definition FROM cohorts WHERE id = ?",
                                (cohort_id,))
        if row is None:
            raise NotFound(f"no cohort with id {cohort_id}", code="unknown_cohort")
        d = msgspec.json.decode(row[2], type=Stored)
        return CohortDef(id=row[0], name=row[1], id_keys=d.id_keys, event=d.event,
                         min_count=d.min_count, days=d.days, person_filters=d.person_filters)

    def list(self) -> builtins.list[dict[str, Any]]:
        out = []
        for i, name, kind, definition, size, created in self._db.fetchall(
                "SELECT id, name, kind, definition, size_hint, created_at FROM cohorts ORDER BY id"):
            item: dict[str, Any] = {"id": i, "name": name, "kind": kind, "created_at": created}
            if kind == "static":
                item["ids"] = size
            else:
                d = msgspec.json.decode(definition, type=Stored)
                item["definition"] = {"event": d.event, "min_count": d.min_count, "days": d.days,
                                      "person_filters": msgspec.to_builtins(d.person_filters)}
            out.append(item)
        return out

    def forget(self, id_keys: set[int]) -> dict[str, int]:
        """Erasure (Art. 17): take these ids' keyed hashes out of every static cohort.
        (Behavioural cohorts hold no ids: they are evaluated at query time, over what is
        left.)"""
        def drop(tx: Tx) -> tuple[int, int]:
            changed = removed = 0
            rows = tx.fetchall("SELECT id, definition FROM cohorts WHERE kind = 'static'")
            for cid, definition in rows:
                d = msgspec.json.decode(definition, type=Stored)
                kept = [k for k in d.id_keys or [] if k not in id_keys]
                if len(kept) == len(d.id_keys or []):
                    continue
                removed += len(d.id_keys or []) - len(kept)
                changed += 1
                tx.execute("UPDATE cohorts SET definition = ?, size_hint = ? WHERE id = ?",
                           (msgspec.json.encode(Stored(id_keys=kept)).decode(), len(kept), cid))
            return changed, removed

        changed, removed = self._db.write(drop)
        if changed:  # the old definitions leave the WAL too (on SQLite; see shredded)
            self._db.shredded()
        return {"static_cohorts_changed": changed, "static_cohort_ids_removed": removed}

    def delete(self, cohort_id: int) -> bool:
        if not 0 < cohort_id < 2**63:
            return False
        return self._db.execute("DELETE FROM cohorts WHERE id = ?", (cohort_id,)) > 0

    # -- saved insights (what the viewer role may run) --

    def save_insight(self, name: str, query: dict[str, Any]) -> dict[str, Any]:
        params = (name, msgspec.json.encode(query).decode(), int(time.time()))
        new_id = insert_returning_id(
            self._db, "INSERT INTO saved_insights (name, query, created_at) VALUES (?, ?, ?)",
            params)
        return {"id": new_id, "name": name}

    def insight(self, insight_id: int) -> tuple[str, dict[str, Any]]:
        row = None
        if 0 < insight_id < 2**63:
            row = self._db.fetchone("SELECT name, query FROM saved_insights WHERE id = ?",
                                    (insight_id,))
        if row is None:
            raise NotFound(f"no saved insight with id {insight_id}", code="unknown_insight")
        return row[0], msgspec.json.decode(row[1])

    def insights(self) -> builtins.list[dict[str, Any]]:
        return [{"id": i, "name": n, "query": msgspec.json.decode(q), "created_at": c}
                for i, n, q, c in self._db.fetchall(
                    "SELECT id, name, query, created_at FROM saved_insights ORDER BY id")]

    def close(self) -> None:
        self._db.close()
