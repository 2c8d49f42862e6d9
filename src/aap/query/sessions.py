"""The query cache's session summary: per cached file, UTC day, session and person, what
the overview needs of a session, so that its session panels read a row per session
instead of every event.

Table ``query_cache_sessions``, kept in the same transactions as the copy and the daily
rollup (same files, same merges folded in, same erasures): per (``file_no``, ``day``,
``session_id``, ``person_id``) the first and last timestamp, the page views, and the
first and last page (``entry``, ``exit``) with the order key that chose them
(:func:`order`: time, then the value's hash). Each part is mergeable, so a session split
across days, files or persons (an anonymous id merged later) is put together at query
time by :func:`merged`: ``min``/``max``/``sum`` and ``arg_min``/``arg_max`` over its
parts' keys give exactly what grouping its events would.

The overview reads it (view ``events_sessions``, :mod:`aap.query.snapshot`) when the
answer is exact: a range of whole UTC days (always, there) and no filter at all (a
filter on events would need the events). Hot and uncached events are summarized on the
fly, by the same statement.
"""

from __future__ import annotations

from aap.store.schema import SESSIONS_COLUMNS, SESSIONS_DDL

EXPECTED_COLUMNS = SESSIONS_COLUMNS
DDL = SESSIONS_DDL
PAGE = "type IN ('page', 'screen')"


def order(column: str) -> str:
    """The time of a value, ties broken by the value's hash: the same value is chosen
    every time (a struct key (timestamp, value) does that too, at twice the cost)."""
    return f"(epoch_us(timestamp)::HUGEINT << 64) + hash({column})"


_PAGED = f"{PAGE} AND path IS NOT NULL"
PART = (f"min(timestamp) AS t0, max(timestamp) AS t1, count(*) FILTER (WHERE {PAGE}) AS views,"
        f" arg_min(path, {order('path')}) FILTER (WHERE {PAGE}) AS entry,"
        f" min({order('path')}) FILTER (WHERE {_PAGED}) AS entry_key,"
        f" arg_max(path, {order('path')}) FILTER (WHERE {PAGE}) AS exit,"
        f" max({order('path')}) FILTER (WHERE {_PAGED}) AS exit_key")
"""A part of a session, from its events (``arg_min`` skips NULL values: so does the
key's ``FILTER``)."""

FILL = (f"INSERT INTO query_cache_sessions SELECT file_no, CAST(timestamp AS DATE) AS day,"
        f" session_id, person_id, {PART} FROM query_cache WHERE file_no = ?"
        " GROUP BY file_no, day, session_id, person_id ORDER BY day")
"""Summarizes one cached file (its rows are already in ``query_cache``)."""

BACKFILL = FILL.replace("WHERE file_no = ?", "")
"""Summarizes every cached file (a cache copied before the summary existed)."""

MERGED = {"person_id": "min(person_id) AS person_id", "t0": "min(t0) AS t0",
          "t1": "max(t1) AS t1", "views": "sum(views) AS views",
          "entry": "arg_min(entry, entry_key) AS entry", "exit": "arg_max(exit, exit_key) AS exit"}
_PART_COLUMNS = {"person_id": ("person_id",), "t0": ("t0",), "t1": ("t1",),
                 "views": ("views",), "entry": ("entry", "entry_key"),
                 "exit": ("exit", "exit_key")}


def merged(columns: list[str]) -> str:
    """The sessions of a range (parameters: first day, day after the last, the same as
    timestamps), each with ``columns`` of :data:`MERGED`, from the summary of cached files
    (``events_sessions``) and the hot and uncached events (``events_live``)."""
    keep = ", ".join(c for k in columns for c in _PART_COLUMNS[k])
    return (f"SELECT {', '.join(MERGED[k] for k in columns)} FROM ("
            f"SELECT session_id, {keep} FROM events_sessions WHERE day >= ? AND day < ?"
            f" UNION ALL SELECT session_id, {keep} FROM (SELECT session_id, person_id, {PART}"
            " FROM events_live WHERE timestamp >= ? AND timestamp < ?"
            " GROUP BY session_id, person_id)) GROUP BY session_id")
