"""The embedded durable log: one SQLite database in WAL mode with ``synchronous=FULL``.

Several processes may append at once. Writers queue on an ``flock`` of ``write.lock``
(the kernel wakes the next one as soon as the lock is free, where SQLite's own busy
handler would sleep in steps of up to 100 ms); SQLite then serialises them again, so
offsets grow in commit order and a reader never sees a gap that is later filled. Each
process group-commits (see :mod:`aap.log.committer`), so one fsync covers many requests.

Consumers note their positions (for lag metrics: the processor's truth is in the
warehouse) in a file of their own, ``positions.db``, not in the log's: a consumer stopped
inside that write (a stall, ``SIGSTOP``) would hold SQLite's write lock of the log, and
every collector's append would wait for it, up to SQLite's timeout (30 s), then fail.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from aap.datadir import LOG_DB, LOG_POSITIONS_DB, LOG_WRITE_LOCK
from aap.log.base import Append, LogStats, Positions, Record, as_positions

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    appended_at INTEGER NOT NULL,
    source TEXT NOT NULL,
    count INTEGER NOT NULL,
    cum INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_appended_at ON records (appended_at);
"""
_POSITIONS = """
CREATE TABLE IF NOT EXISTS consumers (
    grp TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
"""
_HAS_CONSUMERS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'consumers'"


class SQLiteLog:
    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / LOG_DB
        self.lock_path = self.dir / LOG_WRITE_LOCK
        self.positions_path = self.dir / LOG_POSITIONS_DB
        self._local = threading.local()
        con = self._con()
        with con:
            con.executescript(_SCHEMA)
        self._positions().executescript(_POSITIONS)
        if con.execute(_HAS_CONSUMERS).fetchone():
            self._move_positions()

    def _con(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA wal_autocheckpoint=4000")
            self._local.con = con
        return con

    def _positions(self) -> sqlite3.Connection:
        """``positions.db``: committed without an fsync of its own (``synchronous=NORMAL``
        in WAL mode: a crash may lose the last position noted, which is for metrics)."""
        con: sqlite3.Connection | None = getattr(self._local, "positions", None)
        if con is None:
            con = sqlite3.connect(self.positions_path, timeout=30, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.positions = con
        return con

    def _move_positions(self) -> None:
        """A log made before ``positions.db`` kept the positions in its own ``consumers``
        table: they move there once (the newer of two wins), then that table goes."""
        with self._writing() as con:
            if not con.execute(_HAS_CONSUMERS).fetchone():  # another process moved them
                return
            rows = con.execute("SELECT grp, position, updated_at FROM consumers").fetchall()
            self._positions().executemany(
                "INSERT INTO consumers (grp, position, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(grp) DO UPDATE SET position = excluded.position,"
                " updated_at = excluded.updated_at"
                " WHERE excluded.updated_at > consumers.updated_at", rows)
            con.execute("DROP TABLE consumers")

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """Hold the cross-process write lock (one open file per thread, so threads of one
        process exclude each other too)."""
        fd: int | None = getattr(self._local, "lock_fd", None)
        if fd is None:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._local.lock_fd = fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield self._con()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def append(self, batches: Sequence[Append]) -> list[int]:
        if not batches:
            return []
        with self._writing() as con:
            return self._append(con, batches)

    def _append(self, con: sqlite3.Connection, batches: Sequence[Append]) -> list[int]:
        now = int(time.time() * 1000)
        con.execute("BEGIN IMMEDIATE")
        try:
            row = con.execute("SELECT cum FROM records ORDER BY seq DESC LIMIT 1").fetchone()
            cum = row[0] if row else 0  # retention always keeps the newest record
            offsets = []
            for b in batches:
                cum += b.count
                cur = con.execute(
                    "INSERT INTO records (appended_at, source, count, cum, payload)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (now, b.source, b.count, cum, b.payload),
                )
                offsets.append(int(cur.lastrowid or 0))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return offsets

    def read(self, after: int | Positions, limit: int = 1000, max_events: int | None = None,
             max_bytes: int | None = None) -> list[Record]:
        after = as_positions(after).get(0, 0)
        con = self._con()
        if max_events is not None or max_bytes is not None:
            # the sizes first (no payloads): where to stop
            sizes = con.execute("SELECT count, length(payload) FROM records WHERE seq > ?"
                                " ORDER BY seq LIMIT ?", (after, limit)).fetchall()
            events = size = 0
            for n, (count, length) in enumerate(sizes, 1):
                events += count
                size += length
                if ((max_events is not None and events >= max_events)
                        or (max_bytes is not None and size >= max_bytes)):
                    limit = n
                    break
        rows = con.execute(
            "SELECT seq, appended_at, source, count, payload FROM records"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [Record(*r) for r in rows]

    def position(self, group: str) -> int:
        row = self._positions().execute("SELECT position FROM consumers WHERE grp = ?",
                                        (group,)).fetchone()
        return int(row[0]) if row else 0

    def positions(self, group: str) -> dict[int, int]:
        return {0: self.position(group)}

    def commit(self, group: str, offset: int | Positions) -> None:
        pos = as_positions(offset)
        if 0 not in pos:
            return
        offset = pos[0]
        self._positions().execute(
            "INSERT INTO consumers (grp, position, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(grp) DO UPDATE SET position = excluded.position,"
            " updated_at = excluded.updated_at",
            (group, offset, int(time.time() * 1000)),
        )

    def drop_older_than(self, cutoff_ms: int, chunk: int = 500) -> int:
        """Drop in chunks, releasing the write lock between them so appends go on."""
        dropped = 0
        while True:
            with self._writing() as con:
                n = self._drop(con, cutoff_ms, chunk)
            dropped += n
            if n < chunk:
                return dropped

    def _drop(self, con: sqlite3.Connection, cutoff_ms: int, chunk: int) -> int:
        con.execute("BEGIN IMMEDIATE")
        try:
            # Keep the newest record so the running event total survives.
            head = con.execute("SELECT max(seq) FROM records").fetchone()[0] or 0
            cur = con.execute(
                "DELETE FROM records WHERE seq IN (SELECT seq FROM records"
                " WHERE appended_at < ? AND seq < ? ORDER BY seq LIMIT ?)",
                (cutoff_ms, head, chunk),
            )
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return cur.rowcount

    def stats(self) -> LogStats:
        con = self._con()
        row = con.execute("SELECT seq, cum FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        head, total = (int(row[0]), int(row[1])) if row else (0, 0)
        lag: dict[str, int] = {}
        for grp, pos in self._positions().execute(
                "SELECT grp, position FROM consumers").fetchall():
            if pos >= head:
                lag[grp] = 0
                continue
            r = con.execute(
                "SELECT cum FROM records WHERE seq <= ? ORDER BY seq DESC LIMIT 1", (pos,)
            ).fetchone()
            consumed = int(r[0]) if r else _events_before(con, pos)
            lag[grp] = max(0, total - consumed)
        size = sum(p.stat().st_size for p in self.dir.glob("log.db*") if p.exists())
        return LogStats(head, total, size, lag)

    def close(self) -> None:
        for name in ("con", "positions"):
            con = getattr(self._local, name, None)
            if con is not None:
                con.close()
                setattr(self._local, name, None)
        fd = getattr(self._local, "lock_fd", None)
        if fd is not None:
            os.close(fd)
            self._local.lock_fd = None


def _events_before(con: sqlite3.Connection, pos: int) -> int:
    """Events up to ``pos`` when that record was dropped by retention."""
    row = con.execute(
        "SELECT cum - count FROM records WHERE seq > ? ORDER BY seq LIMIT 1", (pos,)
    ).fetchone()
    return int(row[0]) if row else 0
