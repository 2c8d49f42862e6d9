"""Log partitions that move between processors: their positions and open session streams
are committed with the published files (the Kafka Connect S3-sink pattern), so several
processors share one topic (``aap cluster up --processors N``: Kafka, ``AAP_META_URL`` and
publishing on).

Each processor keeps its own DuckDB: its hot rows are a private buffer, and what everybody
sees is the published files and two tables beside the shared list of files:
``log_partitions`` (partition → the position its published files reach) and
``log_streams`` with the rows of listed batches not folded into it yet (the open device
streams of each partition as of that position).

- **Mark** (the batch's DuckDB transaction, :func:`mark`): the positions of the
  partitions this processor advanced since its last batch, each with the position it
  started from (``shared_position.N`` in ``processor_state``: the shared table's value
  when this processor last published or adopted the partition), and the rows of
  ``session_streams`` of those partitions that changed since (``stream_changes``, noted
  in each chunk's transaction), go to ``publish_positions`` and ``publish_streams``.
- **Stage** (:func:`stage`, a transaction of its own before the listing): the batch's
  streams are appended to ``log_stream_rows`` under (writer, seq) by one ``COPY``. They
  count for nobody until the listing names the batch.
- **List** (the shared transaction that lists the files, :func:`check`): for each such
  partition, ``UPDATE log_partitions SET position = to WHERE position = from`` (an insert
  when ``from`` is 0 and there is no row), and one row in ``log_stream_batches`` names
  the batch, its ``id`` drawn after the compare-and-set: a partition's listings take
  turns on its row, so a later listing of a partition has a larger id. The streams once
  cost this transaction an upsert of every changed stream (20,000 a second at 20,000
  events/s of new visitors: 0.2 to 0.45 s more under the write lock per batch); now it is
  one row. If one of the partitions finds another position, the
  batch is stale (another processor took the partition and published past it): nothing
  is listed (:class:`Stale`), and :func:`drop` throws away everything this processor has
  not published (its files deleted, its hot rows, its orders of those events) and resets
  every partition it knows to the shared positions and streams; it then reads them again
  from there if it still owns them. Persons and products fold idempotently (least,
  greatest, OR, json_merge_patch) and identities are shared, so events read twice fold
  the same.
- **Fold** (:func:`fold`, every :data:`FOLD_EVERY` listed batches on a thread of its
  own, :class:`Folder`): the latest listed row of each stream goes to ``log_streams``
  (a stream whose latest row has no ``last_us`` was forgotten: deleted), and the folded
  batches' rows and names are deleted, with the staged rows of batches that will never
  be listed (stale: their writer published a later batch). The shared streams of a
  partition (:func:`shared`) are, in one statement, the latest listed unfolded row of
  each stream, else its row of ``log_streams``.
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
import threading
from collections.abc import Callable, Iterable
from typing import Any

import duckdb
import pyarrow as pa

from aap.store.filelist import KEYS_TABLE
from aap.store.meta import POSTGRESQL, Bulk, MetaDB, Tx, log_failure
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
CREATE TABLE IF NOT EXISTS log_stream_rows (
    writer TEXT NOT NULL,
    seq BIGINT NOT NULL,
    stream_key BIGINT NOT NULL,
    log_partition INTEGER NOT NULL,
    last_us BIGINT,
    session_id TEXT,
    seen_ms BIGINT
);
CREATE INDEX IF NOT EXISTS log_stream_rows_batch ON log_stream_rows (writer, seq);
"""
_BATCHES = """
CREATE TABLE IF NOT EXISTS log_stream_batches (
    id {id},
    writer TEXT NOT NULL,
    seq BIGINT NOT NULL,
    UNIQUE (writer, seq)
);
"""


def _staged_rows(con: Any) -> None:
    """1: ``log_stream_rows`` and ``log_stream_batches`` (made by the create script, which
    runs after the steps): streams staged before the listing, folded later."""


SCHEMA = Schema("log_partitions",
                _SCHEMA + _BATCHES.format(id="INTEGER PRIMARY KEY AUTOINCREMENT"),
                postgres=_SCHEMA + _BATCHES.format(
                    id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
                steps=(_staged_rows,), shares_file=True)
"""The shared tables' schema (beside the list of files: :mod:`aap.store.filelist`)."""

FOLD_EVERY = 30
"""Listed batches (of this processor) between two folds of the staged streams."""


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


def batch_positions(con: duckdb.DuckDBPyConnection, seq: int) -> list[tuple[int, int, int]]:
    """Batch ``seq``'s positions (partition, from, to), as marked."""
    cur = con.cursor()
    try:
        return [(int(p), int(f), int(t)) for p, f, t in cur.execute(
            "SELECT log_partition, from_pos, to_pos FROM publish_positions WHERE seq = $s"
            " ORDER BY 1", {"s": seq}).fetchall()]
    finally:
        cur.close()


def batch_streams(con: duckdb.DuckDBPyConnection, writer: str, seq: int) -> pa.Table:
    """Batch ``seq``'s streams as marked, as ``log_stream_rows``' columns."""
    cur = con.cursor()
    try:
        return cur.sql(
            "SELECT $w AS writer, seq, stream_key, log_partition, last_us, session_id, seen_ms"
            " FROM publish_streams WHERE seq = $s ORDER BY stream_key",
            params={"s": seq, "w": writer}).to_arrow_table()
    finally:
        cur.close()


def stage(db: MetaDB, writer: str, seq: int, streams: pa.Table) -> None:
    """Before the listing, in a transaction of its own: the batch's streams in
    ``log_stream_rows`` (its rows of an earlier try replaced), unseen until a listing
    names the batch."""
    if not streams.num_rows:
        return

    def run(t: Tx) -> None:
        t.execute("DELETE FROM log_stream_rows WHERE writer = ? AND seq = ?", [writer, seq])
        t.append("log_stream_rows", streams)
    db.write(run, serializable=False)


def stage_batch(wh: Any, seq: int) -> bool:
    """:func:`stage` of batch ``seq`` as marked; returns whether it had streams."""
    streams = batch_streams(wh.con, wh.files.writer, seq)
    stage(wh.files.db, wh.files.writer, seq, streams)
    return streams.num_rows > 0


def listing(wh: Any, seq: int, staged: bool | None = None) -> Callable[[Tx], None]:
    """Batch ``seq``'s part of the listing (:func:`check`), its streams staged first
    unless ``staged`` says they were (whether there were some)."""
    if staged is None:
        staged = stage_batch(wh, seq)
    return check(batch_positions(wh.con, seq), wh.files.writer, seq, staged)


def check(positions: list[tuple[int, int, int]], writer: str, seq: int, staged: bool
          ) -> Callable[[Tx], None]:
    """The list step's part for a batch: the positions compared and set, the batch's
    staged streams named; raises :class:`Stale` (rolling back the whole listing) when one
    partition's shared position is not the batch's start."""
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
        if staged:  # after the compare-and-set: the id is drawn in the partitions' turn
            t.execute("INSERT INTO log_stream_batches (writer, seq) VALUES (?, ?)"
                      " ON CONFLICT (writer, seq) DO NOTHING", [writer, seq])
    return run


def forget(cur: duckdb.DuckDBPyConnection, seq: int) -> None:
    """Step 4 of a listed batch: its positions are what this processor saw last."""
    rows = cur.execute("SELECT log_partition, to_pos FROM publish_positions WHERE seq = $s",
                       {"s": seq}).fetchall()
    _set(cur, [(_seen_name(int(p)), int(t)) for p, t in rows])
    cur.execute("DELETE FROM publish_positions WHERE seq = $s", {"s": seq})
    cur.execute("DELETE FROM publish_streams WHERE seq = $s", {"s": seq})


def erase_streams(db: MetaDB, keys: Iterable[int]) -> int:
    """An erasure applied by a writer: the erased ids' streams leave the shared streams
    and every writer's staged rows (a batch staged before the erasure and listed after it
    would fold them in again). Each writer that applies the erasure does it (the erasing
    one first), so rows staged before a writer applied it go too. Returns the rows
    deleted."""
    want = sorted(set(keys))
    if not want:
        return 0
    bulk = Bulk(db.dialect == POSTGRESQL)

    def run(t: Tx) -> int:
        n = 0
        for cond, params in bulk.among(want):
            n += t.execute(f"DELETE FROM log_streams WHERE stream_key {cond}", params)
            n += t.execute(f"DELETE FROM log_stream_rows WHERE stream_key {cond}", params)
        return n

    return int(db.write(run))


def _seen_name(p: int) -> str:
    return SHARED_POSITION if p == 0 else f"{SHARED_POSITION}.{p}"


_LATEST = """SELECT stream_key, log_partition, last_us, session_id, seen_ms FROM (
    SELECT r.stream_key, r.log_partition, r.last_us, r.session_id, r.seen_ms,
           row_number() OVER (PARTITION BY r.stream_key ORDER BY b.id DESC) AS n
    FROM log_stream_rows r JOIN log_stream_batches b ON b.writer = r.writer AND b.seq = r.seq
    WHERE {where}) latest WHERE n = 1"""
"""The latest listed, unfolded row of each stream (a null ``last_us``: forgotten)."""


def shared(db: MetaDB, partitions: list[int] | None = None) -> tuple[
        dict[int, int], list[tuple[Any, ...]]]:
    """The shared positions, and the streams of ``partitions`` (all: None): in one
    statement, the latest listed row of each stream not folded yet, else its row of
    ``log_streams``."""
    positions = {int(p): int(v) for p, v in db.fetchall(
        "SELECT log_partition, position FROM log_partitions")}
    if partitions is not None and not partitions:
        return positions, []
    where = "true" if partitions is None else \
        f"log_partition IN ({', '.join(str(int(p)) for p in partitions)})"
    streams = db.fetchall(f"""
        WITH pending AS ({_LATEST.format(where=where.replace('log_partition', 'r.log_partition'))})
        SELECT * FROM pending WHERE last_us IS NOT NULL
        UNION ALL
        SELECT s.stream_key, s.log_partition, s.last_us, s.session_id, s.seen_ms
        FROM log_streams s LEFT JOIN pending p ON p.stream_key = s.stream_key
        WHERE p.stream_key IS NULL AND {where.replace('log_partition', 's.log_partition')}""")
    return positions, streams


def fold(db: MetaDB) -> int:
    """The listed batches' staged streams into ``log_streams``, then gone, with the staged
    rows of batches that will not be listed; returns the batches folded. One fold at a
    time (a lock on ``log_streams``); READ COMMITTED, so the listings beside it are not
    refused: it works on the batches it names first."""
    def run(t: Tx) -> int:
        t.lock("log_streams")
        t.execute("CREATE TEMP TABLE IF NOT EXISTS fold_batches (id BIGINT, writer TEXT,"
                  " seq BIGINT)")
        t.execute("DELETE FROM fold_batches")
        n = t.execute("INSERT INTO fold_batches SELECT id, writer, seq FROM log_stream_batches")
        if n <= 0:
            return 0
        latest = _LATEST.format(where="b.id IN (SELECT id FROM fold_batches)")
        t.execute(f"DELETE FROM log_streams WHERE stream_key IN (SELECT stream_key FROM"
                  f" ({latest}) gone WHERE last_us IS NULL)")
        t.execute(f"INSERT INTO log_streams SELECT * FROM ({latest}) live"
                  " WHERE last_us IS NOT NULL ON CONFLICT (stream_key) DO UPDATE SET"
                  " log_partition = excluded.log_partition, last_us = excluded.last_us,"
                  " session_id = excluded.session_id, seen_ms = excluded.seen_ms")
        t.execute("DELETE FROM log_stream_rows WHERE EXISTS (SELECT 1 FROM fold_batches f"
                  " WHERE f.writer = log_stream_rows.writer AND f.seq = log_stream_rows.seq)")
        t.execute("DELETE FROM log_stream_batches WHERE id IN (SELECT id FROM fold_batches)")
        t.execute("""DELETE FROM log_stream_rows WHERE seq <= (SELECT published FROM
            tier_writers w WHERE w.writer = log_stream_rows.writer) AND NOT EXISTS (SELECT 1
            FROM log_stream_batches b WHERE b.writer = log_stream_rows.writer
            AND b.seq = log_stream_rows.seq)""")
        t.execute("DELETE FROM fold_batches")
        return n
    return db.write(run, serializable=False)


class Folder:
    """Folds the staged streams on a thread of its own every :data:`FOLD_EVERY` batches
    this processor lists (:meth:`listed`)."""

    def __init__(self, db: MetaDB) -> None:
        self.db = db
        self.count = 0
        self.due = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="aap-fold-streams", daemon=True)

    def listed(self) -> None:
        self.count += 1
        if self.count % FOLD_EVERY == 0:
            self.due.set()

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.due.set()
        if self.thread.is_alive():
            self.thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            self.due.wait()
            self.due.clear()
            if self.stop.is_set():
                return
            try:
                fold(self.db)
            except Exception as exc:
                log_failure(logger, "folding the staged log streams failed; tried again later",
                            exc)


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
        cur.execute("CREATE TEMP TABLE dropped_ids AS SELECT message_id FROM events_raw")
        n = int(cur.execute("SELECT count(*) FROM dropped_ids").fetchone()[0])
        for table in ("orders", "order_items"):
            cur.execute(f"DELETE FROM {table} WHERE message_id IN"
                        " (SELECT message_id FROM dropped_ids)")
        cur.execute("DROP TABLE dropped_ids")
        cur.execute("DELETE FROM events_raw")  # hot and marked rows alike
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
