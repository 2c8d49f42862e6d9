"""Retention: of the persons who did ``start_event`` in a period (their cohort), how many
did ``return_event`` in each later period.

``first_time``: a person's cohort is the period of their first-ever ``start_event`` (over
all stored history, every tier); ``recurring``: every period in which they did it.
``values[0]`` is the cohort size and ``values[i]`` the persons of the cohort who did
``return_event`` in the i-th period after. Periods are calendar hours, days, ISO weeks
or months of the query's time zone. Cohorts are the periods of the date range (by default
the last ``periods`` periods); a cohort's values stop at the current period.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

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
    in_calendar,
    label,
    local_ts,
    parse_point,
    step,
    to_local,
    trunc,
    zone,
)
from aap.query.models import Retention

DIFF = {"hour": "datediff('hour', co.c, re.r)", "day": "datediff('day', co.c, re.r)",
        "week": "datediff('day', co.c, re.r) // 7", "month": "datediff('month', co.c, re.r)"}


def cohort_range(ctx: Context, q: Retention) -> Range:
    tz = zone(q.timezone)
    if q.date_from is None:
        now_local = to_local(ctx.now, tz)
        end = parse_point(q.date_to or "today", now_local, end=True)
        in_calendar(end, end)  # before stepping back from it: 0001-01-01 would overflow
        start = step(trunc(end - timedelta(microseconds=1), q.period), q.period, -(q.periods - 1))
        in_calendar(start, end)
        rng = Range(tz, "UTC" if tz is None else q.timezone, start, end)
    else:
        rng = date_range(q, ctx.now)
    return Range(rng.tz, rng.tzname, trunc(rng.start, q.period), rng.end)


def run(ctx: Context, q: Retention) -> dict[str, Any]:
    rng = cohort_range(ctx, q)
    cohorts = buckets(rng, q.period)
    now_local = to_local(ctx.now, rng.tz)
    horizon = min(step(cohorts[-1], q.period, q.periods), step(trunc(now_local, q.period), q.period))
    horizon = max(horizon, rng.end)
    ret = Range(rng.tz, rng.tzname, rng.start, horizon)
    b = SQLBuilder()
    daily = rollup.usable(ctx, [rng, ret], q.period, q.filters)
    src = from_events(q, table="events_daily" if daily else "events")
    start_match = event_match_sql(b, q.start_event)
    ret_match = event_match_sql(b, q.return_event)
    if q.mode == "first_time":
        lo, hi = b.p(rng.start_utc), b.p(rng.end_utc)
        co = (f"st AS (SELECT e.person_id, min(e.timestamp) AS first FROM {src}"
              f" WHERE {base_where(b, ctx, q, None)} AND {start_match} GROUP BY e.person_id),"
              f" co AS (SELECT person_id, date_trunc('{q.period}', {local_ts(rng, 'first')}) AS c"
              f" FROM st WHERE first >= {lo} AND first < {hi})")
    else:
        co = (f"co AS (SELECT DISTINCT e.person_id, {bucket_sql(rng, q.period)} AS c FROM {src}"
              f" WHERE {base_where(b, ctx, q, rng)} AND {start_match})")
    re_ = (f"re AS (SELECT DISTINCT e.person_id, {bucket_sql(rng, q.period)} AS r FROM {src}"
           f" WHERE {base_where(b, ctx, q, ret)} AND {ret_match})")
    sql = (f"WITH {co}, {re_},"
           f" j AS (SELECT co.c, {DIFF[q.period]} AS i FROM co JOIN re USING (person_id)"
           f" WHERE re.r > co.c)"
           f" SELECT c, 0 AS i, count(*) FROM co GROUP BY c"
           f" UNION ALL SELECT c, i, count(*) FROM j WHERE i < {b.p(q.periods)} GROUP BY c, i")
    got: dict[tuple[datetime, int], int] = {(c, int(i)): int(n) for c, i, n in b.run(ctx, sql)}
    out = []
    for c in cohorts:
        values = [got.get((c, i), 0) for i in range(q.periods) if step(c, q.period, i) < horizon]
        out.append({"start": label(c, q.period), "size": values[0] if values else 0,
                    "values": values})
    return {"kind": "retention", "period": q.period, "mode": q.mode, "timezone": rng.tzname,
            "cohorts": out}
