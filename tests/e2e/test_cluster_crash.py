"""kill -9 of a random collector or the processor of ``aap cluster up`` on Kafka, under
load, ten times (issue 16, §3): every acknowledged event is stored exactly once, and
persons are merged as in an embedded run of the same events.

The load is the demo's visitors (pages, then identify and tracks for a third of them),
each visitor's events sent in order by one client thread, to either collector; a request
that fails (its collector was killed) is sent again, to the other one, as an SDK retries.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from aap.core.client import core_alive
from aap.runner import ServerProcess, create_source
from tests.cluster_up import cluster_up
from tests.e2e.test_cluster_equivalence import _traffic
from tests.kafka_mock import Cluster, topic_of

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

KILLS = 10
CLIENTS = 3
BATCH = 50
TRAFFIC = 600_000
"""More events than the clients send while the ten kills happen: the load lasts."""
PARTITIONS = 16
RATE = 1_000
"""Events a second each client offers at most. The mock keeps only the newest 5 MiB of
each partition (``max_size`` in ``rdkafka_mock.c``, not configurable), read or not; a real
broker keeps what its retention says. 16 partitions at 3,000 events/s hold well over a
minute of backlog, so a processor restarted on a busy machine finds its records still
there (an unthrottled run on a quiet machine outran the mock's window while the
processor was down, and the mock deleted 3,472 acknowledged events before they were read)."""


def _sender(urls: list[str], key: str, visitors: list[list[dict[str, Any]]],
            acked: set[str], sent: list[dict[str, Any]], stop: threading.Event) -> None:
    """Sends the visitors' events in order, a batch at a time, until ``stop`` (or all are
    acknowledged); a failed request goes again (to the next collector)."""
    events = [ev for v in visitors for ev in v]
    turn = 0
    t0 = time.monotonic()
    clients = [httpx.Client(base_url=u, auth=(key, ""), timeout=30) for u in urls]
    try:
        for i in range(0, len(events), BATCH):
            batch = events[i:i + BATCH]
            body = msgspec.json.encode({"batch": batch})
            if stop.is_set():
                return
            ahead = t0 + i / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            sent.extend(batch)
            while True:
                if stop.is_set():
                    return
                turn += 1
                try:
                    r = clients[turn % len(clients)].post(
                        "/v1/batch", content=body, headers={"Content-Type": "application/json"})
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue
                if r.status_code == 200:
                    # stored: the events of visitors who accepted analytics (the others
                    # are refused for want of a lawful basis, and counted so)
                    kept = [ev["messageId"] for ev in batch if _consents(ev)]
                    assert r.json()["accepted"] == len(kept), r.text
                    acked.update(kept)
                    break
                assert r.status_code == 503, r.text  # the log not reachable for a moment
                time.sleep(0.1)
    finally:
        for c in clients:
            c.close()


def _consents(ev: dict[str, Any]) -> bool:
    return bool(ev["context"]["consent"]["categoryPreferences"]["analytics"])


def _in_the_log(servers: str, url: str) -> dict[str, tuple[int, int]]:
    """Every event still in the topic: message id → (partition, offset). The mock trims a
    partition's oldest messages (see :meth:`Cluster.dropped`), so each partition is read
    from its low watermark. Only for the message of a failing assertion: a partition that
    stops answering ends its scan instead of failing the test."""
    import confluent_kafka as ck

    from aap.events import decode_events

    topic = url.split("/")[-1].split("?")[0]
    c = ck.Consumer({"bootstrap.servers": servers, "group.id": "scan",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    out: dict[str, tuple[int, int]] = {}
    try:
        parts = c.list_topics(topic, timeout=30).topics[topic].partitions
        for p in parts:
            low, high = c.get_watermark_offsets(ck.TopicPartition(topic, p), timeout=30)
            c.assign([ck.TopicPartition(topic, p, low)])
            seen = low
            while seen < high and (msg := c.poll(10)) is not None:
                if msg.error():
                    continue
                seen = msg.offset() + 1
                for ev in decode_events(msg.value()):
                    out[ev.message_id] = (p, msg.offset())
    finally:
        c.close()
    return out


def embedded_replay(data: Path, everything: list[dict[str, Any]], stored: set[str],
                    columns: str) -> list[list[Any]]:
    """The stored events, each visitor's in order, through an embedded server on ``data``:
    its rows of ``events`` (these columns)."""
    key = create_source(data, "demo-site")
    by_visitor: dict[str, list[dict[str, Any]]] = {}
    for ev in everything:
        if ev["messageId"] in stored:
            by_visitor.setdefault(ev["anonymousId"], []).append(ev)
    with ServerProcess(data, workers=2) as embedded, httpx.Client(
            base_url=embedded.url, auth=(key, ""), timeout=60) as client:
        evs = [ev for v in by_visitor.values() for ev in v]
        for i in range(0, len(evs), 500):
            r = client.post("/v1/batch", json={"batch": evs[i:i + 500]})
            assert r.status_code == 200, r.text
        embedded.wait_processed(timeout=600)
        return list(embedded.sql(f"SELECT {columns} FROM events"))


def _partition(rows: list[list[Any]]) -> set[frozenset[str]]:
    """Message ids grouped by the person they were stored for."""
    by: dict[Any, set[str]] = {}
    for message_id, person in rows:
        by.setdefault(person, set()).add(message_id)
    return {frozenset(s) for s in by.values()}


def test_cluster_killed_ten_times_keeps_every_event_once_and_merges_as_embedded(
        tmp_path: Path) -> None:
    kafka = Cluster()
    env = {"AAP_LOG_URL": kafka.url()}
    kafka.topic(topic_of(env["AAP_LOG_URL"]), PARTITIONS)
    data = tmp_path / "cluster"
    key = create_source(data, "demo-site")
    visitors = _traffic(TRAFFIC)
    rng = random.Random(16)
    acked: set[str] = set()
    sent: list[list[dict[str, Any]]] = [[] for _ in range(CLIENTS)]
    stop = threading.Event()
    killed: list[str] = []
    try:
        with cluster_up(data, tmp_path / "cluster.log", env=env) as up:
            threads = [threading.Thread(target=_sender, args=(
                up.urls, key, visitors[c::CLIENTS], acked, sent[c], stop)) for c in range(CLIENTS)]
            for t in threads:
                t.start()
            for _ in range(KILLS):
                time.sleep(rng.uniform(1.0, 3.0))
                role = rng.choice(["collector", "collector", "processor"])
                pids = up.pids(role)
                assert pids, f"no {role} running: {up.log.read_text()[-2000:]}"
                victim = rng.choice(pids) if role == "collector" else min(pids)
                os.kill(victim, signal.SIGKILL)
                killed.append(role)
                # back before the next kill: each one hits a running cluster
                deadline = time.monotonic() + 120
                while len(up.pids(role)) < len(pids):
                    assert time.monotonic() < deadline, f"the {role} did not come back"
                    time.sleep(0.2)
            assert all(t.is_alive() for t in threads), "the load ended before the kills"
            stop.set()
            for t in threads:
                t.join(120)
            assert not any(t.is_alive() for t in threads)
            core = ServerProcess(data, up.base, env=env)
            deadline = time.monotonic() + 120  # the processor may just have been killed
            while not core_alive(data, 2.0):
                assert time.monotonic() < deadline, "the processor did not come back"
                time.sleep(0.2)
            core.wait_processed(timeout=600)
            rows = core.sql("SELECT message_id, person_id FROM events")
            dropped = kafka.dropped(topic_of(env["AAP_LOG_URL"]))
            missing = acked - {r[0] for r in rows}
            in_log = _in_the_log(kafka.servers, env["AAP_LOG_URL"]) if missing else {}
            positions = core.sql("SELECT name, value FROM processor_state ORDER BY name")
    finally:
        stop.set()
        kafka.stop()
    assert "processor" in killed and "collector" in killed
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), "an event is stored twice"
    stored = set(ids)
    where: dict[int, list[int]] = {}
    for m in missing:
        if m in in_log:
            where.setdefault(in_log[m][0], []).append(in_log[m][1])
    assert not missing, (
        f"{len(missing)} of {len(acked)} acknowledged events missing; messages the mock"
        f" cluster dropped: {dropped}; {sum(m in in_log for m in missing)} of them are in the"
        f" log, by partition (offsets): "
        f"{ {p: (min(o), max(o), len(o)) for p, o in where.items()} }; positions {positions}")
    everything = [ev for s in sent for ev in s]
    assert stored <= {ev["messageId"] for ev in everything if _consents(ev)}
    assert len(acked) > 1000, "the load ran"

    embedded_rows = embedded_replay(tmp_path / "embedded", everything, stored,
                                    "message_id, person_id")
    assert {r[0] for r in embedded_rows} == stored
    assert _partition(embedded_rows) == _partition(rows)
