"""``aap serve`` on the Kafka log while brokers fail, injected through librdkafka's mock
API (:mod:`tests.kafka_mock`): the collector answers 200 or 503 ``log_unavailable``,
never another 5xx nor a traceback, and every event it answered 200 for is in the
warehouse once after the brokers are back, without restarting anything."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aap.runner import ServerProcess, create_source
from tests.kafka_mock import Cluster, topic_of

pytestmark = pytest.mark.slow
DELIVERY_MS = 8000
"""``producer.message.timeout.ms`` in these tests' URLs (30 s by default)."""
BATCH = 20


class Load:
    """Clients posting batches of new events; a batch answered 503 is sent again (as an
    SDK does), anything else is recorded as a failure."""

    def __init__(self, url: str, key: str, clients: int = 3) -> None:
        self.url, self.key = url, key
        self.acked: set[str] = set()
        self.codes: Counter[str] = Counter()
        self.bad: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(f"w{w}",))
                        for w in range(clients)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(DELIVERY_MS / 1000 + 60)

    def _run(self, tag: str) -> None:
        n = 0
        with httpx.Client(base_url=self.url, auth=(self.key, ""),
                          timeout=DELIVERY_MS / 1000 + 60) as client:
            batch: list[dict[str, object]] = []
            while not self.stop.is_set():
                if not batch:
                    batch = [{"type": "track", "event": "Fault", "anonymousId": f"{tag}-a{n % 7}",
                              "messageId": f"{tag}-r{n}-e{i}"} for i in range(BATCH)]
                    n += 1
                try:
                    r = client.post("/v1/batch", json={"batch": batch})
                except httpx.HTTPError as exc:
                    self.bad.append(f"{type(exc).__name__}: {exc}")
                    return
                code = _code(r)
                self.codes[code] += 1
                if r.status_code == 200:
                    self.acked.update(str(m["messageId"]) for m in batch)
                    batch = []
                elif code == "503 log_unavailable":
                    self.stop.wait(0.2)  # the same batch again
                else:
                    self.bad.append(f"{code}: {r.text[:200]}")
                    return

    def wait_acked(self, more: int, timeout: float = 180) -> None:
        """Until ``more`` events beyond those acknowledged now are acknowledged."""
        target = len(self.acked) + more
        deadline = time.monotonic() + timeout
        while len(self.acked) < target:
            assert not self.bad, self.bad
            assert time.monotonic() < deadline, (
                f"{len(self.acked)} of {target} acknowledged; answers {dict(self.codes)}")
            time.sleep(0.1)


def _code(r: httpx.Response) -> str:
    if r.status_code == 200:
        return "200"
    try:
        body = r.json()
    except ValueError:
        return f"{r.status_code} (no JSON)"
    code = body.get("code") if isinstance(body, dict) else repr(body)
    return f"{r.status_code} {code}"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Cluster, ServerProcess, str]]:
    """A mock cluster whose topic has its leaders set (partitions 0 and 1 on broker 1, 2
    and 3 on broker 2) and the processors' group coordinated by broker 3; ``aap serve``
    on it."""
    cluster = Cluster()
    url = cluster.url(f"producer.message.timeout.ms={DELIVERY_MS}"
                      "&consumer.session.timeout.ms=6000")
    topic = topic_of(url)
    cluster.topic(topic, 4, 3)
    for p in range(4):
        cluster.leader(topic, p, 1 if p < 2 else 2)
    cluster.coordinator("processor", 3)
    data = tmp_path / "data"
    key = create_source(data, "faults", "--basis", "legitimate_interest")
    server = ServerProcess(data, workers=2, env={"AAP_LOG_URL": url})
    try:
        server.start()
        yield cluster, server, key
    finally:
        server.stop()
        cluster.stop()


def _every_acknowledged_event_once(server: ServerProcess, acked: set[str]) -> None:
    server.wait_processed(timeout=180)
    total, distinct = server.sql("SELECT count(*), count(DISTINCT message_id) FROM events")[0]
    assert total == distinct  # nothing doubled
    stored = {r[0] for r in server.sql("SELECT message_id FROM events")}
    assert acked <= stored, f"{len(acked - stored)} acknowledged events missing"


def _no_traceback(server: ServerProcess) -> None:
    log = server.log_file.read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback"):][:3000]


def test_a_leader_down_under_load_moves_to_the_new_leader_and_loses_nothing(
        setup: tuple[Cluster, ServerProcess, str]) -> None:
    cluster, server, key = setup
    topic = topic_of(server.env["AAP_LOG_URL"])
    with Load(server.url, key) as load:
        load.wait_acked(200)
        cluster.down(1)  # leader of partitions 0 and 1
        time.sleep(1)  # a while with no leader reachable for them
        for p in (0, 1):
            cluster.leader(topic, p, 3)
        assert cluster.leaders(topic) == {0: 3, 1: 3, 2: 2, 3: 2}
        load.wait_acked(400)  # on the new leader, broker 1 still down
        cluster.up(1)
        load.wait_acked(200)
    print("answers:", dict(load.codes))
    assert not load.bad, load.bad
    assert set(load.codes) <= {"200", "503 log_unavailable"}, load.codes
    assert server.proc is not None and server.proc.poll() is None  # never restarted
    _every_acknowledged_event_once(server, load.acked)
    _no_traceback(server)


def test_every_broker_down_answers_503_log_unavailable_then_200_once_they_are_back(
        setup: tuple[Cluster, ServerProcess, str]) -> None:
    cluster, server, key = setup
    with Load(server.url, key, clients=2) as load:
        load.wait_acked(100)
        for b in cluster.ids:
            cluster.down(b)
        # longer than the delivery timeout: appends in flight fail, new ones are refused
        deadline = time.monotonic() + 3 * DELIVERY_MS / 1000
        refused = load.codes["503 log_unavailable"]
        while time.monotonic() < deadline:
            assert not load.bad, load.bad
            time.sleep(0.2)
        assert load.codes["503 log_unavailable"] > refused, load.codes
        with httpx.Client(base_url=server.url, auth=(key, ""),
                          timeout=DELIVERY_MS / 1000 + 60) as client:
            r = client.post("/v1/batch", json={"batch": [
                {"type": "track", "event": "Down", "anonymousId": "x", "messageId": "down"}]})
        assert r.status_code == 503 and r.json()["code"] == "log_unavailable", r.text
        assert r.headers.get("retry-after")
        before = len(load.acked)
        for b in cluster.ids:
            cluster.up(b)
        load.wait_acked(200)
        assert len(load.acked) > before
    print("answers:", dict(load.codes))
    assert not load.bad, load.bad
    assert set(load.codes) <= {"200", "503 log_unavailable"}, load.codes
    assert server.proc is not None and server.proc.poll() is None  # never restarted
    _every_acknowledged_event_once(server, load.acked)
    _no_traceback(server)
