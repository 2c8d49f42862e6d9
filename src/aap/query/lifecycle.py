"""Lifecycle: per interval, the persons who did the event and were

- ``new``: doing it for the first time ever (all stored history, every tier);
- ``returning``: also active in the interval before;
- ``resurrecting``: active before, but not in the interval before;

and ``dormant``: persons active in the interval before but not in this one (a positive
count; charts usually draw it below the axis).

Intervals are whole calendar intervals of the query's time zone: a range that starts or
ends inside a week reads that whole week.
"""

from __future__ import annotations

from typing import Any

from aap.query.common import (
    Context,
    Range,
    SQLBuilder,
    base_where,
    bucket_sql,
    buckets,
    date_range,
    event_match_sql,
    from_events,
    label,
    step,
)
from aap.query.models import Lifecycle

STATUSES = ("new", "returning", "resurrecting", "dormant")


def run(ctx: Context, q: Lifecycle) -> dict[str, Any]:
    rng = date_range(q, ctx.now)
    bs = buckets(rng, q.interval)
    # statuses are about whole intervals: the first and last ones are read in full, and
    # so is the one before the first (who was active just before the range)
    wide = Range(rng.tz, rng.tzname, step(bs[0], q.interval, -1), step(bs[-1], q.interval))
    b = SQLBuilder()
    iv = "INTERVAL 1 " + q.interval.upper()
    src = from_events(q)
    match = event_match_sql(b, q.event)
    bucket = bucket_sql(rng, q.interval)
    sql = (f"WITH f AS (SELECT e.person_id, min({bucket}) AS first FROM {src}"
           f" WHERE {base_where(b, ctx, q, None)} AND {match} GROUP BY e.person_id),"
           f" a AS (SELECT DISTINCT e.person_id, {bucket} AS bucket FROM {src}"
           f" WHERE {base_where(b, ctx, q, wide)} AND {match}),"
           " s AS (SELECT a.person_id, a.bucket, f.first,"
           " lag(a.bucket) OVER (PARTITION BY a.person_id ORDER BY a.bucket) AS prev,"
           " lead(a.bucket) OVER (PARTITION BY a.person_id ORDER BY a.bucket) AS nxt"
           " FROM a JOIN f USING (person_id))"
           " SELECT bucket, CASE WHEN bucket = first THEN 'new'"
           f" WHEN prev = bucket - {iv} THEN 'returning' ELSE 'resurrecting' END, count(*)"
           " FROM s GROUP BY ALL"
           f" UNION ALL SELECT bucket + {iv}, 'dormant', count(*) FROM s"
           f" WHERE nxt IS NULL OR nxt != bucket + {iv} GROUP BY ALL")
    got = {(bk, st): int(c) for bk, st, c in b.run(ctx, sql)}
    out: dict[str, Any] = {"kind": "lifecycle", "interval": q.interval, "timezone": rng.tzname,
                           "dates": [label(x, q.interval) for x in bs]}
    for st in STATUSES:
        out[st] = [got.get((x, st), 0) for x in bs]
    return out
