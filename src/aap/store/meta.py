"""The shared-state database: a SQLite file under the data dir (the default), or
PostgreSQL when ``AAP_META_URL`` is set (``postgresql://…``), so that several collectors
and processors share it.

The stores that use it (the source registry, :mod:`aap.sources`, the keystore,
:mod:`aap.privacy.keystore`, the consent ledger, :mod:`aap.privacy.consent`, the audit
chain, :mod:`aap.privacy.audit_table`, the rights requests, :mod:`aap.privacy.requests`,
identities, :mod:`aap.store.identities`, and the rest of ``meta.db``: API keys,
:mod:`aap.api.keys`, web sessions and sign-in links, :mod:`aap.web.sessions`, cohorts and
saved insights, :mod:`aap.query.cohorts`, dashboards, :mod:`aap.query.dashboards`, and
devices, :mod:`aap.devices`) write their SQL once, in the dialect both engines speak:
``?`` placeholders, ``INSERT … ON CONFLICT … DO NOTHING / DO UPDATE`` (SQLite has had
upserts since 3.24), ``RETURNING`` (3.35), no ``INSERT OR …``. What differs is handled
here, and only here:

- placeholders: ``?`` becomes ``%s`` on PostgreSQL (a ``%`` in the SQL is escaped);
- connections: one per thread on SQLite (WAL, the store's pragmas); a
  :class:`psycopg_pool.ConnectionPool` per process and URL on PostgreSQL, autocommit, so
  a read is one statement at READ COMMITTED;
- write transactions (:meth:`MetaDB.write`): ``BEGIN IMMEDIATE`` on SQLite (one writer at
  a time); ``SERIALIZABLE`` on PostgreSQL, run again from the start when the server
  refuses it (a serialization failure or a deadlock): a writer may not assume that a row
  it did not see stays absent, the server checks it;
- schemas (:mod:`aap.store.migrations`): ``PRAGMA user_version`` of the file on SQLite
  (a row of the file's ``aap_schema_versions`` for a store that shares ``meta.db``);
  a row per schema in ``aap_schema_versions`` on PostgreSQL, where each schema has its
  own DDL (``BIGINT``, ``BYTEA``, ``DOUBLE PRECISION`` and identity columns);
- after a delete meant to destroy bytes (:meth:`MetaDB.shredded`): the WAL is
  checkpointed and truncated on SQLite (``secure_delete`` overwrote the pages); nothing on
  PostgreSQL, whose dead tuples stay until VACUUM (see README, "Shared state on
  PostgreSQL").
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import logging
import os
import random
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aap.errors import TransientError, one_line
from aap.store.migrations import Schema, migrate_postgres, migrate_sqlite

if TYPE_CHECKING:
    import pyarrow as pa

    from aap.store.tiers import TierStore

T = TypeVar("T")

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
WRITE_ATTEMPTS = 30
"""How many times a PostgreSQL write transaction is tried before its refusal is raised."""
POOL_MAX = 4
"""Connections a process keeps to the shared-state database, per URL."""
RECONNECT_MAX_S = 4.0
"""Longest wait between a pool's attempts to connect again to a PostgreSQL that went
away (psycopg_pool doubles it from 1 s without bound: after a 20 s outage its next try
could come half a minute after the server was back, each role answering 503 meanwhile)."""
POOL_WAIT_S = 30.0
"""How long a statement waits for one of the pool's connections (psycopg_pool's default):
the pool's connections may all be busy."""
AWAY_WAIT_S = 2.0
"""How long it waits instead once the database was found away (no connection in time, or
one lost), until a statement gets through again: while PostgreSQL is down, a request that
needs it is answered 503 after about this long, not after :data:`POOL_WAIT_S`."""


START_SAY_S = 30.0
"""How often a role started while PostgreSQL is away says it is still waiting for it
(:func:`wait_until_reachable`)."""
_WAITED_FOR = ("starting up", "shutting down", "in recovery", "not yet accepting",
               "too many")
"""Refusals of a server that is up but cannot take a connection yet (its startup or a
shutdown, a recovery, all its connections in use): waited for like a server away."""


Fetch = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
"""A statement's rows (:meth:`MetaDB.fetchall`, :meth:`Tx.fetchall`)."""


class Tx(Protocol):
    """A write transaction: statements in the stores' dialect (``?`` placeholders)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Runs one statement; returns the rows it changed."""
        ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def append(self, table: str, rows: pa.Table) -> None:
        """Insert ``rows`` (columns named as ``table``'s; nulls stay NULL). SQLite:
        ``executemany``; PostgreSQL: one ``COPY`` of the table written as CSV by Arrow (no
        Python object per value: tens of thousands of rows in a few milliseconds)."""
        ...

    def lock(self, table: str) -> None:
        """Writers that lock ``table`` take turns (readers are not held up); first in the
        transaction. SQLite: nothing (its writers always take turns); PostgreSQL:
        ``LOCK TABLE … IN SHARE ROW EXCLUSIVE MODE``, before the snapshot is taken."""
        ...


class MetaDB(Protocol):
    dialect: str
    where: str
    """A path, or the PostgreSQL server's host and database (no password): for messages."""

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement on its own (autocommit); returns the rows it changed."""
        ...

    def write(self, fn: Callable[[Tx], T], *, serializable: bool = True) -> T:
        """``fn`` inside one write transaction: committed when it returns, rolled back if
        it raises. On PostgreSQL ``fn`` may run more than once (see the module's doc): it
        must do nothing outside the transaction but compute. ``serializable=False``: READ
        COMMITTED on PostgreSQL (each statement sees what others committed before it), for
        a long transaction that guards itself (a lock, the rows it names) and that
        SERIALIZABLE would keep refusing beside the short ones; the same on SQLite."""
        ...

    def migrate(self, schema: Schema) -> int: ...

    def shredded(self) -> None:
        """After rows were deleted to destroy their bytes (see the module's doc)."""
        ...

    def close(self) -> None: ...


def meta_url() -> str:
    """``AAP_META_URL``: empty for the files under the data dir."""
    from aap.settings import StorageSettings

    return StorageSettings.load().meta_url


def open_meta(path: Path, url: str | None = None, *, pragmas: Sequence[str] = (),
              mode: int | None = None) -> MetaDB:
    """The shared-state database: PostgreSQL at ``url`` (``None``: ``AAP_META_URL``) when it
    is set, else the SQLite file ``path`` (with ``pragmas`` on each connection, and its
    permissions set to ``mode`` if given)."""
    url = meta_url() if url is None else url
    if url:
        return PostgresMeta(url)
    return SQLiteMeta(path, pragmas, mode)


def insert_returning_id(db: MetaDB, sql: str, params: Sequence[Any]) -> int:
    """Runs an ``INSERT`` into a table whose ``id`` the database draws (SQLite's
    ``AUTOINCREMENT``, PostgreSQL's identity column); returns the new id. ``RETURNING id``,
    which both engines speak, stands for the cursor's ``lastrowid`` (SQLite's alone)."""
    return int(db.write(lambda tx: tx.fetchall(sql + " RETURNING id", params))[0][0])


def is_database_error(exc: BaseException) -> bool:
    """Any error of either engine's driver (a lost connection, a failing statement)."""
    if isinstance(exc, sqlite3.Error):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.Error)


def is_conflict(exc: BaseException) -> bool:
    """The statement broke a constraint (a duplicate unique value), on either engine."""
    if isinstance(exc, sqlite3.IntegrityError):
        return True
    try:
        from psycopg import errors
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, errors.IntegrityError)


# -- SQLite: the file under the data dir --

class _SQLiteTx:
    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.con.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.con.executemany(sql, rows)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, params).fetchall()

    def append(self, table: str, rows: pa.Table) -> None:
        if rows.num_rows:
            names = rows.column_names
            self.con.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES"
                                 f" ({', '.join('?' * len(names))})",
                                 zip(*(rows.column(n).to_pylist() for n in names), strict=True))

    def lock(self, table: str) -> None:
        """Nothing: ``BEGIN IMMEDIATE`` made this the only writer."""


WAL_ATTEMPTS = 300
"""Tries (0.1 s apart) to put a new file in WAL mode while other processes hold it."""


def _wal(con: sqlite3.Connection) -> None:
    """WAL mode, once per file (it stays). Switching needs the file to itself, and SQLite
    answers "database is locked" at once, without waiting its busy timeout, when another
    process opened it too: the collector's workers and the core opening a new file at
    the same start-up did (a worker died of it). So: nothing when it is WAL already, else
    tried again for a while."""
    for attempt in range(WAL_ATTEMPTS):
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            con.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == WAL_ATTEMPTS - 1:
                raise
            time.sleep(0.1)


class SQLiteMeta:
    """A SQLite file (WAL), one connection per thread."""

    dialect = SQLITE

    def __init__(self, path: Path, pragmas: Sequence[str] = (), mode: int | None = None
                 ) -> None:
        self.path = path
        self.where = str(path)
        self._pragmas = tuple(pragmas)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.con()
        if mode is not None:
            os.chmod(path, mode)

    def con(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                  check_same_thread=False)
            _wal(con)
            for pragma in self._pragmas:
                con.execute(pragma)
            self._local.con = con
            with self._lock:
                self._all.append(con)
        return con

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.con().execute(sql, params).fetchall()

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.con().execute(sql, params).fetchone()
        return row

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.con().execute(sql, params).rowcount

    def write(self, fn: Callable[[Tx], T], *, serializable: bool = True) -> T:
        con = self.con()
        con.execute("BEGIN IMMEDIATE")
        try:
            out = fn(_SQLiteTx(con))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return out

    def migrate(self, schema: Schema) -> int:
        return migrate_sqlite(self.con(), schema)

    def shredded(self) -> None:
        self.con().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the old pages leave the WAL

    def close(self) -> None:
        with self._lock:
            cons, self._all = self._all, []
        for con in cons:
            con.close()
        self._local = threading.local()


# -- PostgreSQL: shared by every process --

@functools.lru_cache(maxsize=256)
def pg_sql(sql: str) -> str:
    """A statement in the stores' dialect as psycopg takes it: ``?`` → ``%s``."""
    return sql.replace("%", "%%").replace("?", "%s")


_pools: dict[tuple[int, str], Any] = {}
_pools_lock = threading.Lock()
_away: set[Any] = set()
"""The pools whose database was found away (:data:`AWAY_WAIT_S`)."""


def _lost(exc: BaseException) -> bool:
    """The database itself is away: no connection came in time, or one was lost (a
    connection exception, a server shutting down) — not a transaction it refused."""
    import psycopg

    if not isinstance(exc, psycopg.OperationalError):  # PoolTimeout is one
        return False
    state = exc.sqlstate
    return state is None or state.startswith(("08", "57P"))


def _where(url: str) -> str:
    """``postgresql://host:port/dbname`` of a URL: no user, no password, no options."""
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(url)
    return f"postgresql://{info.get('host', '')}:{info.get('port', 5432)}/" \
           f"{info.get('dbname', '')}"


def _refused(exc: BaseException) -> bool:
    """The server answered and refused the connection for good (a wrong password, a
    database or role that does not exist, no ``pg_hba.conf`` entry): a configuration to
    fix, which no wait mends."""
    msg = str(exc)
    return ("FATAL:" in msg or "fe_sendauth" in msg) and not any(
        w in msg for w in _WAITED_FOR)


def wait_until_reachable(url: str, say: Callable[[str], None]) -> None:
    """Returns once PostgreSQL at ``url`` takes a connection. A server role started while
    its database is away (down, restarting, its address not resolved yet) waits for it
    here, as a role already running waits through an outage, instead of exiting and being
    started again and again (a supervisor's or the kubelet's back-off would then delay
    it long after the database is back). ``say`` is told once when it starts waiting,
    every :data:`START_SAY_S` while it waits, and when the database was reached. Raises
    :class:`MetaUnavailable` at once when the server refused the connection for good
    (:func:`_refused`)."""
    import psycopg

    where = _where(url)
    said: float | None = None
    while True:
        try:
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.OperationalError as exc:
            if _refused(exc):
                raise MetaUnavailable.at(where, exc) from None
            if said is None or time.monotonic() - said >= START_SAY_S:
                say(f"AAP_META_URL: {where} cannot be reached ({one_line(exc)}); waiting"
                    " for it")
                said = time.monotonic()
            time.sleep(1.0)
            continue
        if said is not None:
            say(f"AAP_META_URL: {where} reached; starting")
        return


class MetaUnavailable(RuntimeError):
    """The PostgreSQL server of ``AAP_META_URL`` cannot be reached or refuses AAP."""

    @classmethod
    def at(cls, where: str, exc: BaseException) -> MetaUnavailable:
        """The error for a connection to ``where`` that failed with ``exc`` (the driver's
        message names no password)."""
        return cls(f"AAP_META_URL: cannot use {where}: {exc}".strip())


class SharedStateUnavailable(TransientError):
    """A store of the shared state said it cannot be used now (its own error, raised
    from the driver's: ``IdentitiesUnavailable``, ``FlagsUnavailable``…); a request that
    meets it is answered 503 with Retry-After."""

    status = 503
    code = "shared_state_unavailable"


def unavailable(exc: BaseException) -> bool:
    """The shared state cannot be used now, and may be later: a lost or refused
    connection, a pool that has none, a transaction refused every time (PostgreSQL's
    ``OperationalError``), a server not reached at all (:class:`MetaUnavailable`), a
    store that said so (:class:`SharedStateUnavailable`); a SQLite file locked too
    long. Nothing about the work at hand is wrong then."""
    if isinstance(exc, (MetaUnavailable, SharedStateUnavailable)):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "busy" in str(exc)
    if "psycopg" not in sys.modules:  # never used here: not its error
        return False
    import psycopg

    return isinstance(exc, psycopg.OperationalError)


def transient(exc: BaseException, tiers: TierStore | None = None) -> bool:
    """Whether a failure is of something that comes back, not of the work at hand: the
    shared state out of reach (:func:`unavailable`, or already said so by a
    :class:`~aap.errors.TransientError` such as ``IdentitiesUnavailable``), a worker
    process gone; with ``tiers``, also that tier store away (S3 down or out of reach:
    :meth:`~aap.store.tiers.TierStore.away`, which looks at the store). Loops that retry
    log it on one line and count it against nothing."""
    return (isinstance(exc, TransientError) or unavailable(exc)
            or (tiers is not None and tiers.away(exc)))


def log_failure(logger: logging.Logger, what: str, exc: BaseException,
                tiers: TierStore | None = None) -> None:
    """What a loop that tries again logs of a failure: one line for something that comes
    back (:func:`transient`: the shared state or, given ``tiers``, the tier store out of
    reach says so every time it is tried), the traceback of anything else."""
    if transient(exc, tiers):
        logger.warning("%s: %s", what, one_line(exc))
    else:
        logger.error("%s", what, exc_info=exc)


def _bounded_reconnects() -> None:
    """psycopg_pool's reconnection attempts wait at most :data:`RECONNECT_MAX_S` between
    tries (its pool module names the attempt class it makes; this one caps the delay)."""
    import psycopg_pool.pool as pool_module
    from psycopg_pool.base import AttemptWithBackoff

    if getattr(pool_module.AttemptWithBackoff, "aap_bounded", False):
        return

    class BoundedAttempt(AttemptWithBackoff):
        aap_bounded = True

        def update_delay(self, now: float) -> None:
            super().update_delay(now)
            self.delay = min(self.delay, RECONNECT_MAX_S)

    pool_module.AttemptWithBackoff = BoundedAttempt  # type: ignore[misc]


def _pool(url: str, where: str) -> Any:
    """This process's pool for ``url`` (a forked child makes its own)."""
    import psycopg
    from psycopg import IsolationLevel
    from psycopg_pool import ConnectionPool

    key = (os.getpid(), url)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            _bounded_reconnects()
            try:  # one connection first, for a clear message (the pool would only wait)
                psycopg.connect(url, connect_timeout=10).close()
            except psycopg.OperationalError as exc:
                raise MetaUnavailable.at(where, exc) from None

            def configure(con: Any) -> None:
                con.autocommit = True  # reads: one statement each, READ COMMITTED
                con.isolation_level = IsolationLevel.SERIALIZABLE  # con.transaction()'s

            pool = ConnectionPool(url, min_size=1, max_size=POOL_MAX, configure=configure,
                                  open=False, name="aap-meta")
            pool.open(wait=True, timeout=30)
            _pools[key] = pool
    return pool


@atexit.register
def _close_pools() -> None:
    with _pools_lock:
        mine = [k for k in _pools if k[0] == os.getpid()]
        pools = [_pools.pop(k) for k in mine]
    for pool in pools:
        pool.close()


_VALUES = re.compile(r"\bVALUES\s*(\(\s*\?(?:\s*,\s*\?)*\s*\))", re.IGNORECASE)
_CHUNK = 1000
IN_LIST = 500
"""Values in one ``IN (…)`` list (SQLite; :class:`Bulk`)."""


def pg_bigints(values: Iterable[int]) -> str:
    """A PostgreSQL array literal of integers (``{1,2,3}``), for a ``?::bigint[]``."""
    return "{" + ",".join(map(str, map(int, values))) + "}"


class Bulk:
    """The statements that take many values at once: on PostgreSQL one array parameter
    (``= ANY(?)``, ``unnest``), since psycopg parses a statement of thousands of ``?``
    slowly (a chunk of 50,000 events took 2.1 s with ``IN`` lists, most of it parsing,
    0.7 to 0.8 s with arrays, on this machine); on SQLite ``IN`` lists and ``executemany``.
    An array goes as the text of its literal (:func:`pg_bigints`), which costs the client
    a quarter of what psycopg's list dumper does, one element at a time in Python (a
    lookup of 10,000 keys: 8.7 against 32 ms of CPU)."""

    def __init__(self, postgres: bool) -> None:
        self.postgres = postgres

    def among(self, values: list[int]) -> Iterable[tuple[str, list[Any]]]:
        """(a condition on a column, its parameters), for each part of ``values``."""
        if self.postgres:
            if values:
                yield "= ANY(?::bigint[])", [pg_bigints(values)]
            return
        for i in range(0, len(values), IN_LIST):
            part = values[i:i + IN_LIST]
            yield f"IN ({','.join('?' * len(part))})", part

    def insert(self, tx: Tx, table: str, columns: tuple[str, ...], rows: list[tuple[int, ...]],
               conflict: str) -> None:
        """``rows`` into ``table`` (``conflict``: its ``ON CONFLICT`` clause)."""
        if not rows:
            return
        names = ", ".join(columns)
        if self.postgres:
            arrays = ", ".join(["?::bigint[]"] * len(columns))
            tx.execute(f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) {conflict}",
                       [pg_bigints(col) for col in zip(*rows, strict=True)])
        else:
            marks = ", ".join("?" * len(columns))
            tx.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks}) {conflict}", rows)


def _arrays(rows: list[Sequence[Any]]) -> list[tuple[str, str]] | None:
    """Each column of ``rows`` as (its array type, the text of the array's literal) when
    every value is an ``int`` (``bigint``) or every value ``bytes`` (``bytea``, in hex);
    ``None`` for any other column (text, a bool, a NULL), which a literal would have to
    quote or whose type PostgreSQL must take from the target column."""
    out: list[tuple[str, str]] = []
    for col in zip(*rows, strict=True):
        if all(type(v) is int for v in col):
            out.append(("bigint", pg_bigints(col)))
        elif all(type(v) is bytes for v in col):
            out.append(("bytea", "{" + ",".join(['"\\\\x' + v.hex() + '"' for v in col]) + "}"))
        else:
            return None
    return out


class _PgTx:
    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.cur.execute(pg_sql(sql), params)
        return int(self.cur.rowcount)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """An ``INSERT … VALUES (?, …)`` runs as one statement per chunk of rows (one
        round trip, and no pipeline to abort when the transaction is refused). When every
        column holds integers or bytes only (the keystore's rows), the chunk goes as one
        array per column (``SELECT * FROM unnest(?::bigint[], ?::bytea[])``, each array
        the text of its literal): a third of the client's CPU of a statement with a
        placeholder per value (100 rows of a key and 60 bytes: 0.54 against 1.68 ms)."""
        rows = list(rows)
        match = _VALUES.search(sql)
        if match is None:
            if rows:
                self.cur.executemany(pg_sql(sql), rows)
            return
        group = match.group(1)
        for i in range(0, len(rows), _CHUNK):
            part = rows[i:i + _CHUNK]
            arrays = _arrays(part)
            if arrays is not None:
                casts = ", ".join(f"?::{kind}[]" for kind, _ in arrays)
                self.cur.execute(pg_sql(f"{sql[:match.start()]}SELECT * FROM unnest({casts})"
                                        f"{sql[match.end():]}"), [lit for _, lit in arrays])
                continue
            many = sql[:match.start(1)] + ", ".join([group] * len(part)) + sql[match.end(1):]
            self.cur.execute(pg_sql(many), [v for row in part for v in row])

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.cur.execute(pg_sql(sql), params)
        return list(self.cur.fetchall())

    def append(self, table: str, rows: pa.Table) -> None:
        import pyarrow.csv as pcsv

        if not rows.num_rows:
            return
        # Arrow quotes every string and leaves a null empty and unquoted: COPY's CSV reads
        # "" as an empty string and an empty field as NULL
        out = io.BytesIO()
        pcsv.write_csv(rows, out, pcsv.WriteOptions(include_header=False))
        with self.cur.copy(f"COPY {table} ({', '.join(rows.column_names)}) FROM STDIN"
                           " (FORMAT csv)") as copy:
            copy.write(out.getvalue())

    def lock(self, table: str) -> None:
        self.cur.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")


class PostgresMeta:
    """A PostgreSQL database through this process's pool."""

    dialect = POSTGRESQL

    def __init__(self, url: str) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("AAP_META_URL must be a postgresql:// URL")
        self.where = _where(url)
        self._pool = _pool(url, self.where)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """One of the pool's connections: waited for :data:`POOL_WAIT_S`, or
        :data:`AWAY_WAIT_S` while the database is found away (:func:`_lost`)."""
        pool = self._pool
        try:
            with pool.connection(timeout=AWAY_WAIT_S if pool in _away else POOL_WAIT_S
                                 ) as con:
                yield con
        except Exception as exc:
            if _lost(exc):
                _away.add(pool)
            raise
        _away.discard(pool)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._connection() as con:
            return list(con.execute(pg_sql(sql), params).fetchall())

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._connection() as con:
            row: tuple[Any, ...] | None = con.execute(pg_sql(sql), params).fetchone()
            return row

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._connection() as con:
            return int(con.execute(pg_sql(sql), params).rowcount)

    def write(self, fn: Callable[[Tx], T], *, serializable: bool = True) -> T:
        from psycopg import errors

        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self._connection() as con, con.transaction(), con.cursor() as cur:
                    if not serializable:
                        cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    return fn(_PgTx(cur))
            except (errors.SerializationFailure, errors.DeadlockDetected):
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))
        raise AssertionError("unreachable")

    def migrate(self, schema: Schema) -> int:
        with self._connection() as con:
            return migrate_postgres(con, schema)

    def shredded(self) -> None:
        """Nothing: PostgreSQL keeps dead tuples until VACUUM (they hold only wrapped keys
        and sealed values; see README)."""

    def close(self) -> None:
        """The pool stays open for the process's other stores; it closes at exit."""
