"""Erasures reach every processor's hot rows (publishing on, ``AAP_PUBLISH_SECONDS`` > 0).

With several processors each warehouse holds its own hot rows until its publisher lists
them on the shared store. An erasure runs in one processor: it destroys the keys
(shared keystore), rewrites the listed files and deletes *its own* hot rows. Without
more, another processor's unpublished rows of that person were published later. So:

- **the record** (:class:`SharedErasures`): the erasing processor appends (seq, person
  numbers, keyed ids: never a raw id) to ``erasures`` on the shared-state database of
  the list of live files (PostgreSQL at ``AAP_META_URL``, else ``tiers.db`` under the
  data dir), holding its warehouse's write lock, before it rewrites anything and before
  it answers. Appends take turns on the one row of ``erasure_counter`` (SQLite: one
  writer at a time; PostgreSQL: the table locked first, :meth:`aap.store.meta.Tx.lock`),
  so numbers are drawn and committed in order, as the flags' are
  (:mod:`aap.store.flags`): a reader that has seen ``n`` has seen every erasure up to
  ``n``.
- **the mirror in each writer** (:class:`ErasureMirror`, ``Warehouse.erasures``): with the
  write lock held, it deletes the rows of every erasure it has not applied yet from the
  warehouse's hot tables (``events_raw``, its rows being published included,
  ``persons``, ``orders``, ``order_items``, ``person_ids``, ``person_overrides``,
  ``session_streams``, set-aside rows, the query cache's copies, local flags, the keys
  noted for the next batch) — the persons recorded and those its own
  ``person_ids`` give the recorded ids — and notes the number in ``processor_state``
  (``erasures_applied``), in one DuckDB transaction. The publisher runs it first in
  :meth:`aap.store.publish.Publisher.settle`: at start-up, before each batch is marked,
  and before any rewrite.
- **a batch marked before an erasure, listed after it**: the publisher lists a batch in
  a transaction that takes the same turn on ``erasure_counter`` and checks that no
  erasure came after the last one applied (:meth:`SharedErasures.unchanged`); if one did,
  it applies it, writes the batch's files again and lists them then. So either the batch
  was listed before the erasure was recorded (and the erasing processor's rewrite, which
  reads the list after recording, finds its files), or its rows are cleaned first.
- **the suppression**: before each chunk the processor reads the record
  (:meth:`ErasureMirror.refresh`); the new ids go to ``suppress`` (the core: its keystore's
  destroyed set, so they are dropped as ``erased_subject`` even where the keystore is not
  shared), and the chunk carries the number it read (``Chunk.erasures_seen``). A chunk
  built before an erasure reached it and written after the mirror applied that erasure
  gets it applied to its own rows in its write transaction (:meth:`ErasureMirror.in_chunk`).
- **pruning**: each writer notes the last erasure it applied in ``erasure_appliers`` (at
  start-up too, so that it counts from then on); the record's rows every registered
  writer has applied are deleted (on SQLite with ``secure_delete`` and the WAL
  truncated). A writer that stops for good holds the rows back until its row of
  ``erasure_appliers`` is deleted by hand (see docs/scale.md).

Not covered here: consent withdrawal already runs on every processor from the shared
consent ledger (:meth:`aap.process.processor.Processor._apply_withdrawals`), and so does a
self-service erasure scoped to one controller (it records withdrawals of every purpose).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb

from aap.privacy.removal import erase_hot
from aap.store.filelist import KEYS_TABLE, SharedList
from aap.store.identities import IdentitiesUnavailable, translated
from aap.store.meta import SQLITE, MetaDB, Tx
from aap.store.migrations import Schema
from aap.store.rewrite import Hot
from aap.store.schema import PUBLISH_BATCH
from aap.store.warehouse import Warehouse

if TYPE_CHECKING:
    from aap.privacy.keystore import Keystore
    from aap.store.identities import SharedIdentities

logger = logging.getLogger("aap.erasures")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS erasures (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    persons TEXT NOT NULL,
    id_keys TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS erasure_counter (
    one INTEGER PRIMARY KEY,
    seq BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS erasure_appliers (
    writer TEXT PRIMARY KEY,
    applied BIGINT NOT NULL,
    at_ms BIGINT NOT NULL
);
"""
SCHEMA = Schema("erasures", _SCHEMA, postgres=_SCHEMA, steps=(), shares_file=True)
"""The record's schema (its own row of ``aap_schema_versions``: on SQLite the file's
``user_version`` is the list of live files')."""
COUNTER = "erasure_counter"
APPLIED = "erasures_applied"
"""The ``processor_state`` row: the last erasure applied to this warehouse's hot rows."""


class ErasuresUnavailable(IdentitiesUnavailable):
    """The record cannot be read or written now: the chunk (or the batch) waits."""


@dataclass(frozen=True, slots=True)
class Erasure:
    seq: int
    persons: frozenset[int]
    keys: frozenset[int]


class SharedErasures:
    """The record of erasures on the shared-state database of the list of live files."""

    def __init__(self, db: MetaDB) -> None:
        self.db = db
        db.migrate(SCHEMA)

    def append(self, persons: Iterable[int], keys: Iterable[int]) -> int:
        """Record an erasure; returns its number."""
        row = (json.dumps(sorted(set(persons))), json.dumps(sorted(set(keys))))

        def add(tx: Tx) -> int:
            tx.lock(COUNTER)
            have = tx.fetchall("SELECT seq FROM erasure_counter WHERE one = 1")
            seq = (int(have[0][0]) if have else 0) + 1
            tx.execute("INSERT INTO erasure_counter VALUES (1, ?) ON CONFLICT (one)"
                       " DO UPDATE SET seq = excluded.seq", (seq,))
            tx.execute("INSERT INTO erasures VALUES (?, ?, ?, ?)",
                       (seq, int(time.time() * 1000), *row))
            return seq

        return int(self._call(lambda: self.db.write(add)))

    def since(self, seq: int) -> list[Erasure]:
        """The erasures recorded after ``seq``, in order."""
        rows = self._call(lambda: self.db.fetchall(
            "SELECT seq, persons, id_keys FROM erasures WHERE seq > ? ORDER BY seq", (seq,)))
        return [Erasure(int(s), frozenset(json.loads(p)), frozenset(json.loads(k)))
                for s, p, k in rows]

    def position(self) -> int:
        row = self._call(lambda: self.db.fetchone(
            "SELECT seq FROM erasure_counter WHERE one = 1"))
        return int(row[0]) if row else 0

    @staticmethod
    def unchanged(tx: Tx, applied: int) -> bool:
        """Inside a write transaction (first): whether no erasure came after ``applied``;
        appends wait for this transaction (they take the same turn)."""
        tx.lock(COUNTER)
        have = tx.fetchall("SELECT seq FROM erasure_counter WHERE one = 1")
        return (int(have[0][0]) if have else 0) <= applied

    def applied(self, writer: str, seq: int) -> int:
        """``writer`` applied every erasure up to ``seq``; the rows every writer applied
        go. Returns how many went."""
        def note(tx: Tx) -> int:
            tx.execute("INSERT INTO erasure_appliers VALUES (?, ?, ?) ON CONFLICT (writer)"
                       " DO UPDATE SET applied = excluded.applied, at_ms = excluded.at_ms",
                       (writer, seq, int(time.time() * 1000)))
            if self.db.dialect == SQLITE:  # the pruned rows' bytes are overwritten
                tx.execute("PRAGMA secure_delete = ON")
            return tx.execute("DELETE FROM erasures WHERE seq <= (SELECT min(applied)"
                              " FROM erasure_appliers)")

        gone = int(self._call(lambda: self.db.write(note)))
        if gone:
            self.db.shredded()
        return gone

    def _call(self, fn: Callable[[], Any]) -> Any:
        with translated(ErasuresUnavailable,
                        f"the record of erasures at {self.db.where} cannot be used now"):
            return fn()


Suppress = Callable[[set[int]], object]
"""Called with the keyed ids of erasures read from the record (before the chunk that read
them is built): the core adds them to its keystore's destroyed set."""
Found = Callable[[set[int], set[int]], object]
"""Called after an erasure was applied here, with the persons and keyed ids it reached in
this warehouse (the core erases them from the shared identities too: a chunk built
before the erasure reached this processor may have linked them again)."""


class ErasureMirror:
    """A writer's application of the record to its hot rows (see the module's doc)."""

    def __init__(self, store: SharedErasures, warehouse: Warehouse, writer: str) -> None:
        self.store = store
        self.warehouse = warehouse
        self.writer = writer
        self.applied = warehouse.get_state(APPLIED, 0)
        self.known = self.applied
        """The last erasure read from the record."""
        self.recent: dict[int, Erasure] = {}
        """Erasures read and still needed: not applied yet, or applied after a chunk in
        flight read the record."""
        self.suppress: Suppress | None = None
        self.found: Found | None = None
        self._own: set[int] = set()
        """Erasures recorded here: the erasure itself reaches the shared identities."""
        self._lock = threading.Lock()

    def refresh(self) -> int:
        """Read the erasures recorded since the last read (their ids to ``suppress``);
        returns the number of the last one read."""
        with self._lock:
            new = self.store.since(self.known)
            if new:
                for e in new:
                    self.recent[e.seq] = e
                if self.suppress is not None:
                    self.suppress(set().union(*(e.keys for e in new)))
                self.known = new[-1].seq
            return self.known

    def register(self) -> None:
        """At start-up: this writer counts for pruning from now on."""
        self.store.applied(self.writer, self.applied)

    def apply(self) -> dict[int, dict[str, int]]:
        """With the write lock held: every erasure recorded and not applied here yet
        reaches the hot tables, in one transaction; returns the rows deleted per table,
        per erasure."""
        self.refresh()
        with self._lock:
            todo = [e for s, e in sorted(self.recent.items()) if s > self.applied]
        if not todo:
            return {}
        out: dict[int, dict[str, int]] = {}
        reached: list[tuple[set[int], set[int]]] = []
        with self.warehouse.transaction() as cur:
            for e in todo:
                counts, persons = _erase(cur, e)
                out[e.seq] = counts
                reached.append((persons, set(e.keys)))
            cur.execute("INSERT INTO processor_state VALUES ($n, $v) ON CONFLICT (name)"
                        " DO UPDATE SET value = excluded.value",
                        {"n": APPLIED, "v": todo[-1].seq})
        with self._lock:
            self.applied = todo[-1].seq
        logger.info("erasures %d to %d applied to the hot rows: %s", todo[0].seq,
                    todo[-1].seq, out)
        for e, (persons, keys) in zip(todo, reached, strict=True):
            if self.found is not None and e.seq not in self._own:
                self.found(persons, keys)
            self._own.discard(e.seq)
        if any(n for counts in out.values() for n in counts.values()):
            _checkpoint(self.warehouse)
        self.store.applied(self.writer, self.applied)
        return out

    def record(self, persons: set[int], keys: set[int]) -> dict[str, int]:
        """An erasure run here: recorded for every writer (the write lock held, so this
        warehouse's publisher lists nothing in between), then applied to this
        warehouse's hot rows; returns what that deleted."""
        with self.warehouse.write_lock:
            seq = self.store.append(persons, keys)
            self._own.add(seq)
            return self.apply().get(seq, {})

    def unchanged(self, tx: Tx) -> bool:
        """In the shared list's transaction that lists a batch: no erasure was recorded
        after the last one applied here (:meth:`SharedErasures.unchanged`)."""
        return self.store.unchanged(tx, self.applied)

    def in_chunk(self, cur: duckdb.DuckDBPyConnection, seen: int) -> None:
        """In a chunk's write transaction (the write lock held): the erasures applied
        here after the chunk read the record (``seen``) are applied to its rows too."""
        with self._lock:
            missed = [e for s, e in sorted(self.recent.items()) if seen < s <= self.applied]
            # chunks are written in the order they were built: none needs these again
            for s in [s for s in self.recent if s <= min(seen, self.applied)]:
                del self.recent[s]
        for e in missed:
            _erase(cur, e)


def _erase(cur: duckdb.DuckDBPyConnection, e: Erasure) -> tuple[dict[str, int], set[int]]:
    """The erasure's rows deleted from the hot tables (the cursor's transaction): the
    persons recorded and those this warehouse's ids give its keyed ids, with every person
    merged into them. Returns the counts and the persons."""
    keys = sorted(e.keys)
    found = {int(r[0]) for r in cur.execute(
        "SELECT coalesce(o.person_id, i.person_id) FROM person_ids i LEFT JOIN"
        " person_overrides o ON o.old_person_id = i.person_id"
        " WHERE list_contains($keys, i.id_key)", {"keys": keys}).fetchall()}
    over = dict(cur.execute("SELECT old_person_id, person_id FROM person_overrides"
                            " WHERE list_contains($persons, old_person_id)",
                            {"persons": sorted(e.persons)}).fetchall())
    found |= {int(over.get(p, p)) for p in e.persons}
    persons = found | set(e.persons) | {int(r[0]) for r in cur.execute(
        "SELECT old_person_id FROM person_overrides WHERE list_contains($persons, person_id)",
        {"persons": sorted(found)}).fetchall()}
    out: dict[str, int] = {}
    params = {"persons": sorted(persons), "keys": keys}
    count = Hot(cur)
    # keys noted for the next batch: their orders' ids and their person numbers would be
    # published as "gone" rows
    count(f"DELETE FROM {KEYS_TABLE} WHERE (tbl IN ('orders', 'order_items') AND key IN"
          " (SELECT order_id FROM orders WHERE list_contains($persons, person_id)))"
          " OR (tbl = 'persons' AND list_contains($names, key))",
          {**params, "names": [str(p) for p in sorted(persons)]})
    out["hot_publishing"] = count(  # rows of a batch being published (marked)
        f"DELETE FROM events_raw WHERE {PUBLISH_BATCH} IS NOT NULL"
        " AND list_contains($persons, person_id)", params)
    erase_hot(out, params)(count)
    return out, persons


def _checkpoint(wh: Warehouse) -> None:
    """The deleted rows leave the database file's live blocks now (as after an erasure
    run here)."""
    try:
        wh.con.cursor().execute("CHECKPOINT")
    except duckdb.Error as exc:  # a transaction in flight: the next checkpoint does it
        logger.info("checkpoint after applying erasures skipped: %s", exc)


def connect(mirror: ErasureMirror, keystore: Keystore,
            identities: SharedIdentities | None = None) -> None:
    """The core's hooks: the ids of erasures read from the record join ``keystore``'s
    destroyed ones (shared or not: the processor drops their events as
    ``erased_subject``), and what an erasure reached here leaves ``identities`` too."""
    def suppress(keys: set[int]) -> None:
        new = keys - keystore.refresh_destroyed()
        if new:
            keystore.destroy(new)

    mirror.suppress = suppress
    if identities is not None:
        mirror.found = identities.erase


def attach(warehouse: Warehouse) -> ErasureMirror | None:
    """With the list of live files on the shared store (publishing on): the warehouse
    applies the record (``warehouse.erasures``) and counts for pruning from now on;
    without: ``None`` (an erasure reaches this warehouse's rows alone, as before)."""
    if not isinstance(warehouse.files, SharedList):
        return None
    files = warehouse.files
    m = ErasureMirror(SharedErasures(files.db), warehouse, files.writer)
    m.register()
    warehouse.erasures = m
    return m
