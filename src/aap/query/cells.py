"""How many cells an insight's answer can hold, known from the document before it runs.

A cell is one number of the answer: trends have (series x breakdown values) x buckets
(and the previous period's buckets with ``compare``), stickiness series x intervals, lifecycle 4 x buckets,
retention cohorts x (periods + 1), funnels steps x (breakdown values + 1), paths
``limit`` x ``depth``. A breakdown counts its ``breakdown_limit`` values plus "not set"
and "other". ``check`` refuses a document above the limit with a 400 naming it, before
anything is read.
"""

from __future__ import annotations

from datetime import datetime

from aap.errors import BadRequest
from aap.query.common import Context, buckets, date_range
from aap.query.models import SQL, Funnel, Insight, Lifecycle, Paths, Retention, Stickiness, Trends


def count(q: Insight, now: datetime) -> int:
    """An upper bound of the cells of ``q``'s answer (0 for ``sql``, capped in bytes)."""
    if isinstance(q, Trends):
        if q.breakdown_type == "cohort":
            values = max(1, len(q.breakdown_cohorts))
        else:
            values = q.breakdown_limit + 2 if q.breakdown else 1
        series = len(q.series) + (1 if q.formula else 0)
        rng = date_range(q, now)
        # the previous period has buckets of its own: shifted back, a week or a month
        # may be cut into one bucket more than the current period's
        periods = [rng, rng.shifted_back()] if q.compare else [rng]
        return series * values * sum(len(buckets(r, q.interval)) for r in periods)
    if isinstance(q, Stickiness):
        return len(q.series) * len(buckets(date_range(q, now), q.interval))
    if isinstance(q, Lifecycle):
        return 4 * len(buckets(date_range(q, now), q.interval))
    if isinstance(q, Retention):
        from aap.query.retention import cohort_range

        return len(buckets(cohort_range(Context(cur=None, now=now), q),  # type: ignore[arg-type]
                           q.period)) * (q.periods + 1)
    if isinstance(q, Funnel):
        return len(q.steps) * ((q.breakdown_limit + 2 if q.breakdown else 0) + 1)
    if isinstance(q, Paths):
        return q.limit * q.depth
    assert isinstance(q, SQL)
    return 0


def check(q: Insight, now: datetime, limit: int) -> None:
    n = count(q, now)
    if n > limit:
        raise BadRequest(
            f"the answer would have up to {n} cells (series x breakdown values x buckets), "
            f"more than the limit of {limit} (AAP_MAX_INSIGHT_CELLS): use fewer series, a "
            "smaller breakdown_limit, a longer interval or a shorter range",
            {"cells": n, "limit": limit}, code="too_many_cells")
