"""The embedded log: order, offsets, consumer positions, retention, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aap.datadir import LOG_DB, LOG_POSITIONS_DB
from aap.log.base import Append
from aap.log.sqlite import SQLiteLog
from tests.conftest import examples

batches_st = st.lists(
    st.lists(st.tuples(st.text(max_size=5), st.integers(0, 50), st.binary(max_size=64)),
             min_size=0, max_size=6),
    max_size=8,
)


@settings(max_examples=examples(60))  # a SQLite log on disk per example
@given(groups=batches_st)
def test_appends_read_back_in_order_with_growing_offsets(tmp_path_factory, groups) -> None:  # type: ignore[no-untyped-def]
    log = SQLiteLog(tmp_path_factory.mktemp("log"))
    sent: list[tuple[int, Append]] = []
    for group in groups:
        appends = [Append(src, n, p) for src, n, p in group]
        offsets = log.append(appends)
        assert len(offsets) == len(appends)
        sent.extend(zip(offsets, appends, strict=True))
    offs = [o for o, _ in sent]
    assert offs == sorted(offs) and len(set(offs)) == len(offs)
    got = log.read(0, 10_000)
    assert [(r.offset, r.source, r.count, r.payload) for r in got] == [
        (o, a.source, a.count, a.payload) for o, a in sent]
    st_ = log.stats()
    assert st_.total_events == sum(a.count for _, a in sent)
    assert st_.head_offset == (offs[-1] if offs else 0)
    # reading from any position returns exactly the suffix
    for i, (o, _) in enumerate(sent):
        assert [r.offset for r in log.read(o, 10_000)] == offs[i + 1:]
    log.close()


@settings(max_examples=examples(40))  # a SQLite log on disk per example
@given(counts=st.lists(st.integers(1, 20), min_size=1, max_size=10), data=st.data())
def test_consumer_positions_and_lag(tmp_path_factory, counts, data) -> None:  # type: ignore[no-untyped-def]
    log = SQLiteLog(tmp_path_factory.mktemp("log"))
    offs = log.append([Append("s", n, b"x") for n in counts])
    k = data.draw(st.integers(0, len(offs)))
    pos = offs[k - 1] if k else 0
    log.commit("proc", pos)
    assert log.position("proc") == pos
    assert log.position("other") == 0
    assert log.stats().lag_events == {"proc": sum(counts[k:])}
    log.close()


@settings(max_examples=examples(60))  # a SQLite log on disk per example
@given(records=st.lists(st.tuples(st.integers(0, 20), st.binary(min_size=1, max_size=30)),
                        min_size=1, max_size=10), data=st.data())
def test_reads_stop_at_the_record_that_reaches_max_events_or_max_bytes(
        tmp_path_factory, records, data) -> None:  # type: ignore[no-untyped-def]
    log = SQLiteLog(tmp_path_factory.mktemp("log"))
    offs = log.append([Append("s", n, payload) for n, payload in records])
    limit = data.draw(st.integers(1, 12))
    max_events = data.draw(st.none() | st.integers(1, 60))
    max_bytes = data.draw(st.none() | st.integers(1, 120))
    got = [r.offset for r in log.read(0, limit, max_events, max_bytes)]
    # the reference: records in order, up to `limit`, ending with the first that brings the
    # events read to `max_events` or the payload bytes read to `max_bytes`
    want, events, size = [], 0, 0
    for off, (n, payload) in zip(offs[:limit], records, strict=False):
        want.append(off)
        events += n
        size += len(payload)
        if (max_events is not None and events >= max_events) or (
                max_bytes is not None and size >= max_bytes):
            break
    assert got == want
    assert [r.offset for r in log.read(0, limit)] == offs[:limit]
    log.close()


def test_retention_drops_old_records_but_keeps_totals(tmp_path: Path) -> None:
    log = SQLiteLog(tmp_path)
    log.append([Append("s", 3, b"a"), Append("s", 4, b"b")])
    cutoff = int(time.time() * 1000) + 1
    time.sleep(0.01)
    log.append([Append("s", 5, b"c")])
    assert log.drop_older_than(cutoff) == 2
    assert [r.payload for r in log.read(0)] == [b"c"]
    (o,) = log.append([Append("s", 1, b"d")])
    assert o == 4  # offsets are never reused
    assert log.stats().total_events == 13
    # everything is old: the newest record survives, so offsets and totals continue
    assert log.drop_older_than(int(time.time() * 1000) + 1000) == 1
    assert [r.payload for r in log.read(0)] == [b"d"]
    log.commit("g", 2)  # a position inside the dropped range: lag counts what is readable
    assert log.stats().lag_events == {"g": 1}
    log.close()


def _writer(path: str, wid: int, n: int) -> None:
    log = SQLiteLog(path)
    for i in range(n):
        log.append([Append(f"w{wid}", 1, f"{wid}:{i}".encode())])
    log.close()


@pytest.mark.slow
def test_concurrent_writer_processes_keep_order_and_lose_nothing(tmp_path: Path) -> None:
    SQLiteLog(tmp_path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 150)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    recs = SQLiteLog(tmp_path).read(0, 10_000)
    assert len(recs) == 600
    per: dict[str, list[int]] = {}
    for r in recs:
        w, i = r.payload.decode().split(":")
        per.setdefault(w, []).append(int(i))
    assert per == {str(w): list(range(150)) for w in range(4)}


def test_committer_runs_retention(tmp_path: Path) -> None:
    import asyncio

    from aap.log.committer import GroupCommitter

    log = SQLiteLog(tmp_path)
    log.append([Append("s", 1, b"old")] * 3)
    time.sleep(0.05)
    # retention of ~20 ms: the three old records go, the new one stays
    c = GroupCommitter(log, retention_hours=0.02 / 3600, retention_every_s=0.05)
    off = asyncio.run(c.append(Append("s", 1, b"new")))
    deadline = time.monotonic() + 60  # it runs every 50 ms: poll, generously
    while [r.offset for r in log.read(0)] != [off] and time.monotonic() < deadline:
        time.sleep(0.05)
    c.close()
    assert [r.offset for r in log.read(0)] == [off]


def test_retention_in_chunks_drops_everything_old(tmp_path: Path) -> None:
    log = SQLiteLog(tmp_path)
    log.append([Append("s", 1, b"x")] * 1234)
    time.sleep(0.01)
    log.append([Append("s", 1, b"new")])
    assert log.drop_older_than(int(time.time() * 1000) - 5, chunk=100) == 1234
    assert [r.payload for r in log.read(0)] == [b"new"]


def test_a_consumer_stalled_in_its_position_write_does_not_stop_appends(tmp_path: Path) -> None:
    """The processor notes its position in ``positions.db``: stopped in the middle of that
    write (here: a transaction on it left open, its write lock held), it does not hold
    the lock of the log, and another process's appends and reads go on."""
    consumer = SQLiteLog(tmp_path)
    first = consumer.append([Append("s", 3, b"a")])
    consumer.commit("processor", first[0])
    stalled = sqlite3.connect(tmp_path / LOG_POSITIONS_DB, isolation_level=None)
    assert stalled.execute("SELECT grp, position FROM consumers").fetchall() == [
        ("processor", first[0])]  # the consumer's write went to that file
    stalled.execute("BEGIN IMMEDIATE")
    stalled.execute("UPDATE consumers SET position = position + 1")
    collector = SQLiteLog(tmp_path)
    try:
        more = collector.append([Append("s", 2, b"b")])  # not "database is locked" after 30 s
        assert more[0] > first[0]
        assert [r.offset for r in collector.read(0)] == [first[0], more[0]]
        assert collector.stats().lag_events == {"processor": 2}  # reads the last committed
    finally:
        stalled.execute("ROLLBACK")
        stalled.close()
        collector.close()
        consumer.close()


def test_positions_of_an_older_log_move_to_their_own_file(tmp_path: Path) -> None:
    """Before ``positions.db`` the positions were a ``consumers`` table of ``log.db``:
    opened now, the log moves them over (the newer of two wins) and drops that table."""
    log = SQLiteLog(tmp_path)
    offs = log.append([Append("s", n, b"x") for n in (4, 5, 6)])
    log.commit("fresh", offs[0])  # already in positions.db, newer than the old table's
    log.close()
    old = sqlite3.connect(tmp_path / LOG_DB, isolation_level=None)
    old.executescript("CREATE TABLE consumers (grp TEXT PRIMARY KEY,"
                      " position INTEGER NOT NULL, updated_at INTEGER NOT NULL)")
    old.executemany("INSERT INTO consumers VALUES (?, ?, ?)",
                    [("processor", offs[1], 1), ("fresh", offs[2], 1)])
    old.close()
    log = SQLiteLog(tmp_path)
    assert log.position("processor") == offs[1]
    assert log.position("fresh") == offs[0]
    assert log.stats().lag_events == {"processor": 6, "fresh": 11}
    check = sqlite3.connect(tmp_path / LOG_DB)
    assert check.execute("SELECT name FROM sqlite_master WHERE name = 'consumers'"
                         ).fetchall() == []
    check.close()
    log.close()
    assert SQLiteLog(tmp_path).position("processor") == offs[1]  # opened again: as it was
