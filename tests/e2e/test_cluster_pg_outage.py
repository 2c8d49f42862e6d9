"""The shared PostgreSQL (``AAP_META_URL``) of ``aap cluster up --collectors 2
--processors 2 --query 1`` on Kafka (librdkafka's mock cluster) goes away under load, as
in a crash (``pg_ctl stop -m immediate``), and comes back on the same port a while later.

Meanwhile every answer a client gets is a 200 or a 503 with ``Retry-After`` and a JSON
body naming the problem (never another 5xx); a query and a privacy request filed on the
query node are answered too (the request with 503 ``shared_state_unavailable``: it is
kept on the shared state); every role's ``/healthz`` stays 200 and none dies. Once the
server is back every acknowledged event is published (what the query node reads) exactly
once, the query node counts them, and a privacy request filed then is done."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from aap.asgi import SHARED_STATE_UNAVAILABLE
from aap.cluster import query_dir, query_env
from aap.runner import create_source
from aap.settings import Settings
from aap.store.meta import open_meta
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse
from tests.cluster_up import cluster_up
from tests.e2e.test_cluster_crash import BATCH, PARTITIONS, _consents
from tests.e2e.test_cluster_equivalence import _traffic
from tests.e2e.test_query_nodes import COUNT_SQL, Node
from tests.kafka_mock import Cluster, topic_of
from tests.pg import new_database, postgres_cluster
from tests.test_cluster import _pids

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CLIENTS = 2
RATE = 500
"""Events a second each client offers at most."""
DOWN_S = 20.0
"""How long the server stays away: longer than a publishing turn's retries, shorter than
the mock's window of a partition (see ``tests/e2e/test_cluster_crash.py``)."""


class Answers:
    """What the clients were answered, by status (and the first odd ones in full)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_status: Counter[int] = Counter()
        self.odd: list[str] = []

    def add(self, where: str, r: httpx.Response) -> None:
        with self.lock:
            self.by_status[r.status_code] += 1
            ok = r.status_code == 200 or (
                r.status_code == 503 and r.headers.get("retry-after")
                and isinstance(_body(r).get("message"), str))
            if not ok and len(self.odd) < 10:
                self.odd.append(f"{where}: {r.status_code} {r.headers} {r.text[:500]}")


def _body(r: httpx.Response) -> dict[str, Any]:
    try:
        doc = r.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _sender(urls: list[str], key: str, events: list[dict[str, Any]], acked: set[str],
            answers: Answers, stop: threading.Event) -> None:
    """Sends the events in order, a batch at a time, until ``stop``; a batch answered
    other than 200 goes again (to the next collector), as an SDK retries."""
    turn = 0
    t0 = time.monotonic()
    clients = [httpx.Client(base_url=u, auth=(key, ""), timeout=60) for u in urls]
    try:
        for i in range(0, len(events), BATCH):
            batch = events[i:i + BATCH]
            body = msgspec.json.encode({"batch": batch})
            ahead = t0 + i / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            while not stop.is_set():
                turn += 1
                client = clients[turn % len(clients)]
                try:
                    r = client.post("/v1/batch", content=body,
                                    headers={"Content-Type": "application/json"})
                except httpx.HTTPError as exc:
                    answers.odd.append(f"{client.base_url}: {exc!r}")
                    time.sleep(0.1)
                    continue
                answers.add(str(client.base_url), r)
                if r.status_code == 200:
                    acked.update(ev["messageId"] for ev in batch if _consents(ev))
                    break
                time.sleep(0.2)
            if stop.is_set():
                return
    finally:
        for c in clients:
            c.close()


def _published(reader: Warehouse) -> list[Any]:
    return [r[0] for r in reader.query("SELECT message_id FROM events_all")[1]]


def test_postgresql_down_under_load_then_back_loses_and_doubles_nothing(
        tmp_path: Path) -> None:
    with postgres_cluster() as pg:
        kafka = Cluster()
        meta = new_database(pg.url)
        env = {"AAP_LOG_URL": kafka.url(), "AAP_META_URL": meta, "AAP_PUBLISH_SECONDS": "1"}
        kafka.topic(topic_of(env["AAP_LOG_URL"]), PARTITIONS)
        data = tmp_path / "cluster"
        with pytest.MonkeyPatch.context() as mp:  # the sources are on the shared store
            mp.setenv("AAP_META_URL", meta)
            key = create_source(data, "demo-site")
        events = [ev for v in _traffic(200_000) for ev in v]
        acked: set[str] = set()
        answers = Answers()
        stop = threading.Event()
        try:
            with cluster_up(data, tmp_path / "cluster.log", env=env, processors=2,
                            query=1) as up:
                before = sorted(_pids("--role", "", str(data)))
                threads = [threading.Thread(target=_sender, args=(
                    up.urls, key, events[c::CLIENTS], acked, answers, stop))
                    for c in range(CLIENTS)]
                for t in threads:
                    t.start()
                node = Node("query node", up.query_urls[0], query_dir(data, 0),
                            {**env, **query_env(Settings(data_dir=str(data)))})
                time.sleep(5)
                pg.stop()
                down_at, down_since = len(acked), time.monotonic()
                # an analyst's query and a privacy request meanwhile (each may wait for
                # the pool's connection as long as it waits: 30 s)
                asked = node.post("/query", {"kind": "sql", "query": COUNT_SQL}, "privacy")
                filed = node.post("/privacy/requests", {"type": "access", "subject": {
                    "userId": "someone"}}, "privacy")
                for r in (asked, filed):
                    answers.add("query node", r)
                # every role says it is healthy: a restart would not bring PostgreSQL back
                probes = [*up.urls, *(f"http://127.0.0.1:{up.base + 2 + i}" for i in range(2))]
                health = {u: httpx.get(u + "/healthz", timeout=30).status_code for u in probes}
                time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_since)))
                during = len(acked) - down_at
                pg.start()
                time.sleep(10)
                stop.set()
                for t in threads:
                    t.join(120)
                print(f"answers {dict(answers.by_status)}; acked {len(acked)}, during the"
                      f" outage {during}; odd {answers.odd}")
                after = sorted(_pids("--role", "", str(data)))
                reader = Warehouse(tmp_path / "reader", tiers=TierStore(TierConfig(str(
                    data / "tiers"))), shared_list=open_meta(tmp_path / "reader.db", meta))
                try:
                    deadline = time.monotonic() + 600
                    while missing := acked - set(_published(reader)):
                        assert time.monotonic() < deadline, (
                            f"{len(missing)} of {len(acked)} acknowledged events not"
                            f" published: {up.log.read_text()[-3000:]}")
                        time.sleep(1.0)
                    time.sleep(3)
                    ids = _published(reader)
                    counted = node.count()  # the query node answers again
                    # and the processors' workers of privacy requests work again
                    done = node.erase("someone", "access", timeout=180)
                finally:
                    reader.close()
                log = up.log.read_text()
        finally:
            stop.set()
            kafka.stop()
    Path(os.environ.get("AAP_OUTAGE_LOG", "/tmp/outage.log")).write_text(log)
    assert not answers.odd, answers.odd
    # the request needs the shared state (rights requests live there): refused, not lost
    assert filed.status_code == 503, filed.text
    assert _body(filed)["code"] == SHARED_STATE_UNAVAILABLE, filed.text
    assert before == after, f"a role died: {before} → {after}"
    assert set(health.values()) == {200}, health
    doubled = {m: n for m, n in Counter(ids).items() if n > 1}
    assert not doubled, f"{len(doubled)} events published twice"
    assert len(acked) > 1000
    assert counted == len(ids)
    assert done["status"] == "done"
    assert "set aside" not in log
