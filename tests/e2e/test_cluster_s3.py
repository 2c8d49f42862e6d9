"""``aap cluster up --collectors 2 --processors 2 --query 1`` with its tier files on S3
(``AAP_TIER_URL=s3://…``, moto's server on 127.0.0.1), Kafka (librdkafka's mock cluster)
and PostgreSQL: the processors publish their batch files to the bucket and the query node
reads them from it. Under load the S3 server goes away for a while and comes back on its
port (moto keeps its objects in the test's process).

Meanwhile collectors keep accepting events (S3 is not on the ingestion path); a query on
the query node is answered 200 or 503 with a JSON body, never another 5xx; every role's
``/healthz`` stays 200 and none dies. Once S3 is back every acknowledged event is in the
bucket's published files exactly once and the query node counts them all."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.cluster import query_dir, query_env
from aap.runner import create_source, free_port
from aap.settings import Settings
from aap.store.meta import open_meta
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse
from tests.cluster_up import cluster_up
from tests.e2e.test_cluster_crash import PARTITIONS
from tests.e2e.test_cluster_equivalence import _traffic
from tests.e2e.test_cluster_pg_outage import CLIENTS, Answers, _published, _sender
from tests.e2e.test_query_nodes import COUNT_SQL, Node
from tests.kafka_mock import Cluster, topic_of
from tests.pg import new_database
from tests.test_cluster import _pids

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DOWN_S = 20.0
BUCKET = "aap-tiers"


class S3:
    """moto's S3 server on a fixed port, stopped and started again at will (its objects
    live in this process, so they outlast a stop)."""

    def __init__(self) -> None:
        import boto3

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server: Any = None
        self.start()
        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="test",
                     aws_secret_access_key="test", region_name="us-east-1").create_bucket(
            Bucket=BUCKET)

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def env(self) -> dict[str, str]:
        return {"AAP_TIER_URL": f"s3://{BUCKET}/cluster", "AAP_S3_ENDPOINT_URL": self.endpoint,
                "AAP_S3_ACCESS_KEY": "test", "AAP_S3_SECRET_KEY": "test"}

    def tiers(self) -> TierConfig:
        return TierConfig(f"s3://{BUCKET}/cluster", s3_endpoint=self.endpoint,
                          s3_access_key="test", s3_secret_key="test")


def test_the_cluster_publishes_to_s3_and_rides_out_an_s3_outage(tmp_path: Path, pg: Any
                                                                 ) -> None:
    s3 = S3()
    kafka = Cluster()
    meta = new_database(pg.url)
    env = {"AAP_LOG_URL": kafka.url(), "AAP_META_URL": meta, "AAP_PUBLISH_SECONDS": "1",
           **s3.env()}
    kafka.topic(topic_of(env["AAP_LOG_URL"]), PARTITIONS)
    data = tmp_path / "cluster"
    with pytest.MonkeyPatch.context() as mp:  # the sources are on the shared store
        mp.setenv("AAP_META_URL", meta)
        key = create_source(data, "demo-site")
    events = [ev for v in _traffic(200_000) for ev in v]
    acked: set[str] = set()
    answers = Answers()
    stop = threading.Event()
    reader = Warehouse(tmp_path / "reader", tiers=TierStore(s3.tiers()),
                       shared_list=open_meta(tmp_path / "reader.db", meta))
    try:
        with cluster_up(data, tmp_path / "cluster.log", env=env, processors=2,
                        query=1) as up:
            before = sorted(_pids("--role", "", str(data)))
            node = Node("query node", up.query_urls[0], query_dir(data, 0),
                        {**env, **query_env(Settings(data_dir=str(data)))})
            threads = [threading.Thread(target=_sender, args=(
                up.urls, key, events[c::CLIENTS], acked, answers, stop))
                for c in range(CLIENTS)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 300
            while not _published(reader):  # batch files are in the bucket
                assert time.monotonic() < deadline, up.log.read_text()[-3000:]
                time.sleep(0.5)
            s3.stop()
            down_at, down_since = len(acked), time.monotonic()
            asked = node.post("/query", {"kind": "sql", "query": COUNT_SQL}, "privacy")
            answers.add("query node", asked)
            probes = [*up.urls, *(f"http://127.0.0.1:{up.base + 2 + i}" for i in range(2))]
            health = {u: httpx.get(u + "/healthz", timeout=30).status_code for u in probes}
            time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_since)))
            during = len(acked) - down_at
            s3.start()
            time.sleep(5)
            stop.set()
            for t in threads:
                t.join(120)
            print(f"answers {dict(answers.by_status)}; acked {len(acked)}, during the"
                  f" outage {during}; the query meanwhile: {asked.status_code} {asked.text[:300]}")
            after = sorted(_pids("--role", "", str(data)))
            deadline = time.monotonic() + 600
            while missing := acked - set(_published(reader)):
                assert time.monotonic() < deadline, (
                    f"{len(missing)} of {len(acked)} acknowledged events not published:"
                    f" {up.log.read_text()[-3000:]}")
                time.sleep(1.0)
            time.sleep(3)
            ids = _published(reader)
            counted = node.count()
            log = up.log.read_text()
    finally:
        stop.set()
        reader.close()
        kafka.stop()
        s3.stop()
    Path(os.environ.get("AAP_OUTAGE_LOG", "/tmp/s3outage.log")).write_text(log)
    assert not answers.odd, answers.odd
    assert during > 0, "the collectors stopped accepting while S3 was away"
    assert before == after, f"a role died: {before} → {after}"
    assert set(health.values()) == {200}, health
    doubled = {m: n for m, n in Counter(ids).items() if n > 1}
    assert not doubled, f"{len(doubled)} events published twice"
    assert counted == len(ids)
    assert "cannot be processed; set aside" not in log
