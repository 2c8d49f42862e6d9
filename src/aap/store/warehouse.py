"""The warehouse: one DuckDB database (the hot tier) owned by one process.

The processor writes a chunk of the log in one transaction — rows, persons, ids,
merges, orders, its open session streams and the log position they came from — so after a crash the warehouse
holds exactly the chunks that were committed, and processing resumes right after the
last of them. Queries in the same process read through their own cursors (DuckDB's
MVCC): they see whole chunks only and never block the writer.

The warehouse keeps storage only: the connection, transactions, snapshots and the
processor's write. Moves between tiers are :mod:`aap.store.tiering`; changes to stored
rows (erasure, withdrawal, retention) are :mod:`aap.store.rewrite`, driven by what
:mod:`aap.privacy.removal` builds; schema versions are :mod:`aap.store.migrations`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb
import numpy as np
import pyarrow as pa

from aap.datadir import HOT_DB
from aap.store import handover, published, quarantine
from aap.store.filelist import DuckList, FileList, SharedList
from aap.store.handover import POSITION, position_name
from aap.store.meta import MetaDB, Tx
from aap.store.migrations import (
    Schema,
    duckdb_has,
    migrate_duckdb,
    sql_step,
    unversioned_columns,
)
from aap.store.schema import (
    DDL,
    DEDUP_KEY_SQL,
    EVENT_ARROW_SCHEMA,
    OLD_VIEWS,
    PUBLISH_BATCH,
    SESSION_STREAMS_DDL,
    VIEWS,
)
from aap.store.tiers import TierConfig, TierStore, read_again
from aap.store.writelock import WriteLock

NEXT_PERSON = "next_person"


@dataclass
class Chunk:
    """What one processed chunk of the log adds to the warehouse."""

    events: pa.Table
    position: int | Mapping[int, int]
    """The log position reached, per partition (only the partitions of this chunk's
    records: another processor may own the others); an ``int`` is partition 0's."""
    next_person: int
    persons: pa.Table | list[tuple[int, datetime, datetime, bool, str | None]] = field(
        default_factory=list)
    """person_id, first_seen, last_seen, identified, traits (JSON): a table or rows."""
    new_ids: dict[int, int] = field(default_factory=dict)
    overrides: dict[int, int] = field(default_factory=dict)
    orders: pa.Table | list[tuple[Any, ...]] = field(default_factory=list)
    order_items: pa.Table | list[tuple[Any, ...]] = field(default_factory=list)
    products: pa.Table | list[tuple[Any, ...]] = field(default_factory=list)
    """Orders, order items, products (one row per product): tables or rows."""
    streams: pa.Table | None = None
    """Rows of ``session_streams`` the chunk changed (stream_key, last_ts, session_id,
    seen_ms, log_partition): the device streams whose sessions may go on."""
    streams_pruned: list[int] = field(default_factory=list)
    """Streams the processor forgot (no later event can go on with their session)."""
    epoch: int | None = None
    """The :attr:`Warehouse.epoch` the processor's state was loaded at (None: not
    checked): a chunk built before unpublished rows were dropped is refused."""
    mirror: bool = False
    """``new_ids`` and ``overrides`` are the shared store's rows for the chunk's keys
    (:mod:`aap.store.identities`), some of them recorded here already: those are not
    folded again."""
    erasures_seen: int | None = None
    """The last shared erasure the processor had read when it built the chunk (its
    suppression covers those; :mod:`aap.store.erasures`); ``None``: not read."""
    rectifications_seen: int | None = None
    """The last shared rectification the processor had read when it built the chunk
    (those go before the chunk's traits: :mod:`aap.store.rectifications`); ``None``: not
    read."""


_PERSONS = pa.schema([("person_id", pa.int64()), ("first_seen", pa.timestamp("us")),
                      ("last_seen", pa.timestamp("us")), ("identified", pa.bool_()),
                      ("traits", pa.string())])
ORDERS = pa.schema([("order_id", pa.string()), ("message_id", pa.string()),
                     ("source", pa.string()), ("person_id", pa.int64()),
                     ("session_id", pa.string()), ("timestamp", pa.timestamp("us")),
                     ("revenue", pa.float64()), ("currency", pa.string()),
                     ("items", pa.int32())])
ORDER_ITEMS = pa.schema([("order_id", pa.string()), ("message_id", pa.string()),
                    ("product_id", pa.string()), ("name", pa.string()),
                    ("category", pa.string()), ("price", pa.float64()),
                    ("quantity", pa.float64())])
PRODUCTS = pa.schema([("product_id", pa.string()), ("name", pa.string()),
                       ("category", pa.string()), ("price", pa.float64()),
                       ("first_seen", pa.timestamp("us")), ("last_seen", pa.timestamp("us"))])


def rows_table(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    """Rows (tuples in the schema's column order) as a table of that schema."""
    cols: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)] if rows else [
        [] for _ in schema]
    return pa.table([pa.array(c, type=f.type) for c, f in zip(cols, schema, strict=True)],
                    schema=schema)


def _as_table(rows: pa.Table | list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    return rows.cast(schema) if isinstance(rows, pa.Table) else rows_table(rows, schema)


def _write_events(con: duckdb.DuckDBPyConnection, events: pa.Table) -> None:
    if events.num_rows:
        assert events.schema.equals(EVENT_ARROW_SCHEMA), "events table schema drifted"
        con.register("chunk_events", events)
        con.execute("INSERT INTO events_raw BY NAME SELECT * FROM chunk_events")
        con.unregister("chunk_events")


def _write_persons(con: duckdb.DuckDBPyConnection, persons: pa.Table) -> None:
    if persons.num_rows:
        con.register("chunk_persons", persons)
        con.execute("""
            INSERT INTO persons SELECT * FROM chunk_persons ON CONFLICT (person_id) DO UPDATE SET
                first_seen = least(persons.first_seen, excluded.first_seen),
                last_seen = greatest(persons.last_seen, excluded.last_seen),
                identified = persons.identified OR excluded.identified,
                traits = CASE WHEN excluded.traits IS NULL THEN persons.traits
                              WHEN persons.traits IS NULL THEN excluded.traits
                              ELSE json_merge_patch(persons.traits, excluded.traits) END
        """)
        con.unregister("chunk_persons")


def _write_ids(con: duckdb.DuckDBPyConnection, new_ids: dict[int, int]) -> None:
    if new_ids:
        con.register("chunk_ids", pa.table({
            "id_key": pa.array(list(new_ids), pa.int64()),
            "person_id": pa.array(list(new_ids.values()), pa.int64())}))
        con.execute("INSERT INTO person_ids SELECT * FROM chunk_ids ON CONFLICT (id_key)"
                    " DO UPDATE SET person_id = excluded.person_id")
        con.unregister("chunk_ids")


def _unrecorded(con: duckdb.DuckDBPyConnection, overrides: dict[int, int]) -> dict[int, int]:
    """The overrides that ``person_overrides`` does not hold yet."""
    if not overrides:
        return overrides
    con.register("chunk_overrides", pa.table({
        "old": pa.array(list(overrides), pa.int64()),
        "new": pa.array(list(overrides.values()), pa.int64())}))
    have = set(con.execute("SELECT c.old FROM chunk_overrides c JOIN person_overrides o"
                           " ON o.old_person_id = c.old AND o.person_id = c.new").fetchall())
    con.unregister("chunk_overrides")
    return {old: new for old, new in overrides.items() if (old,) not in have}


def _write_products(con: duckdb.DuckDBPyConnection, products: pa.Table) -> None:
    con.register("chunk_products", products)
    con.execute("""
        INSERT INTO products SELECT * FROM chunk_products
        ON CONFLICT (product_id) DO UPDATE SET
            name = coalesce(excluded.name, products.name),
            category = coalesce(excluded.category, products.category),
            price = coalesce(excluded.price, products.price),
            first_seen = least(products.first_seen, excluded.first_seen),
            last_seen = greatest(products.last_seen, excluded.last_seen)
    """)
    con.unregister("chunk_products")


def _one_select(sql: str) -> bool:
    """Whether ``sql`` is exactly one SELECT (which cannot change a cursor's state)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error:
        return False  # the snapshot's execute reports it
    return len(statements) == 1 and statements[0].type == duckdb.StatementType.SELECT


def _write_streams(con: duckdb.DuckDBPyConnection, rows: pa.Table | None,
                   pruned: list[int]) -> None:
    """The chunk's streams replace their rows, and the pruned ones go: one DELETE (a hash
    join over the table) and one INSERT. The table has no primary key: DuckDB's upsert
    through one cost 35 ms of CPU for 30,000 rows into 300,000 and 125 ms into 1,000,000,
    this 20 and 31 ms (measured for this change)."""
    gone = pa.array(pruned, pa.int64())
    if rows is not None and rows.num_rows:
        gone = pa.concat_arrays([gone, rows.column("stream_key").combine_chunks()])
    if len(gone):
        con.register("chunk_gone", pa.table({"k": gone}))
        con.execute("DELETE FROM session_streams WHERE stream_key IN (SELECT k FROM chunk_gone)")
        con.unregister("chunk_gone")
    if rows is not None and rows.num_rows:
        con.register("chunk_streams", rows)
        con.execute("INSERT INTO session_streams SELECT * FROM chunk_streams")
        con.unregister("chunk_streams")


def _unversioned(con: duckdb.DuckDBPyConnection) -> None:
    """Step 0 → 1, for stores made before schema versions: the analysts' views were
    persistent then (they are temporary now), and events did not carry their purposes."""
    for v in OLD_VIEWS:
        con.execute(f"DROP VIEW IF EXISTS {v}")
    unversioned_columns("events_raw", (("purposes", "VARCHAR[]"),))(con)


def _marked_in_place(con: duckdb.DuckDBPyConnection) -> None:
    """Step 2 → 3: publishing marks hot rows with their batch (``publish_batch``) instead of
    moving them to ``hot_publishing``; rows a stop left there move back, marked."""
    con.execute(f"ALTER TABLE events_raw ADD COLUMN {PUBLISH_BATCH} BIGINT")
    if duckdb_has(con, "hot_publishing"):
        con.execute(f"INSERT INTO events_raw BY NAME SELECT seq AS {PUBLISH_BATCH},"
                    " * EXCLUDE (seq) FROM hot_publishing")
        con.execute("DROP TABLE hot_publishing")


SCHEMA = Schema("events_raw", DDL + quarantine.DDL,
                steps=(_unversioned, sql_step(SESSION_STREAMS_DDL), _marked_in_place))
"""The warehouse's schema versions (:mod:`aap.store.migrations`)."""


class StaleChunk(RuntimeError):
    """The chunk was built on a state that was dropped since (:mod:`aap.store.handover`):
    the processor reloads its state and reads again."""


class CursorPool:
    """Idle cursors of one database, each with the analysts' views (:data:`VIEWS`)
    created once: they read whatever ``warm_events`` and ``cold_events`` are registered
    as when a query runs. Creating the views is most of the fixed cost of a query (~10 ms
    on an idle machine). Only cursors that ran queries to the end come back. A cursor may
    keep more views, made for a state its user describes by a plan (``plan``,
    ``keep_plan``: :func:`aap.query.snapshot._begin`)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, size: int = 8) -> None:
        self.con = con
        self.size = size
        self.idle: list[duckdb.DuckDBPyConnection] = []
        self.plans: dict[int, object] = {}
        """``id(cursor)`` → the plan of the views it keeps (its own, while it lives)."""
        self.lock = threading.Lock()

    def take(self) -> duckdb.DuckDBPyConnection:
        with self.lock:
            if self.idle:
                return self.idle.pop()
        cur = self.con.cursor()
        empty = EVENT_ARROW_SCHEMA.empty_table()
        cur.register("warm_events", empty)
        cur.register("cold_events", empty)
        cur.execute(VIEWS)
        return cur

    def plan(self, cur: duckdb.DuckDBPyConnection) -> object:
        with self.lock:
            return self.plans.get(id(cur))

    def keep_plan(self, cur: duckdb.DuckDBPyConnection, plan: object) -> None:
        with self.lock:
            self.plans[id(cur)] = plan

    def give_back(self, cur: duckdb.DuckDBPyConnection) -> None:
        with self.lock:
            if len(self.idle) < self.size:
                self.idle.append(cur)
                return
        self.discard(cur)

    def discard(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Close a taken cursor for good."""
        with self.lock:
            self.plans.pop(id(cur), None)
        cur.close()

    def clear(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
            self.plans.clear()
        for cur in idle:
            cur.close()


class SharedFlagsView(Protocol):
    """The shared record of the persons' flags that a warehouse's ``person_flags``
    mirrors (:class:`aap.store.flags.FlagsMirror`)."""

    def refresh(self) -> None:
        """``person_flags`` brought up to date with the record."""
        ...

    def set_flag(self, persons: Iterable[int], flag: str) -> int: ...

    def clear_flag(self, persons: Iterable[int], flag: str) -> int: ...

    def erase(self, persons: Iterable[int]) -> int: ...

    def persons_of(self, keys: Iterable[int]) -> set[int]:
        """The persons of these keyed ids in the shared identities."""
        ...


class ErasuresView(Protocol):
    """The shared record of erasures this warehouse applies to its hot rows
    (:class:`aap.store.erasures.ErasureMirror`)."""

    applied: int

    def refresh(self) -> int:
        """The record read since the last time (its ids suppressed); the last number."""
        ...

    def record(self, persons: set[int], keys: set[int]) -> dict[str, int]:
        """An erasure run here, recorded for every writer and applied here."""
        ...

    def apply(self) -> dict[int, dict[str, int]]:
        """With the write lock held: the erasures not applied yet reach the hot rows."""
        ...

    def unchanged(self, tx: Tx) -> bool:
        """In the shared list's write transaction: no erasure came after the last applied."""
        ...

    def check_lost(self) -> None:
        """Raises while erasures left the record before they were applied here."""
        ...

    def in_chunk(self, cur: duckdb.DuckDBPyConnection, seen: int) -> None: ...


class RectificationsView(Protocol):
    """The shared record of rectifications this warehouse applies to its ``persons``
    (:class:`aap.store.rectifications.RectificationsMirror`)."""

    def refresh(self) -> int:
        """The record read since the last time; the last number."""
        ...

    def apply(self) -> int:
        """With the write lock held: the rectifications not applied yet reach
        ``persons`` and this writer's published rows."""
        ...

    def rectify(self, persons: set[int], traits: dict[str, Any]) -> int:
        """A rectification run here, recorded for every writer and applied here."""
        ...

    def erase(self, persons: Iterable[int]) -> int: ...

    def unapplied(self, seen: int) -> bool:
        """Whether a chunk that read the record up to ``seen`` has some to apply."""
        ...

    def before_chunk(self, cur: duckdb.DuckDBPyConnection, seen: int) -> int: ...

    def after_chunk(self, cur: duckdb.DuckDBPyConnection, seen: int) -> None: ...

    def committed(self, upto: int, seen: int) -> None: ...


class Warehouse:
    def __init__(self, directory: Path, *, tiers: TierStore | None = None,
                 memory_limit: str = "1GB", threads: int = 2,
                 shared_list: MetaDB | None = None) -> None:
        """``shared_list``: the list of live tier files lives on this shared-state
        database (publishing on, :mod:`aap.store.publish`) instead of in DuckDB."""
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / HOT_DB
        self.tiers = tiers or TierStore(TierConfig(str(directory / "tiers")))
        self.con = duckdb.connect(str(self.path), config={
            "memory_limit": memory_limit, "threads": threads,
            # DuckDB checkpoints (compresses the WAL into the file) whenever the WAL passes
            # this size, and each checkpoint compresses the last, partly filled row group
            # again: at the default 16 MB that is most of a chunk's write. 64 MB keeps the
            # WAL replay at start-up short.
            "checkpoint_threshold": "64MB",
        })
        migrate_duckdb(self.con, SCHEMA)
        self.write_lock = WriteLock()
        """One writer at a time; the publisher lets chunks in while it lists a batch
        (:mod:`aap.store.writelock`)."""
        self.files: FileList = (SharedList(shared_list, self.con) if shared_list is not None
                                else DuckList(self.con))
        """The list of live tier files (:mod:`aap.store.filelist`)."""
        self.settle: Callable[[], object] = lambda: None
        """With the write lock held: finish a batch left half published (set by the
        publisher, :mod:`aap.store.publish`), so that a rewrite finds every row either
        hot or listed."""
        self._readers = CursorPool(self.con)
        self.flags: SharedFlagsView | None = None
        """With ``AAP_META_URL``: ``person_flags`` is a mirror of the shared flags
        (:mod:`aap.store.flags`), which are written through this; ``None``: the table is
        the record itself."""
        self.handover = False
        """Log positions and open streams are committed with the published files, so log
        partitions can move between processors (:mod:`aap.store.handover`)."""
        self.epoch = 0
        """Counts the times the unpublished rows were dropped (:func:`aap.store.handover.drop`)
        or partitions taken from the shared positions."""
        self.erasures: ErasuresView | None = None
        """Publishing on: erasures run by any processor reach this warehouse's hot rows
        (:mod:`aap.store.erasures`); ``None``: an erasure reaches the rows of the
        warehouse it runs in (and every listed file)."""
        self.rectifications: RectificationsView | None = None
        """With ``AAP_META_URL``: rectifications run by any processor reach this
        warehouse's ``persons`` and published profiles (:mod:`aap.store.rectifications`);
        ``None``: a rectification reaches the warehouse it runs in."""
        self.published_only = False
        """A query node's reader warehouse (:mod:`aap.core.reader`): its events are the
        published files only, and persons, orders and products are not there (the
        insights that need them are refused, :mod:`aap.query.published`)."""

    def fresh_flags(self) -> None:
        """Before a query reads ``person_flags``: brought up to date with the shared
        flags when it mirrors them; nothing otherwise."""
        if self.flags is not None:
            self.flags.refresh()

    def close(self) -> None:
        self._readers.clear()
        self.con.close()
        if isinstance(self.files, SharedList):
            self.files.db.close()

    @contextmanager
    def snapshot(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor inside one read transaction, with every tier registered and the
        analysts' views defined: what it reads is one consistent state of the store."""
        with self.transaction() as cur:
            self.register_tiers(cur)
            cur.execute(VIEWS)
            yield cur

    def register_tiers(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Inside a transaction: the live warm and cold files as ``warm_events`` and
        ``cold_events`` on this cursor (with publishing on, the hot rows being published
        and not listed yet are read with the warm files)."""
        listing = self.files.snapshot(cur)
        published.define(cur, self, listing.tables)  # persons, orders… when publishing
        pending = cur.sql(listing.pending).to_arrow_table() if listing.pending else None
        for tier in ("warm", "cold"):
            cur.register(f"{tier}_events", self.tiers.dataset(
                [f.path for f in listing.files if f.tier == tier],
                pending if tier == "warm" else None))

    def query(self, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run the operator's SQL in a snapshot (in a transaction that commits: this is the
        raw warehouse, writes included). One SELECT runs on a pooled cursor whose views
        already exist, in a read transaction — a few ms less than a new cursor, for the
        status and visibility checks that ask often."""
        self.fresh_flags()
        if _one_select(sql):
            return self._select(sql, params or [])
        with self.snapshot() as cur:
            res = cur.execute(sql, params or [])
            cols = [d[0] for d in res.description or []]
            return cols, res.fetchall()

    def _select(self, sql: str, params: list[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        """One SELECT in a read transaction that rolls back: asked again (with the list of
        live files read anew) when the tier store's answer to one of its reads broke off,
        or a file it was given was gone (:func:`~aap.store.tiers.read_again`)."""
        return read_again(lambda: self._select_once(sql, params))

    def _select_once(self, sql: str, params: list[Any]
                     ) -> tuple[list[str], list[tuple[Any, ...]]]:
        cur = self._readers.take()
        try:
            cur.execute("BEGIN TRANSACTION")
            try:
                self.register_tiers(cur)
                res = cur.execute(sql, params)
                out = [d[0] for d in res.description or []], res.fetchall()
            finally:
                cur.execute("ROLLBACK")
        except BaseException:
            cur.close()  # failed or interrupted: not reused
            raise
        self._readers.give_back(cur)
        return out

    # -- state the processor resumes from --

    def get_state(self, name: str, default: int = 0) -> int:
        cur = self.con.cursor()  # the processor's thread and the publisher's both ask
        try:
            row = cur.execute("SELECT value FROM processor_state WHERE name = $name",
                              {"name": name}).fetchone()
        finally:
            cur.close()
        return int(row[0]) if row else default

    def set_state(self, name: str, value: int) -> None:
        with self.write_lock, self.transaction() as cur:
            cur.execute("INSERT INTO processor_state VALUES ($name, $value) ON CONFLICT (name)"
                        " DO UPDATE SET value = excluded.value", {"name": name, "value": value})

    def load_identities(self) -> tuple[dict[int, int], dict[int, int], set[int], int]:
        ids = dict(self.con.execute("SELECT id_key, person_id FROM person_ids").fetchall())
        overrides = dict(self.con.execute(
            "SELECT old_person_id, person_id FROM person_overrides").fetchall())
        identified = {r[0] for r in self.con.execute(
            "SELECT person_id FROM persons WHERE identified").fetchall()}
        return ids, overrides, identified, self.get_state(NEXT_PERSON, 1)

    def load_dedup_keys(self) -> np.ndarray:
        """Keys of every stored event, in every tier."""
        def read() -> dict[str, Any]:
            with self.snapshot() as cur:
                return cur.execute(f"SELECT {DEDUP_KEY_SQL} AS k FROM events_all"
                                   ).fetchnumpy()
        res = read_again(read)
        return np.asarray(res["k"], dtype=np.uint64)

    def load_streams(self) -> tuple[dict[int, tuple[int, str, int]], dict[int, int]]:
        """The open device streams the processor goes on with: stream key → (time of the
        latest event in µs, its session id, receipt of its last event in ms); and the
        log partition of those not in partition 0."""
        cur = self.con.cursor()
        try:
            rows = cur.execute("SELECT stream_key, epoch_us(last_ts), session_id, seen_ms,"
                               " log_partition FROM session_streams").fetchall()
        finally:
            cur.close()
        return ({int(k): (int(t), s, int(seen)) for k, t, s, seen, _ in rows},
                {int(k): int(p) for k, _, _, _, p in rows if p})

    # -- the processor's write --

    def write(self, chunk: Chunk) -> None:
        fixes, seen = self.rectifications, chunk.rectifications_seen
        # a chunk that applies rectifications notes which published batches still lack
        # them: it waits for the publisher to let go (applied only grows, so a chunk
        # with none to apply now has none when it gets in)
        alone = fixes is not None and seen is not None and fixes.unapplied(seen)
        with self.write_lock if alone else self.write_lock.chunk():
            if chunk.epoch is not None and chunk.epoch != self.epoch:
                raise StaleChunk("the processor's state was reset since the chunk was built")
            with self.transaction() as cur:
                # rectifications the chunk read go before its traits (those after, after)
                upto = (fixes.before_chunk(cur, seen)
                        if fixes is not None and seen is not None else 0)
                self._write(cur, chunk)
                if fixes is not None and seen is not None:
                    fixes.after_chunk(cur, seen)
                if self.erasures is not None and chunk.erasures_seen is not None:
                    self.erasures.in_chunk(cur, chunk.erasures_seen)
            if fixes is not None and seen is not None:
                fixes.committed(upto, seen)

    def _write(self, con: duckdb.DuckDBPyConnection, chunk: Chunk) -> None:
        _write_events(con, chunk.events)
        persons = _as_table(chunk.persons, _PERSONS)
        if self.files.shared:  # publishing: the keys this chunk changes
            published.note(con, {
                "persons": [*persons.column("person_id").to_pylist(), *chunk.overrides,
                            *chunk.overrides.values()],
                "orders": _as_table(chunk.orders, ORDERS).column("order_id").to_pylist()
                if len(chunk.orders) else [],
                "order_items": _as_table(chunk.order_items, ORDER_ITEMS).column("order_id"
                                                                              ).to_pylist()
                if len(chunk.order_items) else [],
                "products": _as_table(chunk.products, PRODUCTS).column("product_id").to_pylist()
                if len(chunk.products) else []})
        _write_persons(con, persons)
        _write_ids(con, chunk.new_ids)
        overrides = _unrecorded(con, chunk.overrides) if chunk.mirror else chunk.overrides
        for old, new in overrides.items():
            con.execute("INSERT INTO person_overrides VALUES ($old, $new) ON CONFLICT"
                        " (old_person_id) DO UPDATE SET person_id = excluded.person_id",
                        {"old": old, "new": new})
            self._fold_person(con, old, new)
        for rows, schema, table in ((chunk.orders, ORDERS, "orders"),
                                    (chunk.order_items, ORDER_ITEMS, "order_items")):
            if len(rows):
                con.register("chunk_rows", _as_table(rows, schema))
                con.execute(f"INSERT INTO {table} SELECT * FROM chunk_rows")
                con.unregister("chunk_rows")
        if len(chunk.products):
            _write_products(con, _as_table(chunk.products, PRODUCTS))
        if self.handover:
            handover.note_streams(con, chunk.streams, chunk.streams_pruned)
        _write_streams(con, chunk.streams, chunk.streams_pruned)
        pos = {0: chunk.position} if isinstance(chunk.position, int) else chunk.position
        rows = [(position_name(p), o) for p, o in sorted(pos.items())]
        rows.append((NEXT_PERSON, chunk.next_person))
        values = ", ".join(f"($n{i}, $v{i})" for i in range(len(rows)))
        con.execute(  # one statement (executemany costs ~7 ms a call here)
            f"INSERT INTO processor_state VALUES {values}"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            {k: v for i, (n, o) in enumerate(rows) for k, v in ((f"n{i}", n), (f"v{i}", o))})

    @staticmethod
    def _fold_person(con: duckdb.DuckDBPyConnection, old: int, new: int) -> None:
        """The merged person's profile joins the survivor's; its row goes; its flags
        (restricted, objected) go to the survivor too."""
        con.execute("""
            INSERT INTO persons
            SELECT $new, first_seen, last_seen, identified, traits FROM persons WHERE person_id = $old
            ON CONFLICT (person_id) DO UPDATE SET
                first_seen = least(persons.first_seen, excluded.first_seen),
                last_seen = greatest(persons.last_seen, excluded.last_seen),
                identified = persons.identified OR excluded.identified,
                traits = CASE WHEN excluded.traits IS NULL THEN persons.traits
                              WHEN persons.traits IS NULL THEN excluded.traits
                              ELSE json_merge_patch(excluded.traits, persons.traits) END
        """, {"new": new, "old": old})
        con.execute("DELETE FROM persons WHERE person_id = $old", {"old": old})
        # a restriction or an objection is the human's: it follows them into the merge
        con.execute("INSERT INTO person_flags SELECT $new, flag, set_at FROM person_flags"
                    " WHERE person_id = $old ON CONFLICT DO NOTHING", {"new": new, "old": old})

    def get_positions(self) -> dict[int, int]:
        """The log positions the processors committed with their rows, per partition."""
        cur = self.con.cursor()  # called from the log's rebalance callback too
        try:
            rows = cur.execute(
                "SELECT name, value FROM processor_state WHERE name = $p OR name LIKE $ps",
                {"p": POSITION, "ps": POSITION + ".%"}).fetchall()
        finally:
            cur.close()
        return {0 if n == POSITION else int(n[len(POSITION) + 1:]): int(v) for n, v in rows}

    def dead_letter(self, offset: int, events: int, previous_position: int,
                    partition: int = 0) -> None:
        """Set a log record aside: note it and move the position past it, atomically
        (``dead_letters`` holds the offset alone: on Kafka, within its partition)."""
        name = position_name(partition)
        with self.write_lock, self.transaction() as cur:
            row = cur.execute("SELECT value FROM processor_state WHERE name = $name",
                              {"name": name}).fetchone()
            if (int(row[0]) if row else 0) != previous_position:
                raise RuntimeError("the log position moved under the processor")
            cur.execute("INSERT INTO dead_letters VALUES ($offset, $events, now())"
                        " ON CONFLICT DO NOTHING", {"offset": offset, "events": events})
            cur.execute("INSERT INTO processor_state VALUES ($name, $offset) ON CONFLICT (name)"
                        " DO UPDATE SET value = excluded.value", {"name": name, "offset": offset})

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor in a transaction: committed when the block ends, rolled back if it raises."""
        cur = self.con.cursor()
        try:
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        finally:
            cur.close()

    def checkpoint(self, patience_s: float = 60.0) -> bool:
        """Fold the WAL into the database file now (after an erasure, so that no erased
        row waits in the WAL). DuckDB refuses while another write transaction is open
        (the publisher, tiering, the query cache), so this holds the write lock and tries
        again until ``patience_s`` has passed; ``False`` if it never could (DuckDB then
        checkpoints by itself at the next threshold or at close)."""
        deadline = time.monotonic() + patience_s
        pause = 0.01
        while True:
            try:
                with self.write_lock:
                    self.con.cursor().execute("CHECKPOINT")
                return True
            except duckdb.TransactionException:
                if time.monotonic() >= deadline:
                    return False
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def tier_stats(self) -> dict[str, tuple[int, int, int]]:
        """Per tier: files, rows, bytes."""
        out = {"hot": (0, int(self.con.cursor().execute(
            "SELECT count(*) FROM events_raw").fetchone()[0]), 0)}  # type: ignore[index]
        out.update(self.files.stats())
        return out

