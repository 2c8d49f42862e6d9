"""Dashboards: named, ordered lists of saved insights, in the registry beside the saved
insights and cohorts (``meta.db``, :mod:`aap.query.cohorts`).

A dashboard stores only the ids of its insights; reading it answers their ids and names
(an insight no longer saved is left out), and the web app runs each through
``GET /api/v1/insights/{id}``, so a viewer reads a dashboard with what a viewer may run.
"""

from __future__ import annotations

import builtins
import sqlite3
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from aap.datadir import DataDir
from aap.errors import BadRequest, NotFound
from aap.query.models import Id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dashboards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    insights TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"""


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
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(DataDir(data_dir).meta_db, timeout=30, isolation_level=None,
                                    check_same_thread=False)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.executescript(_SCHEMA)

    def _names(self, ids: builtins.list[int]) -> dict[int, str]:
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        return dict(self._con.execute(
            f"SELECT id, name FROM saved_insights WHERE id IN ({marks})", ids).fetchall())

    def create(self, spec: NewDashboard) -> dict[str, Any]:
        ids = list(dict.fromkeys(spec.insights))  # once each, in the order given
        missing = [i for i in ids if i not in self._names(ids)]
        if missing:
            raise NotFound(f"no saved insight with id {missing[0]}", code="unknown_insight",
                           detail={"missing": missing})
        cur = self._con.execute(
            "INSERT INTO dashboards (name, insights, created_at) VALUES (?, ?, ?)",
            (spec.name, msgspec.json.encode(ids).decode(), int(time.time())))
        return {"id": cur.lastrowid, "name": spec.name, "insights": ids}

    def get(self, dashboard_id: int) -> dict[str, Any]:
        row = None
        if 0 < dashboard_id < 2**63:
            row = self._con.execute(
                "SELECT id, name, insights, created_at FROM dashboards WHERE id = ?",
                (dashboard_id,)).fetchone()
        if row is None:
            raise NotFound(f"no dashboard with id {dashboard_id}", code="unknown_dashboard")
        ids: builtins.list[int] = msgspec.json.decode(row[2])
        names = self._names(ids)
        return {"id": row[0], "name": row[1], "created_at": row[3],
                "insights": [{"id": i, "name": names[i]} for i in ids if i in names]}

    def list(self) -> builtins.list[dict[str, Any]]:
        return [{"id": i, "name": n, "insights": msgspec.json.decode(ids), "created_at": c}
                for i, n, ids, c in self._con.execute(
                    "SELECT id, name, insights, created_at FROM dashboards ORDER BY id")]

    def delete(self, dashboard_id: int) -> bool:
        if not 0 < dashboard_id < 2**63:
            return False
        return self._con.execute("DELETE FROM dashboards WHERE id = ?",
                                 (dashboard_id,)).rowcount > 0

    def close(self) -> None:
        self._con.close()
