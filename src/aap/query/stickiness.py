"""Stickiness: how many persons were active on exactly 1, 2, … N intervals (days by
default) of the range, per series. A person active on no interval is not counted."""

from __future__ import annotations

from typing import Any

from aap.query import rollup
from aap.query.common import (
    Context,
    SQLBuilder,
    base_where,
    bucket_sql,
    buckets,
    date_range,
    event_match_sql,
    from_events,
)
from aap.query.models import Stickiness
from aap.query.trends import series_label


def run(ctx: Context, q: Stickiness) -> dict[str, Any]:
    rng = date_range(q, ctx.now)
    n = len(buckets(rng, q.interval))
    out = []
    for s in q.series:
        b = SQLBuilder()
        daily = rollup.usable(ctx, [rng], q.interval, [*q.filters, *s.filters])
        src = from_events(q, s.filters, table="events_daily" if daily else "events")
        sql = (f"WITH a AS (SELECT e.person_id, count(DISTINCT {bucket_sql(rng, q.interval)}) AS k"
               f" FROM {src} WHERE {base_where(b, ctx, q, rng)}"
               f" AND {event_match_sql(b, s.event, s.filters)} GROUP BY e.person_id)"
               " SELECT k, count(*) FROM a GROUP BY k")
        got = {int(k): int(c) for k, c in b.run(ctx, sql)}
        out.append({"label": series_label(s), "event": s.event,
                    "intervals": list(range(1, n + 1)),
                    "values": [got.get(k, 0) for k in range(1, n + 1)]})
    return {"kind": "stickiness", "interval": q.interval, "timezone": rng.tzname, "series": out}
