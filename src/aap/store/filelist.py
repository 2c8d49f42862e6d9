"""The list of live tier files: which warm and cold files hold the stored events.

One seam with two homes:

- :class:`DuckList` (the default): the table ``tier_files`` (and ``tier_trash``) of the
  warehouse's DuckDB. Every operation takes the caller's DuckDB cursor and runs inside its
  transaction, so a move is atomic with the hot rows it deletes (tiering's hot → warm).
- :class:`SharedList` (``AAP_PUBLISH_SECONDS`` > 0): the same tables on the shared-state
  database (:mod:`aap.store.meta`: a SQLite file under the data dir, or PostgreSQL with
  ``AAP_META_URL``), where processors publish batch files (:mod:`aap.store.publish`).
  Each operation is one transaction of its own on that database; a caller that also
  changes DuckDB makes the list change the last step of its DuckDB transaction.

Operations: :meth:`files` (the live files), :meth:`swap` (remove some files and add
others atomically; the removed ones go to the trash with a grace period, or are returned
for the caller to delete at once, as erasure does; refused with :class:`Moved` when one
of them is not live any more), :meth:`snapshot` (what a query reads: one consistent read
of the list, and of the hot rows not yet published), the trash (:meth:`trash`,
:meth:`due`, :meth:`forget`), and :meth:`stats`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import duckdb
import pyarrow as pa

from aap.store.meta import MetaDB, Tx
from aap.store.migrations import Schema
from aap.store.schema import PUBLISH_BATCH


@dataclass(frozen=True)
class TierFile:
    path: str
    tier: str
    """``warm`` or ``cold``."""
    part: str
    """The day (``YYYY-MM-DD``) of a warm file, the month (``YYYY-MM``) of a cold one."""
    rows: int
    bytes: int


@dataclass(frozen=True)
class Listing:
    """What a query reads, inside its DuckDB read transaction."""

    relation: str
    """The name of the list's relation on the cursor (``path``, ``tier``, ``part``)."""
    files: list[TierFile]
    tables: list[TierFile] = field(default_factory=list)
    """The listed files of the other tables (:mod:`aap.store.published`)."""
    pending: str = ""
    """SQL selecting the hot rows that are being published and not listed yet (the
    events' columns), or empty."""


class Moved(RuntimeError):
    """A file to remove from the list was not live any more: nothing was changed."""

    def __init__(self) -> None:
        super().__init__("tier files moved while they were being rewritten; nothing was"
                         " changed, try again")


@contextmanager
def reading(files: FileList, paths: Sequence[str]) -> Iterator[None]:
    """Around a read of listed files: a file that cannot be read and is no longer listed
    was moved by another processor since the list was read (folded, or rewritten by a
    retention, erasure or withdrawal, which deletes the file it replaces at once):
    :class:`Moved`, the caller reads the list again (or leaves it to its next run). A
    file that cannot be read and is still listed is a real error: raised as it is."""
    try:
        yield
    except (OSError, pa.ArrowException, duckdb.Error):  # (DuckDB's: a scan of the files)
        if set(paths) - {f.path for f in files.files()}:
            raise Moved from None
        raise


EVENT_TIERS = ("warm", "cold")
"""The tiers of the events' files (a published table's files are listed with the table's
name as their tier: :mod:`aap.store.published`)."""

KEYS_TABLE = "publish_keys"
"""Keys of the other tables a chunk changed, and the batch that publishes them (NULL:
none yet): :mod:`aap.store.published`."""
KEYS_DDL = (f"CREATE TABLE IF NOT EXISTS {KEYS_TABLE} (tbl VARCHAR NOT NULL,"
            " key VARCHAR NOT NULL, seq BIGINT)")

MARKED = f"SELECT DISTINCT {PUBLISH_BATCH} FROM events_raw WHERE {PUBLISH_BATCH} IS NOT NULL"
"""The batches whose hot rows are marked (:mod:`aap.store.publish`) and not forgotten yet."""

_FILE_COLS = "path, tier, part, rows, bytes"


def _files(rows: Sequence[Sequence[Any]]) -> list[TierFile]:
    return [TierFile(str(p), str(t), str(pt), int(r), int(b)) for p, t, pt, r, b in rows]


class FileList(Protocol):
    shared: bool

    def files(self, cur: duckdb.DuckDBPyConnection | None = None) -> list[TierFile]: ...

    def relation(self, cur: duckdb.DuckDBPyConnection) -> str: ...

    def snapshot(self, cur: duckdb.DuckDBPyConnection, files: bool = True) -> Listing: ...

    def is_live(self, cur: duckdb.DuckDBPyConnection, path: str) -> bool: ...

    def swap(self, cur: duckdb.DuckDBPyConnection, remove: Sequence[str],
             add: Sequence[TierFile], grace: timedelta | None) -> None: ...

    def trash(self) -> list[str]: ...

    def due(self) -> list[str]: ...

    def forget(self, path: str) -> None: ...

    def stats(self) -> dict[str, tuple[int, int, int]]: ...


class DuckList:
    """``tier_files`` and ``tier_trash`` in the warehouse's DuckDB."""

    shared = False

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def files(self, cur: duckdb.DuckDBPyConnection | None = None) -> list[TierFile]:
        c = cur or self.con.cursor()
        try:
            return _files(c.execute(f"SELECT {_FILE_COLS} FROM tier_files ORDER BY path"
                                    ).fetchall())
        finally:
            if cur is None:
                c.close()

    def relation(self, cur: duckdb.DuckDBPyConnection) -> str:
        return "tier_files"

    def snapshot(self, cur: duckdb.DuckDBPyConnection, files: bool = True) -> Listing:
        """``files``: read them (else the caller reads the relation in SQL)."""
        return Listing("tier_files", self.files(cur) if files else [])

    def is_live(self, cur: duckdb.DuckDBPyConnection, path: str) -> bool:
        return bool(cur.execute("SELECT 1 FROM tier_files WHERE path = ?", [path]).fetchall())

    def swap(self, cur: duckdb.DuckDBPyConnection, remove: Sequence[str],
             add: Sequence[TierFile], grace: timedelta | None) -> None:
        if remove:
            live = cur.execute("SELECT count(*) FROM tier_files WHERE list_contains($p, path)",
                               {"p": list(remove)}).fetchall()[0][0]
            if live != len(set(remove)):
                raise Moved
        for f in add:
            cur.execute("INSERT INTO tier_files VALUES ($path, $tier, $part, $rows, $size,"
                        " now())", {"path": f.path, "tier": f.tier, "part": f.part,
                                    "rows": f.rows, "size": f.bytes})
        for p in remove:
            cur.execute("DELETE FROM tier_files WHERE path = $path", {"path": p})
            if grace is not None:
                cur.execute("INSERT INTO tier_trash VALUES ($path, now() + $grace)",
                            {"path": p, "grace": grace})

    def trash(self) -> list[str]:
        return [r[0] for r in self.con.cursor().execute("SELECT path FROM tier_trash").fetchall()]

    def due(self) -> list[str]:
        return [r[0] for r in self.con.cursor().execute(
            "SELECT path FROM tier_trash WHERE delete_after <= now()").fetchall()]

    def forget(self, path: str) -> None:
        self.con.cursor().execute("DELETE FROM tier_trash WHERE path = $path", {"path": path})

    def stats(self) -> dict[str, tuple[int, int, int]]:
        return {str(t): (int(f), int(r), int(b)) for t, f, r, b in self.con.cursor().execute(
            "SELECT tier, count(*), sum(rows), sum(bytes) FROM tier_files GROUP BY tier"
        ).fetchall()}


# -- the shared list --

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tier_files (
    path TEXT PRIMARY KEY,
    tier TEXT NOT NULL,
    part TEXT NOT NULL,
    rows BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS tier_trash (
    path TEXT PRIMARY KEY,
    delete_after_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS tier_writers (
    writer TEXT PRIMARY KEY,
    published BIGINT NOT NULL
);
"""
SCHEMA = Schema("tier_files", _SCHEMA, postgres=_SCHEMA, steps=())
"""The shared list's schema versions (:mod:`aap.store.migrations`)."""

_LIST = (f"SELECT {_FILE_COLS} FROM tier_files UNION ALL"
         " SELECT NULL, 'published', writer, published, 0 FROM tier_writers WHERE writer = ?")
"""The live files and this writer's last published batch, in one statement: one
snapshot on either engine (a single statement reads one state)."""
_INSERT = (f"INSERT INTO tier_files ({_FILE_COLS}, created_ms) VALUES (?, ?, ?, ?, ?, ?)"
           " ON CONFLICT (path) DO NOTHING")

MARKER = "tier_list_shared"
"""``processor_state`` row set when the warehouse's list moved to the shared store."""
WRITER = "publish_writer"
"""``processor_state`` row: this warehouse's writer number (its batch files' names)."""


def _ms() -> int:
    return int(time.time() * 1000)


class Gate:
    """Queries read the hot rows (DuckDB) and then the list (the shared store) under
    :meth:`shared`; the publisher marks hot rows as a batch under :meth:`exclusive`. So a
    batch marked after a query's DuckDB snapshot is not listed yet when that query reads
    the list: no row is seen both in the hot table and in a file. (Hot rows and the
    publisher live in one process: this is an in-process lock.)"""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Stale(Exception):
    """A batch's rows changed since it was written (an erasure recorded meanwhile, see
    :mod:`aap.store.erasures`): it is written again before it is listed."""


class SharedList:
    """``tier_files``, ``tier_trash`` and ``tier_writers`` on the shared-state database."""

    shared = True

    def __init__(self, db: MetaDB, con: duckdb.DuckDBPyConnection) -> None:
        self.db = db
        self.con = con
        self.gate = Gate()
        db.migrate(SCHEMA)
        self.writer = f"{_writer_number(con):012x}"
        con.execute(KEYS_DDL)
        self._adopt()

    def _adopt(self) -> None:
        """The warehouse's own list and trash (publishing was off until now) move here:
        added here first, then deleted there (a crash in between repeats it)."""
        cur = self.con.cursor()
        try:
            files = _files(cur.execute(f"SELECT {_FILE_COLS} FROM tier_files").fetchall())
            trash = [r[0] for r in cur.execute("SELECT path FROM tier_trash").fetchall()]
            if files or trash:
                def move(tx: Tx) -> None:
                    tx.executemany(_INSERT, [(f.path, f.tier, f.part, f.rows, f.bytes, _ms())
                                             for f in files])
                    tx.executemany("INSERT INTO tier_trash VALUES (?, ?) ON CONFLICT (path)"
                                   " DO NOTHING", [(p, _ms()) for p in trash])
                self.db.write(move)
            cur.execute("BEGIN TRANSACTION")
            cur.execute("DELETE FROM tier_files")
            cur.execute("DELETE FROM tier_trash")
            cur.execute("INSERT INTO processor_state VALUES ($n, 1) ON CONFLICT (name)"
                        " DO UPDATE SET value = 1", {"n": MARKER})
            cur.execute("COMMIT")
        finally:
            cur.close()

    def _read(self) -> tuple[list[TierFile], int]:
        rows = self.db.fetchall(_LIST, [self.writer])
        published = next((int(r[3]) for r in rows if r[0] is None), 0)
        return _files([r for r in rows if r[0] is not None]), published

    def files(self, cur: duckdb.DuckDBPyConnection | None = None) -> list[TierFile]:
        return sorted(self._read()[0], key=lambda f: f.path)

    def published(self) -> int:
        """This writer's last batch in the list (0: none)."""
        row = self.db.fetchone("SELECT published FROM tier_writers WHERE writer = ?",
                               [self.writer])
        return int(row[0]) if row else 0

    def _register(self, cur: duckdb.DuckDBPyConnection, files: list[TierFile]) -> str:
        cur.register("live_files", pa.table({
            "path": pa.array([f.path for f in files], pa.string()),
            "tier": pa.array([f.tier for f in files], pa.string()),
            "part": pa.array([f.part for f in files], pa.string())}))
        return "live_files"

    def relation(self, cur: duckdb.DuckDBPyConnection) -> str:
        return self._register(cur, [f for f in self._read()[0] if f.tier in EVENT_TIERS])

    def snapshot(self, cur: duckdb.DuckDBPyConnection, files: bool = True) -> Listing:
        """Right after the cursor's ``BEGIN``: its DuckDB snapshot first (the batches
        being published), then the list, under the gate (see :class:`Gate`)."""
        with self.gate.shared():
            pending = [int(r[0]) for r in cur.execute(MARKED).fetchall()]
            every, published = self._read()
        live = [f for f in every if f.tier in EVENT_TIERS]
        rel = self._register(cur, live)
        unlisted = [s for s in pending if s > published]
        sql = (f"SELECT * EXCLUDE ({PUBLISH_BATCH}) FROM events_raw"
               f" WHERE {PUBLISH_BATCH} > {published}" if unlisted else "")
        return Listing(rel, live, [f for f in every if f.tier not in EVENT_TIERS], sql)

    def is_live(self, cur: duckdb.DuckDBPyConnection, path: str) -> bool:
        return bool(self.db.fetchall("SELECT 1 FROM tier_files WHERE path = ?", [path]))

    def swap(self, cur: duckdb.DuckDBPyConnection, remove: Sequence[str],
             add: Sequence[TierFile], grace: timedelta | None) -> None:
        """One transaction of the shared store (``cur`` is not used: call this last in a
        DuckDB transaction that goes with it)."""
        due = _ms() + int(grace.total_seconds() * 1000) if grace is not None else 0

        def tx(t: Tx) -> None:
            gone = sum(t.execute("DELETE FROM tier_files WHERE path = ?", [p])
                       for p in dict.fromkeys(remove))
            if gone != len(set(remove)):
                raise Moved
            if grace is not None:
                t.executemany("INSERT INTO tier_trash VALUES (?, ?) ON CONFLICT (path)"
                              " DO NOTHING", [(p, due) for p in remove])
            t.executemany(_INSERT, [(f.path, f.tier, f.part, f.rows, f.bytes, _ms())
                                    for f in add])
        self.db.write(tx)

    def publish(self, seq: int, files: Sequence[TierFile],
                check: Callable[[Tx], bool] | None = None,
                positions: Callable[[Tx], None] | None = None) -> bool:
        """List a batch's files and note the batch as published, in one transaction;
        nothing if the batch was published already (False). ``check``, run first in the
        transaction: False refuses the listing (:class:`Stale`; the record of erasures,
        :mod:`aap.store.erasures`). ``positions`` runs next, unless the batch was
        published already (the log positions' compare-and-set,
        :mod:`aap.store.handover`): if it raises, nothing is listed."""
        def tx(t: Tx) -> bool:
            if check is not None and not check(t):
                raise Stale(seq)
            row = t.fetchall("SELECT published FROM tier_writers WHERE writer = ?",
                             [self.writer])
            if row and int(row[0][0]) >= seq:
                return False
            if positions is not None:
                positions(t)
            t.executemany(_INSERT, [(f.path, f.tier, f.part, f.rows, f.bytes, _ms())
                                    for f in files])
            t.execute("INSERT INTO tier_writers VALUES (?, ?) ON CONFLICT (writer)"
                      " DO UPDATE SET published = excluded.published", [self.writer, seq])
            return True
        return self.db.write(tx)

    def trash(self) -> list[str]:
        return [str(r[0]) for r in self.db.fetchall("SELECT path FROM tier_trash")]

    def due(self) -> list[str]:
        return [str(r[0]) for r in self.db.fetchall(
            "SELECT path FROM tier_trash WHERE delete_after_ms <= ?", [_ms()])]

    def forget(self, path: str) -> None:
        self.db.execute("DELETE FROM tier_trash WHERE path = ?", [path])

    def stats(self) -> dict[str, tuple[int, int, int]]:
        return {str(t): (int(f), int(r or 0), int(b or 0)) for t, f, r, b in self.db.fetchall(
            "SELECT tier, count(*), sum(rows), sum(bytes) FROM tier_files GROUP BY tier")}


def _writer_number(con: duckdb.DuckDBPyConnection) -> int:
    """This warehouse's writer number, drawn once and kept in ``processor_state``."""
    row = con.execute("SELECT value FROM processor_state WHERE name = $n",
                      {"n": WRITER}).fetchone()
    if row:
        return int(row[0])
    n = random.SystemRandom().getrandbits(47) | 1
    con.execute("INSERT INTO processor_state VALUES ($n, $v) ON CONFLICT (name) DO NOTHING",
                {"n": WRITER, "v": n})
    return int(con.execute("SELECT value FROM processor_state WHERE name = $n",  # type: ignore[index]
                           {"n": WRITER}).fetchone()[0])


def is_shared(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether this warehouse's list moved to the shared store (publishing was on)."""
    row = con.execute("SELECT value FROM processor_state WHERE name = $n",
                      {"n": MARKER}).fetchone()
    return bool(row and row[0])
