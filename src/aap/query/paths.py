"""Paths: the most common sequences of steps after (or before) an event.

A path is read within one session, its events in time order (events at the same
instant ordered by step name), with repeated consecutive steps collapsed into one.
With ``start_event``: the first time the session does it, and the ``depth - 1`` steps
after; with ``end_event``: the last time, and the ``depth - 1`` steps before; with
neither: the session's first ``depth`` steps. A session ending sooner gives a shorter
path. ``count`` is the number of sessions that followed the path. ``path_type: page``
reads only page and screen views, each named by its path (screens by name).
"""

from __future__ import annotations

from typing import Any

from aap.errors import BadRequest
from aap.query import paths_arrays
from aap.query.common import Context, SQLBuilder, base_where, date_range, from_events
from aap.query.models import Paths

MAX_CODED = 1024
"""Up to this many distinct steps, steps are numbered (see below); beyond, compared as text."""


def run(ctx: Context, q: Paths) -> dict[str, Any]:
    if q.start_event and q.end_event:
        raise BadRequest("give start_event or end_event, not both", code="invalid_insight")
    b = SQLBuilder()
    src = from_events(q)
    stepx, where = _steps_and_where(ctx, b, q, src)
    # Steps are numbered by their sorted names, and each event gets one BIGINT sort key
    # (microseconds * 1024 + step number): sorting and comparing integers is much cheaper
    # than strings, and ties in time stay ordered by step name.
    names = [r[0] for r in b.run(ctx, f"SELECT DISTINCT {stepx} FROM {src} WHERE {where}"
                                       " ORDER BY 1") if r[0] is not None]
    if not names:
        return _result([])
    coded = len(names) <= MAX_CODED
    if coded and paths_arrays.applies(q):
        got = paths_arrays.paths(ctx, b, where, names, q.depth, q.limit)
        if got is not None:
            return _result(got)
    anchor = q.start_event or q.end_event
    anchor_step: Any = None
    if anchor is not None:
        if anchor not in names:
            return _result([])
        anchor_step = b.p(names.index(anchor) if coded else anchor)
    ev = _events_sql(names, coded, stepx, src, where)
    rows = b.run(ctx, _paths_sql(b, q, ev, anchor_step))
    if coded:
        rows = [([names[i] for i in path], n) for path, n in rows]
    return _result(rows)


def _result(rows: list[tuple[Any, Any]]) -> dict[str, Any]:
    return {"kind": "paths", "paths": [{"steps": list(p), "count": int(n)} for p, n in rows]}


def _steps_and_where(ctx: Context, b: SQLBuilder, q: Paths, src: str) -> tuple[str, str]:
    """The expression naming an event's step, and the filter of the events read (with an
    anchor event: only the sessions that did it)."""
    where = base_where(b, ctx, q, date_range(q, ctx.now))
    if q.path_type == "page":
        stepx = "coalesce(e.path, e.name, e.event)"
        where += " AND e.type IN ('page', 'screen')"
    else:
        stepx = "e.event"
        if q.exclude_events:
            where += f" AND NOT list_contains({b.p(list(q.exclude_events))}, e.event)"
    anchor = q.start_event or q.end_event
    if anchor is not None:
        where += (f" AND e.session_id IN (SELECT e.session_id FROM {src} WHERE {where}"
                  f" AND {stepx} = {b.p(anchor)})")
    return stepx, where


def _events_sql(names: list[str], coded: bool, stepx: str, src: str, where: str) -> str:
    """Each event's session hash, sort key and step (numbered when ``coded``)."""
    if coded:
        literals = ", ".join("'" + n.replace("'", "''") + "'" for n in names)
        code = f"enum_code(CAST({stepx} AS ENUM({literals})))::BIGINT"
        return (f"SELECT hash(e.session_id) AS s, epoch_us(e.timestamp) * 1024 + {code} AS k,"
                f" {code} AS step FROM {src} WHERE {where}")
    return (f"SELECT hash(e.session_id) AS s, (e.timestamp, {stepx}) AS k, {stepx} AS step"
            f" FROM {src} WHERE {where}")


def _paths_sql(b: SQLBuilder, q: Paths, ev: str, anchor_step: Any) -> str:
    depth = b.p(q.depth)
    # One sort: the previous step of each event in its session (sessions keyed by a
    # 64-bit hash); the first event of every run of equal steps starts a step of the
    # path; then the first (or last) ``depth`` of them.
    runs = (f"ev AS ({ev}), c AS (SELECT s, k, step FROM (SELECT s, k, step, lag(step) OVER"
            " (PARTITION BY s ORDER BY k) AS prev FROM ev) WHERE prev IS DISTINCT FROM step)")
    if q.start_event is not None:
        sql = (f"WITH {runs}, an AS (SELECT s, min(k) AS ka FROM c WHERE step = {anchor_step}"
               f" GROUP BY s), p AS (SELECT min_by(c.step, c.k, {depth}) AS path FROM c"
               " JOIN an USING (s) WHERE c.k >= an.ka GROUP BY c.s)")
    elif q.end_event is not None:
        sql = (f"WITH {runs}, an AS (SELECT s, max(k) AS ka FROM c WHERE step = {anchor_step}"
               f" GROUP BY s), p AS (SELECT list_reverse(max_by(c.step, c.k, {depth})) AS path"
               " FROM c JOIN an USING (s) WHERE c.k <= an.ka GROUP BY c.s)")
    else:
        sql = f"WITH {runs}, p AS (SELECT min_by(step, k, {depth}) AS path FROM c GROUP BY s)"
    return sql + (" SELECT path, count(*) AS n FROM p GROUP BY path"
                  f" ORDER BY n DESC, path LIMIT {b.p(q.limit)}")
