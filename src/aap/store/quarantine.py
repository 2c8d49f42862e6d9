"""What a background job cannot handle is set aside here, counted and reported; it never
stops the job for the other rows.

- Rows: event rows whose time is out of bounds (before ``EARLIEST_TIME``, after
  ``MAX_CLOCK_AHEAD`` from now, or missing; written by an older version, or by hand)
  leave the hot table or the file they are in for the warehouse table
  ``quarantined_events`` (the event's columns, then ``job``, ``reason``,
  ``quarantined_at``), in the same transaction as the job's change.
- Units: a day, month or file that a job still fails on is skipped for this run and
  the job goes on with the others.

Each is counted in ``aap_jobs_quarantined_total{job,reason}`` (rows, or the units
skipped) and logged with the job, the reason, the count and the partition — never a
row's content. Erasure, consent withdrawal and retention reach quarantined rows too.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from aap.events import EARLIEST_TIME, MAX_CLOCK_AHEAD
from aap.store.schema import EVENT_ARROW_SCHEMA, EVENT_COLUMNS, PUBLISH_BATCH

logger = logging.getLogger("aap.quarantine")

_counter: Any = None
"""``aap_jobs_quarantined_total``, made at the first report: prometheus-client picks its
multiprocess mode when it is first imported, and the warehouse (which imports this
module) is imported by ``aap serve`` before the workers' environment is set."""

BAD_TIME = "timestamp_out_of_range"
"""Reason: the row's time is missing, before 2000-01-01 or more than a year ahead."""
FAILED = "failed"
"""Reason: the job failed on this unit (a day, a month, a file); skipped for this run."""

DDL = f"""
CREATE TABLE IF NOT EXISTS quarantined_events (
    {", ".join(f'"{n}" {t}' for n, t, _ in EVENT_COLUMNS)},
    job VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    quarantined_at TIMESTAMP NOT NULL
);
"""


NOW_UTC = "(now() AT TIME ZONE 'UTC')"
"""When a row is set aside: naive UTC, like every time in the warehouse."""


def bounds(now: datetime | None = None) -> tuple[datetime, datetime]:
    """(earliest, latest) time a stored row may carry: naive UTC, like the warehouse."""
    now = now or datetime.now(UTC)
    return (EARLIEST_TIME.replace(tzinfo=None),
            (now.astimezone(UTC) + MAX_CLOCK_AHEAD).replace(tzinfo=None))


def bad_time_sql(col: str = "timestamp") -> str:
    """A condition true for rows out of bounds; parameters: :func:`bound_params`."""
    return f"({col} IS NULL OR {col} < $earliest OR {col} > $latest)"


def bound_params(now: datetime | None = None) -> dict[str, datetime]:
    """:func:`bounds` as the named parameters of :func:`bad_time_sql`."""
    earliest, latest = bounds(now)
    return {"earliest": earliest, "latest": latest}


def report(job: str, reason: str, n: int, where: str) -> None:
    """Count and log ``n`` rows (or units) set aside: no row content, ever."""
    global _counter
    if n:
        if _counter is None:
            from prometheus_client import Counter

            _counter = Counter("aap_jobs_quarantined",
                               "Rows (or units: days, months, files) a background job set aside.",
                               ["job", "reason"])
        _counter.labels(job, reason).inc(n)
        logger.warning("%s: %d %s set aside (%s) in %s", job, n,
                       "unit" if reason == FAILED else "rows", reason, where)


def hot(cur: duckdb.DuckDBPyConnection, job: str, now: datetime | None = None) -> int:
    """Inside a transaction: move hot rows out of bounds (not marked for publishing) to
    ``quarantined_events``."""
    params = bound_params(now)
    cond = f"{PUBLISH_BATCH} IS NULL AND ({bad_time_sql()})"
    row = cur.execute(f"SELECT count(*) FROM events_raw WHERE {cond}", params).fetchone()
    n = int(row[0]) if row else 0
    if n:
        cur.execute(f"INSERT INTO quarantined_events SELECT * EXCLUDE ({PUBLISH_BATCH}),"
                    f" $job, $reason, {NOW_UTC}"
                    f" FROM events_raw WHERE {cond}", {"job": job, "reason": BAD_TIME, **params})
        cur.execute(f"DELETE FROM events_raw WHERE {cond}", params)
    return n


def split(table: pa.Table, now: datetime | None = None) -> tuple[pa.Table, pa.Table | None]:
    """(rows in bounds, rows out of bounds or ``None``) of a tier file's table, compared
    as integers: no row is converted to a Python datetime."""
    lo, hi = bounds(now)
    ts = table.column("timestamp").cast(pa.timestamp("us"))
    ok = pc.fill_null(pc.and_(pc.greater_equal(ts, pa.scalar(lo, pa.timestamp("us"))),
                              pc.less_equal(ts, pa.scalar(hi, pa.timestamp("us")))), False)
    bad_n = table.num_rows - int(pc.sum(ok).as_py() or 0)
    if not bad_n:
        return table, None
    return table.filter(ok), table.filter(pc.invert(ok))


def keep(cur: duckdb.DuckDBPyConnection, rows: pa.Table, job: str, reason: str = BAD_TIME
         ) -> int:
    """Inside a transaction: add ``rows`` (a tier file's) to ``quarantined_events``."""
    if not rows.num_rows:
        return 0
    cur.register("quarantine_rows", rows.cast(EVENT_ARROW_SCHEMA))
    try:
        cur.execute(f"INSERT INTO quarantined_events SELECT *, $job, $reason, {NOW_UTC}"
                    " FROM quarantine_rows", {"job": job, "reason": reason})
    finally:
        cur.unregister("quarantine_rows")
    return rows.num_rows
