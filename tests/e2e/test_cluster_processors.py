"""``aap cluster up --collectors 2 --processors 2 --query 1`` on Kafka (librdkafka's mock
cluster, 16 partitions), the shared state on PostgreSQL and publishing every second: under
the demo's load, a random collector or processor is killed with ``kill -9`` ten times,
each once the previous one is back. Every acknowledged event is then in the published
files (what the query node reads) exactly once, and the same events sent to an embedded
server group into the same persons and the same sessions (:mod:`aap.store.handover`)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.cluster import processor_dir
from aap.runner import ServerProcess, create_source
from aap.store.meta import open_meta
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse
from tests.cluster_up import cluster_up
from tests.e2e.test_cluster_crash import (
    CLIENTS,
    KILLS,
    PARTITIONS,
    TRAFFIC,
    _consents,
    _partition,
    _sender,
    embedded_replay,
)
from tests.e2e.test_cluster_equivalence import _traffic
from tests.kafka_mock import Cluster, topic_of
from tests.pg import new_database
from tests.process.test_handover import _resolve
from tests.test_cluster import _pids

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

PROCESSORS = 2


def _published(reader: Warehouse) -> list[tuple[Any, ...]]:
    return reader.query("SELECT message_id, person_id, session_id FROM events_all")[1]


def test_two_processors_killed_under_load_publish_every_event_once_as_embedded(
        tmp_path: Path, pg: Any) -> None:
    kafka = Cluster()
    meta = new_database(pg.url)
    env = {"AAP_LOG_URL": kafka.url(), "AAP_META_URL": meta, "AAP_PUBLISH_SECONDS": "1"}
    kafka.topic(topic_of(env["AAP_LOG_URL"]), PARTITIONS)
    data = tmp_path / "cluster"
    with pytest.MonkeyPatch.context() as mp:  # the sources are on the shared store
        mp.setenv("AAP_META_URL", meta)
        key = create_source(data, "demo-site")
    visitors = _traffic(TRAFFIC)
    rng = random.Random(16)
    acked: set[str] = set()
    sent: list[list[dict[str, Any]]] = [[] for _ in range(CLIENTS)]
    stop = threading.Event()
    killed: list[str] = []
    reader = Warehouse(tmp_path / "reader", tiers=TierStore(TierConfig(str(data / "tiers"))),
                       shared_list=open_meta(tmp_path / "reader.db", meta))
    try:
        with cluster_up(data, tmp_path / "cluster.log", env=env, processors=PROCESSORS,
                        query=1) as up:
            threads = [threading.Thread(target=_sender, args=(
                up.urls, key, visitors[c::CLIENTS], acked, sent[c], stop)) for c in range(CLIENTS)]
            for t in threads:
                t.start()
            for _ in range(KILLS):
                time.sleep(rng.uniform(1.0, 3.0))
                role = rng.choice(["collector", "processor", "processor"])
                if role == "processor":
                    where = str(processor_dir(data, rng.randrange(PROCESSORS)))
                    pids = _pids("--role", "processor", where + " ")
                else:
                    where, pids = str(data) + " ", up.pids("collector")
                assert pids, f"no {role} running: {up.log.read_text()[-2000:]}"
                os.kill(rng.choice(pids) if role == "collector" else min(pids), signal.SIGKILL)
                killed.append(role)
                deadline = time.monotonic() + 120  # back before the next kill
                while len(_pids("--role", role, where)) < len(pids):
                    assert time.monotonic() < deadline, f"the {role} did not come back"
                    time.sleep(0.2)
            assert all(t.is_alive() for t in threads), "the load ended before the kills"
            stop.set()
            for t in threads:
                t.join(120)
            assert not any(t.is_alive() for t in threads)
            deadline = time.monotonic() + 600
            while missing := acked - {r[0] for r in _published(reader)}:
                assert time.monotonic() < deadline, (
                    f"{len(missing)} of {len(acked)} acknowledged"
                    f" events not published; the mock dropped"
                    f" {kafka.dropped(topic_of(env['AAP_LOG_URL']))}")
                time.sleep(1.0)
            time.sleep(5)  # a batch refused late would show now
            rows = _published(reader)
            stale = up.log.read_text().count("is stale")
    finally:
        stop.set()
        kafka.stop()
    assert "processor" in killed and "collector" in killed, killed
    print(f"kills: {killed}; acknowledged: {len(acked)}; published: {len(rows)};"
          f" stale batches dropped: {stale}")
    doubled = {m: n for m, n in Counter(r[0] for r in rows).items() if n > 1}
    assert not doubled, f"{len(doubled)} events published twice"
    stored = {r[0] for r in rows}
    everything = [ev for s in sent for ev in s]
    assert stored <= {ev["messageId"] for ev in everything if _consents(ev)}
    assert len(acked) > 1000, "the load ran"
    persons = _resolve(meta, [(r[0], r[1]) for r in rows])

    embedded_rows = embedded_replay(tmp_path / "embedded", everything, stored,
                                    "message_id, person_id, session_id")
    reader.close()
    assert {r[0] for r in embedded_rows} == stored
    assert _partition([[m, p] for m, p, _ in embedded_rows]) == _partition(
        [[m, p] for m, p in persons])
    assert _partition([[m, s] for m, _, s in embedded_rows]) == _partition(
        [[r[0], r[2]] for r in rows])


def test_a_processor_stopped_gracefully_hands_over_what_it_had_not_published(
        tmp_path: Path, pg: Any) -> None:
    """A rollout stops a processor with SIGTERM: with several processors possible (Kafka,
    publishing, the shared store), it publishes its hot rows before it goes, though its
    publishing interval (an hour here) is far off, so the next owner of its partitions
    starts where it stopped and the query nodes see every event."""
    kafka = Cluster()
    meta = new_database(pg.url)
    env = {"AAP_LOG_URL": kafka.url(), "AAP_META_URL": meta, "AAP_PUBLISH_SECONDS": "3600"}
    kafka.topic(topic_of(env["AAP_LOG_URL"]), 4)
    data = tmp_path / "p"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AAP_META_URL", meta)
        key = create_source(data, "demo-site")
    events = [ev for v in _traffic(2_000) for ev in v if _consents(ev)]
    reader = Warehouse(tmp_path / "reader", tiers=TierStore(TierConfig(str(data / "tiers"))),
                       shared_list=open_meta(tmp_path / "reader.db", meta))
    try:
        with ServerProcess(data, env=env) as server, httpx.Client(
                base_url=server.url, auth=(key, ""), timeout=60) as client:
            for i in range(0, len(events), 200):
                r = client.post("/v1/batch", json={"batch": events[i:i + 200]})
                assert r.status_code == 200, r.text
            server.wait_processed(timeout=600)
            assert _published(reader) == [], "published before the stop: the test proves nothing"
        # the context's exit stopped it with SIGTERM and waited
        rows = _published(reader)
    finally:
        reader.close()
        kafka.stop()
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == len(events)
    assert set(ids) == {ev["messageId"] for ev in events}
