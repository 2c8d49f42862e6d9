"""The snapshot an insight reads, with the per-query fixed costs kept small.

``Warehouse.snapshot()`` makes a new cursor, registers a pyarrow dataset per tier and
creates the analysts' views for every query (tens of ms). Here cursors are pooled per
warehouse: the static views are created once per cursor; a query only opens a read
transaction, reads the small state it depends on (which tier files are live and which
of them are in the query cache, whether any person is restricted, whether merges are
waiting to be folded into the cache) and defines, for that state:

- ``events_live``: the hot table and live tier files not cached yet (Parquet), merges
  resolved (with publishing on, also the hot rows of a batch being published that the
  list does not hold yet, :mod:`aap.store.filelist`);
- ``events``: ``events_live`` and the cached rows of live files (merges recorded after
  the copy applied by a join with just those, only when there are some);
- ``events_daily``: the same events as ``events_live`` plus the cache's daily rollup
  (see :mod:`aap.query.rollup`), for insights that only need UTC days;
- ``events_sessions``: the cache's session summary of the same cached files (see
  :mod:`aap.query.sessions`); the overview adds ``events_live`` summarized on the fly.

Restricted persons (Art. 18) are left out of all three; the filter is not there at all
when nobody is restricted. With ``AAP_META_URL`` the flags are shared: ``person_flags``
is brought up to date with them before the snapshot (:mod:`aap.store.flags`). Without
a usable cache it falls back to ``Warehouse.snapshot()`` with ``events`` over the tiers.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb

from aap.privacy.purposes import analytics_only
from aap.store import published
from aap.store.schema import (
    CACHE_COLUMNS,
    HOT,
    PAGES_COLUMNS,
    ROLLUP_COLUMNS,
    ROLLUP_DIMS,
    SESSIONS_COLUMNS,
    VIEWS,
)
from aap.store.warehouse import CursorPool, Warehouse

PENDING = ("(SELECT old_person_id, person_id FROM person_overrides"
           " EXCEPT SELECT old_person_id, person_id FROM query_cache_overrides)")
"""Merges recorded after the cache copied the rows they apply to."""



def _state(files: str) -> str:
    """The state a query depends on, with ``files`` the relation of the live tier files
    (:class:`aap.store.filelist.Listing`)."""
    return f"""
SELECT
    (SELECT list(c.file_no ORDER BY c.file_no) FROM {files} t JOIN query_cache_files c
     USING (path)),
    (SELECT list(t.path ORDER BY t.path) FROM {files} t ANTI JOIN query_cache_files c
     USING (path)),
    EXISTS (SELECT 1 FROM person_flags WHERE flag = 'restricted'),
    EXISTS (SELECT 1 FROM {PENDING})
"""


_STATE = _state("tier_files")
ANALYTICS_EVENTS = ("CREATE OR REPLACE TEMP VIEW events AS SELECT * FROM events_visible"
                    f" WHERE {analytics_only()}")
"""``events`` for insights over ``Warehouse.snapshot()``'s views: only events that may be
used for analytics (see :data:`aap.privacy.purposes.ANALYTICS_PURPOSES`)."""
_RESTRICTED = "person_id NOT IN (SELECT person_id FROM person_flags WHERE flag = 'restricted')"


_POOLS: weakref.WeakKeyDictionary[Warehouse, CursorPool] = weakref.WeakKeyDictionary()
_POOLS_LOCK = threading.Lock()


def _pool(warehouse: Warehouse) -> CursorPool:
    """The insights' cursors (apart from the warehouse's own: ``events`` is redefined
    on these per query)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(warehouse)
        if pool is None:
            pool = _POOLS[warehouse] = CursorPool(warehouse.con)
        return pool


def forget(warehouse: Warehouse) -> None:
    """Drop the pooled cursors (the cache's tables were rebuilt)."""
    with _POOLS_LOCK:
        pool = _POOLS.pop(warehouse, None)
    if pool is not None:
        pool.clear()


def _columns(cur: duckdb.DuckDBPyConnection, table: str) -> list[str] | None:
    try:
        res = cur.execute(f"SELECT * FROM {table} LIMIT 0")
    except duckdb.CatalogException:
        return None
    return [d[0] for d in res.description or []]


def usable_cache(cur: duckdb.DuckDBPyConnection) -> tuple[bool, bool, bool]:
    """(the cache has the events' columns, its daily rollup has the expected columns,
    its session summary and page views too)."""
    if _columns(cur, "query_cache") != CACHE_COLUMNS:
        return False, False, False
    return (True, _columns(cur, "query_cache_rollup") == ROLLUP_COLUMNS,
            _columns(cur, "query_cache_sessions") == SESSIONS_COLUMNS
            and _columns(cur, "query_cache_pages") == PAGES_COLUMNS)


@dataclass
class Views:
    daily: bool = False
    """``events_daily`` is defined."""
    sessions: bool = False
    """``events_sessions`` and ``events_pages`` are defined: the session summary and page
    views of the live cached files (:mod:`aap.query.sessions`), merges applied,
    restricted persons left out."""
    cached_files: list[int] | None = None
    """The query cache's file numbers of live files, when its rows need nothing applied
    at query time (no pending merge, nobody restricted): ``query_cache`` restricted to
    them, plus ``events_live``, is ``events``."""


@dataclass(frozen=True)
class Plan:
    """What one state's views are made of (:func:`plan_views`): two equal plans make the
    same views, so a cursor that made them for one need not make them again."""

    uncached: tuple[str, ...]
    """The live files not in the cache, registered as ``uncached_events``."""
    tables: published.Layout
    """The other tables' listed files (publishing on)."""
    sql: str
    """The views' statements; :data:`_SUFFIX` stands where the registered names end."""

    def apply(self, cur: duckdb.DuckDBPyConnection, warehouse: Warehouse,
              suffix: str = "") -> None:
        """Register the files and make the views; ``suffix``: a transaction's own names."""
        if self.uncached:
            cur.register(f"uncached_events{suffix}",
                         warehouse.tiers.dataset(list(self.uncached)))
        published.apply(cur, warehouse, self.tables, suffix)
        cur.execute(self.sql.replace(_SUFFIX, suffix))


_SUFFIX = "$suffix$"
ONCE = "_once"
"""The names a transaction registers its files under when it makes views of its own
(they go when it rolls back; the cursor's lasting ones are under the plain names)."""


def plan_views(cur: duckdb.DuckDBPyConnection, warehouse: Warehouse, *,
               rollup: bool, sessions: bool = False) -> tuple[Plan, Views]:
    """Inside a read transaction: the views ``events_live``, ``events`` and, when the
    cache has its rollup, ``events_daily`` (and the sessions', and the other tables')
    for the state it reads (the list of live files, which of them the cache holds,
    whether anyone is restricted or merges wait), not made yet."""
    listing = warehouse.files.snapshot(cur, files=False)
    tables = published.layout(warehouse, listing.tables)  # persons, orders… when publishing
    state = _STATE if listing.relation == "tier_files" else _state(listing.relation)
    cached, uncached, restricted, pending = cur.execute(state).fetchall()[0]
    cached = cached or []
    uncached = uncached or []
    live = HOT
    if listing.pending:  # hot rows being published, not listed yet
        live += f" UNION ALL {listing.pending}"
    if uncached:
        live += f" UNION ALL SELECT * FROM uncached_events{_SUFFIX}"
    keep = f" WHERE {_RESTRICTED}" if restricted else ""
    in_cache = f"c.file_no IN ({', '.join(map(str, cached))})" if cached else "false"
    resolve = (f" LEFT JOIN {PENDING} d ON d.old_person_id = c.person_id" if pending else "")
    pid = "coalesce(d.person_id, c.person_id)" if pending else "c.person_id"
    sql = [f"""
        CREATE OR REPLACE TEMP VIEW events_live AS
        SELECT * FROM (
            SELECT e.* REPLACE (coalesce(o.person_id, e.person_id) AS person_id)
            FROM ({live}) e LEFT JOIN person_overrides o ON o.old_person_id = e.person_id
            WHERE {analytics_only("e.purposes")}){keep};
        CREATE OR REPLACE TEMP VIEW events AS
        SELECT * FROM events_live
        UNION ALL
        SELECT * FROM (
            SELECT c.* EXCLUDE (file_no, session_hash, event_code) REPLACE ({pid} AS person_id)
            FROM query_cache c{resolve} WHERE {in_cache}){keep};
    """]
    views = Views(cached_files=None if (restricted or pending) else list(cached))
    if sessions:
        sql.append(f"""
            CREATE OR REPLACE TEMP VIEW events_sessions AS
            SELECT * FROM (
                SELECT c.* EXCLUDE (file_no) REPLACE ({pid} AS person_id)
                FROM query_cache_sessions c{resolve} WHERE {in_cache}){keep};
            CREATE OR REPLACE TEMP VIEW events_pages AS
            SELECT * FROM (
                SELECT c.* EXCLUDE (file_no) REPLACE ({pid} AS person_id)
                FROM query_cache_pages c{resolve} WHERE {in_cache}){keep};
        """)
        views.sessions = True
    if rollup:
        dims = ", ".join(f'"{d}"' for d in ROLLUP_DIMS)
        sql.append(f"""
            CREATE OR REPLACE TEMP VIEW events_daily AS
            SELECT event, timestamp, person_id, 1::BIGINT AS n, {dims} FROM events_live
            UNION ALL
            SELECT * FROM (
                SELECT c.event, c.t_min AS timestamp, {pid} AS person_id, c.n,
                       {", ".join(f'c."{d}"' for d in ROLLUP_DIMS)}
                FROM query_cache_rollup c{resolve} WHERE {in_cache}){keep};
        """)
        views.daily = True
    return Plan(tuple(uncached), tables, "".join(sql)), views


def _begin(cur: duckdb.DuckDBPyConnection, warehouse: Warehouse, pool: CursorPool, *,
           rollup: bool, sessions: bool) -> Views:
    """``BEGIN`` on a pooled cursor whose views are then those of the state it reads.

    Making the views is most of a small query's cost (a query node answering a probe that
    polls for its events: ~20 of its 30 ms in Python), and the state they depend on
    changes far less often than queries come (when a batch is listed or folded, a cache
    copy finishes, a merge or a restriction is recorded). So a cursor keeps the views it
    made for a state, made outside any transaction, and the :class:`Plan` they were made
    of; a query whose transaction reads the same plan uses them as they are (they name
    the live files, which do not change, and read the tables when the query runs, in its
    transaction). Otherwise the views are made again, outside the transaction, for the
    new plan, and the transaction is begun again; if the state changed once more in
    between, this transaction makes views of its own, which go when it rolls back."""
    cur.execute("BEGIN TRANSACTION")
    plan, views = plan_views(cur, warehouse, rollup=rollup, sessions=sessions)
    if plan == pool.plan(cur):
        return views
    cur.execute("ROLLBACK")
    plan.apply(cur, warehouse)  # (if it fails, open_snapshot discards the cursor and its plan)
    pool.keep_plan(cur, plan)
    cur.execute("BEGIN TRANSACTION")
    again, views = plan_views(cur, warehouse, rollup=rollup, sessions=sessions)
    if again != plan:
        again.apply(cur, warehouse, ONCE)
    return views


@contextmanager
def open_snapshot(warehouse: Warehouse) -> Iterator[tuple[duckdb.DuckDBPyConnection, Views]]:
    """A cursor inside one read transaction with ``events`` defined for it (and the
    views of ``Warehouse.snapshot()``), and what else is there."""
    warehouse.fresh_flags()  # shared flags (AAP_META_URL) mirrored before the snapshot
    pool = _pool(warehouse)
    cur = pool.take()
    ok = False
    try:
        cache, rollup, sessions = usable_cache(cur)  # (outside: a missing table aborts a transaction)
        if cache:
            views = _begin(cur, warehouse, pool, rollup=rollup, sessions=sessions)
        else:
            # no (usable) cache: every tier from Parquet, as Warehouse.snapshot()
            views = Views()
            cur.execute("BEGIN TRANSACTION")
            warehouse.register_tiers(cur)
            cur.execute(VIEWS)
            cur.execute(ANALYTICS_EVENTS)
        try:
            yield cur, views
        finally:
            cur.execute("ROLLBACK")  # read only; the views made in it go with it
        # without the cache, files were registered in the transaction under the names of
        # the datasets of the views the cursor keeps (if any): those may be gone
        ok = cache or pool.plan(cur) is None
    finally:
        if ok:
            pool.give_back(cur)
        else:
            pool.discard(cur)  # interrupted or failed (or see above): not used again


@contextmanager
def plain_snapshot(warehouse: Warehouse) -> Iterator[duckdb.DuckDBPyConnection]:
    """``Warehouse.snapshot()`` (every tier from its files, no cache) as insights see it."""
    warehouse.fresh_flags()
    with warehouse.snapshot() as cur:
        cur.execute(ANALYTICS_EVENTS)
        yield cur


@contextmanager
def snapshot(warehouse: Warehouse) -> Iterator[duckdb.DuckDBPyConnection]:
    with open_snapshot(warehouse) as (cur, _):
        yield cur
