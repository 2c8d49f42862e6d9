"""Restriction (Art. 18) and objection (Art. 21) flags shared by every warehouse
(``AAP_META_URL``), and the mirror that keeps each warehouse's ``person_flags`` table
equal to them.

Without ``AAP_META_URL`` none of this is used: the warehouse's ``person_flags`` table is
the record, as it always was (:mod:`aap.privacy.subjects`). With it, person ids are
global (:mod:`aap.store.identities`), and the record is the table ``person_flags`` of the
shared-state database (:mod:`aap.store.meta`; on SQLite, for the tests of both engines,
the file of the shared identities, ``identities.db``). Its tables come with the shared
identities' schema (:data:`aap.store.identities.SCHEMA`), since a merge carries flags in
its own transaction:

- a flag set, lifted or erased through any process is one write transaction there, on
  the persons named, the persons the identity store merged them into, and every person
  merged into those (so a merge this warehouse has not seen yet is covered);
- a merge (:meth:`aap.store.identities.SharedIdentities.apply`) copies the merged
  person's flags to the surviving person in the merge's own transaction;
- every change takes the next number of one change sequence (the row of
  ``person_flags_changes``; its ``seq``), and a row carries the number of the change
  that set it. Writers take turns on that row (SQLite: one writer at a time; PostgreSQL:
  the table locked first, and the row's lock held until commit, under ``SERIALIZABLE``),
  so the numbers are drawn in commit order, as the consent ledger's: a reader that has
  seen number ``n`` has seen every change up to ``n``. A change that deletes rows (a
  flag lifted, an erasure) also sets ``cleared`` to its number: deleted rows leave
  nothing to read, so a mirror that sees ``cleared`` pass its position reads the whole
  (small) table again instead.

:class:`FlagsMirror` brings a warehouse's ``person_flags`` up to date **before each
query snapshot** (:meth:`aap.store.warehouse.Warehouse.fresh_flags`): one ``SELECT`` of
the counter row when nothing changed, one more of the rows changed since (or of every
row) when something did, applied in one DuckDB transaction. Per snapshot rather than
per interval because a restriction must hold from the moment its request is answered,
on every node: a query that starts after the shared store committed the flag sees it,
with no window to wait out; the price is one round trip to the shared-state database
per query (queries that arrive while a refresh runs wait for it and share one more). The query SQL
is unchanged: it reads ``person_flags`` as before. While the shared store cannot be
read, queries fail (503) rather than show a person who may be restricted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from aap.datadir import DataDir
from aap.errors import ServiceUnavailable
from aap.store.identities import (
    FLAG_CHANGES,
    SCHEMA,
    flag_rows,
    merge_group,
    next_flag_change,
    resolved,
    translated,
)
from aap.store.meta import POSTGRESQL, Bulk, SharedStateUnavailable, Tx, open_meta

if TYPE_CHECKING:
    from aap.store.warehouse import Warehouse

FLAGS = ("restricted", "objected")

Row = tuple[int, str, int]
"""(person_id, flag, set_at_ms)."""


class FlagsUnavailable(ServiceUnavailable, SharedStateUnavailable):
    """The shared flags cannot be read or written now: a query waits rather than show a
    person who may be restricted."""

    code = "flags_unavailable"


class SharedFlags:
    """The record of the flags on the shared-state database (see the module's doc)."""

    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        """``url``: the shared-state database (``None``: ``AAP_META_URL``; empty: the
        SQLite file of the shared identities under the data dir)."""
        self._db = open_meta(DataDir(data_dir).identities_db, url)
        self._db.migrate(SCHEMA)  # the identities' schema holds the flags' tables
        self._sql = Bulk(self._db.dialect == POSTGRESQL)

    @property
    def where(self) -> str:
        return self._db.where

    def set_flag(self, persons: Iterable[int], flag: str, at_ms: int | None = None) -> int:
        """Flag the persons (and those merges join them to); returns how many rows were
        added (a person flagged already keeps the time it was flagged at)."""
        wanted = sorted(set(persons))
        if flag not in FLAGS:
            raise ValueError(f"unknown flag {flag!r}")
        at = int(time.time() * 1000) if at_ms is None else at_ms

        def flag_them(tx: Tx) -> int:
            tx.lock(FLAG_CHANGES)
            group = merge_group(tx, self._sql, wanted)
            have = {p for p, f, _ in flag_rows(tx.fetchall, self._sql, group) if f == flag}
            new = [(p, flag, at) for p in group if p not in have]
            if new:
                seq = next_flag_change(tx)
                tx.executemany("INSERT INTO person_flags (person_id, flag, set_at_ms, seq)"
                               " VALUES (?, ?, ?, ?)", [(*r, seq) for r in new])
            return len(new)

        return self._write(flag_them) if wanted else 0

    def add(self, rows: Iterable[Row]) -> int:
        """Rows as they are (a warehouse's own flags, adopted once: see
        :meth:`FlagsMirror.adopt`); returns how many were new."""
        rows = sorted(set(rows))

        def add_them(tx: Tx) -> int:
            tx.lock(FLAG_CHANGES)
            persons = sorted({p for p, _, _ in rows})
            have = {(p, f) for p, f, _ in flag_rows(tx.fetchall, self._sql, persons)}
            new = [r for r in rows if (r[0], r[1]) not in have]
            if new:
                seq = next_flag_change(tx)
                tx.executemany("INSERT INTO person_flags (person_id, flag, set_at_ms, seq)"
                               " VALUES (?, ?, ?, ?)", [(*r, seq) for r in new])
            return len(new)

        return self._write(add_them) if rows else 0

    def clear_flag(self, persons: Iterable[int], flag: str) -> int:
        """Lift the flag from the persons (and those merges join them to); returns how
        many rows went."""
        return self._delete(persons, flag)

    def erase(self, persons: Iterable[int]) -> int:
        """Erasure: every flag of the persons (and of those merges join them to) goes;
        returns how many rows went."""
        return self._delete(persons, None)

    def _delete(self, persons: Iterable[int], flag: str | None) -> int:
        wanted = sorted(set(persons))

        def delete(tx: Tx) -> int:
            tx.lock(FLAG_CHANGES)
            group = merge_group(tx, self._sql, wanted)
            gone = 0
            for cond, params in self._sql.among(group):
                extra = "" if flag is None else " AND flag = ?"
                gone += tx.execute(f"DELETE FROM person_flags WHERE person_id {cond}{extra}",
                                   [*params, *([] if flag is None else [flag])])
            if gone:
                seq = next_flag_change(tx)
                tx.execute("UPDATE person_flags_changes SET cleared = ? WHERE one = 1", (seq,))
            return gone

        return self._write(delete) if wanted else 0

    def position(self) -> tuple[int, int]:
        """(the last change's number, the last deleting change's number)."""
        row = self._read(lambda: self._db.fetchone(
            "SELECT seq, cleared FROM person_flags_changes WHERE one = 1"))
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def since(self, seq: int) -> list[Row]:
        """The rows set by changes after ``seq``."""
        return [(int(p), str(f), int(t)) for p, f, t in self._read(lambda: self._db.fetchall(
            "SELECT person_id, flag, set_at_ms FROM person_flags WHERE seq > ?", (seq,)))]

    def rows(self) -> list[Row]:
        """Every flag."""
        return self.since(-1)

    def persons_of(self, keys: Iterable[int]) -> set[int]:
        """The persons of these keyed ids in the shared identities, as merges resolve
        them: a request through one core finds a person whose events only another
        warehouse holds."""
        return set(self._read(lambda: resolved(self._db.fetchall, self._sql,
                                                sorted(set(keys)))).values())

    def flagged(self, persons: Iterable[int], flag: str) -> set[int]:
        """Which of these persons carry the flag."""
        wanted = sorted(set(persons))
        return {p for p, f, _ in flag_rows(self._db.fetchall, self._sql, wanted) if f == flag}

    def _write(self, fn: Any) -> int:
        with translated(FlagsUnavailable,
                        f"the shared flags at {self.where} cannot be written now"):
            return int(self._db.write(fn))

    def _read(self, fn: Any) -> Any:
        with translated(FlagsUnavailable, f"the shared flags at {self.where} cannot be read now"):
            return fn()

    def close(self) -> None:
        self._db.close()


# -- the mirror in a warehouse --

ADOPTED = "flags_adopted"
"""The ``processor_state`` row that says the warehouse's own flags went to the shared
store once (:meth:`FlagsMirror.adopt`)."""

_ROWS = pa.schema([("person_id", pa.int64()), ("flag", pa.string()),
                   ("set_at", pa.timestamp("ms"))])


_EPOCH = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)


def _at(ms: int) -> datetime:
    """A time in ms since the epoch as the warehouse keeps it (naive, UTC)."""
    return _EPOCH + ms * _MS


def _ms(at: datetime) -> int:
    return (at.replace(tzinfo=None) - _EPOCH) // _MS


class FlagsMirror:
    """A warehouse's ``person_flags`` kept equal to the shared flags."""

    def __init__(self, store: SharedFlags, warehouse: Warehouse) -> None:
        self.store = store
        self.warehouse = warehouse
        self.position = -1
        """The last change applied (-1: none yet; the first refresh reads every row)."""
        self.refreshes = 0
        """Refreshes that read the shared store (for tests and metrics)."""
        self._lock = threading.Lock()
        self._asked_lock = threading.Lock()
        self._asked = 0
        self._covered = 0

    def set_flag(self, persons: Iterable[int], flag: str) -> int:
        """:meth:`SharedFlags.set_flag`, then this mirror brought up to date."""
        n = self.store.set_flag(persons, flag)
        self.refresh()
        return n

    def clear_flag(self, persons: Iterable[int], flag: str) -> int:
        """:meth:`SharedFlags.clear_flag`, then this mirror brought up to date."""
        n = self.store.clear_flag(persons, flag)
        self.refresh()
        return n

    def erase(self, persons: Iterable[int]) -> int:
        """:meth:`SharedFlags.erase` (the warehouse's own rows go with the erasure's
        rewrite; the next refresh reads the table again)."""
        return self.store.erase(persons)

    def persons_of(self, keys: Iterable[int]) -> set[int]:
        return self.store.persons_of(keys)

    def adopt(self) -> int:
        """Once per warehouse: the flags it held before it mirrored the shared ones (a
        data dir that moves to ``AAP_META_URL``) are added to the shared store, so that
        no restriction is dropped by the first refresh. Returns how many were new
        there. (Their person numbers are this warehouse's own: see README, "Shared state
        on PostgreSQL".)"""
        wh = self.warehouse
        if wh.get_state(ADOPTED, 0):
            return 0
        rows = [(int(p), str(f), _ms(t)) for p, f, t in wh.con.cursor().execute(
            "SELECT person_id, flag, set_at FROM person_flags").fetchall()]
        added = self.store.add(rows)
        wh.set_state(ADOPTED, 1)
        return added

    def refresh(self) -> None:
        """Bring ``person_flags`` up to date with every change the shared store had
        committed when this call began. Concurrent calls share one read: a read that
        began after this call did covers it."""
        with self._asked_lock:
            self._asked += 1
            ticket = self._asked
        with self._lock:
            if self._covered >= ticket:
                return
            with self._asked_lock:
                covering = self._asked
            self._sync()
            self._covered = covering

    def _sync(self) -> None:
        seq, cleared = self.store.position()
        if seq == self.position:
            return
        self.refreshes += 1
        whole = self.position < 0 or cleared > self.position
        rows = self.store.rows() if whole else self.store.since(self.position)
        self._apply(rows, whole)
        self.position = seq

    def _apply(self, rows: list[Row], whole: bool) -> None:
        wh = self.warehouse
        with wh.write_lock, wh.transaction() as cur:
            if whole:  # what the store no longer has goes; the rest is upserted
                have = {(int(p), str(f)) for p, f in cur.execute(
                    "SELECT person_id, flag FROM person_flags").fetchall()}
                gone = have - {(p, f) for p, f, _ in rows}
                for flag in FLAGS:
                    persons = sorted(p for p, f in gone if f == flag)
                    if persons:
                        cur.execute("DELETE FROM person_flags WHERE flag = $flag"
                                    " AND list_contains($persons, person_id)",
                                    {"flag": flag, "persons": persons})
            if rows:
                cur.register("shared_flags", pa.table(
                    {"person_id": [r[0] for r in rows], "flag": [r[1] for r in rows],
                     "set_at": [_at(r[2]) for r in rows]}, schema=_ROWS))
                cur.execute("INSERT INTO person_flags SELECT person_id, flag,"
                            " CAST(set_at AS TIMESTAMP) FROM shared_flags"
                            " ON CONFLICT (person_id, flag) DO UPDATE SET set_at = excluded.set_at")
                cur.unregister("shared_flags")


def mirror(warehouse: Warehouse, store: SharedFlags) -> FlagsMirror:
    """The warehouse's ``person_flags`` becomes a mirror of ``store``: its own flags
    adopted once, then brought up to date (and before each query from now on)."""
    m = FlagsMirror(store, warehouse)
    m.adopt()
    warehouse.flags = m
    m.refresh()
    return m


def attach(warehouse: Warehouse, data_dir: Path, url: str) -> FlagsMirror | None:
    """With ``url`` (``AAP_META_URL``) set: :func:`mirror` of the shared flags there;
    without: nothing changes (the warehouse's table stays the record), and ``None``."""
    if not url:
        return None
    return mirror(warehouse, SharedFlags(data_dir, url))
