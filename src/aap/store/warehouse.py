"""The warehouse: one DuckDB database (the hot tier) owned by one process.

The processor writes a chunk of the log in one transaction — rows, persons, ids,
merges, orders and the log position they came from — so after a crash the warehouse
holds exactly the chunks that were committed, and processing resumes right after the
last of them. Queries in the same process read through their own cursors (DuckDB's
MVCC): they see whole chunks only and never block the writer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aap.datadir import HOT_DB
from aap.store import quarantine
from aap.store.schema import DDL, DEDUP_KEY_SQL, EVENT_ARROW_SCHEMA, OLD_VIEWS, VIEWS
from aap.store.tiers import TierConfig, TierStore

POSITION = "log_position"
NEXT_PERSON = "next_person"


@dataclass
class Chunk:
    """What one processed chunk of the log adds to the warehouse."""

    events: pa.Table
    position: int
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


def _one_select(sql: str) -> bool:
    """Whether ``sql`` is exactly one SELECT (which cannot change a cursor's state)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error:
        return False  # the snapshot's execute reports it
    return len(statements) == 1 and statements[0].type == duckdb.StatementType.SELECT


class CursorPool:
    """Idle cursors of one database, each with the analysts' views (:data:`VIEWS`)
    created once: they read whatever ``warm_events`` and ``cold_events`` are registered
    as when a query runs. Creating the views is most of the fixed cost of a query (~10 ms
    on an idle machine). Only cursors that ran queries to the end come back."""

    def __init__(self, con: duckdb.DuckDBPyConnection, size: int = 8) -> None:
        self.con = con
        self.size = size
        self.idle: list[duckdb.DuckDBPyConnection] = []
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

    def give_back(self, cur: duckdb.DuckDBPyConnection) -> None:
        with self.lock:
            if len(self.idle) < self.size:
                self.idle.append(cur)
                return
        cur.close()

    def clear(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for cur in idle:
            cur.close()


class Warehouse:
    def __init__(self, directory: Path, *, tiers: TierStore | None = None,
                 memory_limit: str = "1GB", threads: int = 2) -> None:
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
        for v in OLD_VIEWS:
            self.con.execute(f"DROP VIEW IF EXISTS {v}")
        self.con.execute(DDL)
        self.con.execute(quarantine.DDL)
        cols = {r[0] for r in self.con.execute("DESCRIBE events_raw").fetchall()}
        if "purposes" not in cols:  # stores made before events carried their purposes
            self.con.execute("ALTER TABLE events_raw ADD COLUMN purposes VARCHAR[]")
        self._write_lock = threading.Lock()
        self._readers = CursorPool(self.con)

    def close(self) -> None:
        self._readers.clear()
        self.con.close()

    @contextmanager
    def snapshot(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor inside one read transaction, with every tier registered and the
        analysts' views defined: what it reads is one consistent state of the store."""
        with self._transaction() as cur:
            self.register_tiers(cur)
            cur.execute(VIEWS)
            yield cur

    def register_tiers(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Inside a transaction: the live warm and cold files as ``warm_events`` and
        ``cold_events`` on this cursor."""
        files = cur.execute("SELECT tier, path FROM tier_files").fetchall()
        for tier in ("warm", "cold"):
            cur.register(f"{tier}_events", self.tiers.dataset([p for t, p in files if t == tier]))

    def query(self, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run the operator's SQL in a snapshot (in a transaction that commits: this is the
        raw warehouse, writes included). One SELECT runs on a pooled cursor whose views
        already exist, in a read transaction — a few ms less than a new cursor, for the
        status and visibility checks that ask often."""
        if _one_select(sql):
            return self._select(sql, params or [])
        with self.snapshot() as cur:
            res = cur.execute(sql, params or [])
            cols = [d[0] for d in res.description or []]
            return cols, res.fetchall()

    def _select(self, sql: str, params: list[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
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
        row = self.con.execute("SELECT value FROM processor_state WHERE name = ?",
                               [name]).fetchone()
        return int(row[0]) if row else default

    def set_state(self, name: str, value: int) -> None:
        with self._write_lock, self._transaction() as cur:
            cur.execute("INSERT INTO processor_state VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
                        " SET value = excluded.value", [name, value])

    def load_identities(self) -> tuple[dict[int, int], dict[int, int], set[int], int]:
        ids = dict(self.con.execute("SELECT id_key, person_id FROM person_ids").fetchall())
        overrides = dict(self.con.execute(
            "SELECT old_person_id, person_id FROM person_overrides").fetchall())
        identified = {r[0] for r in self.con.execute(
            "SELECT person_id FROM persons WHERE identified").fetchall()}
        return ids, overrides, identified, self.get_state(NEXT_PERSON, 1)

    def load_dedup_keys(self) -> np.ndarray:
        """Keys of every stored event, in every tier."""
        with self.snapshot() as cur:
            res = cur.execute(f"SELECT {DEDUP_KEY_SQL} AS k FROM events_all").fetchnumpy()
        return np.asarray(res["k"], dtype=np.uint64)

    def load_sessions(self) -> list[tuple[int, datetime, str]]:
        """Per person: the time of their latest event and its session."""
        with self.snapshot() as cur:
            rows = cur.execute(
                "SELECT person_id, max(timestamp), arg_max(session_id, timestamp)"
                " FROM events GROUP BY person_id").fetchall()
        return [(int(p), t, s) for p, t, s in rows]

    # -- the processor's write --

    def write(self, chunk: Chunk) -> None:
        with self._write_lock, self._transaction() as cur:
            self._write(cur, chunk)

    def _write(self, con: duckdb.DuckDBPyConnection, chunk: Chunk) -> None:
        events = chunk.events
        if events.num_rows:
            assert events.schema.equals(EVENT_ARROW_SCHEMA), "events table schema drifted"
            con.register("chunk_events", events)
            con.execute("INSERT INTO events_raw SELECT * FROM chunk_events")
            con.unregister("chunk_events")
        persons = _as_table(chunk.persons, _PERSONS)
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
        for rows, schema, table in ((chunk.orders, ORDERS, "orders"),
                                    (chunk.order_items, ORDER_ITEMS, "order_items")):
            if len(rows):
                con.register("chunk_rows", _as_table(rows, schema))
                con.execute(f"INSERT INTO {table} SELECT * FROM chunk_rows")
                con.unregister("chunk_rows")
        if len(chunk.products):
            con.register("chunk_products", _as_table(chunk.products, PRODUCTS))
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
        con.execute(  # one statement (executemany costs ~7 ms a call here)
            "INSERT INTO processor_state VALUES (?, ?), (?, ?) ON CONFLICT (name) DO UPDATE"
            " SET value = excluded.value",
            [POSITION, chunk.position, NEXT_PERSON, chunk.next_person])

    @staticmethod
    def _fold_person(con: duckdb.DuckDBPyConnection, old: int, new: int) -> None:
        """The merged person's profile joins the survivor's; its row goes; its flags
        (restricted, objected) go to the survivor too."""
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
        # a restriction or an objection is the human's: it follows them into the merge
        con.execute("INSERT INTO person_flags SELECT ?, flag, set_at FROM person_flags"
                    " WHERE person_id = ? ON CONFLICT DO NOTHING", [new, old])

    def dead_letter(self, offset: int, events: int, previous_position: int) -> None:
        """Set a log record aside: note it and move the position past it, atomically."""
        with self._write_lock, self._transaction() as cur:
            row = cur.execute("SELECT value FROM processor_state WHERE name = ?",
                              [POSITION]).fetchone()
            if (int(row[0]) if row else 0) != previous_position:
                raise RuntimeError("the log position moved under the processor")
            cur.execute("INSERT INTO dead_letters VALUES (?, ?, now()) ON CONFLICT DO NOTHING",
                        [offset, events])
            cur.execute("INSERT INTO processor_state VALUES (?, ?) ON CONFLICT (name)"
                        " DO UPDATE SET value = excluded.value", [POSITION, offset])

    # -- tiering --

    def hot_days(self) -> list[date]:
        """The days of the hot rows (rows out of bounds are not a day: see
        :meth:`quarantine_hot`)."""
        return [r[0] for r in self.con.cursor().execute(
            "SELECT DISTINCT CAST(timestamp AS DATE) FROM events_raw"
            f" WHERE NOT {quarantine.bad_time_sql()} ORDER BY 1",
            list(quarantine.bounds())).fetchall()]

    def quarantine_hot(self, job: str) -> int:
        """Move hot rows whose time is out of bounds to ``quarantined_events``."""
        with self._write_lock, self._transaction() as cur:
            n = quarantine.hot(cur, job)
        quarantine.report(job, quarantine.BAD_TIME, n, "the hot table")
        return n

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
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

    @staticmethod
    def _retire(cur: duckdb.DuckDBPyConnection, paths: list[str], grace: timedelta) -> None:
        """Take files off the live list; they leave the disk after ``grace``."""
        for p in paths:
            cur.execute("DELETE FROM tier_files WHERE path = ?", [p])
            cur.execute("INSERT INTO tier_trash VALUES (?, now() + ?)", [p, grace])

    @contextmanager
    def _new_file(self, table: pa.Table, directory: str, *, cold: bool
                  ) -> Iterator[tuple[str, int]]:
        """Write ``table`` as a new tier file; if the block that records it fails, the
        file goes again."""
        path, size = self.tiers.write(table, directory, cold=cold)
        try:
            yield path, size
        except BaseException:
            self.tiers.delete(path)
            raise

    def move_day_to_warm(self, day: date) -> int:
        """Write the hot rows of ``day`` to a warm file and delete them from the hot table
        in the same transaction as the file joins the list. Returns rows moved."""
        where = "timestamp >= ? AND timestamp < ?"
        bounds = [day, day + timedelta(days=1)]
        with self._transaction() as cur:
            table: pa.Table = cur.sql(
                f"SELECT e.* REPLACE (coalesce(o.person_id, e.person_id) AS person_id)"
                f" FROM events_raw e LEFT JOIN person_overrides o ON o.old_person_id = e.person_id"
                f" WHERE {where} ORDER BY event, person_id, timestamp", params=bounds
            ).to_arrow_table()
            if table.num_rows == 0:
                return 0
            table = table.cast(EVENT_ARROW_SCHEMA)
            with self._new_file(table, f"day={day.isoformat()}", cold=False) as (path, size):
                _add_file(cur, path, "warm", day.isoformat(), table.num_rows, size)
                deleted = cur.execute(f"DELETE FROM events_raw WHERE {where}", bounds).fetchone()
                if deleted is None or deleted[0] != table.num_rows:
                    raise RuntimeError("hot rows changed while the day was being moved")
        return table.num_rows

    def warm_months(self) -> list[tuple[str, list[str]]]:
        rows = self.con.cursor().execute(
            "SELECT part, path FROM tier_files WHERE tier = 'warm' ORDER BY part").fetchall()
        out: dict[str, list[str]] = {}
        for part, path in rows:
            out.setdefault(part[:7], []).append(path)
        return sorted(out.items())

    def compact_to_cold(self, month: str, before: date, grace: timedelta) -> int:
        """Compact the warm files of ``month`` (days before ``before``) into one cold file."""
        with self._transaction() as cur:
            paths = [r[0] for r in cur.execute(
                "SELECT path FROM tier_files WHERE tier = 'warm' AND part LIKE ? AND part < ?",
                [month + "-%", before.isoformat()]).fetchall()]
            if not paths:
                return 0
            table, bad = quarantine.split(self.tiers.read(paths))
            table = table.sort_by(
                [("event", "ascending"), ("person_id", "ascending"), ("timestamp", "ascending")])
            if bad is not None:
                quarantine.keep(cur, bad, "tiering")
            if table.num_rows:
                with self._new_file(table, f"month={month}", cold=True) as (path, size):
                    _add_file(cur, path, "cold", month, table.num_rows, size)
                    self._retire(cur, paths, grace)
            else:
                self._retire(cur, paths, grace)
        if bad is not None:
            quarantine.report("tiering", quarantine.BAD_TIME, bad.num_rows, f"warm month {month}")
        return table.num_rows

    def drop_cold_before(self, month: str, grace: timedelta) -> int:
        """Retention of the cold tier: archives of months before ``month`` go."""
        with self._transaction() as cur:
            rows = cur.execute("SELECT path, rows FROM tier_files WHERE tier = 'cold' AND part < ?",
                               [month]).fetchall()
            self._retire(cur, [r[0] for r in rows], grace)
        return sum(int(r[1]) for r in rows)

    def empty_trash(self) -> int:
        with self._transaction() as cur:
            due = [r[0] for r in cur.execute(
                "SELECT path FROM tier_trash WHERE delete_after <= now()").fetchall()]
            for p in due:
                self.tiers.delete(p)
                cur.execute("DELETE FROM tier_trash WHERE path = ?", [p])
        return len(due)

    # -- erasure --

    def person_closure(self, id_keys: list[int]) -> tuple[set[int], set[int]]:
        """The persons these ids belong to, with every person merged into them, and all
        the id keys of those persons."""
        cur = self.con.cursor()
        if not id_keys:
            return set(), set()
        marks = ",".join("?" * len(id_keys))
        found = {int(r[0]) for r in cur.execute(
            f"SELECT coalesce(o.person_id, i.person_id) FROM person_ids i LEFT JOIN"
            f" person_overrides o ON o.old_person_id = i.person_id WHERE i.id_key IN ({marks})",
            id_keys).fetchall()}
        if not found:
            return set(), set(id_keys)
        marks = ",".join("?" * len(found))
        persons = found | {int(r[0]) for r in cur.execute(
            f"SELECT old_person_id FROM person_overrides WHERE person_id IN ({marks})",
            list(found)).fetchall()}
        marks = ",".join("?" * len(persons))
        keys = set(id_keys) | {int(r[0]) for r in cur.execute(
            f"SELECT id_key FROM person_ids WHERE person_id IN ({marks})", list(persons)
        ).fetchall()}
        return persons, keys

    def flag_persons(self, persons: set[int], flag: str) -> int:
        """Mark persons ``restricted`` (Art. 18: kept, left out of every query) or
        ``objected`` (Art. 21: left out of profiling)."""
        with self._write_lock, self._transaction() as cur:
            for p in sorted(persons):
                cur.execute("INSERT INTO person_flags VALUES (?, ?, now()) ON CONFLICT DO NOTHING",
                            [p, flag])
        return len(persons)

    def unflag_persons(self, persons: set[int], flag: str) -> int:
        """Lift a restriction or withdraw an objection; how many flags were removed."""
        if not persons:
            return 0
        ids = sorted(persons)
        with self._write_lock, self._transaction() as cur:
            row = cur.execute(f"DELETE FROM person_flags WHERE flag = ? AND person_id IN"
                              f" ({','.join('?' * len(ids))})", [flag, *ids]).fetchone()
        return int(row[0]) if row else 0

    def is_flagged(self, persons: set[int], flag: str) -> bool:
        if not persons:
            return False
        ids = sorted(persons)
        return self.con.cursor().execute(
            f"SELECT count(*) FROM person_flags WHERE flag = ? AND person_id IN"
            f" ({','.join('?' * len(ids))})", [flag, *ids]).fetchone()[0] > 0  # type: ignore[index]

    def rectify_traits(self, persons: set[int], traits: dict[str, Any]) -> int:
        """Merge corrected traits into the persons' profiles (``null`` removes a trait)."""
        if not persons:
            return 0
        ids = sorted(persons)
        with self._write_lock, self._transaction() as cur:
            row = cur.execute(
                f"UPDATE persons SET traits = json_merge_patch(coalesce(traits, '{{}}'), ?)"
                f" WHERE person_id IN ({','.join('?' * len(ids))})",
                [json.dumps(traits), *ids]).fetchone()
        return int(row[0]) if row else 0

    def erase_persons(self, persons: set[int]) -> dict[str, int]:
        """Physically remove the persons' rows from the hot tables and from every warm and
        cold file (rewritten without them; the old files are deleted at once). Returns
        what was removed where."""
        out = {"hot_events": 0, "warm_rows": 0, "warm_files_rewritten": 0, "cold_rows": 0,
               "cold_files_rewritten": 0, "persons": 0, "ids": 0, "merges": 0, "orders": 0,
               "order_items": 0, "query_cache_rows": 0, "flags": 0, "retired_files_deleted": 0}
        if not persons:
            return out
        ids = sorted(persons)
        marks = ",".join("?" * len(ids))
        value_set = pa.array(ids, pa.int64())

        def hot(count: Callable[[str, list[Any]], int]) -> None:
            out["hot_events"] = count(f"DELETE FROM events_raw WHERE person_id IN ({marks})", ids)
            out["quarantined_events"] = count(
                f"DELETE FROM quarantined_events WHERE person_id IN ({marks})", ids)
            # the query cache's copies of their warm and cold rows go in the same commit
            for table, key in (("query_cache", "query_cache_rows"),
                               ("query_cache_rollup", "query_cache_rollup_rows")):
                if count("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]):
                    out[key] = count(f"DELETE FROM {table} WHERE person_id IN ({marks})", ids)
            out["order_items"] = count(
                f"DELETE FROM order_items WHERE message_id IN (SELECT message_id FROM orders"
                f" WHERE person_id IN ({marks}))", ids)
            out["orders"] = count(f"DELETE FROM orders WHERE person_id IN ({marks})", ids)
            out["persons"] = count(f"DELETE FROM persons WHERE person_id IN ({marks})", ids)
            out["ids"] = count(f"DELETE FROM person_ids WHERE person_id IN ({marks})", ids)
            out["merges"] = count(f"DELETE FROM person_overrides WHERE old_person_id IN ({marks})"
                                  f" OR person_id IN ({marks})", ids + ids)
            out["flags"] = count(f"DELETE FROM person_flags WHERE person_id IN ({marks})", ids)

        def in_file(table: pa.Table, tier: str) -> tuple[pa.Table, int] | None:
            mask = pc.is_in(table.column("person_id"), value_set=value_set)
            hit = int(pc.sum(mask).as_py() or 0)
            return (table.filter(pc.invert(mask)), hit) if hit else None

        self._change(self._holds_persons(value_set), hot, in_file, out, job="erasure")
        out["retired_files_deleted"] = self._purge_trash(value_set)
        return out

    def erase_persons_in(self, persons: set[int], sources: list[str]) -> dict[str, int]:
        """Physically remove the persons' events and orders **of these sources** from the
        hot tables and from every warm and cold file (a self-service erasure scoped to one
        controller); their profile, ids and what other sources sent stay."""
        out = {"hot_events": 0, "warm_rows": 0, "warm_files_rewritten": 0, "cold_rows": 0,
               "cold_files_rewritten": 0, "orders": 0, "order_items": 0,
               "retired_files_deleted": 0}
        if not persons or not sources:
            return out
        ids = sorted(persons)
        cond = (f"person_id IN ({','.join('?' * len(ids))})"
                f" AND source IN ({','.join('?' * len(sources))})")
        args: list[Any] = [*ids, *sources]
        value_set = pa.array(ids, pa.int64())
        source_set = pa.array(sources, pa.string())

        def hot(count: Callable[[str, list[Any]], int]) -> None:
            out["hot_events"] = count(f"DELETE FROM events_raw WHERE {cond}", args)
            out["order_items"] = count(
                f"DELETE FROM order_items WHERE message_id IN (SELECT message_id FROM orders"
                f" WHERE {cond})", args)
            out["orders"] = count(f"DELETE FROM orders WHERE {cond}", args)
            out["quarantined_events"] = count(f"DELETE FROM quarantined_events WHERE {cond}",
                                              args)

        def in_file(table: pa.Table, tier: str) -> tuple[pa.Table, int] | None:
            mask = pc.and_(pc.is_in(table.column("person_id"), value_set=value_set),
                           pc.is_in(table.column("source"), value_set=source_set))
            hit = int(pc.sum(mask).as_py() or 0)
            return (table.filter(pc.invert(mask)), hit) if hit else None

        self._change(self._holds_persons(value_set), hot, in_file, out, job="erasure")
        out["retired_files_deleted"] = self._purge_trash(value_set)
        return out

    def identified(self, persons: set[int]) -> bool:
        """Whether any of these persons is identified (has had a userId)."""
        if not persons:
            return False
        ids = sorted(persons)
        return bool(self.con.cursor().execute(
            f"SELECT count(*) FROM persons WHERE identified AND person_id IN"
            f" ({','.join('?' * len(ids))})", ids).fetchone()[0])  # type: ignore[index]

    def sources_of(self, persons: set[int]) -> set[str]:
        """The sources the persons' events came from, in every tier."""
        if not persons:
            return set()
        ids = sorted(persons)
        with self.snapshot() as cur:
            return {r[0] for r in cur.execute(
                f"SELECT DISTINCT source FROM events_all WHERE person_id IN"
                f" ({','.join('?' * len(ids))})", ids).fetchall()}

    def _purge_trash(self, persons: pa.Array) -> int:
        """Files retired by tiering or retention stay on disk for a grace period (queries
        may still read them); those holding rows of ``persons`` go now: an erasure does
        not wait for the grace period."""
        with self._write_lock:
            paths = [r[0] for r in self.con.cursor().execute(
                "SELECT path FROM tier_trash").fetchall()]
            hits = []
            for path in paths:
                try:
                    people = self.tiers.read([path], ["person_id"]).column("person_id")
                except (OSError, pa.ArrowException):
                    continue  # already gone
                if pc.any(pc.is_in(people, value_set=persons)).as_py():
                    hits.append(path)
            for path in hits:
                self.tiers.delete(path)
                with self._transaction() as cur:
                    cur.execute("DELETE FROM tier_trash WHERE path = ?", [path])
        return len(hits)

    def strip_purpose(self, persons: set[int], purpose: str,
                      sources: list[str] | None = None, before_ms: int | None = None
                      ) -> dict[str, int]:
        """Take ``purpose`` off the persons' events in every tier (only the events of
        ``sources``, when given: a withdrawal is scoped to its controller; only those
        received before ``before_ms``, when given: what came after the withdrawal was
        admitted by the collector on a later statement); erase the events left with no
        purpose (Art. 17(1)(b)). Events stored before purposes existed (no purpose list)
        are left alone."""
        out = {"hot_changed": 0, "hot_erased": 0, "warm_rows": 0, "warm_files_rewritten": 0,
               "cold_rows": 0, "cold_files_rewritten": 0}
        if not persons or sources == []:
            return out
        ids = sorted(persons)
        marks = ",".join("?" * len(ids))
        mine = f"person_id IN ({marks}) AND list_contains(purposes, ?)"
        args: list[Any] = [*ids, purpose]
        if sources is not None:
            mine += f" AND source IN ({','.join('?' * len(sources))})"
            args += sources
        if before_ms is not None:
            mine += " AND epoch_ms(received_at) < ?"
            args.append(before_ms)

        def hot(count: Callable[[str, list[Any]], int]) -> None:
            out["hot_erased"] = count(f"DELETE FROM events_raw WHERE {mine} AND len(purposes) = 1",
                                      args)
            count(f"DELETE FROM quarantined_events WHERE {mine}", args)
            out["hot_changed"] = count(
                f"UPDATE events_raw SET purposes = list_filter(purposes, lambda x: x <> ?) WHERE {mine}",
                [purpose, *args])

        def in_file(table: pa.Table, tier: str) -> tuple[pa.Table, int] | None:
            con = duckdb.connect()
            try:
                con.register("t", table)
                hit = int(con.execute(f"SELECT count(*) FROM t WHERE {mine}", args
                                      ).fetchone()[0])  # type: ignore[index]
                if not hit:
                    return None
                kept = con.execute(
                    f"SELECT * REPLACE (CASE WHEN {mine} THEN list_filter(purposes, lambda x: x <> ?)"
                    f" ELSE purposes END AS purposes) FROM t WHERE NOT ({mine} AND len(purposes) = 1)",
                    [*args, purpose, *args]).to_arrow_table()
                assert kept is not None
                return kept.cast(EVENT_ARROW_SCHEMA), hit
            finally:
                con.close()

        self._change(self._holds_persons(pa.array(ids, pa.int64())), hot, in_file, out,
                     job="withdrawal")
        return out

    def _holds_persons(self, persons: pa.Array) -> Callable[[str, str, str], bool]:
        def holds(path: str, tier: str, part: str) -> bool:
            people = self.tiers.read([path], ["person_id"]).column("person_id")
            return bool(pc.any(pc.is_in(people, value_set=persons)).as_py())
        return holds

    def expire(self, cutoffs: dict[str, dict[str, datetime]], everything: datetime,
               forget: Callable[[list[int]], object] | None = None) -> dict[str, Any]:
        """Retention (see :mod:`aap.privacy.retention`): in each tier, take each purpose
        off the events older than its cutoff for that tier (``cutoffs[purpose][tier]``),
        erase the events left with no purpose (as a withdrawal does, Art. 17(1)(a)), and
        erase every event older than ``everything`` whatever its purposes, with the
        orders made from erased events. Only files that can hold such rows are read.
        ``forget`` is called with the keyed hashes of the ids of persons left with no
        event (the keystore drops what it keeps of them)."""
        out: dict[str, Any] = {"hot_changed": 0, "hot_erased": 0, "warm_rows": 0,
                               "warm_files_rewritten": 0, "cold_rows": 0,
                               "cold_files_rewritten": 0, "orders": 0}
        erased_ids: list[str] = []
        erased_persons: set[int] = set()
        lock = threading.Lock()

        def expr(tier: str) -> tuple[str, str, list[Any]]:
            """(new purposes, erase condition, their parameters) for rows of ``tier``."""
            terms, params = [], []
            for purpose, by_tier in sorted(cutoffs.items()):
                terms.append("(x = ? AND timestamp < ?)")
                params += [purpose, by_tier[tier]]
            keep = f"list_filter(purposes, lambda x: NOT ({' OR '.join(terms)}))" if terms \
                else "purposes"
            gone = (f"coalesce(timestamp < ? OR (coalesce(len(purposes), 0) > 0"
                    f" AND len({keep}) = 0), false)")
            return keep, gone, params

        def oldest_cutoff(tier: str) -> datetime:
            return max([everything, *(c[tier] for c in cutoffs.values())])

        def touches(path: str, tier: str, part: str) -> bool:
            limit = oldest_cutoff(tier)
            start = date.fromisoformat(part if tier == "warm" else part + "-01")
            if datetime.combine(start, datetime.min.time()) >= limit:
                return False  # the partition starts after every cutoff
            ts = self.tiers.read([path], ["timestamp"]).column("timestamp")
            first = pc.min(ts.cast(pa.timestamp("us")))
            return bool(first.is_valid and pc.less(
                first, pa.scalar(limit, pa.timestamp("us"))).as_py())

        def in_file(table: pa.Table, tier: str) -> tuple[pa.Table, int] | None:
            keep, gone, params = expr(tier)
            con = duckdb.connect()
            try:
                con.register("t", table)
                changed = f"({gone} OR len(purposes) <> len({keep}))"
                erased = con.execute(f"SELECT message_id, person_id FROM t WHERE {gone}",
                                     [everything, *params]).fetchall()
                hit = int(con.execute(f"SELECT count(*) FROM t WHERE {changed}",
                                      [everything, *params, *params]).fetchone()[0])  # type: ignore[index]
                if not hit:
                    return None
                kept = con.execute(f"SELECT * REPLACE ({keep} AS purposes) FROM t WHERE NOT {gone}",
                                   [*params, everything, *params]).to_arrow_table()
                assert kept is not None
            finally:
                con.close()
            with lock:
                erased_ids.extend(r[0] for r in erased)
                erased_persons.update(int(r[1]) for r in erased if r[1] is not None)
            return kept.cast(EVENT_ARROW_SCHEMA), len(erased)

        # Only hot rows older than the latest cutoff can change: the first condition lets
        # DuckDB skip the row groups of recent days (the write lock is held meanwhile).
        hot_limit = oldest_cutoff("hot")

        def hot(count: Callable[[str, list[Any]], int]) -> None:
            keep, gone, params = expr("hot")
            p_gone = [hot_limit, everything, *params]
            doomed = (f"(SELECT message_id FROM events_raw WHERE timestamp < ? AND {gone})"
                      f" OR list_contains(?, message_id)")
            p_doomed = [*p_gone, erased_ids]
            count(f"DELETE FROM order_items WHERE message_id IN {doomed}", p_doomed)
            out["orders"] = count(f"DELETE FROM orders WHERE message_id IN {doomed}"
                                  f" OR timestamp < ?", [*p_doomed, everything])
            out["hot_erased"] = count(f"DELETE FROM events_raw WHERE timestamp < ? AND {gone}",
                                      p_gone)
            # set-aside rows are kept no longer than the shortest retention of any purpose,
            # counted from when they were set aside (their own time is what was wrong)
            strictest = max([everything, *(c for p in cutoffs.values() for c in p.values())])
            out["quarantined_expired"] = count(
                "DELETE FROM quarantined_events WHERE quarantined_at < ?", [strictest])
            if cutoffs:
                out["hot_changed"] = count(
                    f"UPDATE events_raw SET purposes = {keep}"
                    f" WHERE timestamp < ? AND len(purposes) <> len({keep})",
                    [*params, hot_limit, *params])

        _, gone, params = expr("hot")
        erased_persons.update(int(r[0]) for r in self.con.cursor().execute(
            f"SELECT DISTINCT person_id FROM events_raw WHERE timestamp < ? AND {gone}",
            [hot_limit, everything, *params]).fetchall())  # candidates only: checked again below
        self._change(touches, hot, in_file, out, job="retention")
        out["persons_erased"], keys = self._drop_persons_without_events(erased_persons)
        out["ids_forgotten"] = len(keys)
        if keys and forget is not None:
            forget(keys)
        return out

    def drop_orphans(self, forget: Callable[[list[int]], object] | None = None
                     ) -> dict[str, int]:
        """Profiles, ids, merges and flags of persons with no event left in any tier
        (after whole cold archives were dropped, say): a sweep over every stored event's
        person. ``forget`` as for :meth:`expire`."""
        with self.snapshot() as cur:
            rows = cur.execute("""
                WITH live AS (SELECT DISTINCT coalesce(o.person_id, e.person_id) AS p
                              FROM events_all e
                              LEFT JOIN person_overrides o ON o.old_person_id = e.person_id)
                SELECT person_id FROM persons WHERE person_id NOT IN (SELECT p FROM live)
            """).fetchall()
        n, keys = self._drop_persons_without_events({int(r[0]) for r in rows})
        if keys and forget is not None:
            forget(keys)
        return {"persons_erased": n, "ids_forgotten": len(keys)}

    def _drop_persons_without_events(self, persons: set[int]) -> tuple[int, list[int]]:
        """Profiles (traits, first and last seen) of persons none of whose events is left
        in any tier go too: they were made from expired events; and so do their ids,
        merges and flags. Returns how many profiles went, and the keyed hashes of the
        ids that went."""
        if not persons:
            return 0, []
        with self._write_lock, self._transaction() as cur:
            cur.register("cand", pa.table({"p": pa.array(sorted(persons), pa.int64())}))
            resolved = {int(r[0]) for r in cur.execute(
                "SELECT coalesce(o.person_id, c.p) FROM cand c"
                " LEFT JOIN person_overrides o ON o.old_person_id = c.p").fetchall()}
            cur.unregister("cand")
            group = resolved | {int(r[0]) for r in cur.execute(
                "SELECT old_person_id FROM person_overrides WHERE list_contains(?, person_id)",
                [sorted(resolved)]).fetchall()}
            live = {int(r[0]) for r in cur.execute(
                "SELECT DISTINCT person_id FROM events_raw WHERE list_contains(?, person_id)",
                [sorted(group)]).fetchall()}
            values = pa.array(sorted(group), pa.int64())
            for (path, part) in cur.execute("SELECT path, part FROM tier_files").fetchall():
                try:
                    col = self.tiers.read([path], ["person_id"]).column("person_id")
                except (OSError, pa.ArrowException) as exc:
                    # a file it cannot read may hold any of them: none is dropped this time
                    quarantine.report("retention", quarantine.FAILED, 1,
                                      f"{part} ({type(exc).__name__}): no profile dropped")
                    live.update(group)
                    continue
                hits = pc.filter(col, pc.is_in(col, value_set=values))
                live.update(int(x) for x in pc.unique(hits).to_pylist())
            over = dict(cur.execute("SELECT old_person_id, person_id FROM person_overrides"
                                    " WHERE list_contains(?, old_person_id)",
                                    [sorted(group)]).fetchall())
            live = {over.get(p, p) for p in live}
            dead = sorted(resolved - live)
            if not dead:
                return 0, []
            row = cur.execute("DELETE FROM persons WHERE list_contains(?, person_id)",
                              [dead]).fetchone()
            # Their ids (keyed hashes) and merges go too: a returning id is a new person.
            gone = set(dead)
            members = sorted(p for p in group if over.get(p, p) in gone)
            keys = [int(r[0]) for r in cur.execute(
                "SELECT id_key FROM person_ids WHERE list_contains(?, person_id)",
                [members]).fetchall()]
            cur.execute("DELETE FROM person_ids WHERE list_contains(?, person_id)", [members])
            cur.execute("DELETE FROM person_overrides WHERE list_contains(?, old_person_id)",
                        [members])
            cur.execute("DELETE FROM person_flags WHERE list_contains(?, person_id)", [members])
            # and their set-aside rows: no id would reach them any more
            cur.execute("DELETE FROM quarantined_events WHERE list_contains(?, person_id)",
                        [members])
        return (int(row[0]) if row else 0), keys

    def _change(self, touches: Callable[[str, str, str], bool],
                hot: Callable[[Callable[[str, list[Any]], int]], None],
                in_file: Callable[[pa.Table, str], tuple[pa.Table, int] | None],
                out: dict[str, Any], *, job: str) -> None:
        """In one transaction: ``hot`` changes the hot tables (given a function that runs a
        statement and returns its row count); each warm and cold file that ``in_file``
        changes is replaced by its new version (only files for which ``touches(path,
        tier, part)`` is true are read whole). Old files are deleted once committed.

        Rows of a file read whole whose time is out of bounds go to ``quarantined_events``
        in the same commit (:mod:`aap.store.quarantine`). For ``job="retention"`` a file
        that still fails is skipped for this run and reported; erasure and withdrawal
        fail whole instead (they must not report done with a file left as it was)."""
        old: list[str] = []
        new: list[str] = []
        set_aside: list[tuple[str, str, pa.Table]] = []
        skipped: list[str] = []

        def rewrite_one(path: str, tier: str, part: str
                        ) -> tuple[str, str, str, int, str | None, int, int] | None:
            try:
                touched = touches(path, tier, part)
            except (ValueError, OverflowError, pa.ArrowException):
                touched = True  # a value it cannot compare: read the file whole below
            if not touched:
                return None  # nothing to change in it: the file stays as it is
            table, bad = quarantine.split(self.tiers.read([path]))
            changed = in_file(table, tier)
            if changed is None and bad is None:
                return None
            kept, hit = changed if changed is not None else (table.cast(EVENT_ARROW_SCHEMA), 0)
            if bad is not None:
                set_aside.append((tier, part, bad))
            if not kept.num_rows:
                return path, tier, part, hit, None, 0, 0
            directory = f"day={part}" if tier == "warm" else f"month={part}"
            # archives are rewritten at a fast zstd level: still compressed, still cold
            new_path, size = self.tiers.write(kept, directory, cold=tier == "cold",
                                              level=6 if tier == "cold" else None)
            new.append(new_path)
            return path, tier, part, hit, new_path, kept.num_rows, size

        def rewrite(file: tuple[str, str, str]) -> tuple[str, str, str, int, str | None, int, int] | None:
            try:
                return rewrite_one(*file)
            except Exception as exc:
                if job != "retention":
                    raise
                skipped.append(f"{file[1]} {file[2]} ({type(exc).__name__})")
                return None

        try:
            with self._write_lock:
                files = self.con.cursor().execute(
                    "SELECT path, tier, part FROM tier_files ORDER BY path").fetchall()
                with ThreadPoolExecutor(2, thread_name_prefix="aap-rewrite") as pool:
                    done = [r for r in pool.map(rewrite, files) if r is not None]
                with self._transaction() as cur:
                    for _, _, bad in set_aside:
                        quarantine.keep(cur, bad, job)
                    def count(sql: str, params: list[Any]) -> int:
                        row = cur.execute(sql, params).fetchone()
                        return int(row[0]) if row else 0

                    hot(count)
                    if done:  # a tiering move in between would leave rows in two files
                        live = count("SELECT count(*) FROM tier_files WHERE list_contains(?, path)",
                                     [[r[0] for r in done]])
                        if live != len(done):
                            raise RuntimeError("tier files moved while they were being"
                                               " rewritten; nothing was changed, try again")
                    for path, tier, part, hit, new_path, rows, size in done:
                        out[f"{tier}_rows"] += hit
                        out[f"{tier}_files_rewritten"] += 1
                        old.append(path)
                        if new_path is not None:
                            _add_file(cur, new_path, tier, part, rows, size)
                        cur.execute("DELETE FROM tier_files WHERE path = ?", [path])
        except BaseException:
            for path in new:  # not committed: the rewritten files go again
                self.tiers.delete(path)
            raise
        for path in old:  # committed: the new versions are the live ones
            self.tiers.delete(path)
        for tier, part, bad in set_aside:
            quarantine.report(job, quarantine.BAD_TIME, bad.num_rows, f"{tier} {part}")
        for where in skipped:
            quarantine.report(job, quarantine.FAILED, 1, where)
        if set_aside or skipped:
            out["quarantined"] = sum(b.num_rows for _, _, b in set_aside)
            out["files_skipped"] = len(skipped)

    def tier_stats(self) -> dict[str, tuple[int, int, int]]:
        """Per tier: files, rows, bytes."""
        out = {"hot": (0, int(self.con.cursor().execute(
            "SELECT count(*) FROM events_raw").fetchone()[0]), 0)}  # type: ignore[index]
        for tier, files, rows, size in self.con.cursor().execute(
                "SELECT tier, count(*), sum(rows), sum(bytes) FROM tier_files GROUP BY tier"
        ).fetchall():
            out[tier] = (int(files), int(rows), int(size))
        return out


def _add_file(cur: duckdb.DuckDBPyConnection, path: str, tier: str, part: str, rows: int,
              size: int) -> None:
    cur.execute("INSERT INTO tier_files VALUES (?, ?, ?, ?, ?, now())",
                [path, tier, part, rows, size])
