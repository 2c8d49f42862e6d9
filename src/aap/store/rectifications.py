"""Rectified traits (Art. 16) shared by every warehouse (``AAP_META_URL``), and each
warehouse's application of them to its own profiles.

Without ``AAP_META_URL`` none of this is used: a rectification merges the corrected
traits into the warehouse's ``persons.traits`` (and, publishing on, rewrites its
published profiles) and that is all (:func:`aap.privacy.subjects.rectify_traits`). With
it, several processors may each hold a profile of one person (her devices' streams in two
partitions), each with the traits its events set, each published and merged on the
reader in the order written (:mod:`aap.store.published`). A rectification used to reach
the profile of the processor that ran it only: another kept the old value, published it
again, and a query node showed it. So:

- **the record** (:class:`SharedRectifications`): a rectification is one write
  transaction on the shared-state database of the identities (``person_rectifications``,
  tables of :data:`aap.store.identities.SCHEMA`): a row per person — those of the
  request, those the shared identities merged them into and every person merged into
  those — with the rectification's number, its JSON merge patch (the traits that are
  not personal: personal ones are sealed in the shared keystore, never here) and its
  time. Numbers are drawn in commit order (the counter row of
  ``person_rectifications_changes``, writers taking turns on it as on the flags'), so a
  reader that has seen number ``n`` has seen every rectification up to ``n``. An erasure
  deletes the person's rows.
- **the application in each warehouse** (:class:`RectificationsMirror`,
  ``Warehouse.rectifications``): the patches not applied yet are merged into
  ``persons.traits`` (of the persons recorded and those this warehouse's merges resolve
  them to) in one DuckDB transaction that notes the last one applied in
  ``processor_state`` (``rectifications_applied``). It runs in the processor's chunk
  transaction, before the chunk's persons are written: the processor reads the record
  before it builds each chunk (``Chunk.rectifications_seen``) and the patches read by
  then go first, so a trait the chunk's events set wins over them, as it does with one
  processor for a chunk written after the rectification (a patch the publisher applied
  meanwhile, after the chunk was built, is merged again after the chunk's persons: it
  came after those events). It runs as well before each publishing turn
  (:meth:`aap.store.publish.Publisher.settle`, at start-up too) and, at once, in the
  processor that runs the request.
- **the published profiles**: a warehouse that applied a patch merges it into its own
  published persons rows listed before it did (``_writer`` itself, ``_seq`` up to its
  last listed batch then), in place: their ``_seq`` and ``_ms`` are kept, so the
  reader's order of the writers' states does not change and nothing is published again
  (batches listed later were written from the patched table). Which patches still have
  to reach the files is noted with the application (``processor_state``
  ``rectified_rows.<number>`` = that last listed batch), so a stop loses none. The
  processor that runs the request also patches the other writers' rows written before
  the rectification was recorded (their ``_ms``), so that a query node shows the
  rectified value at once, even while another processor is stopped.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import duckdb
import pyarrow as pa

from aap.datadir import DataDir
from aap.store.filelist import Moved, SharedList, TierFile
from aap.store.identities import (
    RECTIFICATION_CHANGES,
    SCHEMA,
    IdentitiesUnavailable,
    merge_group,
    translated,
)
from aap.store.meta import POSTGRESQL, Bulk, Tx, open_meta

if TYPE_CHECKING:
    from aap.store.warehouse import Warehouse

APPLIED = "rectifications_applied"
"""The ``processor_state`` row: the last rectification applied to ``persons``."""
UNWRITTEN = "rectified_rows."
"""``processor_state`` rows ``rectified_rows.<number>``: a rectification applied here
whose patch has not reached this writer's published rows yet, and the last batch this
writer had listed when it was applied (its rows up to that batch get the patch)."""
MOVED_ATTEMPTS = 3


class RectificationsUnavailable(IdentitiesUnavailable):
    """The record cannot be read or written now: the chunk (or the request) waits."""


@dataclass(frozen=True, slots=True)
class Rectification:
    seq: int
    persons: frozenset[int]
    traits: str
    """The JSON merge patch (``null`` removes a trait)."""
    at_ms: int


def _grouped(rows: Iterable[tuple[Any, ...]]) -> list[Rectification]:
    by: dict[int, tuple[set[int], str, int]] = {}
    for seq, person, traits, at in rows:
        persons, _, _ = by.setdefault(int(seq), (set(), str(traits), int(at)))
        persons.add(int(person))
    return [Rectification(s, frozenset(p), t, at) for s, (p, t, at) in sorted(by.items())]


class SharedRectifications:
    """The record of rectifications on the shared-state database (see the module's doc)."""

    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        """``url``: the shared-state database (``None``: ``AAP_META_URL``; empty: the
        SQLite file of the shared identities under the data dir)."""
        self._db = open_meta(DataDir(data_dir).identities_db, url)
        self._db.migrate(SCHEMA)  # the identities' schema holds the record's tables
        self._sql = Bulk(self._db.dialect == POSTGRESQL)

    @property
    def where(self) -> str:
        return self._db.where

    def record(self, persons: Iterable[int], traits: dict[str, Any]) -> Rectification | None:
        """Record a rectification of the persons (and of those merges join them to);
        ``None`` when there is no person."""
        wanted = sorted(set(persons))
        patch = json.dumps(traits, sort_keys=True)
        at = int(time.time() * 1000)

        def add(tx: Tx) -> Rectification:
            tx.lock(RECTIFICATION_CHANGES)
            group = merge_group(tx, self._sql, wanted)
            tx.execute("UPDATE person_rectifications_changes SET seq = seq + 1 WHERE one = 1")
            seq = int(tx.fetchall("SELECT seq FROM person_rectifications_changes"
                                  " WHERE one = 1")[0][0])
            tx.executemany("INSERT INTO person_rectifications (seq, person_id, traits, at_ms)"
                           " VALUES (?, ?, ?, ?)", [(seq, p, patch, at) for p in group])
            return Rectification(seq, frozenset(group), patch, at)

        return self._call(lambda: self._db.write(add)) if wanted else None

    def since(self, seq: int) -> list[Rectification]:
        """The rectifications recorded after ``seq`` (and not erased), in order."""
        return _grouped(self._call(lambda: self._db.fetchall(
            "SELECT seq, person_id, traits, at_ms FROM person_rectifications WHERE seq > ?"
            " ORDER BY seq", (seq,))))

    def numbered(self, seqs: Iterable[int]) -> list[Rectification]:
        """These rectifications (those not erased), in order."""
        rows: list[tuple[Any, ...]] = []
        for cond, params in self._sql.among(sorted(set(seqs))):
            rows += self._call(lambda c=cond, p=params: self._db.fetchall(
                "SELECT seq, person_id, traits, at_ms FROM person_rectifications"
                f" WHERE seq {c}", p))
        return _grouped(rows)

    def erase(self, persons: Iterable[int]) -> int:
        """Erasure: the rows of the persons (and of those merges join them to) go;
        returns how many went."""
        wanted = sorted(set(persons))

        def delete(tx: Tx) -> int:
            tx.lock(RECTIFICATION_CHANGES)
            return sum(tx.execute(f"DELETE FROM person_rectifications WHERE person_id {cond}",
                                  params)
                       for cond, params in self._sql.among(merge_group(tx, self._sql, wanted)))

        return int(self._call(lambda: self._db.write(delete))) if wanted else 0

    def _call(self, fn: Any) -> Any:
        with translated(RectificationsUnavailable,
                        f"the shared rectifications at {self.where} cannot be used now"):
            return fn()

    def close(self) -> None:
        self._db.close()


# -- the application in a warehouse --

class RectificationsMirror:
    """A warehouse's application of the record (see the module's doc)."""

    def __init__(self, store: SharedRectifications, warehouse: Warehouse) -> None:
        self.store = store
        self.warehouse = warehouse
        self.applied = warehouse.get_state(APPLIED, 0)
        """The last rectification applied to ``persons``."""
        self.known = self.applied
        """The last rectification read from the record."""
        self.recent: dict[int, Rectification] = {}
        """Rectifications read and still needed: not applied yet, or applied after a
        chunk in flight read the record."""
        self._lock = threading.Lock()

    def refresh(self) -> int:
        """Read the rectifications recorded since the last read; returns the number of
        the last one read."""
        with self._lock:
            for r in self.store.since(self.known):
                self.recent[r.seq] = r
                self.known = r.seq
            return self.known

    def _between(self, after: int, upto: int) -> list[Rectification]:
        with self._lock:
            return [r for s, r in sorted(self.recent.items()) if after < s <= upto]

    def apply(self, own: Rectification | None = None) -> int:
        """With the write lock held: every rectification recorded and not applied here
        yet is merged into ``persons``, in one transaction, and every patch applied here
        reaches this writer's published rows (``own``: see :meth:`write_published`);
        returns how many were applied."""
        self.refresh()
        todo = self._between(self.applied, self.known)
        if todo:
            with self.warehouse.transaction() as cur:
                self._apply(cur, todo)
            self.committed(todo[-1].seq, 0)
        self.write_published(own)
        return len(todo)

    def rectify(self, persons: set[int], traits: dict[str, Any]) -> int:
        """A rectification run here: recorded for every writer, applied here, and merged
        into the published rows of this writer and those the others wrote before it was
        recorded, before it returns. Returns how many persons it names."""
        wh = self.warehouse
        with wh.write_lock:
            wh.settle()  # a batch half published is listed first: its rows are reached
            r = self.store.record(persons, traits)
            if r is not None:
                self.apply(r)
        return len(persons)

    def erase(self, persons: Iterable[int]) -> int:
        """:meth:`SharedRectifications.erase` (the warehouse's rows go with the erasure)."""
        return self.store.erase(persons)

    # -- in the processor's chunk (the write lock held, in its transaction) --

    def unapplied(self, seen: int) -> bool:
        """Whether a chunk that read the record up to ``seen`` has some to apply."""
        return bool(self._between(self.applied, seen))

    def before_chunk(self, cur: duckdb.DuckDBPyConnection, seen: int) -> int:
        """Before the chunk's persons: the rectifications it read (``seen``) and not
        applied yet. Returns the last one applied (0: none)."""
        todo = self._between(self.applied, seen)
        if todo:
            self._apply(cur, todo)
        return todo[-1].seq if todo else 0

    def after_chunk(self, cur: duckdb.DuckDBPyConnection, seen: int) -> None:
        """After the chunk's persons: those applied here after the chunk read the
        record are merged again (they came after the chunk's events)."""
        for r in self._between(seen, self.applied):
            _merge(cur, r)

    def committed(self, upto: int, seen: int) -> None:
        """The transaction that applied up to ``upto`` committed (a chunk's, which had
        read up to ``seen``; chunks are written in the order they were built, so none
        needs the rectifications up to there again)."""
        with self._lock:
            self.applied = max(self.applied, upto)
            for s in [s for s in self.recent if s <= min(seen, self.applied)]:
                del self.recent[s]

    def _apply(self, cur: duckdb.DuckDBPyConnection, todo: list[Rectification]) -> None:
        files = self.warehouse.files
        listed = cast(SharedList, files).published() if files.shared else 0
        for r in todo:
            _merge(cur, r)
            if files.shared:  # its patch is still to reach the published rows
                _set(cur, f"{UNWRITTEN}{r.seq}", listed)
        _set(cur, APPLIED, todo[-1].seq)

    # -- the published rows --

    def write_published(self, own: Rectification | None = None) -> int:
        """With the write lock held: the patches applied here and not yet merged into
        this writer's published rows are (``own``: a rectification recorded here, whose
        patch also reaches the other writers' rows written before it). Returns the
        files rewritten."""
        wh = self.warehouse
        cur = wh.con.cursor()
        try:
            noted = {int(n[len(UNWRITTEN):]): int(v) for n, v in cur.execute(
                "SELECT name, value FROM processor_state WHERE starts_with(name, $p)",
                {"p": UNWRITTEN}).fetchall()}
            if not noted:
                return 0
            jobs = [(_reach(cur, r.persons), r.traits, noted[r.seq],
                     own.at_ms if own is not None and r.seq == own.seq else -1)
                    for r in self._numbered(noted)]
        finally:
            cur.close()
        n = _patch_files(wh, jobs) if jobs else 0
        with wh.transaction() as cur:
            cur.execute("DELETE FROM processor_state WHERE list_contains($n, name)",
                        {"n": [f"{UNWRITTEN}{s}" for s in noted]})
        return n

    def _numbered(self, seqs: Iterable[int]) -> list[Rectification]:
        with self._lock:
            have = [self.recent[s] for s in sorted(seqs) if s in self.recent]
        missing = set(seqs) - {r.seq for r in have}
        got = have + (self.store.numbered(missing) if missing else [])  # after a stop
        return sorted(got, key=lambda r: r.seq)


def _set(cur: duckdb.DuckDBPyConnection, name: str, value: int) -> None:
    cur.execute("INSERT INTO processor_state VALUES ($n, $v) ON CONFLICT (name)"
                " DO UPDATE SET value = excluded.value", {"n": name, "v": value})


def _reach(cur: duckdb.DuckDBPyConnection, persons: Iterable[int]) -> list[int]:
    """The persons and those this warehouse's merges resolve them to."""
    wanted = sorted(set(persons))
    over = cur.execute("SELECT person_id FROM person_overrides"
                     " WHERE list_contains($p, old_person_id)", {"p": wanted}).fetchall()
    return sorted(set(wanted) | {int(r[0]) for r in over})


def _merge(cur: duckdb.DuckDBPyConnection, r: Rectification) -> None:
    cur.execute("UPDATE persons SET traits = json_merge_patch(coalesce(traits, '{}'), $t)"
                " WHERE list_contains($p, person_id)",
                {"t": r.traits, "p": _reach(cur, r.persons)})


Job = tuple[list[int], str, int, int]
"""(persons, patch, this writer's last batch whose rows get it, the time before which the
other writers' rows get it (-1: none))."""

_HIT = ("NOT _gone AND list_contains($persons, person_id) AND ((_writer = $me AND _seq <= $upto)"
        " OR (_writer <> $me AND _ms <= $before))")


def _patched(con: duckdb.DuckDBPyConnection, table: pa.Table, jobs: list[Job], me: str
             ) -> pa.Table | None:
    """A published persons file's rows with the jobs' patches merged into the rows they
    reach (None: it has none)."""
    hit = False
    for persons, patch, upto, before in jobs:
        con.register("t", table)
        params = {"persons": persons, "me": me, "upto": upto, "before": before}
        if con.execute(f"SELECT count(*) FROM t WHERE {_HIT}", params).fetchall()[0][0]:
            table = con.sql(
                f"SELECT * REPLACE (CASE WHEN {_HIT} THEN CAST(json_merge_patch(coalesce("
                "traits, '{}'), $patch) AS VARCHAR) ELSE traits END AS traits) FROM t",
                params={**params, "patch": patch}).to_arrow_table().cast(table.schema)
            hit = True
        con.unregister("t")
    return table if hit else None


def _patch_files(wh: Warehouse, jobs: list[Job]) -> int:
    """Each listed persons file with a row the jobs reach written again with the patches
    merged in, swapped on the list in one transaction (again from the list as it is
    then when another writer rewrote one meanwhile). Returns the files rewritten."""
    for attempt in range(MOVED_ATTEMPTS):
        try:
            return _patch_once(wh, jobs)
        except Moved:
            if attempt == MOVED_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _patch_once(wh: Warehouse, jobs: list[Job]) -> int:
    me = cast(SharedList, wh.files).writer
    changed: list[tuple[str, TierFile]] = []
    con = duckdb.connect()
    try:
        for f in wh.files.files():
            if f.tier != "persons":
                continue
            new = _patched(con, wh.tiers.read_table([f.path]), jobs, me)
            if new is not None:
                path, size = wh.tiers.write_table(new, "persons", "")
                changed.append((f.path, TierFile(path, "persons", "persons", new.num_rows, size)))
        if changed:
            with wh.transaction() as cur:
                wh.files.swap(cur, [old for old, _ in changed], [n for _, n in changed], None)
    except BaseException:
        for _, n in changed:
            wh.tiers.delete(n.path)
        raise
    finally:
        con.close()
    for old, _ in changed:
        wh.tiers.delete(old)
    return len(changed)


def mirror(warehouse: Warehouse, store: SharedRectifications) -> RectificationsMirror:
    """The warehouse applies the record ``store`` (``warehouse.rectifications``): from its
    next chunk or publishing turn on, and every rectification run through it is recorded
    there."""
    m = RectificationsMirror(store, warehouse)
    warehouse.rectifications = m
    return m


def attach(warehouse: Warehouse, data_dir: Path, url: str) -> RectificationsMirror | None:
    """With ``url`` (``AAP_META_URL``) set: :func:`mirror` of the shared record there;
    without: nothing changes (a rectification reaches the warehouse it runs in), and
    ``None``."""
    if not url:
        return None
    return mirror(warehouse, SharedRectifications(data_dir, url))
