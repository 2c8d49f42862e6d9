"""Identities and merges shared by several processors (``AAP_META_URL``).

With the Kafka log, several processors each read some partitions, and the message key
is the person's keyed id: an ``identify(userId U, anonymousId X)`` and a ``track(X)`` may
reach two processors at the same moment. Each processor then runs the identity rules
(:mod:`aap.process.identity`, the very same :class:`Identities`) against this store,
one chunk at a time, in one write transaction (:meth:`SharedIdentities.apply`):

1. read the rows of every key the chunk mentions (``identity_ids``), the overrides of
   their persons and the persons already merged into those (``identity_overrides``), and
   which of them are identified (``identity_identified``);
2. load that working set into an :class:`Identities` and run the chunk's events through
   it (new persons take numbers drawn from a PostgreSQL sequence, or a counter row on
   SQLite);
3. write its :meth:`Identities.take_changes` back: new ids, flattened overrides, newly
   identified persons.

On PostgreSQL the transaction is ``SERIALIZABLE`` (:meth:`aap.store.meta.MetaDB.write`):
when another processor linked one of the keys, or merged one of the persons, at the
same moment, one of the two transactions is refused and runs again from step 1 on what
the other committed. The function run inside is pure apart from the transaction, so a
second run is harmless. A chunk applied again (a processor that crashed after this
commit and before its warehouse's) finds its keys linked and gives the same persons.

What each processor's warehouse needs to resolve the chunk's events is handed back as
:class:`aap.process.identity.IdentityChanges` (:attr:`Applied.mirror`): the rows of the
chunk's keys and the overrides of their persons as the store has them now — so that a
replay, or a merge made by another processor of a person this chunk mentions, reaches
that warehouse too. A merge made by another processor of persons none of whose keys this
processor sees again does not reach its warehouse (see README, "Shared state on
PostgreSQL").

The store also holds the persons' restriction and objection flags (``person_flags`` and
its change counter; what is done with them is :mod:`aap.store.flags`): a merge gives the
merged person's flags to the surviving person in its own transaction; and the record of
rectified traits (``person_rectifications`` and its counter: :mod:`aap.store.rectifications`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from aap.datadir import DataDir
from aap.process.identity import Identities, IdentityChanges
from aap.store.meta import (
    POSTGRESQL,
    Bulk,
    Fetch,
    SharedStateUnavailable,
    Tx,
    is_conflict,
    open_meta,
    unavailable,
)
from aap.store.migrations import Schema

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identity_ids (
    id_key INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS identity_overrides (
    old_person_id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS identity_overrides_person ON identity_overrides (person_id);
CREATE TABLE IF NOT EXISTS identity_identified (
    person_id INTEGER PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS identity_counter (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS identity_ids (
    id_key BIGINT PRIMARY KEY,
    person_id BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS identity_overrides (
    old_person_id BIGINT PRIMARY KEY,
    person_id BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS identity_overrides_person ON identity_overrides (person_id);
CREATE TABLE IF NOT EXISTS identity_identified (
    person_id BIGINT PRIMARY KEY
);
CREATE SEQUENCE IF NOT EXISTS identity_persons;
"""
_FLAGS = """
CREATE TABLE IF NOT EXISTS person_flags (
    person_id INTEGER NOT NULL,
    flag TEXT NOT NULL CHECK (flag IN ('restricted', 'objected')),
    set_at_ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (person_id, flag)
);
CREATE INDEX IF NOT EXISTS person_flags_seq ON person_flags (seq);
CREATE TABLE IF NOT EXISTS person_flags_changes (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL,
    cleared INTEGER NOT NULL
);
INSERT INTO person_flags_changes VALUES (1, 0, 0) ON CONFLICT (one) DO NOTHING;
"""
_PG_FLAGS = """
CREATE TABLE IF NOT EXISTS person_flags (
    person_id BIGINT NOT NULL,
    flag TEXT NOT NULL CHECK (flag IN ('restricted', 'objected')),
    set_at_ms BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (person_id, flag)
);
CREATE INDEX IF NOT EXISTS person_flags_seq ON person_flags (seq);
CREATE TABLE IF NOT EXISTS person_flags_changes (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq BIGINT NOT NULL,
    cleared BIGINT NOT NULL
);
INSERT INTO person_flags_changes VALUES (1, 0, 0) ON CONFLICT (one) DO NOTHING;
"""
"""The persons' flags (:mod:`aap.store.flags`): ``seq`` is the number of the change that
set a row; the one row of ``person_flags_changes`` holds the last change's number and
the last deleting change's (``cleared``)."""
_RECTIFICATIONS = """
CREATE TABLE IF NOT EXISTS person_rectifications (
    seq INTEGER NOT NULL,
    person_id INTEGER NOT NULL,
    traits TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (seq, person_id)
);
CREATE INDEX IF NOT EXISTS person_rectifications_person ON person_rectifications (person_id);
CREATE TABLE IF NOT EXISTS person_rectifications_changes (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL
);
INSERT INTO person_rectifications_changes VALUES (1, 0) ON CONFLICT (one) DO NOTHING;
"""
_PG_RECTIFICATIONS = """
CREATE TABLE IF NOT EXISTS person_rectifications (
    seq BIGINT NOT NULL,
    person_id BIGINT NOT NULL,
    traits TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (seq, person_id)
);
CREATE INDEX IF NOT EXISTS person_rectifications_person ON person_rectifications (person_id);
CREATE TABLE IF NOT EXISTS person_rectifications_changes (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq BIGINT NOT NULL
);
INSERT INTO person_rectifications_changes VALUES (1, 0) ON CONFLICT (one) DO NOTHING;
"""
"""The persons' rectified traits (:mod:`aap.store.rectifications`): one row per person
of a rectification, ``seq`` its number, ``traits`` the JSON merge patch of its traits
that are not personal (personal ones are sealed in the keystore); the one row of
``person_rectifications_changes`` holds the last number drawn."""


def _flags_added(con: object) -> None:
    """Step 0 → 1: the flags' tables, which come with the latest shape's statements."""


def _rectifications_added(con: object) -> None:
    """Step 1 → 2: the rectifications' tables, which come with the latest shape's
    statements."""


SCHEMA = Schema("identity_ids", _SCHEMA + _FLAGS + _RECTIFICATIONS,
                postgres=_PG_SCHEMA + _PG_FLAGS + _PG_RECTIFICATIONS,
                steps=(_flags_added, _rectifications_added))
"""The shared identities' schema versions (:mod:`aap.store.migrations`)."""
FLAG_CHANGES = "person_flags_changes"
"""The flags' change counter's table."""
RECTIFICATION_CHANGES = "person_rectifications_changes"
"""The rectifications' counter's table."""
CONFLICT_ATTEMPTS = 30
"""How many times a chunk is applied again after a key it would link was linked by
another processor in between (a unique violation rather than a serialization failure)."""


class IdentitiesUnavailable(SharedStateUnavailable):
    """The shared store cannot be reached (or keeps refusing the transaction): the chunk
    is tried again later; nothing about it is wrong."""


@contextmanager
def translated(error: Callable[[str], Exception], what: str) -> Iterator[None]:
    """Inside: an error saying the shared store cannot be used now (:func:`unavailable`)
    becomes ``error(f"{what}: {exc}")``, for the caller's retry logic; others pass."""
    try:
        yield
    except Exception as exc:
        if unavailable(exc):
            raise error(f"{what}: {exc}") from exc
        raise


@dataclass(slots=True)
class Applied(Generic[T]):
    """What :meth:`SharedIdentities.apply` committed."""

    result: T
    """What the function run inside returned (from the run that committed)."""
    changes: IdentityChanges
    """What this chunk changed in the store."""
    mirror: IdentityChanges
    """For the processor's warehouse: the chunk's keys and their persons, the overrides
    of those persons, and the identified ones among them, as the store has them now."""


class _Working(Identities):
    """The working set of one chunk: new persons take the numbers drawn for it."""

    def __init__(self, numbers: list[int]) -> None:
        super().__init__()
        self._numbers = numbers

    def _new(self) -> int:
        return self._numbers.pop()


class SharedIdentities:
    """The identity store on the shared-state database (:mod:`aap.store.meta`)."""

    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        """``url``: the shared-state database (``None``: ``AAP_META_URL``; empty: a
        SQLite file under the data dir, ``identities.db``)."""
        self._db = open_meta(DataDir(data_dir).identities_db, url)
        self._db.migrate(SCHEMA)
        self._sql = Bulk(self._db.dialect == POSTGRESQL)

    @property
    def where(self) -> str:
        return self._db.where

    def apply(self, keys: Iterable[int], run: Callable[[Identities], T]) -> Applied[T]:
        """``run`` on the working set of ``keys`` (every key the chunk mentions), in one
        write transaction that also writes what it changed. ``run`` may be called more
        than once (see the module's doc); its identities are new at each call."""
        wanted = sorted(set(keys))
        sql = self._sql

        def chunk(tx: Tx) -> Applied[T]:
            ids = _working_set(tx, sql, wanted)
            out = run(ids)
            changes = ids.take_changes()
            _write(tx, sql, changes)
            return Applied(out, changes, _mirror(ids, wanted, changes))

        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                return self._write(chunk)
            except Exception as exc:
                if not is_conflict(exc) or attempt == CONFLICT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _write(self, fn: Callable[[Tx], T]) -> T:
        """:meth:`MetaDB.write`; :class:`IdentitiesUnavailable` when the database cannot
        be used now."""
        with translated(IdentitiesUnavailable,
                        f"the shared identities at {self.where} cannot be used now"):
            return self._db.write(fn)

    def persons_of(self, keys: Iterable[int]) -> dict[int, int]:
        """Each known key's person as merges resolve it (a read, outside any chunk)."""
        return resolved(self._db.fetchall, self._sql, sorted(set(keys)))

    def overrides(self) -> list[tuple[int, int]]:
        """Every merge (old person → the person it resolves to): what a query node's
        ``person_overrides`` mirrors (:mod:`aap.store.mirror`)."""
        return [(int(a), int(b)) for a, b in self._db.fetchall(
            "SELECT old_person_id, person_id FROM identity_overrides")]

    def ensure_above(self, person: int) -> None:
        """New persons get numbers from ``person`` on at least (a processor whose
        warehouse made persons before it used this store: its numbers are not reused).
        Numbers are drawn rather than set, so a processor drawing at the same moment
        gets none twice."""
        def bump(tx: Tx) -> None:
            if self._db.dialect == POSTGRESQL:
                row = tx.fetchall("SELECT last_value, is_called FROM identity_persons")[0]
                have = int(row[0]) if row[1] else int(row[0]) - 1
                if have < person - 1:
                    tx.fetchall("SELECT nextval('identity_persons') FROM generate_series(1, ?)",
                                (person - 1 - have,))
            else:
                tx.execute("INSERT INTO identity_counter VALUES ('person', ?) ON CONFLICT (name)"
                           " DO UPDATE SET value = max(value, excluded.value)", (person - 1,))
        self._db.write(bump)

    def forget(self, keys: Iterable[int]) -> int:
        """Retention: these keys' links go (an id that comes back is a new person);
        returns how many went. Overrides stay: they hold person numbers only."""
        wanted = sorted(set(keys))

        def forget(tx: Tx) -> int:
            return sum(tx.execute(f"DELETE FROM identity_ids WHERE id_key {cond}", params)
                       for cond, params in self._sql.among(wanted))

        return self._write(forget) if wanted else 0

    def closure(self, keys: Iterable[int]) -> tuple[set[int], set[int]]:
        """What an erasure of these keys reaches in the shared store: their persons (as
        merges resolve them) with every person merged into those, and every key of all of
        them (with ``keys``). A merge made by another processor is here even when this
        processor's warehouse never learned it."""
        wanted = sorted(set(keys))
        fetch, sql = self._db.fetchall, self._sql
        found = set(resolved(fetch, sql, wanted).values())
        if not found:
            return set(), set(wanted)
        persons = found | set(pairs(fetch, sql, "SELECT old_person_id, old_person_id FROM"
                                                 " identity_overrides WHERE person_id {}",
                                     sorted(found)))
        linked = pairs(fetch, sql, "SELECT id_key, id_key FROM identity_ids WHERE person_id {}",
                        sorted(persons))
        return persons, set(wanted) | set(linked)

    def erase(self, persons: Iterable[int], keys: Iterable[int]) -> int:
        """Erasure: the links of ``keys`` and every link, merge and "identified" mark of
        ``persons`` are deleted, in one transaction; returns the rows deleted. (The
        erased keys are suppressed by the keystore first, so no chunk links them again.)"""
        who, wanted, sql = sorted(set(persons)), sorted(set(keys)), self._sql

        def erase(tx: Tx) -> int:
            n = 0
            for cond, params in sql.among(wanted):
                n += tx.execute(f"DELETE FROM identity_ids WHERE id_key {cond}", params)
            for cond, params in sql.among(who):
                n += tx.execute(f"DELETE FROM identity_ids WHERE person_id {cond}", params)
                n += tx.execute(f"DELETE FROM identity_overrides WHERE old_person_id {cond}"
                                f" OR person_id {cond}", [*params, *params])
                n += tx.execute(f"DELETE FROM identity_identified WHERE person_id {cond}",
                                params)
            return n

        return self._write(erase) if who or wanted else 0

    def close(self) -> None:
        self._db.close()


# -- one chunk's transaction --

def pairs(fetch: Fetch, sql: Bulk, query: str, values: list[int]) -> dict[int, int]:
    """The two-column rows of ``query`` (``{}`` is where the condition on ``values``
    goes), as a mapping."""
    out: dict[int, int] = {}
    for cond, params in sql.among(values):
        out.update((int(a), int(b)) for a, b in fetch(query.format(cond), params))
    return out


def _working_set(tx: Tx, sql: Bulk, keys: list[int]) -> _Working:
    ids = pairs(tx.fetchall, sql, "SELECT id_key, person_id FROM identity_ids"
                                   " WHERE id_key {}", keys)
    direct = sorted(set(ids.values()))
    overrides = pairs(tx.fetchall, sql, "SELECT old_person_id, person_id FROM"
                                         " identity_overrides WHERE old_person_id {}", direct)
    resolved = sorted({overrides.get(p, p) for p in direct})
    # the persons merged into those: a merge of one of them moves them too (flattened)
    overrides.update(pairs(tx.fetchall, sql, "SELECT old_person_id, person_id FROM"
                                              " identity_overrides WHERE person_id {}", resolved))
    identified = set(pairs(tx.fetchall, sql, "SELECT person_id, person_id FROM"
                                              " identity_identified WHERE person_id {}",
                            resolved))
    numbers = _numbers(tx, len(keys) - len(ids), sql.postgres)  # a new person: a new key
    working = _Working(numbers[::-1])  # popped from the end: the lowest first
    working.load(ids, overrides, identified, 0)
    return working


def _numbers(tx: Tx, n: int, postgres: bool) -> list[int]:
    """``n`` person numbers no other transaction gets: from a sequence on PostgreSQL
    (outside the transaction: a transaction run again draws new ones, and numbers may
    be skipped), from a counter row on SQLite (whose writers take turns)."""
    if n <= 0:
        return []
    if postgres:
        return [int(r[0]) for r in tx.fetchall(
            "SELECT nextval('identity_persons') FROM generate_series(1, ?)", (n,))]
    row = tx.fetchall("SELECT value FROM identity_counter WHERE name = 'person'")
    last = int(row[0][0]) if row else 0
    tx.execute("INSERT INTO identity_counter VALUES ('person', ?) ON CONFLICT (name)"
               " DO UPDATE SET value = excluded.value", (last + n,))
    return list(range(last + 1, last + n + 1))


def _write(tx: Tx, sql: Bulk, ch: IdentityChanges) -> None:
    # New keys were absent when read: a plain INSERT, so that a key another processor
    # linked in between is a conflict (the chunk runs again), never overwritten.
    sql.insert(tx, "identity_ids", ("id_key", "person_id"), sorted(ch.new_ids.items()), "")
    sql.insert(tx, "identity_overrides", ("old_person_id", "person_id"),
               sorted(ch.overrides.items()),
               "ON CONFLICT (old_person_id) DO UPDATE SET person_id = excluded.person_id")
    for cond, params in sql.among(sorted(ch.overrides)):  # merged: never resolved to again
        tx.execute(f"DELETE FROM identity_identified WHERE person_id {cond}", params)
    sql.insert(tx, "identity_identified", ("person_id",),
               [(p,) for p in sorted(ch.identified - ch.overrides.keys())],
               "ON CONFLICT (person_id) DO NOTHING")
    _carry_flags(tx, sql, ch.overrides)  # the merged persons' flags go to the survivors


def _mirror(ids: Identities, keys: list[int], ch: IdentityChanges) -> IdentityChanges:
    rows = {k: ids.ids[k] for k in keys if k in ids.ids}
    direct = set(rows.values())
    overrides = {p: ids.merged[p] for p in direct if p in ids.merged}
    overrides.update(ch.overrides)
    persons = {ids.resolve(p) for p in direct}
    return IdentityChanges(new_ids=rows, overrides=overrides,
                           identified=(persons & ids.identified) | ch.identified)


def resolved(fetch: Fetch, sql: Bulk, keys: list[int]) -> dict[int, int]:
    ids = pairs(fetch, sql, "SELECT id_key, person_id FROM identity_ids WHERE id_key {}", keys)
    over = pairs(fetch, sql, "SELECT old_person_id, person_id FROM identity_overrides"
                              " WHERE old_person_id {}", sorted(set(ids.values())))
    return {k: over.get(p, p) for k, p in ids.items()}


# -- the persons' flags --

def next_flag_change(tx: Tx) -> int:
    """The next number of the flags' change sequence: the counter row is updated, and
    held until the commit, so numbers are drawn in commit order (writers that lock
    :data:`FLAG_CHANGES` first take turns; a merge that updates it after reading runs
    again if a writer committed in between)."""
    tx.execute("UPDATE person_flags_changes SET seq = seq + 1 WHERE one = 1")
    return int(tx.fetchall("SELECT seq FROM person_flags_changes WHERE one = 1")[0][0])


def merge_group(tx: Tx, sql: Bulk, persons: list[int]) -> list[int]:
    """The persons, those the shared identities merged them into, and every person
    merged into those (overrides are kept flat: one look-up resolves)."""
    into = pairs(tx.fetchall, sql, "SELECT old_person_id, person_id FROM identity_overrides"
                                   " WHERE old_person_id {}", persons)
    targets = sorted({into.get(p, p) for p in persons})
    merged = pairs(tx.fetchall, sql, "SELECT old_person_id, person_id FROM identity_overrides"
                                     " WHERE person_id {}", targets)
    return sorted(set(persons) | set(targets) | set(merged))


def flag_rows(fetch: Fetch, sql: Bulk, persons: list[int]) -> list[tuple[int, str, int]]:
    """The flags of these persons: (person_id, flag, set_at_ms)."""
    out: list[tuple[int, str, int]] = []
    for cond, params in sql.among(persons):
        out += [(int(p), str(f), int(t)) for p, f, t in fetch(
            f"SELECT person_id, flag, set_at_ms FROM person_flags WHERE person_id {cond}",
            params)]
    return out


def _carry_flags(tx: Tx, sql: Bulk, overrides: dict[int, int]) -> None:
    """In a merge's transaction: each merged person's flags are given to the person it
    was merged into as well (a restriction or an objection is the human's: it follows
    them), as one change of the flags' sequence."""
    if not overrides:
        return
    rows = flag_rows(tx.fetchall, sql, sorted(overrides))
    if not rows:
        return
    survivors = sorted({overrides[p] for p, _, _ in rows})
    have = {(p, f) for p, f, _ in flag_rows(tx.fetchall, sql, survivors)}
    new = {(overrides[p], f): t for p, f, t in rows if (overrides[p], f) not in have}
    if new:
        seq = next_flag_change(tx)
        tx.executemany("INSERT INTO person_flags (person_id, flag, set_at_ms, seq)"
                       " VALUES (?, ?, ?, ?)",
                       [(p, f, t, seq) for (p, f), t in sorted(new.items())])
