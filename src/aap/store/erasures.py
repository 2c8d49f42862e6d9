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
  truncated). A writer that stops for good holds the rows back until it is retired
  (``aap cluster retire WRITER``, :meth:`SharedErasures.retire`: its row goes).
- **a retired writer that comes back** finds erasures missing from the record: it reads
  the record's position with its rows (one statement), and a gap after the last one it
  read means rows were pruned before it applied them. Their persons are named nowhere
  but in the keystore's destroyed ids, so with the keystore on the same shared database
  (PostgreSQL) the gap is applied as one erasure of every destroyed id this warehouse
  holds (:attr:`Erasure.everyone`; a writer whose hot tables hold nobody, a new one, has
  nothing to apply); without it (SQLite files) the writer publishes nothing more
  (:class:`ErasuresLost`, :meth:`ErasureMirror.check_lost`): its rows are kept, none is
  listed.

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
from aap.store import handover
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


class ErasuresLost(RuntimeError):
    """Erasures were pruned from the record before this writer applied them (it was
    retired while it was away) and no shared keystore names their persons: this warehouse
    publishes nothing more (its rows are kept)."""


class UnknownWriter(KeyError):
    """No writer of that name counts for the record's pruning."""


@dataclass(frozen=True, slots=True)
class Erasure:
    seq: int
    persons: frozenset[int]
    keys: frozenset[int]
    everyone: bool = False
    """Not a row of the record: the erasures pruned before this writer read them, as
    every destroyed id of the shared keystore (narrowed to the ids this warehouse holds
    when applied)."""


@dataclass(frozen=True, slots=True)
class Writer:
    """A writer that counts for pruning, as :meth:`SharedErasures.writers` lists it."""
    writer: str
    applied: int
    at_ms: int
    published: int
    """Its last batch in the list of live files (0: none)."""


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

        return int(self.call(lambda: self.db.write(add)))

    def since(self, seq: int) -> list[Erasure]:
        """The erasures recorded after ``seq``, in order."""
        return self.read(seq)[1]

    def read(self, seq: int) -> tuple[int, list[Erasure]]:
        """The record's position and the erasures after ``seq`` still in it, in order, in
        one statement (one snapshot: an erasure's row and the position are committed
        together, so a row up to the position that is missing was pruned)."""
        rows = self.call(lambda: self.db.fetchall(
            "SELECT c.seq, e.seq, e.persons, e.id_keys FROM (SELECT 1 AS one) AS x"
            " LEFT JOIN erasure_counter c ON c.one = x.one"
            " LEFT JOIN erasures e ON e.seq > ? ORDER BY e.seq", (seq,)))
        position = int(rows[0][0]) if rows and rows[0][0] is not None else 0
        return position, [Erasure(int(s), frozenset(json.loads(p)), frozenset(json.loads(k)))
                          for _, s, p, k in rows if s is not None]

    def position(self) -> int:
        row = self.call(lambda: self.db.fetchone(
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
            return self._prune(tx)

        return self._pruned(self.call(lambda: self.db.write(note)))

    def writers(self) -> list[Writer]:
        """The writers that count for pruning (the record's rows are kept until each of
        them applied them), by name."""
        rows = self.call(lambda: self.db.fetchall(
            "SELECT a.writer, a.applied, a.at_ms, coalesce(w.published, 0)"
            " FROM erasure_appliers a LEFT JOIN tier_writers w ON w.writer = a.writer"
            " ORDER BY a.writer"))
        return [Writer(str(w), int(a), int(t), int(p)) for w, a, t, p in rows]

    def retire(self, writer: str) -> int:
        """``writer`` is gone for good: it no longer holds the record's rows back (if it
        comes back, it finds the gap: see the module's doc). Returns the rows pruned;
        :class:`UnknownWriter` when no such writer counts."""
        def drop(tx: Tx) -> int | None:
            if not tx.execute("DELETE FROM erasure_appliers WHERE writer = ?", (writer,)):
                return None
            return self._prune(tx)

        gone = self.call(lambda: self.db.write(drop))
        if gone is None:
            raise UnknownWriter(writer)
        return self._pruned(gone)

    def _prune(self, tx: Tx) -> int:
        """The rows every writer that counts applied go (none when none counts)."""
        if self.db.dialect == SQLITE:  # the pruned rows' bytes are overwritten
            tx.execute("PRAGMA secure_delete = ON")
        return tx.execute("DELETE FROM erasures WHERE seq <= (SELECT min(applied)"
                          " FROM erasure_appliers)")

    def _pruned(self, gone: int) -> int:
        if gone:
            self.db.shredded()
        return int(gone)

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()``; :class:`ErasuresUnavailable` when the shared database cannot be used."""
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
Everyone = Callable[[], set[int]]
"""The keyed ids of every erased person, from the keystore when it is on the record's
shared database (else unset: erasures pruned before this writer read them cannot be
named)."""


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
        self.everyone: Everyone | None = None
        self.lost: tuple[int, int] | None = None
        """Erasures pruned before this writer read them (first, last), while
        ``everyone`` cannot stand for them."""
        self.everyone_due: Erasure | None = None
        """Erasures pruned before this writer read them, as every destroyed id: applied
        first at the next :meth:`apply`, whatever was applied since."""
        self._own: set[int] = set()
        """Erasures recorded here: the erasure itself reaches the shared identities."""
        self._lock = threading.Lock()

    def refresh(self) -> int:
        """Read the erasures recorded since the last read (their ids to ``suppress``);
        returns the number of the last one read."""
        with self._lock:
            position, new = self.store.read(self.known)
            first = new[0].seq if new else position + 1
            if position > self.known and first > self.known + 1:
                self._gap(self.known + 1, first - 1)
            if new:
                for e in new:
                    self.recent[e.seq] = e
                if self.suppress is not None:
                    self.suppress(set().union(*(e.keys for e in new)))
                self.known = new[-1].seq
            return self.known

    def _gap(self, first: int, last: int) -> None:
        """Erasures ``first`` to ``last`` were pruned before they were read here (this
        writer was retired while it was away): they are applied as one erasure of every
        destroyed id (``everyone_due``, and in ``recent`` for a chunk built before the gap
        was read), else publishing stops (with ``self._lock`` held)."""
        if self.lost is not None:
            first = min(first, self.lost[0])
        self.known = max(self.known, last)
        if self.lost is None and self._holds_nobody():  # a new writer: nothing to erase,
            self.recent[last] = Erasure(last, frozenset(), frozenset())  # applied as such
            return
        logger.warning("erasures %d to %d left the record before writer %s read them (it"
                       " was retired while it was away)", first, last, self.writer)
        if self.everyone is None:
            self.lost = (first, last)
            return
        self.lost = None
        self.everyone_due = Erasure(last, frozenset(), frozenset(self.everyone()),
                                    everyone=True)
        self.recent[last] = self.everyone_due  # and for a chunk built before it was read

    def _holds_nobody(self) -> bool:
        """No person's id nor event is in this warehouse's hot tables (a new one)."""
        cur = self.warehouse.con.cursor()
        try:
            row = cur.execute("SELECT (SELECT count(*) FROM person_ids)"
                              " + (SELECT count(*) FROM events_raw)").fetchone()
            return not row or not row[0]
        finally:
            cur.close()

    def _name_lost(self) -> None:
        """Erasures lost here are named now if the keystore was connected since (with
        ``self._lock`` held)."""
        if self.lost is not None and self.everyone is not None:
            self._gap(*self.lost)

    def check_lost(self) -> None:
        """Raise :class:`ErasuresLost` while erasures are lost here (the publisher, before
        it marks a batch and when a listing is refused)."""
        with self._lock:
            self._name_lost()
            if self.lost is not None:
                first, last = self.lost
                raise ErasuresLost(
                    f"erasures {first} to {last} left the record of erasures before writer"
                    f" {self.writer} applied them (it was retired while it was away,"
                    " `aap cluster retire`), and the keystore is not on the shared database"
                    " (AAP_META_URL) to name their persons: its unpublished rows may hold"
                    " erased persons, so it publishes nothing more. Its rows are kept (and"
                    " answer its queries); to drop them, stop it and remove its warehouse"
                    " (DATA_DIR/warehouse).")

    def register(self) -> None:
        """At start-up: this writer counts for pruning from now on."""
        self.store.applied(self.writer, self.applied)

    def apply(self) -> dict[int, dict[str, int]]:
        """With the write lock held: every erasure recorded and not applied here yet
        reaches the hot tables, in one transaction; returns the rows deleted per table,
        per erasure."""
        self.refresh()
        with self._lock:
            self._name_lost()
            due = self.everyone_due
            todo = [e for s, e in sorted(self.recent.items())
                    if s > self.applied and not e.everyone]
        if due is not None:
            todo.insert(0, due)
        if not todo:
            return {}
        upto = max(self.applied, *(e.seq for e in todo))
        out: dict[int, dict[str, int]] = {}
        reached: list[tuple[set[int], set[int]]] = []
        if self.warehouse.handover:  # the erased ids' shared streams first: when that
            erased = set().union(*(e.keys for e in todo))  # fails, nothing is applied yet
            self.store.call(lambda: handover.erase_streams(self.store.db, erased))
        with self.warehouse.transaction() as cur:
            for e in todo:
                counts, persons, keys = _erase(cur, e)
                out[e.seq] = counts
                reached.append((persons, keys))
            cur.execute("INSERT INTO processor_state VALUES ($n, $v) ON CONFLICT (name)"
                        " DO UPDATE SET value = excluded.value", {"n": APPLIED, "v": upto})
        with self._lock:
            self.applied = upto
            if self.everyone_due is due:
                self.everyone_due = None
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
        after the last one applied here (:meth:`SharedErasures.unchanged`); never while
        erasures are lost here (:meth:`check_lost` raises then) or due as every destroyed
        id."""
        return (self.lost is None and self.everyone_due is None
                and self.store.unchanged(tx, self.applied))

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


def _erase(cur: duckdb.DuckDBPyConnection, e: Erasure
           ) -> tuple[dict[str, int], set[int], set[int]]:
    """The erasure's rows deleted from the hot tables (the cursor's transaction): the
    persons recorded and those this warehouse's ids give its keyed ids, with every person
    merged into them. Returns the counts, the persons and the keyed ids."""
    keys = sorted(e.keys)
    if e.everyone:  # every destroyed id: those this warehouse holds (one join, not a scan
        keys = sorted(int(r[0]) for r in cur.execute(  # of the list per row)
            "SELECT id_key FROM person_ids WHERE id_key IN (SELECT unnest($keys))"
            " UNION SELECT stream_key FROM session_streams"
            " WHERE stream_key IN (SELECT unnest($keys))", {"keys": keys}).fetchall())
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
    if count("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'publish_streams'",
             {}):  # the handover: their streams noted for the next batch or copied for one
        count("DELETE FROM stream_changes WHERE list_contains($keys, stream_key)", params)
        count("DELETE FROM publish_streams WHERE list_contains($keys, stream_key)", params)
    erase_hot(out, params)(count)
    return out, persons, set(keys)


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
    ``erased_subject``), and what an erasure reached here leaves ``identities`` too; a
    keystore on the record's shared database stands for erasures pruned before this
    writer read them (``everyone``)."""
    def suppress(keys: set[int]) -> None:
        new = keys - keystore.refresh_destroyed()
        if new:
            keystore.destroy(new)

    mirror.suppress = suppress
    if keystore.shared_with(mirror.store.db):
        mirror.everyone = keystore.refresh_destroyed
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
