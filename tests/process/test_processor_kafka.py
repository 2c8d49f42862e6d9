"""The processor on the Kafka log (librdkafka's mock cluster, one per test: the group
``processor`` is the same whatever the topic): its positions are per
partition and live in the warehouse, committed with the rows, so a processor that
crashed and one that takes over write every event once, whatever the group's offsets in
Kafka say."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import confluent_kafka as ck
import pytest

from aap.events import Event, decode_events
from aap.log.base import advance
from aap.log.kafka import KafkaLog
from aap.log.keys import per_person
from aap.privacy.ids import IdHasher
from aap.process.processor import Processor
from aap.store.warehouse import Chunk, Warehouse
from tests.kafka_mock import Cluster, topic_of
from tests.log.test_kafka import cluster  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow
T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
HASHER = IdHasher(b"k" * 32)


def ev(i: int) -> Event:
    anon = f"a{i % 7}"
    return Event(type="track", event="E", message_id=f"m{i}", anonymous_id=anon,
                 anonymous_key=HASHER.key(anon), timestamp=T0 + timedelta(seconds=i),
                 received_at=T0 + timedelta(seconds=i), source="s")


def send(log: KafkaLog, first: int, n: int, per_request: int = 10) -> None:
    for r in range(first, first + n, per_request):
        log.append(per_person("s", [ev(i) for i in range(r, min(r + per_request, first + n))]))


def stored(wh: Warehouse) -> list[str]:
    with wh.snapshot() as cur:  # its own cursor: the processor's threads run meanwhile
        return [r[0] for r in cur.execute("SELECT message_id FROM events").fetchall()]


class SlowWrites(Warehouse):
    """Each chunk takes a while to commit: a write is in flight when the group changes."""

    def write(self, chunk: Chunk) -> None:
        time.sleep(0.5)
        super().write(chunk)


def run_until(proc: Processor, wh: Warehouse, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(stored(wh)) < n and time.monotonic() < deadline:
        if not proc.run_once():
            time.sleep(0.05)
    for _ in range(5):  # and nothing more comes
        proc.run_once()


def test_a_crash_and_a_takeover_write_every_event_once(
        cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    url = cluster.url()
    producer = KafkaLog(url)
    wh = Warehouse(tmp_path / "wh")
    try:
        send(producer, 0, 100)
        first_log = KafkaLog(url)
        first = Processor(first_log, wh, HASHER, chunk_records=4)
        run_until(first, wh, 40)  # part of it, in chunks of 4 records
        first.close()
        done = wh.get_positions()
        assert done and sum(done.values()) >= 1
        # the group's offsets in Kafka say "nothing read": the warehouse's positions win
        first_log.commit("processor", {p: 0 for p in range(4)})
        assert producer.positions("processor") == {p: 0 for p in range(4)}
        first_log.close()  # leaves the group: another member may take the partitions
        send(producer, 100, 50)

        second_log = KafkaLog(url)
        second = Processor(second_log, wh, HASHER, chunk_records=7)
        run_until(second, wh, 150)
        second.close()
        ids = stored(wh)
        assert len(ids) == 150 and len(set(ids)) == 150  # nothing missing, nothing doubled
        assert not first.dropped and not second.dropped  # no duplicate was even read
        assert second.position == sum(wh.get_positions().values())
        # the positions are the partitions' heads, and Kafka's offsets follow them
        c = second_log.consumer()
        heads = {p: c.get_watermark_offsets(ck.TopicPartition(second_log.topic, p),
                                            timeout=10)[1] for p in range(4)}
        assert wh.get_positions() == {p: h for p, h in heads.items() if h}
        assert second_log.positions("processor") == heads  # (an empty partition: the 0 set above)
        second_log.close()
    finally:
        producer.close()
        wh.close()


def test_a_member_joining_takes_partitions_where_the_processor_stopped(
        cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    """A processor owns every partition; another member joins the group and gets some:
    it starts them from the positions in the warehouse (the processor finished its write
    before they were revoked, and wrote none of what it had read ahead), so the events in
    the warehouse and those the newcomer reads are every event, once."""
    url = cluster.url()
    producer = KafkaLog(url)
    wh = SlowWrites(tmp_path / "wh")

    def warehouse_positions() -> dict[int, int]:
        return wh.get_positions()

    proc_log = KafkaLog(url)
    proc = Processor(proc_log, wh, HASHER, chunk_records=20)
    stop = threading.Event()
    runner = threading.Thread(target=proc.run, args=(stop,), kwargs={"linger": 0.01})
    newcomer = KafkaLog(url, stored_positions=warehouse_positions)
    seen: list[str] = []
    sent = [0]

    def sending() -> None:
        """200 events over about 6 s, and more until the newcomer has read some (on a
        loaded machine it may join late: no fixed number of events), at most 180 s."""
        deadline = time.monotonic() + 180
        while (sent[0] < 200 or not seen) and time.monotonic() < deadline:
            send(producer, sent[0], 10)
            sent[0] += 10
            time.sleep(0.3)

    try:
        sender = threading.Thread(target=sending)
        sender.start()
        runner.start()
        deadline = time.monotonic() + 30
        while (len(proc_log.assigned) < 4 or not stored(wh)) and time.monotonic() < deadline:
            time.sleep(0.05)  # the processor has every partition, and chunks to write
        pos: dict[int, int] = {}
        gen = -1
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if newcomer.generation != gen:
                gen, pos = newcomer.generation, warehouse_positions()
            recs = newcomer.read(pos, 50)
            if newcomer.generation != gen:
                continue
            seen += [e.message_id for r in recs for e in decode_events(r.payload)]
            pos = advance(pos, recs)
            if not sender.is_alive() and len(seen) + len(stored(wh)) >= sent[0] and not recs:
                break
        sender.join()
        stop.set()
        runner.join(30)
        ids = stored(wh)
        assert newcomer.assigned and seen, "the newcomer got partitions"
        assert not proc.dropped  # the processor read no record twice either
        assert len(ids) == len(set(ids)) and not set(ids) & set(seen)
        assert sorted(ids + seen) == sorted(f"m{i}" for i in range(sent[0]))
    finally:
        stop.set()
        newcomer.close()
        proc_log.close()
        producer.close()
        wh.close()


def test_a_broker_down_while_the_processor_consumes_and_commits_loses_and_doubles_nothing(
        cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    """Broker 1 leads partitions 0 and 1 and coordinates the group ``processor``; it goes
    down while the processor runs (fetches from it, heartbeats and commits to it fail:
    ``_WAIT_COORD``; the mock group drops the member after the session timeout, which
    learns it once the broker is back and joins again, a rebalance), the leadership of
    its partitions moves to broker 3 while more events come, then it is up again: the
    warehouse holds every event once."""
    url = cluster.url("producer.message.timeout.ms=60000&consumer.session.timeout.ms=6000")
    topic = topic_of(url)
    cluster.topic(topic, 4, 3)
    for p in range(4):
        cluster.leader(topic, p, 1 if p < 2 else 2)
    cluster.coordinator("processor", 1)
    producer = KafkaLog(url)
    wh = Warehouse(tmp_path / "wh")
    proc_log = KafkaLog(url)
    proc = Processor(proc_log, wh, HASHER, chunk_records=5)
    stop = threading.Event()
    runner = threading.Thread(target=proc.run, args=(stop,), kwargs={"linger": 0.01})
    try:
        send(producer, 0, 100)
        runner.start()
        deadline = time.monotonic() + 120
        while len(stored(wh)) < 30:  # it consumes and commits, chunk after chunk
            assert time.monotonic() < deadline, "the processor did not start"
            time.sleep(0.05)
        cluster.down(1)
        # appends wait for a leader of partitions 0 and 1 (the delivery timeout is 60 s here)
        sender = threading.Thread(target=send, args=(producer, 100, 40))
        sender.start()
        time.sleep(1)
        for p in (0, 1):
            cluster.leader(topic, p, 3)
        sender.join(120)
        send(producer, 140, 60)
        time.sleep(10)  # past the session timeout (6 s) with the coordinator down: the
        # mock group drops the member, which learns it at its next heartbeat
        cluster.up(1)
        send(producer, 200, 50)
        deadline = time.monotonic() + 180
        while len(stored(wh)) < 250 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # and nothing more comes
        stop.set()
        runner.join(60)
        ids = stored(wh)
        assert len(ids) == len(set(ids)), "an event was written twice"
        assert sorted(ids) == sorted(f"m{i}" for i in range(250))
    finally:
        stop.set()
        proc_log.close()
        producer.close()
        wh.close()


def test_a_write_stored_but_unanswered_is_sent_again_and_written_once(
        cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    """The leader answers late (its round-trip time is 5 s) and goes down before it has
    answered: the producer sends the request again to it once it is up. The mock checks
    no sequence numbers for a producer that is not transactional, so the log holds those
    events twice (a real broker would refuse the copy); the processor drops the copies."""
    url = cluster.url()
    topic = topic_of(url)
    cluster.topic(topic, 1, 3)
    cluster.leader(topic, 0, 1)
    producer = KafkaLog(url)
    wh = Warehouse(tmp_path / "wh")
    proc_log = KafkaLog(url)
    proc = Processor(proc_log, wh, HASHER, chunk_records=3)
    try:
        send(producer, 0, 10)
        cluster.rtt(1, 5000)
        cluster.track()
        sender = threading.Thread(target=send, args=(producer, 10, 20, 5))
        sender.start()
        deadline = time.monotonic() + 60
        while not cluster.requests(0):  # a Produce request is stored, its answer held back
            assert time.monotonic() < deadline, "no Produce request came"
            time.sleep(0.01)
        cluster.down(1)
        cluster.rtt(1, 0)
        time.sleep(1)
        cluster.up(1)
        sender.join(120)
        assert not sender.is_alive()
        c = proc_log.consumer()
        head = c.get_watermark_offsets(ck.TopicPartition(topic, 0), timeout=10)[1]
        messages = len(per_person("s", [ev(i) for i in range(10)])) + sum(
            len(per_person("s", [ev(i) for i in range(r, r + 5)])) for r in range(10, 30, 5))
        assert head > messages, "no request was stored twice"
        run_until(proc, wh, 30)
        ids = stored(wh)
        assert sorted(ids) == sorted(f"m{i}" for i in range(30))  # each once
        assert proc.dropped["duplicate"] > 0  # the copies, dropped by the dedup step
    finally:
        proc_log.close()
        producer.close()
        wh.close()
