"""The warehouse: one DuckDB database (the hot tier) owned by one process.

The processor writes a chunk of the log in one transaction — rows, persons, ids,
merges, orders and the log position they came from — so after a crash the warehouse
holds exactly the chunks that were committed, and processing resumes right after the
last of them. Queries in the same process read through their own cursors (DuckDB's
MVCC): they see whole chunks only and never block the writer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from aap.store.schema import DDL, EVENT_ARROW_SCHEMA

POSITION = "log_position"
NEXT_PERSON = "next_person"


@dataclass
class Chunk:
    """What one processed chunk of the log adds to the warehouse."""

    events: pa.Table
    position: int
    next_person: int
    persons: list[tuple[int, datetime, datetime, bool, str | None]] = field(default_factory=list)
    new_ids: dict[int, int] = field(default_factory=dict)
    overrides: dict[int, int] = field(default_factory=dict)
    orders: list[tuple[Any, ...]] = field(default_factory=list)
    order_items: list[tuple[Any, ...]] = field(default_factory=list)
    products: list[tuple[Any, ...]] = field(default_factory=list)


_PERSONS = pa.schema([("person_id", pa.int64()), ("first_seen", pa.timestamp("us")),
                      ("last_seen", pa.timestamp("us")), ("identified", pa.bool_()),
                      ("traits", pa.string())])
_ORDERS = pa.schema([("order_id", pa.string()), ("message_id", pa.string()),
                     ("source", pa.string()), ("person_id", pa.int64()),
                     ("session_id", pa.string()), ("timestamp", pa.timestamp("us")),
                     ("revenue", pa.float64()), ("currency", pa.string()),
                     ("items", pa.int32())])
_ITEMS = pa.schema([("order_id", pa.string()), ("message_id", pa.string()),
                    ("product_id", pa.string()), ("name", pa.string()),
                    ("category", pa.string()), ("price", pa.float64()),
                    ("quantity", pa.float64())])
_PRODUCTS = pa.schema([("product_id", pa.string()), ("name", pa.string()),
                       ("category", pa.string()), ("price", pa.float64()),
                       ("first_seen", pa.timestamp("us")), ("last_seen", pa.timestamp("us"))])


def _table(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    cols: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)] if rows else [
        [] for _ in schema]
    return pa.table([pa.array(c, type=f.type) for c, f in zip(cols, schema, strict=True)],
                    schema=schema)


class Warehouse:
    def __init__(self, directory: Path, *, memory_limit: str = "1GB", threads: int = 2) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "hot.duckdb"
        self.con = duckdb.connect(str(self.path), config={
            "memory_limit": memory_limit, "threads": threads,
        })
        self.con.execute(DDL)
        self._write_lock = threading.Lock()

    def close(self) -> None:
        self.con.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection for queries from another thread of this process."""
        return self.con.cursor()

    # -- state the processor resumes from --

    def get_state(self, name: str, default: int = 0) -> int:
        row = self.con.execute("SELECT value FROM processor_state WHERE name = ?",
                               [name]).fetchone()
        return int(row[0]) if row else default

    def load_identities(self) -> tuple[dict[int, int], dict[int, int], set[int], int]:
        ids = dict(self.con.execute("SELECT id_key, person_id FROM person_ids").fetchall())
        overrides = dict(self.con.execute(
            "SELECT old_person_id, person_id FROM person_overrides").fetchall())
        identified = {r[0] for r in self.con.execute(
            "SELECT person_id FROM persons WHERE identified").fetchall()}
        return ids, overrides, identified, self.get_state(NEXT_PERSON, 1)

    def load_dedup_keys(self) -> np.ndarray:
        res = self.con.execute(
            "SELECT md5_number_upper(source || chr(0) || message_id) AS k FROM events_raw"
        ).fetchnumpy()
        return np.asarray(res["k"], dtype=np.uint64)

    def load_sessions(self) -> list[tuple[int, datetime, str]]:
        """Per person: the time of their latest event and its session."""
        return [(int(p), t, s) for p, t, s in self.con.execute(
            "SELECT person_id, max(timestamp), arg_max(session_id, timestamp)"
            " FROM events GROUP BY person_id").fetchall()]

    # -- the processor's write --

    def write(self, chunk: Chunk) -> None:
        with self._write_lock:
            con = self.con
            con.execute("BEGIN TRANSACTION")
            try:
                self._write(con, chunk)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def _write(self, con: duckdb.DuckDBPyConnection, chunk: Chunk) -> None:
        events = chunk.events
        if events.num_rows:
            assert events.schema.equals(EVENT_ARROW_SCHEMA), "events table schema drifted"
            con.register("chunk_events", events)
            con.execute("INSERT INTO events_raw SELECT * FROM chunk_events")
            con.unregister("chunk_events")
        if chunk.persons:
            con.register("chunk_persons", _table(chunk.persons, _PERSONS))
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
        if chunk.new_ids:
            con.register("chunk_ids", pa.table({
                "id_key": pa.array(list(chunk.new_ids), pa.int64()),
                "person_id": pa.array(list(chunk.new_ids.values()), pa.int64())}))
            con.execute("INSERT INTO person_ids SELECT * FROM chunk_ids ON CONFLICT (id_key)"
                        " DO UPDATE SET person_id = excluded.person_id")
            con.unregister("chunk_ids")
        for old, new in chunk.overrides.items():
            con.execute("INSERT INTO person_overrides VALUES (?, ?) ON CONFLICT (old_person_id)"
                        " DO UPDATE SET person_id = excluded.person_id", [old, new])
            self._fold_person(con, old, new)
        for rows, schema, table in ((chunk.orders, _ORDERS, "orders"),
                                    (chunk.order_items, _ITEMS, "order_items")):
            if rows:
                con.register("chunk_rows", _table(rows, schema))
                con.execute(f"INSERT INTO {table} SELECT * FROM chunk_rows")
                con.unregister("chunk_rows")
        if chunk.products:
            con.register("chunk_products", _table(chunk.products, _PRODUCTS))
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
        con.executemany(
            "INSERT INTO processor_state VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
            " SET value = excluded.value",
            [(POSITION, chunk.position), (NEXT_PERSON, chunk.next_person)])

    @staticmethod
    def _fold_person(con: duckdb.DuckDBPyConnection, old: int, new: int) -> None:
        """The merged person's profile joins the survivor's; its row goes."""
        con.execute("""
            INSERT INTO persons
            SELECT ?, first_seen, last_seen, identified, traits FROM persons WHERE person_id = ?
            ON CONFLICT (person_id) DO UPDATE SET
                first_seen = least(persons.first_seen, excluded.first_seen),
                last_seen = greatest(persons.last_seen, excluded.last_seen),
                identified = persons.identified OR excluded.identified,
                traits = CASE WHEN excluded.traits IS NULL THEN persons.traits
                              WHEN persons.traits IS NULL THEN excluded.traits
                              ELSE json_merge_patch(excluded.traits, persons.traits) END
        """, [new, old])
        con.execute("DELETE FROM persons WHERE person_id = ?", [old])
