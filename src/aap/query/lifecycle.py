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

import numpy as np

from aap.query import rollup
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
    daily = rollup.usable(ctx, [rng, wide], q.interval, q.filters)
    src = from_events(q, table="events_daily" if daily else "events")
    match = event_match_sql(b, q.event)
    if len(bs) + 1 <= MAX_MASKED:
        counts = _by_masks(ctx, b, q, src, match, rng, wide, len(bs))
    else:
        counts = _by_joins(ctx, b, q, src, match, rng, wide, bs)
    return {"kind": "lifecycle", "interval": q.interval, "timezone": rng.tzname,
            "dates": [label(x, q.interval) for x in bs], **counts}


def _by_joins(ctx: Context, b: SQLBuilder, q: Lifecycle, src: str, match: str, rng: Range,
              wide: Range, bs: list[Any]) -> dict[str, list[int]]:
    """One scan of the range: a person's first-ever interval is the earliest of their
    intervals in it, unless they did the event before (a second, narrow scan). The
    interval before and after are looked up by hash joins (window functions partitioned
    by person cost far more with many persons)."""
    iv = "INTERVAL 1 " + q.interval.upper()
    bucket = bucket_sql(rng, q.interval)
    sql = (f"WITH a AS MATERIALIZED (SELECT DISTINCT e.person_id, {bucket} AS bucket FROM {src}"
           f" WHERE {base_where(b, ctx, q, wide)} AND {match}),"
           f" fb AS (SELECT e.person_id, min({bucket}) AS first FROM {src}"
           f" WHERE {base_where(b, ctx, q, None)} AND e.timestamp < {b.p(wide.start_utc)}"
           f" AND {match} GROUP BY e.person_id),"
           " f AS (SELECT a.person_id, least(any_value(fb.first), min(a.bucket)) AS first"
           " FROM a LEFT JOIN fb USING (person_id) GROUP BY a.person_id),"
           " s AS MATERIALIZED (SELECT a.person_id, a.bucket, f.first,"
           " pr.bucket IS NOT NULL AS was, nx.bucket IS NOT NULL AS stays FROM a"
           " JOIN f USING (person_id)"
           f" LEFT JOIN a pr ON pr.person_id = a.person_id AND pr.bucket = a.bucket - {iv}"
           f" LEFT JOIN a nx ON nx.person_id = a.person_id AND nx.bucket = a.bucket + {iv})"
           " SELECT bucket, CASE WHEN bucket = first THEN 'new'"
           " WHEN was THEN 'returning' ELSE 'resurrecting' END, count(*)"
           " FROM s GROUP BY ALL"
           f" UNION ALL SELECT bucket + {iv}, 'dormant', count(*) FROM s"
           " WHERE NOT stays GROUP BY ALL")
    got = {(bk, st): int(c) for bk, st, c in b.run(ctx, sql)}
    return {st: [got.get((x, st), 0) for x in bs] for st in STATUSES}


MAX_MASKED = 62
"""Up to this many intervals (the range's and the one before), a person's active
intervals are one BIGINT bit mask."""

_INDEX = {"hour": "datediff('hour', {a}, {b})", "day": "datediff('day', {a}, {b})",
          "week": "datediff('day', {a}, {b}) // 7", "month": "datediff('month', {a}, {b})"}


def _by_masks(ctx: Context, b: SQLBuilder, q: Lifecycle, src: str, match: str, rng: Range,
              wide: Range, n: int) -> dict[str, list[int]]:
    """One aggregation: per person, the mask of their active intervals (bit 0: the one
    before the range) and whether they did the event before it; the statuses are then
    bit tests over all persons at once (numpy)."""
    idx = _INDEX[q.interval].format(a=b.p(wide.start), b=bucket_sql(rng, q.interval))
    sql = (f"WITH m AS (SELECT e.person_id, bit_or(1::BIGINT << ({idx})) AS m FROM {src}"
           f" WHERE {base_where(b, ctx, q, wide)} AND {match} GROUP BY e.person_id)"
           f" SELECT m.m, m.person_id IN (SELECT e.person_id FROM {src}"
           f" WHERE {base_where(b, ctx, q, None)} AND e.timestamp < {b.p(wide.start_utc)}"
           f" AND {match}) AS before FROM m")
    got = b.run_numpy(ctx, sql)
    masks = got["m"].astype(np.int64)
    before = got["before"].astype(bool)
    lowest = masks & -masks  # the first interval each person was active in the window
    out: dict[str, list[int]] = {st: [] for st in STATUSES}
    for i in range(1, n + 1):
        bit, prev = np.int64(1) << i, np.int64(1) << (i - 1)
        active = (masks & bit) != 0
        was = (masks & prev) != 0
        new = active & (lowest == bit) & ~before
        out["new"].append(int(np.count_nonzero(new)))
        out["returning"].append(int(np.count_nonzero(active & was & ~new)))
        out["resurrecting"].append(int(np.count_nonzero(active & ~was & ~new)))
        out["dormant"].append(int(np.count_nonzero(was & ~active)))
    return out
