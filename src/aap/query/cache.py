"""The query cache: a native DuckDB copy of the warm and cold tiers, for queries.

Warm and cold events are Parquet files (local disk or S3); reading them for every query
costs 2-3x a native DuckDB table and a per-file overhead. The core therefore keeps a copy
of every live tier file in the table ``query_cache`` of the warehouse database, with
person ids already resolved through the merges known when it was copied. Each file's
rows are stored in session order — (``session_hash`` = ``hash(session_id)``, timestamp,
event) — so that paths read sessions whole, in time order, without sorting them
(:mod:`aap.query.paths_arrays`), with the event's name as a small integer
(``event_code``, numbered in ``query_cache_names``); counts by event come from the
rollup.

Consistency is kept by the same snapshot rule as the tiers themselves:

- a query's ``events`` view reads the cached rows only of files that are live in its
  snapshot (the list of :mod:`aap.store.filelist`); live files not copied yet are read from Parquet as before;
  cached rows of retired files are ignored and deleted by the next sync;
- merges recorded after the copy (``person_overrides`` rows not yet in
  ``query_cache_overrides``) are applied at query time by a join with just those rows
  (usually none), and folded into the copy by the next sync.

So a query returns exactly what it would without the cache; erasure and retention,
which replace or retire files, reach the copy through the same list. Each copied file
is also rolled up per (event, person, UTC day) in the same transaction
(:mod:`aap.query.rollup`) and summarized per session (:mod:`aap.query.sessions`);
queries read them through :mod:`aap.query.snapshot`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from aap.privacy.purposes import analytics_only
from aap.query import rollup, sessions
from aap.query import snapshot as snapshots
from aap.query.snapshot import PENDING as _PENDING
from aap.store import quarantine
from aap.store.meta import log_failure
from aap.store.schema import CACHE_COLUMNS, CACHE_DDL
from aap.store.warehouse import Warehouse

logger = logging.getLogger("aap.query.cache")

DDL = CACHE_DDL
EXPECTED_COLUMNS = CACHE_COLUMNS
RETRY_SKIPPED_S = 30.0
"""A tier file the copy failed on is tried again after this long, then twice as long
after each failure, up to :data:`RETRY_SKIPPED_MAX_S`."""
RETRY_SKIPPED_MAX_S = 3600.0


def _columns(cur: duckdb.DuckDBPyConnection, table: str = "query_cache") -> list[str]:
    return [r[0] for r in cur.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = ?"
        " AND database_name <> 'temp' ORDER BY column_index", [table]).fetchall()]


class QueryCache:
    def __init__(self, warehouse: Warehouse, interval_s: float = 10.0) -> None:
        self.warehouse = warehouse
        self.interval_s = interval_s
        cur = warehouse.con.cursor()
        cols = _columns(cur)
        if cols and (cols != EXPECTED_COLUMNS or _columns(cur, "query_cache_rollup")
                     != rollup.EXPECTED_COLUMNS):
            # the events schema changed (a new column), or the rollup did: copy again
            logger.info("query cache: its schema changed; rebuilding the cache")
            warehouse.con.execute("DROP TABLE IF EXISTS query_cache;"
                                  " DROP TABLE IF EXISTS query_cache_rollup;"
                                  " DROP TABLE IF EXISTS query_cache_sessions;"
                                  " DROP TABLE IF EXISTS query_cache_pages;"
                                  " DROP TABLE IF EXISTS query_cache_names;"
                                  " DROP TABLE IF EXISTS query_cache_files;"
                                  " DROP TABLE IF EXISTS query_cache_overrides")
            snapshots.forget(warehouse)
        elif (_columns(cur, "query_cache_sessions") not in ([], sessions.EXPECTED_COLUMNS)
              or (_columns(cur, "query_cache_sessions")
                  and cur.execute(sessions.STALE).fetchall()[0][0])):
            logger.info("query cache: its session summary changed; summarizing again")
            warehouse.con.execute("DROP TABLE query_cache_sessions")
            snapshots.forget(warehouse)
        if _columns(cur, "query_cache_pages") not in ([], sessions.PAGES_EXPECTED):
            warehouse.con.execute("DROP TABLE query_cache_pages")
            snapshots.forget(warehouse)
        cur.close()
        warehouse.con.execute(DDL)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aap-query-cache", daemon=True)
        self._lock = threading.Lock()
        self._skipped: dict[str, tuple[int, float]] = {}
        """Tier files the copy failed on: read from Parquet meanwhile (reported once, see
        :mod:`aap.store.quarantine`), tried again after :data:`RETRY_SKIPPED_S` doubled
        at each failure (a file that cannot be read while S3 is away is copied once it is
        back): path → (failures, when to try again)."""

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync(stop=self._stop)
            except Exception as exc:
                log_failure(logger, "query cache sync failed; queries read Parquet meanwhile",
                            exc, self.warehouse.tiers)
            self._stop.wait(self.interval_s)

    @contextmanager
    def _tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self.warehouse.con.cursor()
        try:
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        finally:
            cur.close()

    def _fold_merges(self, cur: duckdb.DuckDBPyConnection) -> int:
        # merges that are gone (an erased person's) are forgotten here too
        cur.execute("DELETE FROM query_cache_overrides WHERE old_person_id NOT IN"
                    " (SELECT old_person_id FROM person_overrides)")
        pending = cur.execute(f"SELECT count(*) FROM {_PENDING}").fetchall()[0]
        if not pending[0]:
            return 0
        for table in ("query_cache", "query_cache_rollup", "query_cache_sessions",
                      "query_cache_pages"):
            cur.execute(f"UPDATE {table} SET person_id = d.person_id FROM {_PENDING} d"
                        f" WHERE {table}.person_id = d.old_person_id")
        cur.execute("DELETE FROM query_cache_overrides")
        cur.execute("INSERT INTO query_cache_overrides SELECT old_person_id, person_id"
                    " FROM person_overrides")
        return int(pending[0])

    def _summarize(self) -> None:
        """Create the session summary, filled for every file already cached, in one
        transaction (a cache copied before it existed; queries read the events meanwhile)."""
        for table, ddl, fill in (
                ("query_cache_sessions", sessions.DDL, sessions.BACKFILL),
                ("query_cache_pages", sessions.PAGES_TABLE_DDL, sessions.PAGES_BACKFILL)):
            cur = self.warehouse.con.cursor()
            try:
                if _columns(cur, table):
                    continue
            finally:
                cur.close()
            with self._tx() as cur:
                cur.execute(ddl)
                cur.execute(fill)
                n = cur.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
            if n:
                logger.info("query cache: %s rows of %s for the files cached", n, table)

    def sync(self, stop: threading.Event | None = None) -> dict[str, int]:
        """Bring the copy up to date: fold new merges, drop retired files, copy new ones
        (one transaction per file). Returns what it did."""
        done = {"merges": 0, "dropped": 0, "copied": 0, "rows": 0}
        with self._lock:
            self._summarize()
            with self._tx() as cur:
                done["merges"] = self._fold_merges(cur)
                files = self.warehouse.files.relation(cur)
                gone = cur.execute("SELECT c.file_no FROM query_cache_files c ANTI JOIN"
                                   f" {files} t USING (path)").fetchall()
                for (no,) in gone:
                    cur.execute("DELETE FROM query_cache WHERE file_no = ?", [no])
                    cur.execute("DELETE FROM query_cache_rollup WHERE file_no = ?", [no])
                    cur.execute("DELETE FROM query_cache_sessions WHERE file_no = ?", [no])
                    cur.execute("DELETE FROM query_cache_pages WHERE file_no = ?", [no])
                    cur.execute("DELETE FROM query_cache_files WHERE file_no = ?", [no])
                done["dropped"] = len(gone)
            cur = self.warehouse.con.cursor()
            try:
                files = self.warehouse.files.relation(cur)
                todo = [r[0] for r in cur.execute(
                    f"SELECT path FROM {files} t ANTI JOIN query_cache_files c USING (path)"
                    " ORDER BY path").fetchall()]
            finally:
                cur.close()
            for path in todo:
                if stop is not None and stop.is_set():
                    break
                failures, due = self._skipped.get(path, (0, 0.0))
                if time.monotonic() < due:
                    continue
                try:
                    n = self._copy(path)
                except Exception as exc:  # this file is read from Parquet; the others go on
                    self._skipped[path] = (failures + 1, time.monotonic() + min(
                        RETRY_SKIPPED_S * 2 ** failures, RETRY_SKIPPED_MAX_S))
                    if not failures:
                        quarantine.report("query_cache", quarantine.FAILED, 1,
                                          f"tier file {path.rsplit('/', 2)[-2]}"
                                          f" ({type(exc).__name__})")
                    continue
                self._skipped.pop(path, None)
                if n is None:
                    continue
                done["copied"] += 1
                done["rows"] += n[0]
                done["merges"] += n[1]
        if done["copied"] or done["dropped"] or done["merges"]:
            logger.info("query cache: %s", done)
        return done

    def _copy(self, path: str) -> tuple[int, int] | None:
        """Copy one tier file in one transaction: (rows, merges folded), or ``None`` if it
        was retired meanwhile."""
        with self._tx() as cur:
            if not self.warehouse.files.is_live(cur, path):
                return None  # retired meanwhile
            merges = self._fold_merges(cur)
            no = int(cur.execute("SELECT coalesce(max(file_no), 0) + 1"
                                 " FROM query_cache_files").fetchall()[0][0])
            for table in ("query_cache", "query_cache_rollup", "query_cache_sessions",
                          "query_cache_pages"):  # orphans, if any
                cur.execute(f"DELETE FROM {table} WHERE file_no = ?", [no])
            cur.register("cache_src", self.warehouse.tiers.dataset([path]))
            cur.execute(
                "INSERT INTO query_cache_names SELECT (SELECT coalesce(max(code), 0)"
                " FROM query_cache_names) + row_number() OVER (ORDER BY name), name"
                " FROM (SELECT DISTINCT event AS name FROM cache_src WHERE event IS"
                " NOT NULL EXCEPT SELECT name FROM query_cache_names)")
            cur.execute(
                "INSERT INTO query_cache SELECT ?, hash(e.session_id), n.code, e.* REPLACE"
                " (coalesce(o.person_id, e.person_id) AS person_id) FROM cache_src e"
                " LEFT JOIN person_overrides o ON o.old_person_id = e.person_id"
                " LEFT JOIN query_cache_names n ON n.name = e.event"
                f" WHERE {analytics_only('e.purposes')}"
                " ORDER BY hash(e.session_id), e.timestamp, e.event", [no])
            cur.unregister("cache_src")
            cur.execute(rollup.FILL, [no])
            for sql in (*sessions.FILL, *sessions.PAGES_FILL):
                cur.execute(sql, [no] * sql.count("?"))
            n = int(cur.execute("SELECT count(*) FROM query_cache WHERE file_no = ?",
                                [no]).fetchall()[0][0])
            cur.execute("INSERT INTO query_cache_files VALUES (?, ?, ?)", [path, no, n])
        return n, merges


snapshot = snapshots.snapshot
"""``Warehouse.snapshot()`` with ``events`` reading the cache where it can."""
