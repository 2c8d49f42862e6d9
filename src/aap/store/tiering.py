"""The tiering job: hot → warm after ``hot_days``, warm → cold (monthly archives) after
``warm_days``, cold dropped after ``cold_days``. Days are UTC calendar days of the
events' (corrected) timestamps.

With publishing on (:mod:`aap.store.publish`) the hot rows leave as batch files every
few seconds instead of after ``hot_days``; this job then folds them (:func:`compact_batches`)
and the rest is as before. A day that has ended is folded into one warm file. Today's
files are folded by levels, so that an event is written a few times a day, not once per
run: :data:`COMPACT_BATCHES` batch files (level 0) make one file of level 1, and
:data:`FOLD_FILES` files of a level one of the next (a file's level is in its name,
``fold<level>-…``). Before 2026-12-07 each fold of today rewrote the day's file so far
with the new batches: with a run every 5 minutes, a day's events were each written
about 144 times on average whatever the rate, and a fold read the whole day so far."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs

from aap.store import quarantine
from aap.store.filelist import Moved, TierFile, reading
from aap.store.meta import log_failure
from aap.store.schema import EVENT_ARROW_SCHEMA, PUBLISH_BATCH
from aap.store.tiers import ROW_GROUP_ROWS
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
    moved["quarantined"] = quarantine_hot(wh, JOB)
    if wh.files.shared:  # the publisher moves the hot rows; their batch files are folded
        moved["compacted"] = 0
        for part, files in warm_days(wh):
            if _due(part, files, today):
                moved["compacted"] += _isolated(moved, f"batches of {part}", compact_batches,
                                                wh, part, policy.grace, today)
        from aap.store import published  # the other tables' batch files (persons, orders…)

        for table in published.KINDS:
            moved["compacted"] += _isolated(moved, f"batches of {table}", published.compact,
                                            wh, table, policy.grace)
    hot_limit = today - timedelta(days=policy.hot_days)
    for day in hot_days(wh) if not wh.files.shared else []:
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


@contextmanager
def _new_file(wh: Warehouse, rows: pa.RecordBatchReader, directory: str, *, cold: bool,
              name: str = "") -> Iterator[tuple[str, int, int]]:
    """Write ``rows`` as a new tier file (named ``name``, else a new ``part-…``), batch by
    batch: its path, size and rows. If the block that records it fails, or it has no
    rows, the file goes again."""
    path, size, n = wh.tiers.write_batches(rows, directory, cold=cold, name=name)
    try:
        yield path, size, n
    except BaseException:
        wh.tiers.delete(path)
        raise
    if n == 0:
        wh.tiers.delete(path)


def move_day_to_warm(wh: Warehouse, day: date) -> int:
    """Write the hot rows of ``day`` to a warm file and delete them from the hot table
    in the same transaction as the file joins the list. Returns rows moved. (Without
    publishing: with it, the publisher moves the hot rows and none is ever marked here.)"""
    where = f"{PUBLISH_BATCH} IS NULL AND timestamp >= $start AND timestamp < $end"
    bounds = {"start": day, "end": day + timedelta(days=1)}
    with wh.transaction() as cur:
        rows = cur.sql(
            f"SELECT e.* EXCLUDE ({PUBLISH_BATCH})"
            " REPLACE (coalesce(o.person_id, e.person_id) AS person_id)"
            f" FROM events_raw e LEFT JOIN person_overrides o ON o.old_person_id = e.person_id"
            f" WHERE {where} ORDER BY {ORDER}", params=bounds
        ).to_arrow_reader(ROW_GROUP_ROWS[False])  # written as DuckDB sorts: any size
        with _new_file(wh, rows, f"day={day.isoformat()}", cold=False) as (path, size, n):
            if n == 0:
                return 0
            wh.files.swap(cur, [], [TierFile(path, "warm", day.isoformat(), n, size)], None)
            deleted = cur.execute(f"DELETE FROM events_raw WHERE {where}", bounds).fetchone()
            if deleted is None or deleted[0] != n:
                raise RuntimeError("hot rows changed while the day was being moved")
    return n


def warm_months(wh: Warehouse) -> list[tuple[str, list[str]]]:
    out: dict[str, list[str]] = {}
    for f in wh.files.files():
        if f.tier == "warm":
            out.setdefault(f.part[:7], []).append(f.path)
    return sorted(out.items())


BATCH_PREFIX = "batch-"
"""The name of a published batch file starts so (:mod:`aap.store.publish`)."""
FOLD_PREFIX = "fold"
"""The name of a file folded from today's files starts so, then its level: ``fold2-…``."""
COMPACT_BATCHES = 32
"""Today's batch files are folded into one file (of level 1) once there are this many (a
day before today is folded whole as soon as it has a file below the top level and another
file)."""
FOLD_FILES = 8
"""Today's files of one level (1 and up) are folded into one of the next level once
there are this many: with a run every 5 minutes, level 2 holds 40 minutes, level 3 five
hours and twenty minutes, so an event is written at most 4 times before its day ends."""
TOP_LEVEL = 1_000
"""The level of a day's file, and of any other warm file not named for a level (a
rewrite's, an older version's): not folded again before its day ends."""


def is_batch(path: str) -> bool:
    return path.rsplit("/", 1)[-1].startswith(BATCH_PREFIX)


def level(path: str) -> int:
    """A warm file's level: 0 a batch file, ``n`` a file folded from today's files of
    level ``n - 1``, :data:`TOP_LEVEL` the rest."""
    if is_batch(path):
        return 0
    name = path.rsplit("/", 1)[-1]
    if not name.startswith(FOLD_PREFIX):
        return TOP_LEVEL
    digits = name[len(FOLD_PREFIX):].partition("-")[0]
    return int(digits) if digits.isdigit() else TOP_LEVEL


def next_fold(paths: list[str]) -> list[str]:
    """Of today's warm files, those to fold now into one of the next level (empty: none):
    the batch files once there are :data:`COMPACT_BATCHES`, else the files of the lowest
    level that has :data:`FOLD_FILES`."""
    levels: dict[int, list[str]] = {}
    for p in paths:
        levels.setdefault(level(p), []).append(p)
    if len(levels.get(0, ())) >= COMPACT_BATCHES:
        return sorted(levels[0])
    for n in sorted(k for k in levels if 0 < k < TOP_LEVEL):
        if len(levels[n]) >= FOLD_FILES:
            return sorted(levels[n])
    return []


def warm_days(wh: Warehouse) -> list[tuple[str, list[str]]]:
    """The warm files of each day."""
    out: dict[str, list[str]] = {}
    for f in wh.files.files():
        if f.tier == "warm":
            out.setdefault(f.part, []).append(f.path)
    return sorted(out.items())


def _day_files(wh: Warehouse, day: str) -> list[str]:
    """The warm files of ``day``, as the list has them now."""
    return [p for d, ps in warm_days(wh) if d == day for p in ps]


def _due(day: str, paths: list[str], today: date) -> bool:
    if day < today.isoformat():
        return len(paths) > 1 and any(level(p) < TOP_LEVEL for p in paths)
    return bool(next_fold(paths))


def compact_batches(wh: Warehouse, day: str, grace: timedelta, today: date | None = None
                    ) -> int:
    """Fold the warm files of ``day``: a day before ``today`` (default: the UTC date now)
    into one new warm file, every file of it; today (or a later day) by levels — the
    files :func:`next_fold` names, then again while a fold is due (the new file may
    complete its level). Returns the rows written (:func:`_fold`)."""
    today = today or datetime.now(UTC).date()
    if day < today.isoformat():
        paths = _day_files(wh, day)
        if len(paths) < 2:
            return 0
        return _fold(wh, paths, "warm", day, grace, f"warm day {day}")
    rows = 0
    while fold := next_fold(_day_files(wh, day)):
        n = level(fold[0]) + 1
        done = _fold(wh, fold, "warm", day, grace, f"warm day {day}, level {n}",
                     name=f"{FOLD_PREFIX}{n}-{uuid.uuid4().hex}")
        if not done:  # folded or rewritten meanwhile (or no row left): the next run
            break
        rows += done
    return rows


def compact_to_cold(wh: Warehouse, month: str, before: date, grace: timedelta) -> int:
    """Compact the warm files of ``month`` (days before ``before``) into one cold file
    (:func:`_fold`). Returns rows."""
    paths = [f.path for f in wh.files.files() if f.tier == "warm"
             and f.part.startswith(month + "-") and f.part < before.isoformat()]
    if not paths:
        return 0
    return _fold(wh, paths, "cold", month, grace, f"warm month {month}")


SORT = [("event", "ascending"), ("person_id", "ascending"), ("timestamp", "ascending")]
"""The order of the rows in every tier file."""
ORDER = ", ".join(c for c, _ in SORT)
""":data:`SORT` in SQL (DuckDB puts nulls last, as pyarrow)."""


FOLD_MEMORY = "256MB"
"""DuckDB's memory when it sorts the rows of a fold (of local files, and of files on S3
copied beside it), in one thread (past it, it spills to a scratch directory beside the
warehouse). With a row group of them and the Parquet writer's buffers, a fold needed
about 0.5 GB for a day of 2 and of 4 million events alike (2026-12-07; 0.25 GB from
S3), against 1.8 GB for 2 million when it read every row into one Arrow table; with two
threads, this memory did not do."""


def _fold(wh: Warehouse, paths: list[str], tier: str, part: str, grace: timedelta,
          what: str, name: str = "") -> int:
    """Fold the tier files ``paths`` into one new file of ``tier`` for ``part`` (its rows
    sorted as every tier file's, rows whose time is out of bounds kept in quarantine):
    one swap in the list; the old files go to the trash for ``grace``. A file folded,
    moved or rewritten since the list was read (by another processor: :class:`Moved`)
    makes this run skip the part (0): the next run folds it as it is then."""
    cold = tier == "cold"
    try:
        with reading(wh.files, paths), _sorted(wh, paths, cold) as (rows, bad):
            directory = f"{'month' if cold else 'day'}={part}"
            with _new_file(wh, rows, directory, cold=cold, name=name) as (path, size, n):
                with wh.transaction() as tx:
                    if bad is not None:
                        quarantine.keep(tx, bad, JOB)
                    wh.files.swap(tx, paths, [TierFile(path, tier, part, n, size)] if n else [],
                                  grace)
    except Moved:
        return 0
    if bad is not None:
        quarantine.report(JOB, quarantine.BAD_TIME, bad.num_rows, what)
    return n


@contextmanager
def _sorted(wh: Warehouse, paths: list[str], cold: bool
            ) -> Iterator[tuple[pa.RecordBatchReader, pa.Table | None]]:
    """The rows of the tier files ``paths`` whose time is in bounds, sorted as every tier
    file's, in batches of a row group; and those out of bounds (``None``: none).

    The files are sorted by a DuckDB of the fold's own (:data:`FOLD_MEMORY`, one thread,
    spilling to a scratch directory beside the warehouse), which reads them with its
    Parquet reader, and written as the sort gives them: a day or a month larger than
    memory folds. Files on S3 (this DuckDB has no S3 client here) are first copied into
    the scratch directory, a stream at a time (:func:`_readable`). Only where the
    scratch directory's own path would read as a glob pattern are the rows read whole
    into memory and sorted there, as every fold was before 2026-12-07."""
    batch = ROW_GROUP_ROWS[cold]
    scratch = Path(tempfile.mkdtemp(prefix="fold-", dir=wh.path.parent))
    try:
        if _pattern(str(scratch)):
            table, bad = quarantine.split(wh.tiers.read(paths))
            table = table.sort_by(SORT)
            yield pa.RecordBatchReader.from_batches(
                EVENT_ARROW_SCHEMA, table.to_batches(max_chunksize=batch)), bad
            return
        local = _readable(wh, paths, scratch)
        con = duckdb.connect(config={"threads": 1, "memory_limit": FOLD_MEMORY,
                                     "preserve_insertion_order": False,
                                     "temp_directory": str(scratch)})
        try:
            con.execute("SET enable_progress_bar = false")  # (a long sort drew one on stdout)
            files = ("read_parquet([" + ", ".join("'" + p.replace("'", "''") + "'"
                                                  for p in local)
                     + "], hive_partitioning = false, union_by_name = true)")
            have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {files}").fetchall()}
            cols = ", ".join(f'"{f.name}"' if f.name in have else f'NULL AS "{f.name}"'
                             for f in EVENT_ARROW_SCHEMA)  # (a column newer than the files)
            src = f"(SELECT {cols} FROM {files})"
            params = quarantine.bound_params()
            out = quarantine.bad_time_sql()
            (n_bad,), = con.execute(f"SELECT count(*) FROM {src} WHERE {out}",
                                    params).fetchall()
            bad = (con.sql(f"SELECT * FROM {src} WHERE {out}", params=params).to_arrow_table()
                   .cast(EVENT_ARROW_SCHEMA) if n_bad else None)
            yield con.sql(f"SELECT * FROM {src} WHERE NOT {out} ORDER BY {ORDER}",
                          params=params).to_arrow_reader(batch), bad
        finally:
            con.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _pattern(path: str) -> bool:
    """Whether DuckDB's ``read_parquet`` would read ``path`` as a glob pattern."""
    return any(c in path for c in "*?[")


COPY_BYTES = 1 << 20
"""The buffer of a copy of a file on S3 into a fold's scratch directory."""


def _readable(wh: Warehouse, paths: list[str], scratch: Path) -> list[str]:
    """Paths of the files that DuckDB reads as they are: a local file itself, unless its
    path would read as a glob pattern (then a link to it in ``scratch``); a file on S3
    copied into ``scratch`` (streamed, :data:`COPY_BYTES` at a time: the scratch
    directory needs the files' size on disk, not memory)."""
    local = isinstance(wh.tiers.fs, pafs.LocalFileSystem)
    out = []
    for i, path in enumerate(paths):
        if local and not _pattern(path):
            out.append(path)
            continue
        copy = scratch / f"in-{i}.parquet"
        if local:
            copy.symlink_to(path)
        else:
            with wh.tiers.fs.open_input_stream(path) as src, copy.open("wb") as dst:
                shutil.copyfileobj(src, dst, COPY_BYTES)
        out.append(str(copy))
    return out


def drop_cold_before(wh: Warehouse, month: str, grace: timedelta) -> int:
    """Retention of the cold tier: archives of months before ``month`` go. An archive
    dropped or rewritten meanwhile (by another processor: :class:`Moved`) makes this run
    drop nothing (0): the next run drops what is left then."""
    try:
        with wh.transaction() as cur:
            rows = [f for f in wh.files.files(cur) if f.tier == "cold" and f.part < month]
            if rows:
                wh.files.swap(cur, [f.path for f in rows], [], grace)
    except Moved:
        return 0
    return sum(f.rows for f in rows)


def empty_trash(wh: Warehouse) -> int:
    due = wh.files.due()
    for p in due:
        wh.tiers.delete(p)
        wh.files.forget(p)
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
                except Exception as exc:
                    log_failure(logger, "retention failed; it runs again at the next tick", exc,
                                self.wh.tiers)
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
            except Exception as exc:
                log_failure(logger, "tiering failed; will retry", exc, self.wh.tiers)
            else:
                if any(moved.values()):
                    logger.info("tiering: %s", moved)
                if moved["dropped"] and self.retention is not None:
                    try:
                        logger.info("retention sweep: %s", self.retention.sweep())
                    except Exception as exc:
                        log_failure(logger, "retention sweep failed; will retry after the next"
                                    " drop", exc, self.wh.tiers)
