"""The processor in-process: failed writes leave no trace in its state, and a record
that can never be written is set aside instead of stopping the pipeline."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aap.events import Event, encode_events
from aap.log.base import Append
from aap.log.sqlite import SQLiteLog
from aap.privacy.ids import IdHasher
from aap.process.processor import Processor
from aap.store.warehouse import Chunk, Warehouse

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)


def ev(i: int, **kw: object) -> Event:
    base: dict[str, object] = {"type": "track", "event": "E", "message_id": f"m{i}",
                               "anonymous_id": f"a{i % 5}", "timestamp": T0 + timedelta(minutes=i),
                               "received_at": T0 + timedelta(minutes=i), "source": "s"}
    base.update(kw)
    return Event(**base)  # type: ignore[arg-type]


def fill(log: SQLiteLog) -> None:
    for r in range(10):
        events = [ev(r * 10 + i) for i in range(10)]
        if r == 4:  # an identify in the middle links a0 to a user
            events[3] = ev(43, type="identify", event=None, user_id="alice", anonymous_id="a0")
        log.append([Append("s", len(events), encode_events(events))])


class Flaky(Warehouse):
    def __init__(self, path: Path, fail_when: str, times: int) -> None:
        super().__init__(path)
        self.fail_when, self.times = fail_when, times

    def write(self, chunk: Chunk) -> None:
        if self.times and self.fail_when in chunk.events.column("message_id").to_pylist():
            self.times -= 1
            raise OSError("disk trouble")
        super().write(chunk)


def snapshot(wh: Warehouse) -> dict[str, object]:
    q = wh.query
    return {
        "events": q("SELECT message_id, person_id, session_id FROM events ORDER BY 1")[1],
        "persons": q("SELECT person_id, identified FROM persons ORDER BY 1")[1],
        "ids": q("SELECT count(*) FROM person_ids")[1],
        "streams": q("SELECT * FROM session_streams ORDER BY 1")[1],
    }


def drain(proc: Processor) -> None:
    for _ in range(200):
        try:
            if not proc.run_once():
                return
        except OSError:
            continue


def test_a_failed_write_leaves_no_trace(tmp_path: Path) -> None:
    fill(log := SQLiteLog(tmp_path / "log"))
    clean = Warehouse(tmp_path / "clean")
    drain(Processor(log, clean, IdHasher(b"k" * 32), chunk_records=3))
    flaky = Flaky(tmp_path / "flaky", fail_when="m43", times=2)
    drain(Processor(log, flaky, IdHasher(b"k" * 32), chunk_records=3))
    assert flaky.times == 0
    assert snapshot(flaky) == snapshot(clean)
    assert len(snapshot(clean)["events"]) == 100  # type: ignore[arg-type]


class LoadAway(Flaky):
    """The tier store does not answer ``loads`` loads of the processor's state (its dedup
    keys are read from the warm tier: S3 away), counted once the ``writes`` failed writes
    of the chunk holding ``fail_when`` are done."""

    def __init__(self, path: Path, *, loads: int, writes: int = 0,
                 fail_when: str = "m43") -> None:
        super().__init__(path, fail_when=fail_when, times=writes)
        self.loads = loads

    def load_dedup_keys(self) -> list[str]:
        if self.times == 0 and self.loads:
            self.loads -= 1
            raise OSError("AWS Error NETWORK_CONNECTION during HeadObject operation")
        return super().load_dedup_keys()


def clean_run(tmp_path: Path) -> tuple[SQLiteLog, Warehouse]:
    fill(log := SQLiteLog(tmp_path / "log"))
    clean = Warehouse(tmp_path / "clean")
    drain(Processor(log, clean, IdHasher(b"k" * 32), chunk_records=3))
    return log, clean


def test_a_failed_reload_after_a_failed_write_is_tried_again_before_reading_on(
        tmp_path: Path) -> None:
    log, clean = clean_run(tmp_path)
    flaky = LoadAway(tmp_path / "flaky", loads=1, writes=1)
    drain(Processor(log, flaky, IdHasher(b"k" * 32), chunk_records=3))
    assert flaky.times == 0 and flaky.loads == 0
    assert snapshot(flaky) == snapshot(clean)  # the failed chunk's events are stored


def test_a_processor_starts_while_the_tier_store_is_away_and_loads_before_its_first_chunk(
        tmp_path: Path) -> None:
    log, clean = clean_run(tmp_path)
    away = LoadAway(tmp_path / "away", loads=2)
    proc = Processor(log, away, IdHasher(b"k" * 32), chunk_records=3)  # does not raise
    with pytest.raises(OSError):  # still away at the first turn: nothing read
        proc.run_once()
    assert proc.position == 0
    drain(proc)
    assert away.loads == 0 and snapshot(away) == snapshot(clean)


def test_a_poison_record_is_set_aside(tmp_path: Path) -> None:
    fill(log := SQLiteLog(tmp_path / "log"))
    wh = Flaky(tmp_path / "wh", fail_when="m55", times=10**6)
    proc = Processor(log, wh, IdHasher(b"k" * 32), chunk_records=3)
    drain(proc)
    ids = {r[0] for r in wh.query("SELECT message_id FROM events")[1]}
    assert len(ids) == 90 and not {f"m{i}" for i in range(50, 60)} & ids
    assert wh.query("SELECT log_offset, events FROM dead_letters")[1] == [(6, 10)]
    assert proc.dropped["unprocessable"] == 10
    assert proc.position == log.stats().head_offset


@pytest.mark.parametrize("dup_gap", [1, 7])
def test_duplicates_across_chunks_and_restarts(tmp_path: Path, dup_gap: int) -> None:
    log = SQLiteLog(tmp_path / "log")
    wh = Warehouse(tmp_path / "wh")
    mid = str(uuid.uuid4())
    log.append([Append("s", 1, encode_events([ev(1, message_id=mid)]))])
    first = Processor(log, wh, IdHasher(b"k" * 32))
    first.run_once()
    first.close()  # its write is committed (it runs in the background)
    for i in range(dup_gap):
        log.append([Append("s", 1, encode_events([ev(100 + i)]))])
    log.append([Append("s", 1, encode_events([ev(2, message_id=mid)]))])  # a late copy
    proc = Processor(log, wh, IdHasher(b"k" * 32))  # a new processor: keys come from the store
    drain(proc)
    assert wh.query("SELECT count(*) FROM events WHERE message_id = ?", [mid])[1] == [(1,)]
    assert proc.dropped["duplicate"] == 1


@pytest.mark.parametrize("worker", [False, True])
def test_a_source_marked_historical_while_running_keeps_its_timestamps(
        tmp_path: Path, worker: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The processor reads the sources' historical flags again while it runs: events of a
    source made historical after it started keep their timestamps as sent."""
    import aap.process.processor as processor_module

    monkeypatch.setattr(processor_module, "SOURCES_REFRESH_S", 0.0)
    log = SQLiteLog(tmp_path / "log")
    wh = Warehouse(tmp_path / "wh")
    historical: set[str] = set()
    sent = T0 + timedelta(hours=1)  # a client clock an hour ahead of its events' times

    def skewed(i: int) -> Event:
        return ev(i, timestamp=T0, sent_at=sent, received_at=sent + timedelta(hours=5))

    proc = Processor(log, wh, IdHasher(b"k" * 32), worker=worker,
                     historical_sources=lambda: frozenset(historical))
    try:
        log.append([Append("s", 1, encode_events([skewed(1)]))])
        drain(proc)
        historical.add("s")  # e.g. `aap sources create --historical` while it runs
        log.append([Append("s", 1, encode_events([skewed(2)]))])
        drain(proc)
    finally:
        proc.close()
    times = dict(wh.query("SELECT message_id, timestamp FROM events")[1])
    assert times["m1"] == (T0 + timedelta(hours=5)).replace(tzinfo=None)  # corrected for skew
    assert times["m2"] == T0.replace(tzinfo=None)  # kept as sent


class Grouped(SQLiteLog):
    """A SQLite log dressed as a partitioned one, whose group the test rebalances."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.generation = 0
        self.on_revoke: object = None
        self.stored_positions: object = None


class SlowWrites(Warehouse):
    slow = True

    def write(self, chunk: Chunk) -> None:
        if self.slow:
            time.sleep(0.3)
        super().write(chunk)


def test_a_rebalance_commits_the_write_in_flight_and_drops_what_was_read_ahead(
        tmp_path: Path) -> None:
    fill(log := Grouped(tmp_path / "log"))
    wh = SlowWrites(tmp_path / "wh")
    proc = Processor(log, wh, IdHasher(b"k" * 32), chunk_records=3)
    assert log.on_revoke == proc._revoked and log.stored_positions == wh.get_positions
    proc.pressed = True  # busy: reads ahead
    assert proc.run_once() == 3  # its write is in flight, the next chunks read ahead
    assert proc._ahead and wh.get_positions() == {}
    proc._revoked()  # the group takes partitions: the write in flight commits first
    assert wh.get_positions() == {0: 3} and proc.position == 3
    log.generation += 1  # …and is assigned anew: what was read ahead is not written
    assert proc.run_once() == 0
    assert not proc._ahead and proc._next == {0: 3}
    wh.slow = False
    drain(proc)
    proc.close()
    ids = [r[0] for r in wh.query("SELECT message_id FROM events")[1]]
    assert len(ids) == len(set(ids)) == 100 and not proc.dropped
