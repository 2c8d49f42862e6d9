"""Schema versions and ordered migrations.

Each database has a :class:`Schema`: the latest shape (``CREATE … IF NOT EXISTS``
statements) and the ordered steps that take a database from one version to the next.
The SQLite databases (source registry, consent ledger, request queue) keep their version
in ``PRAGMA user_version``, except the stores that share a file with another one (the
tables of ``meta.db`` beside the source registry, whose version ``user_version`` is):
one row each in the file's ``aap_schema_versions`` (:attr:`Schema.shares_file`); the
warehouse (DuckDB) in a one-row table ``schema_version``; the shared state on PostgreSQL
(``AAP_META_URL``, :mod:`aap.store.meta`) one row per schema in ``aap_schema_versions``,
where each schema brings its own DDL (:attr:`Schema.postgres`).

Opening a database:

- a fresh one (its main table absent) is created at the latest version;
- an older one runs the steps from its version on, then the latest shape's statements
  (indexes and triggers added since), in one transaction, and records the latest version;
- one newer than this code is refused.

Databases written before versions existed are at version 0. Their first step,
:func:`unversioned_columns`, adds whichever of the columns added over the first
releases they lack — the only step that looks at what a table holds; every later change
is a plain step of its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol


class Connection(Protocol):
    """A SQLite or DuckDB connection (both answer ``execute``)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...


Step = Callable[[Any], None]
"""Takes a database (a connection inside the migration's transaction) one version up."""


@dataclass(frozen=True)
class Schema:
    table: str
    """A table every version has: when it is absent, the database is fresh."""
    create: str
    """The latest shape: ``CREATE … IF NOT EXISTS`` statements."""
    steps: tuple[Step, ...]
    """``steps[i]`` takes version ``i`` to ``i + 1``."""
    postgres: str = ""
    """The latest shape in PostgreSQL's dialect, for a store that can live there. A
    PostgreSQL database is made at the latest version, so only the steps added after
    that need to speak PostgreSQL (version 0 exists only in old SQLite files)."""
    shares_file: bool = False
    """On SQLite, the file holds another store's tables too and ``PRAGMA user_version``
    is that store's: this one's version is its row of ``aap_schema_versions`` in the
    file, as on PostgreSQL (a file whose table exists without a row is at version 0)."""

    @property
    def latest(self) -> int:
        return len(self.steps)


class SchemaTooNew(RuntimeError):
    pass


def columns(con: Connection, table: str) -> set[str]:
    """The table's column names (``PRAGMA table_info`` answers alike in both engines)."""
    return {str(r[1]) for r in con.execute(f"PRAGMA table_info('{table}')").fetchall()}


def unversioned_columns(table: str, added: Sequence[tuple[str, str]]) -> Step:
    """Step 0 → 1: a database written before versions existed gets whichever of these
    columns (name, declaration) it lacks."""
    def step(con: Connection) -> None:
        have = columns(con, table)
        for name, decl in added:
            if name not in have:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
    return step


def sql_step(script: str) -> Step:
    """A step that runs SQL statements."""
    def step(con: Connection) -> None:
        for statement in statements(script):
            con.execute(statement)
    return step


def sql_step_of(con: Connection) -> Callable[[str], None]:
    """Runs a script's statements on ``con``."""
    return lambda script: sql_step(script)(con)


def statements(script: str) -> Iterator[str]:
    """The script's statements, one at a time (a trigger's body stays whole)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf.strip()
            buf = ""
    if buf.strip():
        yield buf.strip()


def _upgrade(con: Connection, schema: Schema, version: int, fresh: bool,
             script: Callable[[str], None]) -> None:
    if version > schema.latest:
        raise SchemaTooNew(f"the {schema.table} database is at schema version {version},"
                           f" newer than this AAP's ({schema.latest}): upgrade AAP")
    if not fresh:
        for step in schema.steps[version:]:
            step(con)
    script(schema.create)


VERSIONS = "aap_schema_versions"
"""One row per store: in PostgreSQL, and in a SQLite file that several stores share."""


# -- SQLite --

def _sqlite_version(con: sqlite3.Connection) -> int:
    return int(con.execute("PRAGMA user_version").fetchone()[0])


def _sqlite_has(con: sqlite3.Connection, table: str) -> bool:
    return con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                       " AND name = ?", (table,)).fetchone()[0] > 0


def _sqlite_row_version(con: sqlite3.Connection, schema: Schema) -> int | None:
    """A store's version in a file it shares (:attr:`Schema.shares_file`): its row of
    ``aap_schema_versions``, if it has one."""
    if not _sqlite_has(con, VERSIONS):
        return None
    row = con.execute(f"SELECT version FROM {VERSIONS} WHERE name = ?",
                      (schema.table,)).fetchone()
    return None if row is None else int(row[0])


def _sqlite_stored_version(con: sqlite3.Connection, schema: Schema) -> int | None:
    """The version the file records for ``schema`` (``None``: none recorded)."""
    if schema.shares_file:
        return _sqlite_row_version(con, schema)
    return _sqlite_version(con)


def migrate_sqlite(con: sqlite3.Connection, schema: Schema) -> int:
    """Bring a SQLite database (opened with ``isolation_level=None``) to the latest
    version; returns the version it was at. Processes that open it at once wait for the
    first one's migration (``BEGIN IMMEDIATE``)."""
    if _sqlite_stored_version(con, schema) == schema.latest and _sqlite_has(con, schema.table):
        return schema.latest
    con.execute("BEGIN IMMEDIATE")
    try:
        version = _sqlite_stored_version(con, schema) or 0
        fresh = version == 0 and not _sqlite_has(con, schema.table)
        _upgrade(con, schema, version, fresh, lambda text: sql_step(text)(con))
        if schema.shares_file:
            con.execute(f"CREATE TABLE IF NOT EXISTS {VERSIONS} (name TEXT PRIMARY KEY,"
                        " version INTEGER NOT NULL)")
            con.execute(f"INSERT INTO {VERSIONS} VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
                        " SET version = excluded.version", (schema.table, schema.latest))
        else:
            con.execute(f"PRAGMA user_version = {schema.latest}")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    return version


# -- PostgreSQL --

_PG_LOCK = (0x6161_7000, 1)
"""The advisory lock (two-int form, apart from any bigint lock) migrations take."""


def migrate_postgres(con: Any, schema: Schema) -> int:
    """Bring a store's tables in PostgreSQL (a psycopg connection in autocommit) to the
    latest version; returns the version it was at. Processes that open it at once wait
    for the first one's migration (a transaction-scoped advisory lock, READ COMMITTED so
    that each statement after the wait sees what the first one committed)."""
    if not schema.postgres:
        raise ValueError(f"the {schema.table} store has no PostgreSQL schema")
    if con.execute("SELECT to_regclass(%s) IS NOT NULL", (VERSIONS,)).fetchone()[0]:
        row = con.execute(f"SELECT version FROM {VERSIONS} WHERE name = %s",
                          (schema.table,)).fetchone()
        if row is not None and int(row[0]) == schema.latest:
            return schema.latest  # the usual case: nothing to lock
    con.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
    try:
        con.execute("SELECT pg_advisory_xact_lock(%s, %s)", _PG_LOCK)
        con.execute(f"CREATE TABLE IF NOT EXISTS {VERSIONS} (name TEXT PRIMARY KEY,"
                    " version INTEGER NOT NULL)")
        row = con.execute(f"SELECT version FROM {VERSIONS} WHERE name = %s",
                          (schema.table,)).fetchone()
        has = con.execute("SELECT to_regclass(%s) IS NOT NULL", (schema.table,)).fetchone()[0]
        if row is None and has:
            raise RuntimeError(f"PostgreSQL has a table {schema.table!r} that AAP did not"
                               " make (no schema version): use another database or schema")
        version = 0 if row is None else int(row[0])
        if version != schema.latest or row is None:
            _upgrade(con, replace(schema, create=schema.postgres), version, row is None,
                     sql_step_of(con))
            con.execute(f"INSERT INTO {VERSIONS} VALUES (%s, %s) ON CONFLICT (name) DO"
                        " UPDATE SET version = excluded.version", (schema.table, schema.latest))
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    return version


# -- DuckDB --

VERSION_TABLE = "schema_version"


def duckdb_has(con: Connection, table: str) -> bool:
    """Whether the database (not its temporary objects) has this table."""
    return int(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = $t"
                           " AND database_name <> 'temp'", {"t": table}).fetchone()[0]) > 0


def duckdb_version(con: Connection) -> int:
    if not duckdb_has(con, VERSION_TABLE):
        return 0
    row = con.execute(f"SELECT max(version) FROM {VERSION_TABLE}").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate_duckdb(con: Connection, schema: Schema) -> int:
    """Bring a DuckDB database (owned by this process) to the latest version; returns
    the version it was at."""
    version = duckdb_version(con)
    fresh = version == 0 and not duckdb_has(con, schema.table)
    if version == schema.latest and not fresh:
        return version
    con.execute("BEGIN TRANSACTION")
    try:
        _upgrade(con, schema, version, fresh, con.execute)
        con.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)")
        con.execute(f"DELETE FROM {VERSION_TABLE}")
        con.execute(f"INSERT INTO {VERSION_TABLE} VALUES ($v)", {"v": schema.latest})
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    return version
