"""Paths: the most common sequences of steps after (or before) an event.

A path is read within one session, its events in time order (ties broken by message
id), with repeated consecutive steps collapsed into one. With ``start_event``: the first
time the session does it, and the ``depth - 1`` steps after; with ``end_event``: the last
time, and the ``depth - 1`` steps before; with neither: the session's first ``depth``
steps. A session ending sooner gives a shorter path. ``count`` is the number of sessions
that followed the path. ``path_type: page`` reads only page and screen views, each named
by its path (screens by name).
"""

from __future__ import annotations

from typing import Any

from aap.errors import BadRequest
from aap.query.common import Context, SQLBuilder, base_where, date_range, from_events
from aap.query.models import Paths


def run(ctx: Context, q: Paths) -> dict[str, Any]:
    if q.start_event and q.end_event:
        raise BadRequest("give start_event or end_event, not both", code="invalid_insight")
    rng = date_range(q, ctx.now)
    b = SQLBuilder()
    src = from_events(q)
    where = base_where(b, ctx, q, rng)
    if q.path_type == "page":
        stepx = "coalesce(e.path, e.name, e.event)"
        where += " AND e.type IN ('page', 'screen')"
    else:
        stepx = "e.event"
        if q.exclude_events:
            where += f" AND NOT list_contains({b.p(list(q.exclude_events))}, e.event)"
    anchor = q.start_event or q.end_event
    if anchor is not None:
        # only sessions that did the anchor event
        where += (f" AND e.session_id IN (SELECT e.session_id FROM {src} WHERE {where}"
                  f" AND {stepx} = {b.p(anchor)})")
    depth = b.p(q.depth)
    if q.start_event is not None:
        a = b.p(q.start_event)
        pick = f"list_slice(l, list_position(l, {a}), list_position(l, {a}) + {depth} - 1)"
    elif q.end_event is not None:
        a = b.p(q.end_event)
        last = f"(len(l) + 1 - list_position(list_reverse(l), {a}))"
        pick = f"list_slice(l, greatest(1, {last} - {depth} + 1), {last})"
    else:
        pick = f"list_slice(l, 1, {depth})"
    sql = (f"WITH s AS (SELECT list({stepx} ORDER BY e.timestamp, e.message_id) AS l FROM {src}"
           f" WHERE {where} GROUP BY e.session_id),"
           " c AS (SELECT list_filter(l, lambda x, i: i = 1 OR x IS DISTINCT FROM l[i - 1]) AS l"
           " FROM s),"
           f" p AS (SELECT {pick} AS path FROM c)"
           f" SELECT path, count(*) AS n FROM p WHERE path IS NOT NULL AND len(path) > 0"
           f" GROUP BY path ORDER BY n DESC, path LIMIT {b.p(q.limit)}")
    rows = b.run(ctx, sql)
    return {"kind": "paths", "paths": [{"steps": list(p), "count": int(n)} for p, n in rows]}
