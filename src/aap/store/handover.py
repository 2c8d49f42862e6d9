"""Log partitions that move between processors: their positions and open session streams
are committed with the published files (the Kafka Connect S3-sink pattern), so several
processors share one topic (``aap cluster up --processors N``: Kafka, ``AAP_META_URL`` and
publishing on).

Each processor keeps its own DuckDB: its hot rows are a private buffer, and what everybody
sees is the published files and two tables beside the shared list of files:
``log_partitions`` (partition → the position its published files reach) and
``log_streams`` (the open device streams of each partition as of that position).

- **Mark** (the batch's DuckDB transaction, :func:`mark`): the positions of the
  partitions this processor advanced since its last batch, each with the position it
  started from (``shared_position.N`` in ``processor_state``: the shared table's value
  when this processor last published or adopted the partition), and the rows of
  ``session_streams`` of those partitions that changed since (``stream_changes``, noted
  in each chunk's transaction), go to ``publish_positions`` and ``publish_streams``.
- **List** (the shared transaction that lists the files, :func:`check`): for each such
  partition, ``UPDATE log_partitions SET position = to WHERE position = from`` (an insert
  when ``from`` is 0 and there is no row). If one of them finds another position, the
  batch is stale (another processor took the partition and published past it): nothing
  is listed (:class:`Stale`), and :func:`drop` throws away everything this processor has
  not published (its files deleted, its hot rows, its orders of those events) and resets
  every partition it knows to the shared positions and streams; it then reads them again
  from there if it still owns them. Persons and products fold idempotently (least,
  greatest, OR, json_merge_patch) and identities are shared, so events read twice fold
  the same.
- **Assignment** (:func:`adopt`): a partition whose shared position is not the one this
  processor last saw there (another processor advanced it) starts from the shared
  position and streams; the unpublished rows of such a partition, if any, are dropped
  first (else the dedup step would drop the events read again, and then the stale rows
  would be dropped too).

Only with publishing on and a partitioned log (``Warehouse.handover``); the embedded and
single-processor paths do not use it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import duckdb

from aap.store.filelist import KEYS_TABLE, PENDING_TABLE
from aap.store.meta import MetaDB, Tx
from aap.store.migrations import Schema

logger = logging.getLogger("aap.handover")

POSITION = "log_position"


def position_name(partition: int) -> str:
    """The ``processor_state`` row of a log partition's position: ``log_position`` for
    partition 0 (the SQLite log's only one), ``log_position.N`` for the others."""
    return POSITION if partition == 0 else f"{POSITION}.{partition}"


SHARED_POSITION = "shared_position"
"""``processor_state`` rows ``shared_position.N``: partition N's position in the shared
``log_partitions`` as this processor last wrote or read it."""

LOCAL_DDL = """
CREATE TABLE IF NOT EXISTS stream_changes (stream_key BIGINT NOT NULL,
    log_partition INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS publish_positions (seq BIGINT NOT NULL,
    log_partition INTEGER NOT NULL, from_pos BIGINT NOT NULL, to_pos BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS publish_streams (seq BIGINT NOT NULL, stream_key BIGINT NOT NULL,
    log_partition INTEGER NOT NULL, last_us BIGINT, session_id VARCHAR, seen_ms BIGINT);
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log_partitions (
    log_partition INTEGER PRIMARY KEY,
    position BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS log_streams (
    stream_key BIGINT PRIMARY KEY,
    log_partition INTEGER NOT NULL,
    last_us BIGINT NOT NULL,
    session_id TEXT NOT NULL,
    seen_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_streams_partition ON log_streams (log_partition);
"""
SCHEMA = Schema("log_partitions", _SCHEMA, postgres=_SCHEMA, steps=(), shares_file=True)
"""The shared tables' schema (beside the list of files: :mod:`aap.store.filelist`)."""


class Stale(RuntimeError):
    """A batch's partitions were published past by another processor: nothing listed."""

    def __init__(self, partition: int, want: int, found: int | None) -> None:
        super().__init__(f"log partition {partition}: the batch starts at {want}, the"
                         f" shared position is {found}")
        self.partition = partition


def enable(wh: Any) -> None:
    """The warehouse (publishing on: its list is shared) commits its log positions and
    streams with its published files from now on."""
    if not wh.files.shared:
        raise ValueError("moving log partitions between processors needs publishing on")
    wh.con.execute(LOCAL_DDL)
    wh.files.db.migrate(SCHEMA)
    wh.handover = True


def _state(cur: duckdb.DuckDBPyConnection, prefix: str) -> dict[int, int]:
    rows = cur.execute("SELECT name, value FROM processor_state WHERE name = $p OR name LIKE $ps",
                       {"p": prefix, "ps": prefix + ".%"}).fetchall()
    return {0 if n == prefix else int(n[len(prefix) + 1:]): int(v) for n, v in rows}


def local_positions(cur: duckdb.DuckDBPyConnection) -> dict[int, int]:
    return _state(cur, POSITION)


def seen_positions(cur: duckdb.DuckDBPyConnection) -> dict[int, int]:
    """``shared_position.N``: what this processor last saw of the shared positions."""
    return _state(cur, SHARED_POSITION)


def _set(cur: duckdb.DuckDBPyConnection, rows: list[tuple[str, int]]) -> None:
    for name, value in rows:
        cur.execute("INSERT INTO processor_state VALUES ($n, $v) ON CONFLICT (name)"
                    " DO UPDATE SET value = excluded.value", {"n": name, "v": value})


def note_streams(con: duckdb.DuckDBPyConnection, rows: Any, pruned: list[int]) -> None:
    """In a chunk's transaction, before its streams are written: the streams it changes
    and those it forgets (with their partitions), for the next batch."""
    import pyarrow as pa

    if rows is not None and rows.num_rows:
        con.register("changed_streams", rows)
        con.execute("INSERT INTO stream_changes SELECT stream_key, log_partition"
                    " FROM changed_streams")
        con.unregister("changed_streams")
    if pruned:
        con.register("pruned_streams", pa.table({"k": pa.array(pruned, pa.int64())}))
        con.execute("INSERT INTO stream_changes SELECT stream_key, log_partition"
                    " FROM session_streams WHERE stream_key IN (SELECT k FROM pruned_streams)")
        con.unregister("pruned_streams")


def mark(cur: duckdb.DuckDBPyConnection, seq: int) -> int:
    """In the batch's mark transaction: the partitions advanced since the last batch (from
    → to) and their streams changed since, as batch ``seq``'s. Returns the partitions."""
    local, seen = local_positions(cur), seen_positions(cur)
    moved = [(p, seen.get(p, 0), pos) for p, pos in sorted(local.items())
             if pos != seen.get(p, 0)]
    for p, start, to in moved:
        cur.execute("INSERT INTO publish_positions VALUES ($s, $p, $f, $t)",
                    {"s": seq, "p": p, "f": start, "t": to})
    if moved:
        cur.execute("""
            INSERT INTO publish_streams
            SELECT $s, c.stream_key, c.log_partition, epoch_us(s.last_ts), s.session_id,
                   s.seen_ms
            FROM (SELECT DISTINCT stream_key, log_partition FROM stream_changes) c
            LEFT JOIN session_streams s USING (stream_key)
            WHERE c.log_partition IN (SELECT log_partition FROM publish_positions
                                      WHERE seq = $s)""", {"s": seq})
        cur.execute("DELETE FROM stream_changes WHERE log_partition IN"
                    " (SELECT log_partition FROM publish_positions WHERE seq = $s)", {"s": seq})
    return len(moved)


def pending(cur: duckdb.DuckDBPyConnection) -> list[int]:
    """Batches whose positions are marked and not listed yet."""
    return [int(r[0]) for r in cur.execute(
        "SELECT DISTINCT seq FROM publish_positions").fetchall()]


def batch(con: duckdb.DuckDBPyConnection, seq: int) -> tuple[
        list[tuple[int, int, int]], list[tuple[Any, ...]]]:
    """Batch ``seq``'s positions (partition, from, to) and streams, as marked."""
    cur = con.cursor()
    try:
        positions = [(int(p), int(f), int(t)) for p, f, t in cur.execute(
            "SELECT log_partition, from_pos, to_pos FROM publish_positions WHERE seq = $s"
            " ORDER BY 1", {"s": seq}).fetchall()]
        streams = cur.execute(
            "SELECT stream_key, log_partition, last_us, session_id, seen_ms"
            " FROM publish_streams WHERE seq = $s ORDER BY 1", {"s": seq}).fetchall()
        return positions, streams
    finally:
        cur.close()


def check(positions: list[tuple[int, int, int]], streams: list[tuple[Any, ...]]
          ) -> Callable[[Tx], None]:
    """The list step's part for a batch: the positions compared and set, the streams
    written; raises :class:`Stale` (rolling back the whole listing) when one partition's
    shared position is not the batch's start."""
    def run(t: Tx) -> None:
        for p, start, to in positions:
            n = t.execute("UPDATE log_partitions SET position = ? WHERE log_partition = ?"
                          " AND position = ?", [to, p, start])
            if not n and start == 0:
                n = t.execute("INSERT INTO log_partitions VALUES (?, ?) ON CONFLICT"
                              " (log_partition) DO NOTHING", [p, to])
            if not n:
                row = t.fetchall("SELECT position FROM log_partitions WHERE log_partition = ?",
                                 [p])
                raise Stale(p, start, int(row[0][0]) if row else None)
        gone = [(k,) for k, _, last, _, _ in streams if last is None]
        if gone:
            t.executemany("DELETE FROM log_streams WHERE stream_key = ?", gone)
        live = [(k, p, last, sid, seen) for k, p, last, sid, seen in streams if last is not None]
        t.upsert("log_streams", "stream_key", live)  # COPY on PostgreSQL: thousands a batch
    return run


def forget(cur: duckdb.DuckDBPyConnection, seq: int) -> None:
    """Step 4 of a listed batch: its positions are what this processor saw last."""
    rows = cur.execute("SELECT log_partition, to_pos FROM publish_positions WHERE seq = $s",
                       {"s": seq}).fetchall()
    _set(cur, [(_seen_name(int(p)), int(t)) for p, t in rows])
    cur.execute("DELETE FROM publish_positions WHERE seq = $s", {"s": seq})
    cur.execute("DELETE FROM publish_streams WHERE seq = $s", {"s": seq})


def _seen_name(p: int) -> str:
    return SHARED_POSITION if p == 0 else f"{SHARED_POSITION}.{p}"


def shared(db: MetaDB, partitions: list[int] | None = None) -> tuple[
        dict[int, int], list[tuple[Any, ...]]]:
    """The shared positions, and the streams of ``partitions`` (all: None)."""
    positions = {int(p): int(v) for p, v in db.fetchall(
        "SELECT log_partition, position FROM log_partitions")}
    if partitions is not None and not partitions:
        return positions, []
    sql = "SELECT stream_key, log_partition, last_us, session_id, seen_ms FROM log_streams"
    if partitions is not None:
        sql += f" WHERE log_partition IN ({', '.join(str(int(p)) for p in partitions)})"
    return positions, db.fetchall(sql)


def _take(cur: duckdb.DuckDBPyConnection, partitions: list[int], positions: dict[int, int],
          streams: list[tuple[Any, ...]]) -> None:
    """``partitions`` start from the shared positions and streams (their local streams
    replaced)."""
    import pyarrow as pa

    if not partitions:
        return
    _set(cur, [r for p in partitions for r in ((position_name(p), positions.get(p, 0)),
                                                 (_seen_name(p), positions.get(p, 0)))])
    cur.execute("DELETE FROM session_streams WHERE list_contains($ps, log_partition)",
                {"ps": partitions})
    cur.execute("DELETE FROM stream_changes WHERE list_contains($ps, log_partition)",
                {"ps": partitions})
    mine = [s for s in streams if int(s[1]) in set(partitions)]
    if mine:
        cur.register("taken_streams", pa.table({
            "stream_key": pa.array([int(s[0]) for s in mine], pa.int64()),
            "last_us": pa.array([int(s[2]) for s in mine], pa.int64()),
            "session_id": pa.array([str(s[3]) for s in mine], pa.string()),
            "seen_ms": pa.array([int(s[4]) for s in mine], pa.int64()),
            "log_partition": pa.array([int(s[1]) for s in mine], pa.int32())}))
        cur.execute("INSERT INTO session_streams SELECT stream_key, make_timestamp(last_us),"
                    " session_id, seen_ms, log_partition FROM taken_streams")
        cur.unregister("taken_streams")


def drop(wh: Any, paths: list[str]) -> int:
    """With the write lock held: a stale batch (its ``paths`` deleted) and everything this
    processor has not published are thrown away, and every partition it knows starts
    again from the shared positions and streams. Returns the events dropped."""
    for path in paths:
        try:
            wh.tiers.delete(path)
        except FileNotFoundError:
            pass
    positions, streams = shared(wh.files.db)
    with wh.transaction() as cur:
        cur.execute(f"""CREATE TEMP TABLE dropped_ids AS
            SELECT message_id FROM events_raw UNION ALL
            SELECT message_id FROM {PENDING_TABLE}""")
        n = int(cur.execute("SELECT count(*) FROM dropped_ids").fetchone()[0])
        for table in ("orders", "order_items"):
            cur.execute(f"DELETE FROM {table} WHERE message_id IN"
                        " (SELECT message_id FROM dropped_ids)")
        cur.execute("DROP TABLE dropped_ids")
        cur.execute("DELETE FROM events_raw")
        cur.execute(f"DELETE FROM {PENDING_TABLE}")
        # the tables' keys of those batches are published again with the next one
        cur.execute(f"UPDATE {KEYS_TABLE} SET seq = NULL WHERE seq IN"
                    " (SELECT seq FROM publish_positions)")
        cur.execute("DELETE FROM publish_positions")
        cur.execute("DELETE FROM publish_streams")
        cur.execute("DELETE FROM stream_changes")
        known = sorted(set(local_positions(cur)) | set(seen_positions(cur)) | set(positions))
        _take(cur, known, positions, streams)
    wh.epoch += 1
    logger.warning("a batch was published past by another processor: %d unpublished events"
                   " dropped, %d partitions start again from the shared positions", n,
                   len(known))
    return n


def adopt(wh: Any, partitions: list[int]) -> bool:
    """On assignment: the partitions another processor advanced start from the shared
    positions and streams (after this processor's unpublished rows are dropped, if it has
    some of such a partition). Returns whether anything changed."""
    with wh.write_lock:
        wh.settle()  # a batch left half published: listed or dropped first
        positions, _ = shared(wh.files.db, [])
        cur = wh.con.cursor()
        try:
            local, seen = local_positions(cur), seen_positions(cur)
        finally:
            cur.close()
        moved = [p for p in partitions if positions.get(p, 0) != seen.get(p, 0)]
        if not moved:
            return False
        if any(local.get(p, 0) != seen.get(p, 0) for p in moved):
            drop(wh, [])
            return True
        positions, streams = shared(wh.files.db, moved)
        with wh.transaction() as cur:
            _take(cur, moved, positions, streams)
        wh.epoch += 1
        return True
