"""The query cache's session summary: per cached file, UTC day, session and person, what
the overview needs of a session, so that its session panels read a row per session
instead of every event.

Table ``query_cache_sessions``, kept in the same transactions as the copy and the daily
rollup (same files, same merges folded in, same erasures): per (``file_no``, ``day``,
``session_id``, ``person_id``) the first and last timestamp, the page views, and the
first and last page (``entry``, ``exit``) with the order key that chose them
(:func:`order`: time, then the value's hash), and whether the row is the session's only
one in the summary (``alone``: kept true only while no other file has the session; false
is always safe). Each part is mergeable, so a session split across days, files or persons
(an anonymous id merged later) is put together at query time by :func:`merged`:
``min``/``max``/``sum`` and ``arg_min``/``arg_max`` over its parts' keys give exactly
what grouping its events would. Grouping millions of session ids is the costly part, so
only the sessions in parts are grouped: those not ``alone``, and those with live events
(found by ``session_hash``, ``hash(session_id)``; a collision only sends a session to be
grouped, and a summary whose hashes are not DuckDB's of today is made again).

The overview reads it (view ``events_sessions``, :mod:`aap.query.snapshot`) when the
answer is exact: a range of whole UTC days (always, there) and no filter at all (a
filter on events would need the events). Hot and uncached events are summarized on the
fly, by the same statement.

Beside it, ``query_cache_pages``: page views per (file, UTC day, path, person), for the
overview's top pages without a filter (distinct persons and page views per path from
7.5M rows rather than 12M page views at 20M events).
"""

from __future__ import annotations

from aap.store.schema import PAGES_COLUMNS, PAGES_DDL, SESSIONS_COLUMNS, SESSIONS_DDL

EXPECTED_COLUMNS = SESSIONS_COLUMNS
DDL = SESSIONS_DDL
PAGES_EXPECTED = PAGES_COLUMNS
PAGES_TABLE_DDL = PAGES_DDL
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

_GROUPED = ("SELECT file_no, CAST(timestamp AS DATE) AS day, session_id, hash(session_id),"
            f" person_id, {PART} FROM query_cache{{where}} GROUP BY file_no, day, session_id,"
            " person_id")
_ALONE = "session_id IS NOT NULL AND count(*) OVER (PARTITION BY session_id) = 1"

FILL = (f"INSERT INTO query_cache_sessions SELECT *, {_ALONE}"
        f" FROM ({_GROUPED.format(where=' WHERE file_no = ?')}) ORDER BY day",
        "UPDATE query_cache_sessions SET alone = false WHERE alone AND session_id IN"
        " (SELECT session_id FROM query_cache_sessions WHERE file_no = ? INTERSECT"
        " SELECT session_id FROM query_cache_sessions WHERE file_no <> ?)")
"""Summarizes one cached file (its rows are already in ``query_cache``); a session also
in other files is no longer ``alone`` there either."""

BACKFILL = (f"INSERT INTO query_cache_sessions SELECT *, {_ALONE}"
            f" FROM ({_GROUPED.format(where='')}) ORDER BY file_no, day")
"""Summarizes every cached file (a cache copied before the summary existed)."""

_PAGES = ("SELECT file_no, CAST(timestamp AS DATE) AS day, path, person_id, count(*)"
          f" FROM query_cache WHERE {PAGE}{{where}} GROUP BY file_no, day, path, person_id")
PAGES_FILL = (f"INSERT INTO query_cache_pages {_PAGES.format(where=' AND file_no = ?')}"
              " ORDER BY day",)
PAGES_BACKFILL = f"INSERT INTO query_cache_pages {_PAGES.format(where='')} ORDER BY file_no, day"
"""Page views per (file, UTC day, path, person): the overview's top pages without a
filter read it (``events_pages``) instead of every page view."""

PAGES = ("SELECT v, count(DISTINCT person_id) AS visitors, sum(n) AS pageviews FROM ("
         "SELECT path AS v, person_id, n FROM events_pages WHERE day >= $1 AND day < $2"
         " UNION ALL SELECT path, person_id, 1 FROM events_live WHERE timestamp >= $3 AND"
         f" timestamp < $4 AND {PAGE}) WHERE v IS NOT NULL AND v <> '' GROUP BY v"
         " ORDER BY visitors DESC, pageviews DESC, v LIMIT $5")
"""The overview's top pages over a range (parameters as :func:`merged`, then the limit)."""

STALE = ("SELECT count(*) FROM (SELECT session_id, session_hash FROM query_cache_sessions"
         " WHERE session_id IS NOT NULL LIMIT 1) WHERE session_hash <> hash(session_id)")
"""1 if the stored hashes are not DuckDB's of today (it does not promise the same values
across its versions): the summary is made again."""

MERGED = {"person_id": "min(person_id) AS person_id", "t0": "min(t0) AS t0",
          "t1": "max(t1) AS t1", "views": "sum(views) AS views",
          "entry": "arg_min(entry, entry_key) AS entry", "exit": "arg_max(exit, exit_key) AS exit"}
_PART_COLUMNS = {"person_id": ("person_id",), "t0": ("t0",), "t1": ("t1",),
                 "views": ("views",), "entry": ("entry", "entry_key"),
                 "exit": ("exit", "exit_key")}


def merged(columns: list[str]) -> str:
    """The sessions of a range (parameters: first day, day after the last, the same as
    timestamps), each with ``columns`` of :data:`MERGED`, from the summary of cached files
    (``events_sessions``) and the hot and uncached events (``events_live``, summarized
    here). A session ``alone`` in the summary and absent from the live events is its
    row as it is; only the others are grouped (the costly part: few)."""
    return f"WITH {_LIVE} {_sessions(columns)}"


_LIVE = (f"live AS MATERIALIZED (SELECT session_id, person_id, {PART} FROM events_live"
         " WHERE timestamp >= $3 AND timestamp < $4 GROUP BY session_id, person_id)")
_CACHED = "FROM events_sessions WHERE day >= $1 AND day < $2"


def _sessions(columns: list[str]) -> str:
    keep = ", ".join(c for k in columns for c in _PART_COLUMNS[k])
    # routed by the session id's hash (a collision only sends a session to be grouped)
    live_ids = "(SELECT hash(session_id) FROM live WHERE session_id IS NOT NULL)"
    return (f"SELECT {', '.join(columns)} {_CACHED} AND alone AND session_hash NOT IN"
            f" {live_ids} UNION ALL SELECT {', '.join(MERGED[k] for k in columns)} FROM ("
            f"SELECT session_id, {keep} {_CACHED} AND (NOT alone OR session_hash IN"
            f" {live_ids}) UNION ALL SELECT session_id, {keep} FROM live) GROUP BY session_id")


FIGURES = (f"WITH {_LIVE} SELECT any_value(p.visitors), any_value(p.pageviews), count(s.views),"
           " avg((s.views <= 1)::INTEGER), avg(epoch_us(s.t1) - epoch_us(s.t0)) / 1e6"
           " FROM (SELECT count(DISTINCT person_id) AS visitors, coalesce(sum(views), 0)"
           f" AS pageviews FROM (SELECT person_id, views {_CACHED} UNION ALL"
           " SELECT person_id, views FROM live)) p"
           f" LEFT JOIN ({_sessions(['t0', 't1', 'views'])}) s ON true")
"""The overview's figures over a range (parameters as :func:`merged`): visitors and page
views from every part (a part's person is its events' person), sessions, bounce rate
and duration from the sessions merged."""
