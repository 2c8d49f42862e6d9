"""Dashboards: named, ordered lists of saved insights, in the registry beside the saved
insights and cohorts (``meta.db``, :mod:`aap.query.cohorts`; with ``AAP_META_URL``, the
shared state on PostgreSQL, :mod:`aap.store.meta`).

A dashboard stores only the ids of its insights; reading it answers their ids and names
(an insight no longer saved is left out), and the web app runs each through
``GET /api/v1/insights/{id}``, so a viewer reads a dashboard with what a viewer may run.
"""

from __future__ import annotations

import builtins
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from aap.datadir import DataDir
from aap.errors import BadRequest, NotFound
from aap.query import cohorts
from aap.query.models import Id
from aap.store.meta import insert_returning_id, open_meta
from aap.store.migrations import Schema

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dashboards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    insights TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"""
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS dashboards (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    insights TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
"""
SCHEMA = Schema("dashboards", _SCHEMA, postgres=_PG_SCHEMA, steps=(), shares_file=True)
"""The dashboards' schema versions (:mod:`aap.store.migrations`)."""


class NewDashboard(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    insights: Annotated[list[Id], Meta(max_length=100)] = []


def parse_dashboard(body: bytes) -> NewDashboard:
    try:
        return msgspec.json.decode(body, type=NewDashboard)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid dashboard: {exc}", code="invalid_dashboard") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the dashboard is not valid JSON: {exc}", code="invalid_json") from None


class Dashboards:
    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        """``url``: the shared-state database (``None``: ``AAP_META_URL``; empty: the
        SQLite file under the data dir)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        self._db = open_meta(DataDir(data_dir).meta_db, url)
        self._db.migrate(cohorts.SCHEMA)  # the saved insights a dashboard names
        self._db.migrate(SCHEMA)

    def _names(self, ids: builtins.list[int]) -> dict[int, str]:
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        rows = self._db.fetchall(f"SELECT id, name FROM saved_insights WHERE id IN ({marks})",
                                 ids)
        return {int(i): n for i, n in rows}

    def create(self, spec: NewDashboard) -> dict[str, Any]:
        ids = list(dict.fromkeys(spec.insights))  # once each, in the order given
        missing = [i for i in ids if i not in self._names(ids)]
        if missing:
            raise NotFound(f"no saved insight with id {missing[0]}", code="unknown_insight",
                           detail={"missing": missing})
        new_id = insert_returning_id(
            self._db, "INSERT INTO dashboards (name, insights, created_at) VALUES (?, ?, ?)",
            (spec.name, msgspec.json.encode(ids).decode(), int(time.time())))
        return {"id": new_id, "name": spec.name, "insights": ids}

    def get(self, dashboard_id: int) -> dict[str, Any]:
        row = None
        if 0 < dashboard_id < 2**63:
            row = self._db.fetchone(
                "SELECT id, name, insights, created_at FROM dashboards WHERE id = ?",
                (dashboard_id,))
        if row is None:
            raise NotFound(f"no dashboard with id {dashboard_id}", code="unknown_dashboard")
        ids: builtins.list[int] = msgspec.json.decode(row[2])
        names = self._names(ids)
        return {"id": row[0], "name": row[1], "created_at": row[3],
                "insights": [{"id": i, "name": names[i]} for i in ids if i in names]}

    def list(self) -> builtins.list[dict[str, Any]]:
        return [{"id": i, "name": n, "insights": msgspec.json.decode(ids), "created_at": c}
                for i, n, ids, c in self._db.fetchall(
                    "SELECT id, name, insights, created_at FROM dashboards ORDER BY id")]

    def delete(self, dashboard_id: int) -> bool:
        if not 0 < dashboard_id < 2**63:
            return False
        return self._db.execute("DELETE FROM dashboards WHERE id = ?", (dashboard_id,)) > 0

    def close(self) -> None:
        self._db.close()
