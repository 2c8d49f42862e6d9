"""Two processors in one consumer group on a Kafka topic (librdkafka's mock cluster), each
with its own warehouse, sharing identities on a real PostgreSQL (``AAP_META_URL``,
:mod:`aap.store.identities`): an event with only the userId and one with the
anonymousId are keyed apart (:func:`aap.log.keys.person_key`), so the halves of an
identity reach both processors; at the end every id is the same person in both
warehouses, and in the shared store."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aap.events import Event
from aap.log.kafka import KafkaLog
from aap.log.keys import per_person
from aap.privacy.ids import IdHasher
from aap.process.processor import Processor
from aap.store.identities import SharedIdentities
from aap.store.warehouse import Warehouse
from tests.kafka_mock import Cluster
from tests.log.test_kafka import cluster  # noqa: F401 (a fixture)
from tests.pg import Cluster as PgCluster
from tests.pg import fresh_database

pytestmark = pytest.mark.slow
T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
HASHER = IdHasher(b"k" * 32)
RESOLVED_IDS = ("SELECT i.id_key, coalesce(o.person_id, i.person_id) FROM person_ids i"
                " LEFT JOIN person_overrides o ON o.old_person_id = i.person_id")
_n = iter(range(1_000_000))


def ev(typ: str, user: str | None, anon: str | None) -> Event:
    i = next(_n)
    return Event(type=typ, event="E" if typ == "track" else None, message_id=f"m{i}",
                 user_id=user, user_key=HASHER.key(user) if user else None,
                 anonymous_id=anon, anonymous_key=HASHER.key(anon) if anon else None,
                 timestamp=T0 + timedelta(seconds=i), received_at=T0 + timedelta(seconds=i),
                 source="s")


def stored(wh: Warehouse) -> set[str]:
    with wh.snapshot() as cur:  # its own cursor: the processor's threads run meanwhile
        return {r[0] for r in cur.execute("SELECT message_id FROM events").fetchall()}


def test_two_processors_on_one_topic_agree_on_every_persons_ids(
        cluster: Cluster, pg: PgCluster, tmp_path: Path) -> None:  # noqa: F811
    fresh_database(pg.url)
    url = cluster.url()
    producer = KafkaLog(url)
    shared = tmp_path / "shared"
    shared.mkdir()
    whs = [Warehouse(tmp_path / "wh-a"), Warehouse(tmp_path / "wh-b")]
    logs = [KafkaLog(url), KafkaLog(url)]
    procs = [Processor(log, wh, HASHER, chunk_records=5,
                       identities=SharedIdentities(shared, pg.url))
             for log, wh in zip(logs, whs, strict=True)]
    stop = threading.Event()
    runners = [threading.Thread(target=p.run, args=(stop,), kwargs={"linger": 0.01})
               for p in procs]
    sent: set[str] = set()

    def send(events: list[Event]) -> None:
        producer.append(per_person("s", events))
        sent.update(e.message_id for e in events)

    def all_stored(timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not sent <= stored(whs[0]) | stored(whs[1]):
            assert time.monotonic() < deadline, "the processors did not store every event"
            time.sleep(0.1)

    n = 60
    try:
        for r in runners:
            r.start()
        deadline = time.monotonic() + 120  # both members have partitions
        while not all(log.assigned for log in logs) or len(
                logs[0].assigned | logs[1].assigned) < 4:
            assert time.monotonic() < deadline, "the group did not give both partitions"
            send([ev("track", None, "warm-up")])
            time.sleep(0.2)
        # anonymous visits and logged-in visits, apart; then the logins on those
        # devices (merges), then the devices again (their processor learns the merge)
        send([e for i in range(n) for e in (ev("track", None, f"x{i}"),
                                             ev("track", f"u{i}", None))])
        all_stored()
        send([ev("identify", f"u{i}", f"x{i}") for i in range(n)])
        all_stored()
        send([ev("track", None, f"x{i}") for i in range(n)])
        all_stored()
    finally:
        stop.set()
        for r in runners:
            r.join(60)
        for log in logs:
            log.close()
        producer.close()
    views = [dict(wh.query(RESOLVED_IDS)[1]) for wh in whs]
    store = SharedIdentities(shared, pg.url)
    persons = store.persons_of(HASHER.key(f"{k}{i}") for i in range(n) for k in "ux")
    for i in range(n):
        assert persons[HASHER.key(f"u{i}")] == persons[HASHER.key(f"x{i}")]
    assert len(set(persons.values())) == n
    both = views[0].keys() & views[1].keys()
    assert len(both) > n // 4, "the halves of many identities reached both processors"
    for view in views:  # every id in each warehouse: the shared store's person
        assert {k: p for k, p in view.items() if k in persons} == {
            k: persons[k] for k in view if k in persons}
    print(f"ids in both warehouses: {len(both)}; events: "
          f"{len(stored(whs[0]))} + {len(stored(whs[1]))}")
    for wh in whs:
        wh.close()
