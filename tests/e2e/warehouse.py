"""Reading back what an SDK sent: the warehouse rows of its events, and every event of
the persons involved (so a test sees what is missing and what is extra)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aap.runner import ServerProcess

COLUMNS = ("message_id", "type", "event", "person_id", "timestamp", "name", "url", "path",
           "referrer", "session_id", "properties", "library_name", "gpc")


@dataclass
class Row:
    message_id: str
    type: str
    event: str
    person_id: int
    timestamp: datetime
    name: str | None
    url: str | None
    path: str | None
    referrer: str | None
    session_id: str
    properties: dict[str, Any]
    library_name: str | None
    gpc: bool


def _row(r: list[Any]) -> Row:
    d = dict(zip(COLUMNS, r, strict=True))
    ts = d["timestamp"]
    d["timestamp"] = (datetime.fromisoformat(ts) if isinstance(ts, str) else ts).replace(tzinfo=UTC)
    props = d["properties"]
    d["properties"] = json.loads(props) if isinstance(props, str) else (props or {})
    return Row(**d)


def rows_where(server: ServerProcess, where: str, params: list[object]) -> list[Row]:
    cols = ", ".join(COLUMNS)
    return [_row(r) for r in server.sql(
        f"SELECT {cols} FROM events WHERE {where} ORDER BY timestamp, message_id", params)]


def persons_rows(server: ServerProcess, anchor_ids: list[str]) -> list[Row]:
    """Every event of every person who has one of these message ids."""
    marks = ", ".join("?" for _ in anchor_ids)
    return rows_where(server, f"person_id IN (SELECT person_id FROM events WHERE message_id IN"
                              f" ({marks}))", list(anchor_ids))


def person_traits(server: ServerProcess, person_id: int) -> dict[str, Any]:
    rows = server.sql("SELECT traits FROM persons WHERE person_id = ?", [person_id])
    if not rows or rows[0][0] is None:
        return {}
    t = rows[0][0]
    return json.loads(t) if isinstance(t, str) else dict(t)
