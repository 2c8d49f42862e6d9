"""Two processors on one Kafka topic (librdkafka's mock cluster), each with a warehouse of
its own, publishing to one shared list on a real PostgreSQL (:mod:`aap.store.handover`):
a partition moves from A to B after A published part of it and processed more; A's late
batch is refused by the compare-and-set of the log positions and dropped; A then joins
again beside B, under load. What the published files hold is every event exactly once,
with the sessions and persons one processor alone gives the same events."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aap.events import Event
from aap.log.kafka import KafkaLog
from aap.log.keys import per_person
from aap.privacy.ids import IdHasher
from aap.process.processor import Processor
from aap.store import handover
from aap.store.identities import SharedIdentities
from aap.store.meta import open_meta
from aap.store.publish import Publisher
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse
from tests.kafka_mock import Cluster
from tests.log.test_kafka import cluster  # noqa: F401 (a fixture)
from tests.pg import Cluster as PgCluster
from tests.pg import new_database

pytestmark = pytest.mark.slow
T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
HASHER = IdHasher(b"k" * 32)
STREAMS = 24


def traffic(first: int, n: int) -> list[Event]:
    """Events ``first`` … of 24 device streams (over the partitions), 40 s apart in turn,
    so that a stream's next event is ~16 min later (its session goes on) except after
    every 300th event (2 h: a new session); stream 2k and 2k+1 (k < 4) are one user's two
    devices, identified once each (a merge across partitions)."""
    out = []
    for i in range(first, first + n):
        s = i % STREAMS
        t = T0 + timedelta(seconds=40 * i) + timedelta(hours=2) * (i // 300)
        user = f"u{s // 2}" if s < 8 and (i // STREAMS) % 10 == 3 else None
        out.append(Event(type="identify" if user else "track", event=None if user else "E",
                         message_id=f"m{i}", anonymous_id=f"x{s}",
                         anonymous_key=HASHER.key(f"x{s}"), user_id=user,
                         user_key=HASHER.key(user) if user else None,
                         timestamp=t, received_at=t, source="s"))
    return out


class Side:
    """A processor: its log, warehouse (handover on) and publisher."""

    def __init__(self, url: str, root: Path, name: str, pg: str, tiers: TierStore) -> None:
        self.wh = Warehouse(root / name, tiers=tiers,
                            shared_list=open_meta(root / f"{name}.db", pg))
        handover.enable(self.wh)
        self.pub = Publisher(self.wh, 0.3)
        self.pub.recover()
        self.url, self.pg, self.root = url, pg, root
        self.log: KafkaLog | None = None
        self.proc: Processor | None = None

    def join(self) -> Processor:
        self.log = KafkaLog(self.url)
        self.proc = Processor(self.log, self.wh, HASHER, chunk_records=5,
                              identities=SharedIdentities(self.root / "ids", self.pg))
        self.proc.publish_now = self.pub.publish_once
        return self.proc

    def die(self) -> None:
        """Gone without publishing (as after kill -9): its unpublished rows stay."""
        assert self.log is not None and self.proc is not None
        self.log.on_revoke = None
        self.proc.close()
        self.log.close()

    def hot(self) -> set[str]:
        return {r[0] for r in self.wh.con.cursor().execute(
            "SELECT message_id FROM events_raw").fetchall()}


def listed(reader: Warehouse) -> Counter[str]:
    return Counter(r[0] for r in reader.query("SELECT message_id FROM events_all")[1])


def until(what: str, ok: Callable[[], bool], step: Callable[[], object] = lambda: None,
          timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out: {what}"
        if not step():
            time.sleep(0.05)


def reference(url: str, root: Path, n: int) -> tuple[dict[str, str], set[frozenset[str]]]:
    """Sessions (message id → session id) and persons (message ids by person) of one
    processor alone reading the whole topic (its own group)."""
    wh = Warehouse(root / "alone")
    log = KafkaLog(url, group="alone")
    proc = Processor(log, wh, HASHER, chunk_records=50)
    try:
        until("the processor alone", lambda: wh.query(
            "SELECT count(*) FROM events")[1][0][0] >= n, proc.run_once)
        rows = wh.query("SELECT message_id, session_id, person_id FROM events")[1]
    finally:
        proc.close()
        log.close()
        wh.close()
    return {m: s for m, s, _ in rows}, _persons([(m, p) for m, _, p in rows])


def _persons(rows: list[tuple[str, int]]) -> set[frozenset[str]]:
    by: dict[int, set[str]] = {}
    for m, p in rows:
        by.setdefault(p, set()).add(m)
    return {frozenset(s) for s in by.values()}


def _resolve(pg: str, rows: list[tuple[Any, ...]]) -> list[tuple[str, int]]:
    """(message id, person) with the shared store's merges applied."""
    db = open_meta(Path("/nonexistent"), pg)
    try:
        over = dict(db.fetchall("SELECT old_person_id, person_id FROM identity_overrides"))
    finally:
        db.close()

    def final(p: int) -> int:
        seen = set()
        while p in over and p not in seen:
            seen.add(p)
            p = over[p]
        return p
    return [(m, final(int(p))) for m, p in rows]


def test_a_moved_partitions_late_batch_is_refused_and_every_event_is_published_once(
        cluster: Cluster, pg: PgCluster, tmp_path: Path) -> None:  # noqa: F811
    url = cluster.url()
    db = new_database(pg.url)
    tiers = TierStore(TierConfig(str(tmp_path / "tiers")))
    producer = KafkaLog(url)
    a = Side(url, tmp_path, "a", db, tiers)
    b = Side(url, tmp_path, "b", db, tiers)
    reader = Warehouse(tmp_path / "reader", tiers=tiers,
                       shared_list=open_meta(tmp_path / "reader.db", db))
    sent = 0

    def send(n: int) -> None:
        nonlocal sent
        events = traffic(sent, n)
        for i in range(0, n, 10):
            producer.append(per_person("s", events[i:i + 10]))
        sent += n

    try:
        # A alone: publishes the first 400 events, then processes 300 more
        send(400)
        pa = a.join()
        until("A's first events", lambda: len(a.hot()) >= 400, pa.run_once)
        assert a.pub.publish_once()["rows"] == 400
        send(300)
        until("A's next events", lambda: len(a.hot()) >= 300, pa.run_once)
        a.die()  # 300 events processed, not published
        # B takes every partition from the shared positions (A's published part)
        send(300)
        pb = b.join()
        until("B's events", lambda: len(b.hot()) >= 600, pb.run_once)
        assert not b.hot() & {f"m{i}" for i in range(400)}, "B read A's published part again"
        assert b.pub.publish_once()["rows"] == 600
        # A's late batch: the shared positions moved on, so nothing of it is listed
        out = a.pub.publish_once()
        assert out.get("dropped") == 300 and out["files"] < 0, out
        assert not a.hot() and a.wh.epoch == 1
        got = listed(reader)
        assert set(got) == {f"m{i}" for i in range(1000)} and max(got.values()) == 1, (
            f"doubled: {sum(v > 1 for v in got.values())}, missing:"
            f" {1000 - len(got)}")

        # then both, under load: A joins again beside B, publishing every 0.3 s
        stop = threading.Event()
        runners = [threading.Thread(target=p.run, args=(stop,), kwargs={"linger": 0.01})
                   for p in (pb, a.join())]
        for r in runners:
            r.start()
        a.pub.start()
        b.pub.start()
        assert a.log is not None and b.log is not None
        deadline = time.monotonic() + 120
        while not (a.log.assigned and b.log.assigned):
            assert time.monotonic() < deadline, "the group did not share the partitions"
            send(20)
            time.sleep(0.2)
        for _ in range(20):
            send(50)
            time.sleep(0.05)
        until("every event published", lambda: len(listed(reader)) >= sent)
        stop.set()
        for r in runners:
            r.join(60)
        for side in (a, b):
            side.pub.close()
            side.pub.publish_once()
        got = listed(reader)
        rows = reader.query("SELECT message_id, session_id, person_id FROM events_all")[1]
    finally:
        for side in (a, b):
            if side.log is not None:
                side.log.close()
        producer.close()
    assert set(got) == {f"m{i}" for i in range(sent)}
    assert max(got.values()) == 1, f"{sum(v > 1 for v in got.values())} events doubled"
    sessions, persons = reference(url, tmp_path, sent)
    assert {m: s for m, s, _ in rows} == sessions
    assert _persons(_resolve(db, [(m, p) for m, _, p in rows])) == persons
    for wh in (a.wh, b.wh, reader):
        wh.close()
