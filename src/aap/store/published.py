"""The warehouse's other tables published with the events (``AAP_PUBLISH_SECONDS`` > 0):
``persons``, ``orders``, ``order_items`` and ``products``.

The processor notes the keys a chunk changes (``publish_keys``: a person, an order, a
product) in the chunk's own transaction. A batch (:mod:`aap.store.publish`) marks the
noted keys with its number with the hot events, and writes one file per table,
``warm/<table>/batch-<writer>-<seq>.parquet``: for each key, **every current row of
that key** in the processor's table (its state after the chunk, not the change), or one
row with ``_gone`` set when the key has no row any more (a person merged away). The
files are listed on the shared list with the table's name in its ``tier`` column.

A reader folds them per key: the rows of the key's latest batch (highest ``_seq``) of
each writer win; across writers, persons fold as the processor merges (first_seen = min,
last_seen = max, identified = bool_or, traits = each writer's state merged in the order
written with ``json_merge_patch``), orders and order items take, for each message of the
key, the latest-written writer's rows (one order id may come in two messages, which two
writers may hold: :data:`PER_MESSAGE`), and products the latest-written writer's rows.
With one writer this is exactly the processor's table. Local rows (a processor's own
table) win over published ones for their keys (orders and items: their key and
message).
"""

from __future__ import annotations

import time
from typing import Any

import duckdb
import pyarrow as pa

from aap.store.filelist import KEYS_TABLE, TierFile

TABLES: dict[str, tuple[str, str]] = {
    "persons": ("person_id", "person_id, first_seen, last_seen, identified, traits"),
    "orders": ("order_id", "order_id, message_id, source, person_id, session_id, timestamp,"
                           " revenue, currency, items"),
    "order_items": ("order_id", "order_id, message_id, product_id, name, category, price,"
                                " quantity"),
    "products": ("product_id", "product_id, name, category, price, first_seen, last_seen"),
}
"""Each published table: its key and its columns."""
PER_MESSAGE = ("orders", "order_items")
"""Tables whose rows of a key are per message: an order id sent in two messages (a
person's two devices) has a row in each, which two processors may hold (the devices'
streams in two partitions), so their rows are folded per key and message."""
KINDS = tuple(TABLES)
"""The ``tier`` of a listed table file."""


def note(con: duckdb.DuckDBPyConnection, keys: dict[str, list[Any]]) -> None:
    """In the chunk's transaction: these keys of these tables changed."""
    key = [str(k) for ks in keys.values() for k in ks if k is not None]
    tbl = [t for t, ks in keys.items() for k in ks if k is not None]
    if not key:
        return
    con.register("noted_keys", pa.table({"tbl": pa.array(tbl, pa.string()),
                                         "key": pa.array(key, pa.string())}))
    con.execute(f"INSERT INTO {KEYS_TABLE} SELECT DISTINCT tbl, key, NULL FROM noted_keys")
    con.unregister("noted_keys")


def mark(cur: duckdb.DuckDBPyConnection, seq: int) -> int:
    """In the batch's mark transaction: the noted keys join batch ``seq``."""
    row = cur.execute(f"UPDATE {KEYS_TABLE} SET seq = $seq WHERE seq IS NULL",
                      {"seq": seq}).fetchone()
    return int(row[0]) if row else 0


def pending(cur: duckdb.DuckDBPyConnection) -> list[int]:
    return [int(r[0]) for r in cur.execute(
        f"SELECT DISTINCT seq FROM {KEYS_TABLE} WHERE seq IS NOT NULL").fetchall()]


def forget(cur: duckdb.DuckDBPyConnection, seq: int) -> None:
    cur.execute(f"DELETE FROM {KEYS_TABLE} WHERE seq = $seq", {"seq": seq})


def _rows_sql(table: str) -> str:
    """The current rows of batch ``$seq``'s keys of ``table`` (and a ``_gone`` row for a
    key with none, typed as the table), with ``_writer``, ``_seq`` and ``_ms``;
    order_items with the order's person (erasure finds them by it)."""
    key, cols = TABLES[table]
    typ = "BIGINT" if key == "person_id" else "VARCHAR"
    sel = ", ".join(f"CAST(k.key AS {typ}) AS {key}" if c.strip() == key else f"t.{c.strip()}"
                    for c in cols.split(","))
    if table == "order_items":
        sel += (", (SELECT any_value(o.person_id) FROM orders o WHERE o.message_id ="
                " t.message_id) AS person_id")
    traits = " REPLACE (CAST(traits AS VARCHAR) AS traits)" if table == "persons" else ""
    return f"""
        SELECT *{traits}, $writer AS _writer, $seq AS _seq, $ms AS _ms FROM (
            SELECT {sel}, t.{key} IS NULL AS _gone
            FROM (SELECT DISTINCT key FROM {KEYS_TABLE} WHERE tbl = '{table}' AND seq = $seq) k
            LEFT JOIN {table} t ON CAST(t.{key} AS VARCHAR) = k.key)
        ORDER BY {key}"""


def write(wh: Any, seq: int, writer: str, name: str) -> list[TierFile]:
    """Step 2 for the tables: one file per table with keys in batch ``seq``."""
    cur = wh.con.cursor()
    try:
        out = []
        tables = [r[0] for r in cur.execute(
            f"SELECT DISTINCT tbl FROM {KEYS_TABLE} WHERE seq = $seq ORDER BY 1",
            {"seq": seq}).fetchall()]
        for table in tables:
            rows = cur.sql(_rows_sql(table), params={
                "seq": seq, "writer": writer, "ms": int(time.time() * 1000)}).to_arrow_table()
            path, size = wh.tiers.write_table(rows, table, name)
            out.append(TierFile(path, table, table, rows.num_rows, size))
        return out
    finally:
        cur.close()


Layout = tuple[tuple[str, tuple[str, ...]], ...]
"""Each published table and its listed files, in :data:`TABLES` order (empty when
publishing is off): what the tables' views are made from."""


def layout(wh: Any, files: list[TierFile]) -> Layout:
    """The tables' views for these listed files (see :func:`define`)."""
    if not wh.files.shared:
        return ()
    return tuple((table, tuple(f.path for f in files if f.tier == table)) for table in TABLES)


def define(cur: duckdb.DuckDBPyConnection, wh: Any, files: list[TierFile]) -> None:
    """On a query's cursor, publishing on (nothing otherwise): each table a view over its
    listed files and the local rows."""
    apply(cur, wh, layout(wh, files))


def apply(cur: duckdb.DuckDBPyConnection, wh: Any, plan: Layout, suffix: str = "") -> None:
    """:func:`define` for a :func:`layout`. ``suffix``: added to the names the files are
    registered under (a transaction's own: it must not replace the datasets of views made
    outside it, which come back when it rolls back)."""
    if not plan:
        return
    db = cur.execute("SELECT current_database()").fetchall()[0][0]
    for table, paths in plan:
        key, cols = TABLES[table]
        local = f'"{db}".main.{table}'
        if not paths:
            cur.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT * FROM {local}"
                        ).fetchall()
            continue
        src = f"published_{table}{suffix}"
        cur.register(src, wh.tiers.table_dataset(list(paths)))
        cur.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS {_fold(table, key, cols, db, src)}"
                    ).fetchall()


_TRAITS = ("CASE WHEN count(traits) <= 1 THEN CAST(arg_max(traits, _ms) FILTER (WHERE traits"
           " IS NOT NULL) AS JSON) ELSE CAST(list_reduce(list(traits ORDER BY _ms) FILTER"
           " (WHERE traits IS NOT NULL), lambda a, b: json_merge_patch(a, b)) AS JSON) END")
"""A person's traits across writers: each writer's latest state merged in the order they
were written (``json_merge_patch``, as the processor merges a chunk's traits); one
writer's state as it is."""


def _fold(table: str, key: str, cols: str, db: str, src: str) -> str:
    local = f'"{db}".main.{table}'
    latest = (f"SELECT * FROM {src} WHERE _seq = (SELECT max(_seq) FROM"
              f" {src} p WHERE p.{key} = {src}.{key}"
              f" AND p._writer = {src}._writer) AND NOT _gone")
    if table == "persons":
        folded = (f"SELECT person_id, min(first_seen) AS first_seen, max(last_seen) AS last_seen,"
                  f" bool_or(identified) AS identified,"
                  f" {_TRAITS} AS traits FROM ({latest}) GROUP BY person_id")
    else:
        same = f"w.{key} = l.{key}" + (" AND w.message_id IS NOT DISTINCT FROM l.message_id"
                                      if table in PER_MESSAGE else "")
        folded = (f"SELECT {cols} FROM ({latest}) l WHERE _writer = (SELECT arg_max(_writer, _ms)"
                  f" FROM ({latest}) w WHERE {same})")
    mine = (f"EXISTS (SELECT 1 FROM {local} m WHERE m.{key} = f.{key}"
            f" AND m.message_id IS NOT DISTINCT FROM f.message_id)" if table in PER_MESSAGE
            else f"f.{key} IN (SELECT {key} FROM {local} WHERE {key} IS NOT NULL)")
    return (f"SELECT {cols} FROM {local} UNION ALL SELECT {cols} FROM ({folded}) f"
            f" WHERE NOT {mine}"
            f" AND CAST(f.{key} AS VARCHAR) NOT IN (SELECT key FROM \"{db}\".main.{KEYS_TABLE}"
            f" WHERE tbl = '{table}')")


PERSONAL = ("persons", "orders", "order_items")
"""The tables whose published rows belong to a person (``person_id``; order items carry
their order's)."""


def _person_rows_sql(table: str) -> str:
    """The local rows of ``table`` of ``$persons``, as a batch file holds them."""
    _, cols = TABLES[table]
    sel = ", ".join(f"t.{c.strip()}" for c in cols.split(","))
    traits = " REPLACE (CAST(traits AS VARCHAR) AS traits)" if table == "persons" else ""
    if table == "order_items":
        src = ("(SELECT t.*, o.person_id FROM order_items t JOIN (SELECT DISTINCT message_id,"
               " person_id FROM orders) o USING (message_id)) t")
        sel += ", t.person_id"
    else:
        src = f"{table} t"
    return (f"SELECT *{traits}, $writer AS _writer, $seq AS _seq, $ms AS _ms FROM ("
            f"SELECT {sel}, false AS _gone FROM {src}"
            f" WHERE list_contains($persons, t.person_id))")


def write_person_rows(wh: Any, persons: list[int], writer: str, seq: int
                      ) -> list[TierFile]:
    """The local rows of ``persons`` in each personal table, one new file per table with
    any (numbered ``seq``: the writer's last published batch, so a later batch wins)."""
    cur = wh.con.cursor()
    try:
        out = []
        for table in PERSONAL:
            rows = cur.sql(_person_rows_sql(table), params={
                "persons": persons, "writer": writer, "seq": seq,
                "ms": int(time.time() * 1000)}).to_arrow_table()
            if rows.num_rows:
                path, size = wh.tiers.write_table(rows, table, "")
                out.append(TierFile(path, table, table, rows.num_rows, size))
        return out
    finally:
        cur.close()


def drop_persons(wh: Any, persons: pa.Array, writer: str | None = None
                 ) -> list[tuple[str, TierFile | None]]:
    """Each listed table file holding a row of ``persons`` (by ``person_id``; ``writer``:
    only the rows that writer published) written again without them (written, not
    listed: the caller swaps them). A file moved
    meanwhile by another processor raises :class:`aap.store.filelist.Moved`; on any
    failure the files written so far are deleted."""
    import pyarrow.compute as pc

    from aap.store.filelist import reading

    out: list[tuple[str, TierFile | None]] = []
    try:
        for f in wh.files.files():
            if f.tier not in PERSONAL:
                continue
            with reading(wh.files, [f.path]):
                table = wh.tiers.read_table([f.path])
            hit = pc.is_in(table.column("person_id"), value_set=persons)
            if writer is not None:
                hit = pc.and_(hit, pc.equal(table.column("_writer"), writer))
            if not pc.any(hit).as_py():
                continue
            kept = table.filter(pc.invert(pc.fill_null(hit, False)))
            if not kept.num_rows:
                out.append((f.path, None))
                continue
            path, size = wh.tiers.write_table(kept, f.tier, "")
            out.append((f.path, TierFile(path, f.tier, f.part, kept.num_rows, size)))
    except BaseException:
        for _, new in out:
            if new is not None:
                wh.tiers.delete(new.path)
        raise
    return out


COMPACT_FILES = 32
"""A table's files are folded into one once there are this many."""


def compact(wh: Any, table: str, grace: Any, at_least: int | None = None) -> int:
    """Fold every listed file of ``table`` into one (the tiering job): only each key's
    latest batch of each writer is kept (with its ``_seq``, so a later batch still
    wins), and no ``_gone`` row (every older row of its key is folded away with it).
    One swap of the list; the old files go to the trash for ``grace``. Returns the rows
    kept (0: not due, or a file was folded or rewritten meanwhile, by another processor
    too, and the next run folds)."""
    from aap.store.filelist import Moved, reading

    paths = [f.path for f in wh.files.files() if f.tier == table]
    if len(paths) < max(COMPACT_FILES if at_least is None else at_least, 2):
        return 0
    key = TABLES[table][0]
    try:
        with reading(wh.files, paths):
            rows = wh.tiers.read_table(paths)
    except Moved:  # rewritten meanwhile (another processor's erasure or retention)
        return 0
    con = duckdb.connect()
    try:
        con.register("t", rows)
        kept = con.sql(f"SELECT * FROM t QUALIFY _seq = max(_seq) OVER (PARTITION BY {key},"
                       f" _writer) AND NOT _gone ORDER BY {key}").to_arrow_table()
    finally:
        con.close()
    path, size = wh.tiers.write_table(kept, table, "")
    try:
        with wh.transaction() as cur:
            wh.files.swap(cur, paths, [TierFile(path, table, table, kept.num_rows, size)],
                          grace)
    except Moved:
        wh.tiers.delete(path)
        return 0
    except BaseException:
        wh.tiers.delete(path)
        raise
    return kept.num_rows
