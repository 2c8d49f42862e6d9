"""Log partitions moving between two processors' warehouses that publish to one shared list
(:mod:`aap.store.handover`): whatever the order of chunks, batches (some stopped at a
step and finished by a restart), moves of a partition with or without the old owner
publishing first (a kill -9), the listed files end with every record of the log exactly
once, and the shared streams are those one processor alone would hold."""

from __future__ import annotations

import tempfile
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aap.store import erasures, handover
from aap.store.meta import MetaDB, open_meta
from aap.store.publish import Publisher
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Chunk, Warehouse
from tests.conftest import examples
from tests.pg import Cluster as PgCluster
from tests.pg import new_database
from tests.store.publish_workers import events
from tests.store.test_publish import STEPS, Crash, stop_at

PARTITIONS = 2
RECORDS = 30
"""Records in each partition of the modelled log."""
T0 = datetime(2026, 3, 1, 9)


def stream_of(p: int, off: int) -> int:
    return 100 * p + off % 3


def chunk(wh: Warehouse, p: int, start: int, n: int) -> Chunk:
    """Records ``start`` … of partition ``p``: one event each (message id ``p<p>-<off>``),
    each the latest of its stream (three per partition)."""
    offs = list(range(start, min(start + n, RECORDS)))
    table = pa.concat_tables([events(1, f"p{p}-{o}", T0 + timedelta(minutes=o))
                              for o in offs])
    keys = {stream_of(p, o): o for o in offs}
    streams = pa.table({
        "stream_key": pa.array(list(keys), pa.int64()),
        "last_ts": pa.array([T0 + timedelta(minutes=o) for o in keys.values()],
                            pa.timestamp("us")),
        "session_id": pa.array([f"s{o}" for o in keys.values()], pa.string()),
        "seen_ms": pa.array(list(keys.values()), pa.int64()),
        "log_partition": pa.array([p] * len(keys), pa.int32())})
    return Chunk(events=table, position={p: offs[-1] + 1}, next_person=1000,
                 streams=streams, epoch=wh.epoch)


class Side:
    def __init__(self, tmp: Path, name: str, url: str) -> None:
        self.tmp, self.name, self.url = tmp, name, url
        self.open()

    def open(self) -> None:
        self.wh = Warehouse(self.tmp / self.name,
                            tiers=TierStore(TierConfig(str(self.tmp / "tiers"))),
                            shared_list=open_meta(self.tmp / "tiers.db", self.url))
        handover.enable(self.wh)
        Publisher(self.wh, 1).recover()

    def process(self, p: int, n: int) -> None:
        start = self.wh.get_positions().get(p, 0)
        if start < RECORDS:
            self.wh.write(chunk(self.wh, p, start, n))


def listed(wh: Warehouse) -> Counter[str]:
    out: Counter[str] = Counter()
    for f in wh.files.files():
        if f.tier == "warm":
            out.update(wh.tiers.read([f.path], ["message_id"]).column("message_id").to_pylist())
    return out


def folded(db: MetaDB) -> list[tuple[Any, ...]]:
    """Folds the staged streams: the shared streams are the same after as before, every
    listed batch's rows are gone, and the staged rows left are of batches not listed
    whose writer has not published a later one. Returns the shared streams."""
    before = sorted(handover.shared(db)[1])
    handover.fold(db)
    assert sorted(handover.shared(db)[1]) == before
    assert db.fetchall("SELECT * FROM log_stream_batches") == []
    assert db.fetchall("SELECT r.writer, r.seq FROM log_stream_rows r JOIN tier_writers w"
                       " ON w.writer = r.writer WHERE r.seq <= w.published") == []
    return before


OPS = st.lists(st.tuples(st.sampled_from(["process", "publish", "stop", "move", "kill",
                                          "fold"]),
                         st.integers(0, 4), st.integers(0, PARTITIONS - 1)),
               min_size=1, max_size=14)


def run(ops: list[tuple[str, int, int]], server: str) -> None:
    url = new_database(server) if server else ""  # an empty shared store per example
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sides = [Side(tmp, "a", url), Side(tmp, "b", url)]
        owner = {p: 0 for p in range(PARTITIONS)}
        for s in sides:
            handover.adopt(s.wh, [p for p in owner if owner[p] == sides.index(s)])
        try:
            for op, arg, p in ops:
                x = sides[owner[p]]
                if op == "process":
                    x.process(p, 1 + 3 * arg)
                elif op in ("publish", "stop"):
                    step = stop_at(STEPS[arg] if op == "stop" else None)
                    try:
                        Publisher(x.wh, 1, step=step).publish_once()
                    except Crash:
                        x.wh.close()
                        x.open()
                elif op == "fold":
                    folded(x.wh.files.db)
                elif op in ("move", "kill"):  # kill: the owner is gone without publishing
                    if op == "move":
                        Publisher(x.wh, 1).publish_once()
                    owner[p] = 1 - owner[p]
                    handover.adopt(sides[owner[p]].wh, [p])
            # the end: everybody publishes what it has, the owners read to the end
            for _ in range(2):
                for s in sides:
                    Publisher(s.wh, 1).publish_once()
                for p, o in owner.items():
                    handover.adopt(sides[o].wh, [p])
                    while sides[o].wh.get_positions().get(p, 0) < RECORDS:
                        sides[o].process(p, 7)
                    Publisher(sides[o].wh, 1).publish_once()
            got = listed(sides[0].wh)
            want = Counter(f"p{p}-{o}-0" for p in range(PARTITIONS) for o in range(RECORDS))
            assert got == want, (f"doubled {sorted(k for k, v in got.items() if v > 1)[:5]},"
                                 f" missing {sorted(want - got)[:5]}")
            positions, streams = handover.shared(sides[0].wh.files.db)
            assert positions == {p: RECORDS for p in range(PARTITIONS)}
            assert folded(sides[0].wh.files.db) == sorted(streams)
            alone = {stream_of(p, o): o for p in range(PARTITIONS) for o in range(RECORDS)}
            assert {int(k): int(seen) for k, _, _, _, seen in streams} == alone
        finally:
            for s in sides:
                s.wh.close()


@settings(max_examples=examples(40), deadline=None)  # two warehouses on disk per example
@given(ops=OPS)
def test_any_interleaving_publishes_each_record_once(ops: list[tuple[str, int, int]]) -> None:
    run(ops, "")


@pytest.mark.slow
@settings(max_examples=examples(15), deadline=None)
@given(ops=OPS)
def test_any_interleaving_publishes_each_record_once_on_postgresql(
        ops: list[tuple[str, int, int]], pg: PgCluster) -> None:
    run(ops, pg.url)


def test_a_stale_batch_is_refused_and_dropped(tmp_path: Path) -> None:
    """A published 10 records of partition 0 and processed 10 more; the partition moved to
    B (A gone without publishing), which published 25: A's late batch lists nothing, its
    rows are gone, and it starts again from B's position; the streams it staged count for
    nobody and are deleted by the next fold after A lists a later batch."""
    a, b = Side(tmp_path, "a", ""), Side(tmp_path, "b", "")
    try:
        a.process(0, 10)
        assert Publisher(a.wh, 1).publish_once()["rows"] == 10
        a.process(0, 10)
        handover.adopt(b.wh, [0])
        assert b.wh.get_positions() == {0: 10}
        b.process(0, 15)
        Publisher(b.wh, 1).publish_once()
        out = Publisher(a.wh, 1).publish_once()
        assert out["files"] == -1 and out["dropped"] == 10
        assert a.wh.get_positions() == {0: 25} and a.wh.epoch == 1
        assert a.wh.con.execute("SELECT count(*) FROM events_raw").fetchone() == (0,)
        assert listed(a.wh) == Counter(f"p0-{o}-0" for o in range(25))
        # A's late batch staged its streams (records 17-19), which count for nobody: the
        # shared streams are B's (22-24), until a fold after A's next batch deletes them
        db, mine = a.wh.files.db, [a.wh.files.writer]
        assert db.fetchall("SELECT seq, count(*) FROM log_stream_rows WHERE writer = ?"
                           " GROUP BY seq ORDER BY seq", mine) == [(1, 3), (2, 3)]
        assert {k: seen for k, _, _, _, seen in handover.shared(db)[1]} \
            == {stream_of(0, o): o for o in range(22, 25)}
        a.process(0, 5)
        assert Publisher(a.wh, 1).publish_once()["files"] == 1
        folded(db)
        assert db.fetchall("SELECT count(*) FROM log_stream_rows WHERE writer = ?", mine) \
            == [(0,)]
        assert {k: seen for k, _, _, _, seen in handover.shared(db)[1]} \
            == {stream_of(0, o): o for o in range(27, 30)}
        stale = chunk(a.wh, 0, 20, 3)
        stale.epoch = 0  # built before the drop
        with pytest.raises(Exception, match="reset since the chunk was built"):
            a.wh.write(stale)
    finally:
        a.wh.close()
        b.wh.close()


def test_a_batch_finished_by_a_rewrite_while_its_streams_are_staged_is_listed_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The streams are staged without the write lock: a rewrite (erasure, retention) that
    settles in that gap finishes the batch itself (staging again); the publisher then finds
    it finished and lists nothing twice."""
    a = Side(tmp_path, "a", "")
    stage_batch = handover.stage_batch
    gap: list[int] = []

    def rewrite_in_the_gap(wh: Warehouse, seq: int) -> bool:
        monkeypatch.setattr(handover, "stage_batch", stage_batch)  # the rewrite's own
        with wh.write_lock:
            gap.append(wh.settle())  # type: ignore[arg-type]
        return stage_batch(wh, seq)

    try:
        a.process(0, 10)
        monkeypatch.setattr(handover, "stage_batch", rewrite_in_the_gap)
        out = Publisher(a.wh, 1).publish_once()
        assert gap == [1] and out["files"] == 0  # finished by the rewrite, not again
        assert listed(a.wh) == Counter(f"p0-{o}-0" for o in range(10))
        assert handover.shared(a.wh.files.db)[0] == {0: 10}
        assert {k: seen for k, _, _, _, seen in folded(a.wh.files.db)} \
            == {stream_of(0, o): o for o in range(7, 10)}
    finally:
        a.wh.close()


def test_an_erasure_takes_its_ids_out_of_the_shared_streams(tmp_path: Path,
                                                             meta_url: str) -> None:
    """Stream 1 is in the shared streams (A listed and folded it); B staged stream 101 for
    a batch it marked and wrote but did not list. An erasure of both ids through A takes
    them out of the shared streams and the staged rows at once; B applies it before it
    lists that batch, and the folds after leave neither (nor any copy in either
    warehouse): the shared streams held an erased person's keyed id and session for as
    long as nobody's idle sweep forgot the stream."""
    a, b = Side(tmp_path, "a", meta_url), Side(tmp_path, "b", meta_url)
    try:
        mirror_a, mirror_b = erasures.attach(a.wh), erasures.attach(b.wh)
        assert mirror_a is not None and mirror_b is not None
        db = a.wh.files.db
        a.process(0, 10)  # streams 0, 1, 2
        Publisher(a.wh, 1).publish_once()
        handover.fold(db)
        b.process(1, 10)  # streams 100, 101, 102
        with pytest.raises(Crash):
            Publisher(b.wh, 1, step=stop_at("written")).publish_once()
        gone = [1, 101]
        where = "stream_key IN (1, 101)"
        assert db.fetchall(f"SELECT stream_key FROM log_streams WHERE {where}") == [(1,)]
        assert db.fetchall(f"SELECT stream_key FROM log_stream_rows WHERE {where}") == [(101,)]
        mirror_a.record(set(), set(gone))
        for table in ("log_streams", "log_stream_rows"):
            assert db.fetchall(f"SELECT count(*) FROM {table} WHERE {where}") == [(0,)], table
        assert Publisher(b.wh, 1).publish_once()["finished"] == 1  # applied, then listed
        assert mirror_b.applied == 1
        folded(db)
        assert {k for k, *_ in handover.shared(db)[1]} == {0, 2, 100, 102}
        for side in (a, b):
            for table in ("session_streams", "stream_changes", "publish_streams"):
                assert side.wh.con.execute(
                    f"SELECT count(*) FROM {table} WHERE {where}").fetchone() == (0,), table
    finally:
        a.wh.close()
        b.wh.close()
