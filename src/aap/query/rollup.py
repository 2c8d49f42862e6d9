"""The query cache's daily rollup: exact pre-aggregates for insights that count events
and persons per UTC day or longer.

For every cached tier file, the cache also keeps its rows grouped by (event, person,
UTC day, ``DIMS``) with the number of events ``n`` and the earliest timestamp ``t_min``
(table ``query_cache_rollup``, kept in the same transactions as the copy: same files,
same merges folded in). A person's many page views on one day become one row, so
distinct persons, first times and active days are read from a fraction of the rows —
exactly: nothing is estimated.

An insight may read ``events_daily`` (hot and uncached events as they are, the rollup
for cached files; ``timestamp`` is ``t_min`` there) instead of ``events`` when

- its time zone is UTC and every time bound it uses is a UTC midnight,
- its buckets are days, weeks or months,
- it counts events (``sum(n)``), distinct persons, or first/active days of persons,
- its filters and breakdown are on ``event``, ``DIMS`` or person traits, or a cohort.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from aap.query.common import Context, Range
from aap.query.models import Filter
from aap.store.schema import ROLLUP_COLUMNS, ROLLUP_DDL, ROLLUP_DIMS

DIMS = ROLLUP_DIMS
EXPECTED_COLUMNS = ROLLUP_COLUMNS
DDL = ROLLUP_DDL

_DIMS_SQL = ", ".join(f'"{d}"' for d in DIMS)
FILL = (f"INSERT INTO query_cache_rollup SELECT file_no, event, CAST(timestamp AS DATE),"
        f" person_id, count(*), min(timestamp), {_DIMS_SQL} FROM query_cache"
        f" WHERE file_no = ? GROUP BY file_no, event, CAST(timestamp AS DATE), person_id,"
        f" {_DIMS_SQL} ORDER BY event, person_id")
"""Rolls up one cached file (its rows are already in ``query_cache``)."""

INTERVALS = ("day", "week", "month")


def _midnight(t: datetime) -> bool:
    return t.hour == t.minute == t.second == t.microsecond == 0


def usable(ctx: Context, ranges: Iterable[Range | datetime], interval: str,
           filters: Sequence[Filter] = (), breakdown: str | None = None,
           breakdown_type: str = "event") -> bool:
    """May an insight with these bounds, buckets, filters and breakdown read
    ``events_daily``?"""
    if not ctx.daily or interval not in INTERVALS:
        return False
    for r in ranges:
        if isinstance(r, Range):
            if r.tz is not None or not (_midnight(r.start) and _midnight(r.end)):
                return False
        elif not _midnight(r):
            return False
    for f in filters:
        if f.type == "event" and f.property not in ("event", *DIMS):
            return False
    if breakdown is not None and breakdown_type == "event" and breakdown not in DIMS:
        return False
    return breakdown_type in ("event", "person", "cohort")
