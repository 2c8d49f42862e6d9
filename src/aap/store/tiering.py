"""The tiering job: hot → warm after ``hot_days``, warm → cold (monthly archives) after
``warm_days``, cold dropped after ``cold_days``. Days are UTC calendar days of the
events' (corrected) timestamps."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import duckdb
import pyarrow as pa

from aap.store import quarantine
from aap.store.schema import EVENT_ARROW_SCHEMA
from aap.store.warehouse import Warehouse, add_file

logger = logging.getLogger("aap.tiering")


@dataclass(frozen=True)
class TierPolicy:
    hot_days: int = 7
    """Days an event stays in the hot table (DuckDB)."""
    warm_days: int = 90
    """Days an event stays in the warm tier (daily Parquet) before it is archived."""
    cold_days: int = 760
    """Days an event is kept at all (cold monthly archives are dropped after this)."""
    grace: timedelta = timedelta(minutes=10)
    """How long a file dropped from the list stays on disk for queries still reading it."""


def run_tiering(wh: Warehouse, policy: TierPolicy, today: date | None = None) -> dict[str, int]:
    """One run. Hot rows whose time is out of bounds are quarantined first; a day or a
    month that still fails is skipped for this run and reported, and the others move
    (:mod:`aap.store.quarantine`)."""
    today = today or datetime.now(UTC).date()
    moved = {"to_warm": 0, "to_cold": 0, "dropped": 0, "files_deleted": 0, "quarantined": 0,
             "skipped": 0}
    moved["quarantined"] = quarantine_hot(wh, JOB)
    hot_limit = today - timedelta(days=policy.hot_days)
    for day in hot_days(wh):
        if day < hot_limit:
            moved["to_warm"] += _isolated(moved, f"hot day {day}", move_day_to_warm, wh, day)
    warm_limit = today - timedelta(days=policy.warm_days)
    for month, _ in warm_months(wh):
        if month <= warm_limit.isoformat()[:7]:  # only its days before the limit move
            moved["to_cold"] += _isolated(moved, f"warm month {month}", compact_to_cold, wh,
                                          month, warm_limit, policy.grace)
    cold_limit = (today - timedelta(days=policy.cold_days)).isoformat()[:7]
    moved["dropped"] = _isolated(moved, "cold archives", drop_cold_before, wh, cold_limit,
                                 policy.grace)
    moved["files_deleted"] = _isolated(moved, "retired files", empty_trash, wh)
    return moved


JOB = "tiering"


def _isolated(moved: dict[str, int], where: str, fn: Callable[..., int], *args: Any) -> int:
    """``fn(*args)``; if it fails, the unit is skipped for this run, counted and logged
    (the exception's type only: its message may quote a row), and the job goes on."""
    try:
        return fn(*args)
    except Exception as exc:
        moved["skipped"] += 1
        quarantine.report(JOB, quarantine.FAILED, 1, f"{where} ({type(exc).__name__})")
        return 0


def hot_days(wh: Warehouse) -> list[date]:
    """The days of the hot rows (rows out of bounds are not a day: see
    :func:`quarantine_hot`)."""
    return [r[0] for r in wh.con.cursor().execute(
        "SELECT DISTINCT CAST(timestamp AS DATE) FROM events_raw"
        f" WHERE NOT {quarantine.bad_time_sql()} ORDER BY 1",
        quarantine.bound_params()).fetchall()]


def quarantine_hot(wh: Warehouse, job: str) -> int:
    """Move hot rows whose time is out of bounds to ``quarantined_events``."""
    with wh.write_lock, wh.transaction() as cur:
        n = quarantine.hot(cur, job)
    quarantine.report(job, quarantine.BAD_TIME, n, "the hot table")
    return n


def _retire(cur: duckdb.DuckDBPyConnection, paths: list[str], grace: timedelta) -> None:
    """Take files off the live list; they leave the disk after ``grace``."""
    for p in paths:
        cur.execute("DELETE FROM tier_files WHERE path = $path", {"path": p})
        cur.execute("INSERT INTO tier_trash VALUES ($path, now() + $grace)",
                    {"path": p, "grace": grace})


@contextmanager
def _new_file(wh: Warehouse, table: pa.Table, directory: str, *, cold: bool
              ) -> Iterator[tuple[str, int]]:
    """Write ``table`` as a new tier file; if the block that records it fails, the
    file goes again."""
    path, size = wh.tiers.write(table, directory, cold=cold)
    try:
        yield path, size
    except BaseException:
        wh.tiers.delete(path)
        raise


def move_day_to_warm(wh: Warehouse, day: date) -> int:
    """Write the hot rows of ``day`` to a warm file and delete them from the hot table
    in the same transaction as the file joins the list. Returns rows moved."""
    where = "timestamp >= $start AND timestamp < $end"
    bounds = {"start": day, "end": day + timedelta(days=1)}
    with wh.transaction() as cur:
        table: pa.Table = cur.sql(
            f"SELECT e.* REPLACE (coalesce(o.person_id, e.person_id) AS person_id)"
            f" FROM events_raw e LEFT JOIN person_overrides o ON o.old_person_id = e.person_id"
            f" WHERE {where} ORDER BY event, person_id, timestamp", params=bounds
        ).to_arrow_table()
        if table.num_rows == 0:
            return 0
        table = table.cast(EVENT_ARROW_SCHEMA)
        with _new_file(wh, table, f"day={day.isoformat()}", cold=False) as (path, size):
            add_file(cur, path, "warm", day.isoformat(), table.num_rows, size)
            deleted = cur.execute(f"DELETE FROM events_raw WHERE {where}", bounds).fetchone()
            if deleted is None or deleted[0] != table.num_rows:
                raise RuntimeError("hot rows changed while the day was being moved")
    return table.num_rows


def warm_months(wh: Warehouse) -> list[tuple[str, list[str]]]:
    rows = wh.con.cursor().execute(
        "SELECT part, path FROM tier_files WHERE tier = 'warm' ORDER BY part").fetchall()
    out: dict[str, list[str]] = {}
    for part, path in rows:
        out.setdefault(part[:7], []).append(path)
    return sorted(out.items())


def compact_to_cold(wh: Warehouse, month: str, before: date, grace: timedelta) -> int:
    """Compact the warm files of ``month`` (days before ``before``) into one cold file."""
    with wh.transaction() as cur:
        paths = [r[0] for r in cur.execute(
            "SELECT path FROM tier_files WHERE tier = 'warm' AND part LIKE $days"
            " AND part < $before", {"days": month + "-%", "before": before.isoformat()}
        ).fetchall()]
        if not paths:
            return 0
        table, bad = quarantine.split(wh.tiers.read(paths))
        table = table.sort_by(
            [("event", "ascending"), ("person_id", "ascending"), ("timestamp", "ascending")])
        if bad is not None:
            quarantine.keep(cur, bad, "tiering")
        if table.num_rows:
            with _new_file(wh, table, f"month={month}", cold=True) as (path, size):
                add_file(cur, path, "cold", month, table.num_rows, size)
                _retire(cur, paths, grace)
        else:
            _retire(cur, paths, grace)
    if bad is not None:
        quarantine.report("tiering", quarantine.BAD_TIME, bad.num_rows, f"warm month {month}")
    return table.num_rows


def drop_cold_before(wh: Warehouse, month: str, grace: timedelta) -> int:
    """Retention of the cold tier: archives of months before ``month`` go."""
    with wh.transaction() as cur:
        rows = cur.execute("SELECT path, rows FROM tier_files WHERE tier = 'cold'"
                           " AND part < $month", {"month": month}).fetchall()
        _retire(cur, [r[0] for r in rows], grace)
    return sum(int(r[1]) for r in rows)


def empty_trash(wh: Warehouse) -> int:
    with wh.transaction() as cur:
        due = [r[0] for r in cur.execute(
            "SELECT path FROM tier_trash WHERE delete_after <= now()").fetchall()]
        for p in due:
            wh.tiers.delete(p)
            cur.execute("DELETE FROM tier_trash WHERE path = $path", {"path": p})
    return len(due)


class Job(Protocol):
    interval: timedelta

    def run_pending(self) -> dict[str, Any] | None: ...

    def sweep(self) -> dict[str, int]: ...


class TieringThread:
    """Runs the tiering job every ``interval_s``, and ``retention`` (when given) when it is
    due, in the same thread: a retention rewrite never races a tier move."""

    def __init__(self, wh: Warehouse, policy: TierPolicy, interval_s: float,
                 retention: Job | None = None) -> None:
        self.wh = wh
        self.policy = policy
        self.interval = interval_s
        self.retention = retention
        self.tick = min(interval_s, retention.interval.total_seconds()) if retention else interval_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="aap-tiering", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)

    def _run(self) -> None:
        due = time.monotonic() + self.interval
        while True:
            if self.retention is not None:
                try:
                    done = self.retention.run_pending()
                except Exception:
                    logger.exception("retention failed; will retry at the next tick")
                else:
                    if done and any(v for k, v in done.items() if k not in ("seconds", "ran_at")):
                        logger.info("retention: %s", done)
            if self.stop.wait(max(0.0, min(self.tick, due - time.monotonic()))):
                return
            if time.monotonic() < due:
                continue
            due = time.monotonic() + self.interval
            try:
                moved = run_tiering(self.wh, self.policy)
            except Exception:
                logger.exception("tiering failed; will retry")
            else:
                if any(moved.values()):
                    logger.info("tiering: %s", moved)
                if moved["dropped"] and self.retention is not None:
                    try:
                        logger.info("retention sweep: %s", self.retention.sweep())
                    except Exception:
                        logger.exception("retention sweep failed; will retry after the next drop")
