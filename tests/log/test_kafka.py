"""The Kafka log against librdkafka's mock cluster (no Kafka broker installs here).

A holder process (:mod:`tests.kafka_mock`) starts the mock cluster and prints its
brokers; the log under test connects to them as to any cluster. Topics auto-create with
4 partitions. Broker failures are injected through librdkafka's mock API (brokers set
down and up, here all three at once); tests/log/test_kafka_faults.py moves leaders and
pushes produce errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import confluent_kafka as ck
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aap.errors import ServiceUnavailable
from aap.events import Event, decode_events, encode_events, payload_bytes
from aap.log import kafka as kafka_log
from aap.log import scan
from aap.log.base import Append, Record, advance
from aap.log.kafka import KafkaLog
from aap.log.keys import per_person
from tests.conftest import examples, slow_fixture
from tests.kafka_mock import Cluster, new_group

pytestmark = pytest.mark.slow


@slow_fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    yield c
    c.stop()


@slow_fixture(scope="module")
def shared_cluster() -> Iterator[Cluster]:
    c = Cluster()
    yield c
    c.stop()


def _event(i: int, user: int | None, anon: int | None = None) -> Event:
    return Event(type="track", message_id=f"m{i}", event=f"e{i}", user_key=user,
                 anonymous_key=anon, received_at=datetime(2026, 1, 1, tzinfo=UTC), source="s")


def read_all(log: KafkaLog, n: int, after: dict[int, int] | None = None,
             timeout: float = 30) -> tuple[list[Record], dict[int, int]]:
    """Read until ``n`` records came (or ``timeout``), then a little more to see that no
    extra one comes."""
    pos = dict(after or {})
    got: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        recs = log.read(pos, 500)
        got += recs
        pos = advance(pos, recs)
    got += log.read(pos, 500)
    return got, advance(pos, got)


def test_append_read_round_trip(shared_cluster: Cluster) -> None:
    grp = new_group()  # a group of its own: a closed member holds one up
    log = KafkaLog(shared_cluster.url(), group=grp)
    try:
        appends = [Append("src", 2, b"payload-%d" % i, b"k%d" % (i % 3)) for i in range(20)]
        offsets = log.append(appends)
        assert len(offsets) == 20 and all(o >= 1 for o in offsets)
        got, _ = read_all(log, 20)
        assert sorted(r.payload for r in got) == sorted(a.payload for a in appends)
        assert all(r.source == "src" and r.count == 2 and r.appended_at_ms > 0 for r in got)
        assert {r.partition for r in got} <= set(range(4))
        # offsets: per partition, 1, 2, 3 … in order
        for p in {r.partition for r in got}:
            assert [r.offset for r in got if r.partition == p] == list(
                range(1, 1 + sum(r.partition == p for r in got)))
    finally:
        log.close()


def test_key_is_the_person_and_their_order_is_kept(shared_cluster: Cluster) -> None:
    grp = new_group()  # a group of its own: a closed member holds one up
    log = KafkaLog(shared_cluster.url(), group=grp)
    try:
        # one request of three senders, twice: a server library (userId 1 alone), a
        # logged-in browser (userId 2 and anonymousId 9: keyed by its anonymousId, the
        # device's stream), an anonymous browser (anonymousId 3)
        events = [_event(i, user=[1, 2, None][i % 3], anon=[None, 9, 3][i % 3])
                  for i in range(30)]
        split = per_person("s", events[:15]) + per_person("s", events[15:])
        assert [a.key for a in split] == [b"1", b"9", b"3"] * 2
        log.append(split)
        got, _ = read_all(log, 6)
        assert len(got) == 6
        by_person: dict[int, list[str]] = {}
        partition: dict[int, set[int]] = {}
        for r in got:
            for ev in decode_events(r.payload):
                who = ev.anonymous_key if ev.anonymous_key is not None else ev.user_key
                assert who is not None
                by_person.setdefault(who, []).append(ev.message_id)
                partition.setdefault(who, set()).add(r.partition)
        for who, ids in by_person.items():
            assert ids == [e.message_id for e in events
                           if (e.anonymous_key if e.anonymous_key is not None
                               else e.user_key) == who]
            assert len(partition[who]) == 1  # one person, one partition
        # an Append without a key is split here, per person
        log.append([Append("s", 4, encode_events(
            [_event(100, 5), _event(101, 6), _event(102, 5), _event(103, 6)]))])
        more, _ = read_all(log, 2, after=advance({}, got))
        assert sorted((r.count, [e.user_key for e in decode_events(r.payload)])
                      for r in more) == [(2, [5, 5]), (2, [6, 6])]
    finally:
        log.close()


def test_a_request_is_one_message_per_partition_and_each_stream_keeps_its_partition(
        shared_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """``KafkaLog.records``: before the topic's partitions are known, one keyed message
    per stream (librdkafka partitions them); after the first append, one message per
    partition of a request's events, each stream in the partition librdkafka gave its key
    (so a stream stays in one partition across the switch), in its order; events with no
    stream in one partition; a partition's events past ``MAX_RECORD_BYTES`` split in
    order."""
    grp = new_group()  # a group of its own: a closed member holds one up
    log = KafkaLog(shared_cluster.url(), group=grp)
    try:
        streams = 40

        def request(start: int) -> list[Event]:  # 100 events of 40 streams and 4 with none
            return [_event(i, user=None, anon=None) if i % 25 == 0
                    else _event(i, user=i % 7, anon=(i % streams) + 1000)
                    for i in range(start, start + 100)]

        first = log.records("s", request(0))
        assert all(a.key is not None and a.partition is None for a in first
                   if any(e.anonymous_key for e in decode_events(a.payload)))
        assert len(first) > 4  # a message per stream
        log.append(first)
        assert log._partition_count == 4  # known after the first append
        second = log.records("s", request(100))
        assert len(second) <= 4 and all(a.key is None and a.partition is not None
                                        for a in second)
        assert sum(a.count for a in second) == 100
        log.append(second)
        got, _ = read_all(log, len(first) + len(second))
        assert len(got) == len(first) + len(second)
        where: dict[int | None, set[int]] = {}
        order: dict[int | None, list[str]] = {}
        for r in got:  # per partition in offset order
            for ev in decode_events(r.payload):
                where.setdefault(ev.anonymous_key, set()).add(r.partition)
                order.setdefault(ev.anonymous_key, []).append(ev.message_id)
        assert len([k for k in where if k is not None]) == streams
        for key, parts in where.items():
            if key is not None:  # both requests' events of a stream: one partition
                assert parts == {kafka_log.partition_of(str(key).encode(), 4)}, key
                mine = [e.message_id for e in request(0) + request(100)
                        if e.anonymous_key == key]
                assert order[key] == mine
        # a request's events with no stream: in one partition
        assert len({a.partition for a in second if any(
            e.anonymous_key is None for e in decode_events(a.payload))}) == 1

        # a partition's events past MAX_RECORD_BYTES: several messages, in order
        monkeypatch.setattr(kafka_log, "MAX_RECORD_BYTES", 1000)
        one = [_event(i, user=None, anon=7) for i in range(300, 340)]
        parts = log.records("s", one)
        assert len(parts) > 1 and {a.partition for a in parts} == {
            kafka_log.partition_of(b"7", 4)}
        assert all(len(a.payload) <= 1000 for a in parts)
        assert [e.message_id for a in parts for e in decode_events(a.payload)] == [
            e.message_id for e in one]
    finally:
        log.close()


def test_keyed_records_hold_plain_json_and_compressed_ones_still_read() -> None:
    """A keyed log's producer compresses whole batches (zstd), so :func:`per_person` leaves
    each record's JSON as it is; a record compressed on its own (the SQLite log's, and
    Kafka records written before) reads back the same."""
    events = [_event(i, user=i % 4, anon=None) for i in range(12)]
    for part in per_person("s", events):
        assert part.payload[:1] == b"["  # JSON, not a zstd frame
        assert payload_bytes(part.payload) == part.payload
        compressed = encode_events(decode_events(part.payload))
        assert compressed[:4] == b"\x28\xb5\x2f\xfd"  # zstd's magic number
        assert payload_bytes(compressed) == part.payload
        assert decode_events(compressed) == decode_events(part.payload)
    assert KafkaLog("kafka://127.0.0.1:1/t")._producer_conf()["compression.type"] == "zstd"


def test_append_returns_only_after_the_brokers_acknowledged(cluster: Cluster) -> None:
    grp = new_group()  # a group of its own: a closed member holds one up
    log = KafkaLog(cluster.url("producer.message.timeout.ms=4000"), group=grp)
    try:
        log.append([Append("s", 1, b"first", b"k")])  # the topic exists, the producer is up
        for b in cluster.ids:  # every broker closes its connections and refuses new ones
            cluster.down(b)
        result: list[object] = []

        def held() -> None:
            try:
                result.append(log.append([Append("s", 1, b"held", b"k")]))
            except Exception as exc:
                result.append(exc)

        t = threading.Thread(target=held)
        t.start()
        time.sleep(1.5)
        assert t.is_alive() and not result, "append returned before any acknowledgement"
        for b in cluster.ids:
            cluster.up(b)
        t.join(30)
        assert result == [[2]]  # acknowledged once the brokers answered

        for b in cluster.ids:  # down for longer than the delivery timeout: the append fails
            cluster.down(b)
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as exc:
            log.append([Append("s", 1, b"lost", b"k")])
        assert exc.value.code == "log_unavailable" and exc.value.status == 503
        assert time.monotonic() - started >= 3.5  # it waited for the delivery timeout
        for b in cluster.ids:  # and the same producer works again once they are back
            cluster.up(b)
        deadline = time.monotonic() + 60
        while True:
            try:
                offsets = log.append([Append("s", 1, b"again", b"k")])
                break
            except ServiceUnavailable:
                assert time.monotonic() < deadline, "the producer did not come back"
        got, _ = read_all(log, 3)
        assert sorted(r.payload for r in got if r.payload != b"lost") == [
            b"again", b"first", b"held"]
        assert offsets[0] == max(r.offset for r in got)
    finally:
        log.close()


def test_two_consumers_of_a_group_split_the_partitions_and_see_each_record_once(
        shared_cluster: Cluster) -> None:
    grp = new_group()  # a group of its own: a closed member holds one up
    url = shared_cluster.url("consumer.session.timeout.ms=30000")  # a loaded machine
    producer = KafkaLog(url, group=grp)
    a, b = KafkaLog(url, group=grp), KafkaLog(url, group=grp)
    seen: dict[str, list[bytes]] = {"a": [], "b": []}
    stop = threading.Event()

    refused: list[str] = []

    def commit(log: KafkaLog, pos: dict[int, int]) -> None:
        try:
            log.commit(grp, pos)
        except ck.KafkaException as exc:
            # a member late for a rebalance (a loaded machine) has its commit refused
            # (REBALANCE_IN_PROGRESS): the partition's next owner reads again from the
            # last commit, as Kafka promises (the processor keeps its positions with its
            # rows instead: tests/process/test_processor_kafka.py)
            refused.append(str(exc))

    def consume(name: str, log: KafkaLog) -> None:
        pos: dict[int, int] = {}
        gen = -1
        log.on_revoke = lambda: commit(log, pos)  # positions go with what was seen
        while not stop.is_set():
            if log.generation != gen:
                gen, pos = log.generation, log.positions(grp)
            recs = log.read(pos, 100)
            if log.generation != gen:
                continue
            seen[name] += [r.payload for r in recs]
            pos = advance(pos, recs)
            commit(log, pos)

    try:
        threads = [threading.Thread(target=consume, args=(n, lg)) for n, lg in
                   (("a", a), ("b", b))]
        for t in threads:
            t.start()
        sent: list[bytes] = []
        # while the group forms and rebalances, and until both members have read records
        # (on a loaded machine the second may join late: no fixed number of batches)
        deadline = time.monotonic() + 180
        i = 0
        while i < 40 or not (seen["a"] and seen["b"]):
            assert time.monotonic() < deadline, "both consumers got partitions"
            batch = [Append("s", 1, b"r%d-%d" % (i, j), b"p%d" % j) for j in range(10)]
            producer.append(batch)
            sent += [x.payload for x in batch]
            i += 1
            time.sleep(0.1)
        deadline = time.monotonic() + 60
        while len(seen["a"]) + len(seen["b"]) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join(30)
        assert seen["a"] and seen["b"], "both consumers got partitions"
        assert set(seen["a"] + seen["b"]) == set(sent)  # every record
        if not refused:
            assert sorted(seen["a"] + seen["b"]) == sorted(sent)  # and once
    finally:
        for lg in (a, b, producer):
            lg.close()


def test_restart_from_committed_positions_misses_and_doubles_nothing(
        shared_cluster: Cluster) -> None:
    grp = new_group()  # a group of its own: a closed member holds one up
    url = shared_cluster.url()
    log = KafkaLog(url, group=grp)
    log.append([Append("s", 1, b"%d" % i, b"k%d" % (i % 5)) for i in range(50)])
    got, _ = read_all(log, 50)
    first = got[:23]  # "processed" only these, then crashed
    log.commit(grp, advance({}, first))
    log.close()
    log.append([Append("s", 1, b"%d" % i, b"k%d" % (i % 5)) for i in range(50, 60)])

    again = KafkaLog(url, group=grp)
    try:
        committed = again.positions(grp)
        assert committed == advance({}, first)
        rest, _ = read_all(again, 60 - len(first), after=committed)
        assert sorted(int(r.payload) for r in first + rest) == list(range(60))

        # positions kept elsewhere (the warehouse, read again at each assignment) and
        # handed to read: another group starts there
        third = KafkaLog(url, group=grp + "h", stored_positions=lambda: committed)
        try:
            also, _ = read_all(third, 60 - len(first), after=committed)
            assert sorted(r.payload for r in also) == sorted(r.payload for r in rest)
            # and a caller going back (after a failed write) reads again from there
            back, _ = read_all(third, 60 - len(first), after=committed)
            assert sorted(r.payload for r in back) == sorted(r.payload for r in rest)
        finally:
            third.close()
    finally:
        again.close()


def test_partitions_not_taken_over_are_assigned_again(
        shared_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """``on_assign`` (the processor's take-over of the shared positions) keeps failing
    past ``ASSIGN_RETRY_S`` (PostgreSQL down): the consumer leaves the group and joins it
    again, so the take-over is tried again at the next assignment; once it works, every
    record is read (a consumer that stayed in the group unassigned read nothing more)."""
    monkeypatch.setattr(kafka_log, "ASSIGN_RETRY_S", 0.0)
    log = KafkaLog(shared_cluster.url(), group=new_group())
    calls: list[list[int]] = []

    def on_assign(partitions: list[int]) -> None:
        calls.append(partitions)
        if len(calls) <= 2:
            raise RuntimeError("the shared state is down")

    log.on_assign = on_assign
    try:
        log.append([Append("s", 1, b"%d" % i, b"k%d" % (i % 5)) for i in range(20)])
        got: list[Record] = []
        pos: dict[int, int] = {}
        deadline = time.monotonic() + 120
        while len(got) < 20 and time.monotonic() < deadline:
            try:  # as the processor does: a failed read is tried again
                recs = log.read(pos, 500)
            except RuntimeError:
                continue
            got += recs
            pos = advance(pos, recs)
        assert sorted(int(r.payload) for r in got) == list(range(20))
        assert len(calls) >= 3 and calls[-1] == sorted(log.assigned)
    finally:
        log.close()


@slow_fixture(scope="module")
def one_log(shared_cluster: Cluster) -> Iterator[tuple[KafkaLog, dict[int, int]]]:
    """One topic and consumer for every example (a group join takes seconds)."""
    grp = new_group()  # a group of its own: a closed member holds one up
    log = KafkaLog(shared_cluster.url(), group=grp)
    yield log, {}
    log.close()


# examples(40): each example waits for Kafka round trips (acks=all, then a read)
@settings(max_examples=examples(40), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(groups=st.lists(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 9),
                                          st.binary(max_size=40), st.integers(0, 6)),
                                max_size=6), min_size=1, max_size=6))
def test_any_appends_read_back_exactly(one_log, groups) -> None:  # type: ignore[no-untyped-def]
    log, pos = one_log
    sent: list[Append] = []
    for group in groups:
        appends = [Append(src, n, p, b"k%d" % k) for src, n, p, k in group]
        assert len(log.append(appends)) == len(appends)
        sent += appends
    got, after = read_all(log, len(sent), after=pos, timeout=20)
    pos.clear()
    pos.update(after)  # the next example reads on from here
    assert sorted((r.source, r.count, r.payload) for r in got) == sorted(
        (a.source, a.count, a.payload) for a in sent)
    if len({a.payload for a in sent}) == len(sent):  # payloads tell the records apart
        for k in {a.key for a in sent}:  # one key: one partition, in the order sent
            mine = {a.payload for a in sent if a.key == k}
            where = [(r.partition, r.offset, r.payload) for r in got if r.payload in mine]
            assert len({p for p, _, _ in where}) == 1
            assert [pl for _, _, pl in sorted(where)] == [a.payload for a in sent if a.key == k]


def test_scan_and_stats_leave_the_group_alone(shared_cluster: Cluster) -> None:
    url = shared_cluster.url()
    log = KafkaLog(url)
    try:
        log.append([Append("s", 3, b"%d" % i, b"k%d" % i) for i in range(12)])
        got, pos = read_all(log, 12)  # the processors' member, with every partition
        log.commit("processor", advance({}, got[:5]))
        assert sorted(int(r.payload) for r in scan(log)) == list(range(12))
        st_ = log.stats()
        assert st_.head_offset == 12 and st_.lag_events == {"processor": 7}
        assert log.assigned == frozenset(range(4))  # nobody else joined
        assert log.read(pos) == []  # nor moved its positions
    finally:
        log.close()



def test_offsets_not_read_while_appends_go_through_keep_the_last_stats(
        cluster: Cluster) -> None:
    """A collector's health check reads the offsets every half second: when that read
    fails while this process's appends are acknowledged (a busy machine: CI saw a
    collector answer 503 ``log_unavailable`` to every request for seconds while Kafka
    took its appends), the last stats read stand; with no append acknowledged lately,
    the failure stands (the brokers may be gone: ingestion answers 503)."""
    log = KafkaLog(cluster.url())
    try:
        log.append([Append("s", 1, b"%d" % i, b"k%d" % i) for i in range(4)])
        before = log.stats()
        assert before.head_offset == 4
        log.append([Append("s", 1, b"more", b"k0")])
        cluster.errors(2, 50, "UNKNOWN")  # ListOffsets answers an error
        assert log.stats() == before  # the last read stands: appends go through
        time.sleep(2 * kafka_log.STATS_TIMEOUT_S)  # no append acknowledged since
        with pytest.raises(ck.KafkaException):
            log.stats()
        with pytest.raises(ServiceUnavailable):  # and at once for a while after
            log.stats()
    finally:
        log.close()
