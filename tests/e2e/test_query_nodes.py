"""Query nodes (``aap serve --role query``, ``aap cluster up --query N``) answer from the
published files what the embedded ``aap serve`` answers from its own warehouse.

The demo's traffic (``AAP_QUERY_NODE_EVENTS`` events, 20,000 by default) goes once to
``aap serve`` (the SQLite log, publishing off) and once to ``aap cluster up --collectors 1
--query 2`` with Kafka (librdkafka's mock cluster), publishing every second and the shared
state on PostgreSQL (tests/pg.py). Then, on each query node: trends, funnel, retention,
paths and sql of events equal the embedded answers; what needs unpublished tables (sql
on persons and orders) is refused with 409; a forged or absent API key is refused and bad
input gets a 4xx JSON; an erasure filed on query node 1 is run by the processor and the
person's events vanish from both query nodes (the same counts as the same erasure on the
embedded side), and the insights agree again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.cluster import query_dir, query_env
from aap.lifecycle import child_env
from aap.runner import ServerProcess, create_source
from aap.settings import Settings
from tests.cluster_up import Up, cluster_up
from tests.e2e.test_cluster_equivalence import _answer, _send, _streams, _traffic, insights
from tests.kafka_mock import Cluster
from tests.pg import new_database

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

EVENTS = int(os.environ.get("AAP_QUERY_NODE_EVENTS", "20000"))
COUNT_SQL = "SELECT count(*) AS n FROM events"


def _key(data: Path, role: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "aap", "keys", "create", "--role", role,
                          "--data-dir", str(data)], capture_output=True, text=True, check=True,
                         env=child_env({**os.environ, **env}))
    return out.stdout.strip().splitlines()[-1]


class Node:
    """Where a REST API answers, and its keys."""

    def __init__(self, name: str, url: str, data: Path, env: dict[str, str]) -> None:
        self.name, self.url = name, url
        self.keys = {r: _key(data, r, env) for r in ("analyst", "privacy")}

    def post(self, path: str, doc: Any, role: str = "analyst") -> httpx.Response:
        return httpx.post(self.url + "/api/v1" + path, json=doc, timeout=300,
                          headers={"Authorization": f"Bearer {self.keys[role]}"})

    def query(self, doc: dict[str, Any]) -> Any:
        role = "privacy" if doc["kind"] == "sql" else "analyst"  # person and session ids
        r = self.post("/query", doc, role)
        assert r.status_code == 200, (self.name, doc, r.text)
        return _answer(r.json())

    def count(self) -> int:
        return int(self.query({"kind": "sql", "query": COUNT_SQL})["rows"][0][0])

    def erase(self, user: str, kind: str = "erasure", timeout: float = 600) -> dict[str, Any]:
        r = self.post("/privacy/requests", {"type": kind, "subject": {"userId": user}},
                      "privacy")
        assert r.status_code == 200, r.text
        got = self.finished(r.json()["id"], timeout)
        assert got["status"] == "done", {k: got.get(k) for k in ("status", "error", "result")}
        return got

    def finished(self, rid: str, timeout: float = 600) -> dict[str, Any]:
        """The privacy request ``rid`` once it is no longer pending or running."""
        auth = {"Authorization": f"Bearer {self.keys['privacy']}"}
        deadline = time.monotonic() + timeout  # generous: a loaded machine
        while (got := httpx.get(f"{self.url}/api/v1/privacy/requests/{rid}", headers=auth,
                                timeout=60).json())["status"] in ("pending", "running"):
            assert time.monotonic() < deadline, got
            time.sleep(0.2)
        return dict(got)


def _events_removed(request: dict[str, Any]) -> int:
    removed = request["result"]["removed"]
    return int(sum(removed.get(k, 0) for k in ("hot_events", "warm_rows", "cold_rows")))


def _wait(what: str, ok: Callable[[], bool], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.5)


def _same(embedded: Node, nodes: list[Node], start: str, end: str, when: str) -> None:
    """Each insight equal on every node; a node may take a little while to agree (a
    merge is mirrored up to 2 s after the files holding its events are listed), so
    each is asked again for up to a minute before the difference is reported."""
    for doc in insights(start, end):
        want = embedded.query(doc)
        for node in nodes:
            deadline = time.monotonic() + 60
            while (got := node.query(doc)) != want and time.monotonic() < deadline:
                time.sleep(1)
            assert got == want, f"{when}: {doc['kind']} differs on {node.name}:" \
                                f" {got!r:.1500} vs embedded {want!r:.1500}"


class Deployments:
    def __init__(self, embedded: ServerProcess, embedded_key: str, up: Up, core: ServerProcess,
                 cluster_key: str, nodes: list[Node], env: dict[str, str]) -> None:
        self.embedded, self.embedded_key = embedded, embedded_key
        self.up, self.core, self.cluster_key = up, core, cluster_key
        self.nodes, self.env = nodes, env
        self.embedded_api = Node("embedded", embedded.url, embedded.data_dir, {})


@pytest.fixture(scope="module")
def deployments(tmp_path_factory: pytest.TempPathFactory, pg: Any) -> Iterator[Deployments]:
    """Both deployments, once for the module's tests (the cluster takes a while to start)."""
    tmp_path = tmp_path_factory.mktemp("qn")
    kafka = Cluster()
    embedded_data, cluster_data = tmp_path / "embedded", tmp_path / "c"
    embedded_key = create_source(embedded_data, "demo-site")
    env = {"AAP_LOG_URL": kafka.url(), "AAP_META_URL": new_database(pg.url),
           "AAP_PUBLISH_SECONDS": "1"}
    with pytest.MonkeyPatch.context() as mp:  # the sources are on the shared store
        mp.setenv("AAP_META_URL", env["AAP_META_URL"])
        cluster_key = create_source(cluster_data, "demo-site")
    embedded = ServerProcess(embedded_data, workers=2).start()
    try:
        with cluster_up(cluster_data, tmp_path / "cluster.log", collectors=1, query=2,
                        env=env) as up:
            core = ServerProcess(cluster_data, up.base, env=env)  # the processor's socket
            # the CLI on a node's data dir takes the processor's keys, as the nodes do
            keys = query_env(Settings(data_dir=str(cluster_data)))
            nodes = [Node(f"query node {i + 1}", url, query_dir(cluster_data, i),
                          {**env, **keys}) for i, url in enumerate(up.query_urls)]
            yield Deployments(embedded, embedded_key, up, core, cluster_key, nodes, env)
    finally:
        embedded.stop()
        kafka.stop()


MERGED = 40
"""Identified demo users who come back on a second device: each second device's person
is merged into the user's (a row of ``person_overrides``)."""


def _second_devices(visitors: list[list[dict[str, Any]]]
                    ) -> tuple[list[list[dict[str, Any]]], list[list[dict[str, Any]]]]:
    """For :data:`MERGED` identified visitors, a new anonymousId that views a page, and
    then (sent once the page is stored: another chunk, so the merge is a row of
    ``person_overrides`` and not resolved inside the chunk) is identified as the same
    user."""
    pages, identifies = [], []
    for v in [v for v in visitors if any(ev.get("userId") for ev in v)][:MERGED]:
        user = next(ev["userId"] for ev in v if ev.get("userId"))
        at = datetime.fromisoformat(v[-1]["timestamp"]) + timedelta(minutes=1)
        anon, ctx = str(uuid.uuid4()), v[-1]["context"]
        pages.append([
            {"type": "page", "messageId": str(uuid.uuid4()), "anonymousId": anon,
             "timestamp": at.isoformat(), "context": ctx, "name": "Home",
             "properties": {"path": "/", "title": "Home", "url": "https://shop.example/"}}])
        identifies.append([
            {"type": "identify", "messageId": str(uuid.uuid4()), "anonymousId": anon,
             "userId": user, "timestamp": (at + timedelta(seconds=5)).isoformat(),
             "context": ctx}])
    return pages, identifies


def _ingest(url: str, key: str, visitors: list[list[dict[str, Any]]], server: ServerProcess
            ) -> int:
    sent = sum(_send(url, key, bodies) for bodies in _streams(visitors, 1))
    server.wait_processed(timeout=1800)
    return sent


@pytest.mark.timeout(1800)
def test_query_nodes_answer_what_the_embedded_server_answers(deployments: Deployments) -> None:
    d = deployments
    visitors = _traffic(EVENTS)
    pages, identifies = _second_devices(visitors)
    visitors += pages
    total = sum(len(v) for v in visitors)
    times = [datetime.fromisoformat(ev["timestamp"]) for v in visitors for ev in v]
    start = (min(times) - timedelta(days=1)).date().isoformat()
    end = (max(times) + timedelta(days=1)).date().isoformat()
    for batch, n in ((visitors, total), (identifies, len(identifies))):
        assert _ingest(d.embedded.url, d.embedded_key, batch, d.embedded) == n
        assert _ingest(d.up.urls[0], d.cluster_key, batch, d.core) == n
    total += len(identifies)
    embedded = d.embedded_api
    stored = embedded.count()
    assert stored > total // 2, "most demo visitors accept analytics"
    merges = d.embedded.sql("SELECT count(*) FROM person_overrides")[0][0]  # type: ignore[call-overload]
    assert merges >= MERGED // 2, merges  # the nodes must mirror them to count persons alike
    for node in d.nodes:  # published within a few seconds
        _wait(f"{node.name} sees every event", lambda n=node: n.count() == stored)  # type: ignore[misc]
    for node in d.nodes:
        health = httpx.get(node.url + "/healthz", timeout=60)
        assert health.status_code == 200 and health.json()["role"] == "query", health.text
    # queries go to the nodes: the processor keeps no query cache (aap.cluster), so no
    # native copy of the published files is made there
    assert d.core.sql("SELECT count(*) FROM duckdb_tables()"
                      " WHERE table_name LIKE 'query_cache%'") == [[0]]
    _same(embedded, d.nodes, start, end, "after ingestion")


    # an erasure filed on a query node is run by the processor: gone from both nodes
    users = sorted({ev["userId"] for v in visitors for ev in v if ev.get("userId")})
    user = users[len(users) // 2]
    want = _events_removed(embedded.erase(user))
    got = _events_removed(d.nodes[0].erase(user))  # hot rows there, published files here
    assert got == want > 0, (got, want)
    after = embedded.count()
    assert after == stored - want
    for node in d.nodes:
        _wait(f"{node.name} no longer sees the erased events",
              lambda n=node: n.count() == after)  # type: ignore[misc]
    _same(embedded, d.nodes, start, end, "after the erasure")

    # a restriction filed on the other node: the processor sets the shared flag, and
    # both nodes' mirrors of the flags leave the person out, as the embedded side does
    user = users[len(users) // 3]
    embedded.erase(user, "restriction")
    d.nodes[1].erase(user, "restriction")
    hidden = embedded.count()
    assert hidden < after, "the restricted person's events leave the queries"
    for node in d.nodes:
        _wait(f"{node.name} leaves the restricted person out",
              lambda n=node: n.count() == hidden)  # type: ignore[misc]
    _same(embedded, d.nodes, start, end, "after the restriction")


def test_a_query_node_refuses_bad_keys_and_bad_input_with_json(deployments: Deployments) -> None:
    d = deployments
    node = d.nodes[1]
    doc = {"kind": "sql", "query": COUNT_SQL}
    r = httpx.post(node.url + "/api/v1/query", json=doc, timeout=60)
    assert r.status_code == 401 and r.json()["code"] == "missing_api_key", r.text
    real = node.keys["analyst"]  # its id with another secret
    forged = real[:-1] + ("A" if real[-1] != "A" else "B")
    r = httpx.post(node.url + "/api/v1/query", json=doc, timeout=60,
                   headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401 and r.json()["code"] == "invalid_api_key", r.text
    # a key of another node (the embedded server's) is not a key here
    r = httpx.post(node.url + "/api/v1/query", json=doc, timeout=60,
                   headers={"Authorization": f"Bearer {d.embedded_api.keys['analyst']}"})
    assert r.status_code == 401, r.text
    for body, code in ((b"{not json", 400), (b'{"kind": "cook"}', 400),
                       (b'{"kind": "sql", "query": "DROP TABLE events"}', 400)):
        r = httpx.post(node.url + "/api/v1/query", content=body, timeout=60, headers={
            "Authorization": f"Bearer {node.keys['privacy']}",
            "Content-Type": "application/json"})
        assert r.status_code == code and "message" in r.json(), (body, r.text)
    # nothing is collected here
    r = httpx.post(node.url + "/v1/batch", json={"batch": []}, timeout=60,
                   auth=(d.cluster_key, ""))
    assert r.status_code == 404 and r.json()["code"] == "not_on_query_node", r.text
    # the person lookup needs the persons' ids, which are not published
    r = node.post("/privacy/persons/lookup", {"userId": "someone"}, "privacy")
    assert r.status_code == 409 and r.json()["code"] == "not_on_query_node", r.text
