"""The tiering job: hot → warm after ``hot_days``, warm → cold (monthly archives) after
``warm_days``, cold dropped after ``cold_days``. Days are UTC calendar days of the
events' (corrected) timestamps."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from aap.store import quarantine
from aap.store.warehouse import Warehouse

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
    moved["quarantined"] = wh.quarantine_hot(JOB)
    hot_limit = today - timedelta(days=policy.hot_days)
    for day in wh.hot_days():
        if day < hot_limit:
            moved["to_warm"] += _isolated(moved, f"hot day {day}", wh.move_day_to_warm, day)
    warm_limit = today - timedelta(days=policy.warm_days)
    for month, _ in wh.warm_months():
        if month <= warm_limit.isoformat()[:7]:  # only its days before the limit move
            moved["to_cold"] += _isolated(moved, f"warm month {month}", wh.compact_to_cold,
                                          month, warm_limit, policy.grace)
    cold_limit = (today - timedelta(days=policy.cold_days)).isoformat()[:7]
    moved["dropped"] = _isolated(moved, "cold archives", wh.drop_cold_before, cold_limit,
                                 policy.grace)
    moved["files_deleted"] = _isolated(moved, "retired files", wh.empty_trash)
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
