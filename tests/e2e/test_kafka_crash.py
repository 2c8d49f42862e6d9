"""``aap serve`` on the Kafka log (librdkafka's mock cluster), killed with kill -9 under
load three times: every acknowledged event is in the warehouse, once."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from aap.runner import ServerProcess, create_source, free_port
from tests.e2e.test_processor_crash import _load
from tests.kafka_mock import Cluster

pytestmark = pytest.mark.slow
CYCLES = 3
MIN_ACKED = 100
"""Events acknowledged in a cycle before its kill."""


def test_server_on_kafka_killed_under_load_keeps_every_acknowledged_event_once(
        tmp_path: Path) -> None:
    cluster = Cluster()
    data = tmp_path / "data"
    key = create_source(data, "crash", "--basis", "legitimate_interest")
    env = {"AAP_LOG_URL": cluster.url()}
    rng = random.Random(7)
    acked: set[str] = set()
    port = free_port()
    try:
        for cycle in range(CYCLES):
            server = ServerProcess(data, port=port, workers=2, env=env).start()
            stop = threading.Event()
            threads = [threading.Thread(target=_load, args=(
                server.url, key, f"c{cycle}w{w}", stop, acked, random.Random(cycle * 10 + w)))
                for w in range(3)]
            for t in threads:
                t.start()
            # killed once this cycle's load was acknowledged in part (a busy machine
            # acknowledges less in a given time), at a random point after that
            before, deadline = len(acked), time.monotonic() + 120
            while len(acked) < before + MIN_ACKED and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(acked) >= before + MIN_ACKED, "the server acknowledged too little"
            stop.wait(rng.uniform(0.0, 2.0))
            server.kill()
            stop.set()
            for t in threads:
                t.join(30)
        server = ServerProcess(data, port=port, workers=2, env=env).start()
        try:
            server.wait_processed(timeout=120)
            total, distinct = server.sql(
                "SELECT count(*), count(DISTINCT message_id) FROM events")[0]
            assert total == distinct  # nothing doubled
            stored = {r[0] for r in server.sql("SELECT message_id FROM events")}
            assert acked <= stored, f"{len(acked - stored)} acknowledged events missing"
        finally:
            server.stop()
    finally:
        cluster.stop()
