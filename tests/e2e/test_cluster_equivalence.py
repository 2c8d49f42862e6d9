"""The same traffic through the embedded default and through ``aap cluster up`` on Kafka
with two processors and a query node gives the same answers (issue 16, §3).

The demo generator's events (``AAP_EQUIVALENCE_EVENTS`` of them, 300,000 by default)
go once to ``aap serve`` (the SQLite log) and once to ``aap cluster up --collectors 2
--processors 2 --query 1``: the log on librdkafka's mock cluster (no Kafka broker
installs here), :data:`PARTITIONS` partitions shared out by the two processors, the
shared state on PostgreSQL (tests/pg.py), publishing every second; the cluster is asked
on its query node, which reads the published files. Each visitor's events go to one
collector in their order, as one device sends them; visitors are spread over the two
collectors. One in :data:`SECOND_DEVICE` logged-in visitors has a second device, used at
the same time (its own anonymousId, the same userId): the two streams go to the two
collectors, so to partitions the two processors may each own, and sessions, cut per
device stream, must not depend on the order they are met. Before the cluster is asked,
every partition is processed and published and the query node has read the shared
merges since (:meth:`ClusterSide.settle`). Then:

- every insight kind (trends with a breakdown, funnel, retention, paths, stickiness,
  lifecycle, sql over events, persons, sessions and orders) gives the same answer on
  both;
- the same access requests give the same exports, the same erasures remove the same
  events (and the same persons, ids and keys: :func:`_erased`), the same consent
  withdrawals erase the same events, and the insights agree again afterwards.

Person ids, sessions ids and stored times of arrival are internal and may differ; the
answers compared hold none of them.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from aap.cluster import query_dir, query_env
from aap.demo import simulate
from aap.lifecycle import child_env
from aap.runner import ServerProcess, create_source
from aap.settings import Settings
from tests.cluster_up import cluster_up, wait_mirrored, wait_published
from tests.kafka_mock import Cluster, topic_of
from tests.pg import new_database

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

EVENTS = int(os.environ.get("AAP_EQUIVALENCE_EVENTS", "300000"))
"""300,000 in the test command: with two processors the issue's 1,000,000 took 2,275 s on
these 2 cores (one processor: 413 s), too much of the CI's 90 minutes;
``AAP_EQUIVALENCE_EVENTS=1000000`` runs it (README, "Tested")."""
BATCH = 500
ROUND = 10_000
"""Visitors (about 70,000 events) sent before waiting for the processor."""
SUBJECTS = 5
"""Persons whose access, erasure and withdrawal are asked on both sides."""
SECOND_DEVICE = 20
"""One in this many logged-in visitors uses a second device at the same time."""
PROCESSORS = 2
PARTITIONS = 16
"""The topic's: the processors share them out."""


def _traffic(n: int) -> list[list[dict[str, Any]]]:
    """The demo's visitors, until ``n`` events: one list of events per visitor, all in
    the past."""
    visitors: list[list[dict[str, Any]]] = []
    total = 0
    current: str | None = None
    for ev in simulate(n // 5 + 10, seed=16, returning=0.45):
        # a day back: the demo's last visits run past now, and a time in the future is
        # clamped to the time received, which differs between the two deployments
        ev["timestamp"] = (datetime.fromisoformat(ev["timestamp"]) - timedelta(days=1)
                           ).isoformat()
        if ev["anonymousId"] != current:
            if total >= n:
                break
            current = ev["anonymousId"]
            visitors.append([])
        visitors[-1].append(ev)
        total += 1
    return _second_devices(visitors)


def _second_devices(visitors: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Every :data:`SECOND_DEVICE`-th logged-in visitor again on another device: the same
    events three minutes later, under another anonymousId (the same userId once logged
    in), next to the first device so that the two go to different collectors."""
    out: list[list[dict[str, Any]]] = []
    known = 0
    for v in visitors:
        out.append(v)
        if not any(ev.get("userId") for ev in v):
            continue
        known += 1
        if known % SECOND_DEVICE:
            continue
        out.append([{**ev, "anonymousId": ev["anonymousId"] + "-2",
                     "messageId": ev["messageId"] + "-2",
                     "timestamp": (datetime.fromisoformat(ev["timestamp"])
                                   + timedelta(minutes=3)).isoformat()} for ev in v])
    return out


def _streams(visitors: list[list[dict[str, Any]]], k: int) -> list[list[bytes]]:
    """``k`` streams of request bodies: each visitor in one stream, in their order."""
    out: list[list[bytes]] = []
    for s in range(k):
        events = [ev for v in visitors[s::k] for ev in v]
        out.append([msgspec.json.encode({"batch": events[i:i + BATCH]})
                    for i in range(0, len(events), BATCH)])
    return out


def _send(url: str, key: str, bodies: list[bytes]) -> int:
    """Every body sent until it is accepted; one answered 503 (back-pressure, the log out
    of reach: not acknowledged) is sent again after its Retry-After, as the SDKs do, for
    at most 10 minutes (what the log took of it is dropped as a repeat)."""
    accepted = 0
    with httpx.Client(base_url=url, auth=(key, ""), timeout=120) as client:
        for body in bodies:
            deadline = time.monotonic() + 600
            while True:
                r = client.post("/v1/batch", content=body,
                                headers={"Content-Type": "application/json"})
                if r.status_code != 503 or time.monotonic() > deadline:
                    break
                time.sleep(min(float(r.headers.get("Retry-After", "1")), 5.0))
            assert r.status_code == 200, r.text
            answer = r.json()
            accepted += answer["accepted"] + sum(answer.get("not_stored", {}).values())
    return accepted


def _key(data: Path, role: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "aap", "keys", "create", "--role", role,
                          "--data-dir", str(data)], capture_output=True, text=True, check=True,
                         env=child_env({**os.environ, **(env or {})}))
    return out.stdout.strip().splitlines()[-1]


class Side:
    """One deployment: where to send (``urls``), where to ask (``api``) and its keys; its
    :meth:`caught_up` waits until what was sent is processed, :meth:`settle` until the
    API answers from it too."""

    def __init__(self, name: str, urls: list[str], api: str, keys: dict[str, str],
                 write_key: str) -> None:
        self.name, self.urls, self.api, self.keys = name, urls, api, keys
        self.write_key = write_key

    def caught_up(self) -> None:
        raise NotImplementedError

    def settle(self) -> None:
        raise NotImplementedError

    def ingest(self, visitors: list[list[dict[str, Any]]]) -> int:
        """Sends in rounds of whole visitors, each once the last is processed: librdkafka's
        mock cluster drops a partition's oldest messages past a few MiB, so a processor
        far behind would find messages gone (the test checks none were)."""
        sent = 0
        for start in range(0, len(visitors), ROUND):
            streams = _streams(visitors[start:start + ROUND], len(self.urls))
            with ThreadPoolExecutor(len(streams)) as pool:
                sent += sum(pool.map(_send, self.urls, [self.write_key] * len(streams),
                                     streams))
            self.caught_up()
        return sent

    def query(self, doc: dict[str, Any]) -> Any:
        # the sql kind counts persons and sessions: their ids are for role privacy
        role = "privacy" if doc["kind"] == "sql" else "analyst"
        r = httpx.post(self.api + "/api/v1/query", json=doc, timeout=300,
                       headers={"Authorization": f"Bearer {self.keys[role]}"})
        assert r.status_code == 200, (self.name, doc, r.text)
        return _answer(r.json())

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        auth = {"Authorization": f"Bearer {self.keys['privacy']}"}
        url = self.api + "/api/v1/privacy/requests"
        r = httpx.post(url, json=body, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        rid = r.json()["id"]
        deadline = time.monotonic() + 600  # generous: a loaded machine
        while (got := httpx.get(f"{url}/{rid}", headers=auth, timeout=60).json()
               )["status"] in ("pending", "running"):
            assert time.monotonic() < deadline, got
            time.sleep(0.1)
        assert got["status"] == "done", (self.name, got)
        if body["type"] == "access":
            r = httpx.get(f"{url}/{rid}/export", headers=auth, timeout=120)
            assert r.status_code == 200, (self.name, r.text)
            with zipfile.ZipFile(io.BytesIO(r.content)) as z:
                got["export"] = json.loads(z.read("events.json"))
        return dict(got)

    def withdraw(self, anon: str) -> None:
        r = httpx.post(self.urls[-1] + "/v1/consent", auth=(self.write_key, ""), timeout=60,
                       json={"anonymousId": anon, "purposes": {"analytics": False},
                             "policy_version": "eq-1", "channel": "banner"})
        assert r.status_code == 200, r.text

    def dropped(self) -> dict[int, int]:
        """What the log dropped unread (on Kafka: the mock's low watermarks)."""
        return {}

    def stored(self) -> int:
        """The events the API counts, once everything sent is in what it reads."""
        self.settle()
        got = self.query({"kind": "sql", "query": "SELECT count(*) AS n FROM events"})
        return int(got["rows"][0][0])


class EmbeddedSide(Side):
    """``aap serve``: its processor answers the queries."""

    def __init__(self, *args: Any, server: ServerProcess) -> None:
        super().__init__(*args)
        self.server = server

    def caught_up(self) -> None:
        self.server.wait_processed(timeout=1800)

    def settle(self) -> None:
        self.caught_up()


class ClusterSide(Side):
    """``aap cluster up`` with several processors: asked on its query node, which reads
    the published files (and mirrors the shared merges)."""

    def __init__(self, *args: Any, kafka: Cluster, env: dict[str, str]) -> None:
        super().__init__(*args)
        self.kafka, self.env = kafka, env

    def _published(self) -> float:
        return wait_published(self.kafka, self.env["AAP_LOG_URL"], self.env["AAP_META_URL"],
                              timeout=1800)

    def caught_up(self) -> None:
        """Every partition processed, by whichever processor owns it, and published."""
        self._published()

    def settle(self) -> None:
        """Published, and the query node's mirror of the merges read after that (the
        published files themselves are listed: its next query reads them)."""
        wait_mirrored(self.api, self.keys["admin"], self._published())

    def dropped(self) -> dict[int, int]:
        return self.kafka.dropped(topic_of(self.env["AAP_LOG_URL"]))


VOLATILE = {"took_ms", "elapsed_ms", "seconds", "cached", "generated_at", "id", "query_id",
            "started_at", "finished_at", "created_at", "digest", "cache"}


def _answer(doc: Any) -> Any:
    """An answer without what says how or when it was computed."""
    if isinstance(doc, dict):
        return {k: _answer(v) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [_answer(v) for v in doc]
    return doc


def insights(start: str, end: str) -> list[dict[str, Any]]:
    span = {"date_from": start, "date_to": end}
    return [
        {"kind": "trends", "interval": "day", **span,
         "series": [{"event": "$page", "math": "total"}, {"event": "$page", "math": "persons"},
                    {"event": "Signed Up"}, {"event": "$page", "math": "sessions"}]},
        {"kind": "trends", "interval": "day", **span, "breakdown": "$browser",
         "series": [{"event": "$page", "math": "persons"}]},
        {"kind": "funnel", "window": "1d", **span,
         "steps": [{"event": "$page"}, {"event": "Signed Up"}, {"event": "Product Added"},
                   {"event": "Checkout Started"}, {"event": "Order Completed"}]},
        {"kind": "retention", "start_event": "$page", "return_event": "$page",
         "period": "day", "periods": 7, **span},
        {"kind": "paths", "start_event": "$page", "depth": 4, "limit": 20, **span},
        {"kind": "stickiness", "series": [{"event": "$page"}], "interval": "day", **span},
        {"kind": "lifecycle", "event": "$page", "interval": "day", **span},
        {"kind": "sql", "query": "SELECT event, count(*) AS n, count(DISTINCT person_id) AS p,"
                                 " count(DISTINCT session_id) AS s FROM events"
                                 " GROUP BY event ORDER BY event"},
        {"kind": "sql", "query": "SELECT count(*) AS orders, round(sum(revenue), 2) AS revenue,"
                                 " (SELECT count(*) FROM persons WHERE identified) AS known,"
                                 " (SELECT count(*) FROM sessions) AS sessions FROM orders"},
    ]


def _compare_insights(a: Side, b: Side, start: str, end: str, when: str) -> None:
    for doc in insights(start, end):
        got_a, got_b = a.query(doc), b.query(doc)
        assert got_a == got_b, f"{when}: {doc['kind']} differs: {a.name} {got_a!r:.2000} vs" \
                               f" {b.name} {got_b!r:.2000}"


EVENT_ROWS = ("hot_events", "hot_publishing", "warm_rows", "cold_rows", "quarantined_events")
"""An erasure receipt's counts of the events it removed, wherever they were."""


def _erased(request: dict[str, Any]) -> dict[str, int]:
    """What an erasure's receipt says that does not depend on where the rows were kept:
    the persons, the ids suppressed, the data keys destroyed, and the events removed.

    Where they were differs: the embedded side holds its events hot, the cluster in
    published files (the test settles first), so the events count as ``hot_events``
    here and ``warm_rows`` there, hence their sum. The other counts are of tables
    internal to the DuckDB of the processor that ran it (``persons``, ``ids``,
    ``merges``, ``orders``, ``order_items``, ``flags``, ``session_streams``, the query
    caches, files rewritten): on the cluster the processor that met the person deletes
    its own rows when it applies the recorded erasure (:mod:`aap.store.erasures`),
    outside this receipt, and the published persons and orders are rewritten as files,
    not counted as rows. What they held is compared through the queries afterwards
    (``sql`` over persons, orders and sessions, every insight, the count of events)."""
    result = request["result"]
    removed = result["removed"]
    return {"persons": result["persons"], "identifiers": result["identifiers_suppressed"],
            "data_keys": result["data_keys_destroyed"],
            "events": sum(removed.get(k, 0) for k in EVENT_ROWS)}


def _export(events: list[dict[str, Any]]) -> list[str]:
    """An access export's events, without internal ids: comparable across deployments."""
    drop = {"person_id", "session_id", "received_at", "offset", "position", "ingested_at",
            "source"}  # the source's id is made per deployment
    return sorted(json.dumps({k: v for k, v in e.items() if k not in drop}, sort_keys=True)
                  for e in events)


@pytest.fixture
def sides(tmp_path: Path, pg: Any) -> Iterator[tuple[Side, Side]]:
    kafka = Cluster()
    embedded_data, cluster_data = tmp_path / "embedded", tmp_path / "c"
    embedded_key = create_source(embedded_data, "demo-site")
    env = {"AAP_LOG_URL": kafka.url(), "AAP_META_URL": new_database(pg.url),
           "AAP_PUBLISH_SECONDS": "1"}
    kafka.topic(topic_of(env["AAP_LOG_URL"]), PARTITIONS)
    with pytest.MonkeyPatch.context() as mp:  # the sources are on the shared store
        mp.setenv("AAP_META_URL", env["AAP_META_URL"])
        cluster_key = create_source(cluster_data, "demo-site")
    embedded = ServerProcess(embedded_data, workers=2).start()
    try:
        with cluster_up(cluster_data, tmp_path / "cluster.log", env=env,
                        processors=PROCESSORS, query=1) as up:
            # the CLI on the query node's data dir takes the processors' keys, as it does
            node = {**env, **query_env(Settings(data_dir=str(cluster_data)))}
            keys = {r: _key(query_dir(cluster_data, 0), r, node)
                    for r in ("analyst", "privacy", "admin")}
            yield (EmbeddedSide("embedded", [embedded.url], embedded.url,
                                {r: _key(embedded_data, r) for r in ("analyst", "privacy")},
                                embedded_key, server=embedded),
                   ClusterSide("cluster", up.urls, up.query_urls[0], keys, cluster_key,
                               kafka=kafka, env=env))
    finally:
        embedded.stop()
        kafka.stop()


def _access_and_erase(embedded: Side, cluster: Side, asked: list[str], erased: list[str]
                      ) -> None:
    """The same access requests give the same exports; the same erasures remove the same
    events (:func:`_erased`), and leave as many on both sides."""
    for user in asked:
        a, b = (s.request({"type": "access", "subject": {"userId": user}})
                for s in (embedded, cluster))
        assert a["result"]["events"] == b["result"]["events"], user
        assert _export(a["export"]) == _export(b["export"]), user
    erased_events = 0
    for user in erased:
        a, b = (s.request({"type": "erasure", "subject": {"userId": user}})
                for s in (embedded, cluster))
        assert _erased(a) == _erased(b), f"{user}: {a['result']} vs {b['result']}"
        erased_events += _erased(a)["events"]
    assert erased_events > 0, "the erasures removed nothing: they prove nothing"
    assert cluster.stored() == embedded.stored()


def _withdraw(embedded: Side, cluster: Side, withdrawn: list[str]) -> None:
    """The same consent withdrawals (statements through the collectors) erase the same
    events: every stored event of those visitors, all under analytics alone."""
    before = embedded.stored()
    theirs = 0
    for anon in withdrawn:
        a, b = (s.request({"type": "access", "subject": {"anonymousId": anon}})
                for s in (embedded, cluster))
        assert a["result"]["events"] == b["result"]["events"] > 0, anon
        theirs += a["result"]["events"]
    for anon in withdrawn:
        embedded.withdraw(anon)
        cluster.withdraw(anon)
    # a withdrawal takes the purpose off their stored events, which are then erased
    for side in (embedded, cluster):
        deadline = time.monotonic() + 300
        while (now := side.stored()) != before - theirs:
            assert time.monotonic() < deadline, (side.name, now, before, theirs)
            time.sleep(0.5)


@pytest.mark.timeout(3000)  # a million events, twice, on a machine that may be busy
def test_the_same_traffic_gives_the_same_answers_embedded_and_on_the_cluster(
        sides: tuple[Side, Side]) -> None:
    embedded, cluster = sides
    visitors = _traffic(EVENTS)
    total = sum(len(v) for v in visitors)
    assert total >= EVENTS
    # some persons on two devices at once: sessions are cut per device stream, so the
    # order the processor meets the two streams (which the topologies do not share)
    # does not matter (README, "Several collectors on one machine")
    users = [next((ev["userId"] for ev in v if ev.get("userId")), None) for v in visitors]
    known = [u for u in users if u]
    assert 0 < len(known) - len(set(known)) <= len(known) // SECOND_DEVICE
    times = [datetime.fromisoformat(ev["timestamp"]) for v in visitors for ev in v]
    start = (min(times) - timedelta(days=1)).date().isoformat()
    end = (max(times) + timedelta(days=1)).date().isoformat()
    assert embedded.ingest(visitors) == total
    assert cluster.ingest(visitors) == total
    stored = embedded.stored()
    assert stored > total // 2, "most demo visitors accept analytics"
    assert cluster.stored() == stored, f"the mock's low watermarks: {cluster.dropped()}"
    _compare_insights(embedded, cluster, start, end, "after ingestion")

    users = sorted({ev["userId"] for v in visitors for ev in v if ev.get("userId")})
    rng = random.Random(16)
    chosen = rng.sample(users, 2 * SUBJECTS)
    asked, erased = chosen[:SUBJECTS], chosen[SUBJECTS:]
    # a statement through the public write key reaches an anonymous visitor's history
    # (an identified person's only through a consent token): visitors who never logged in
    # and accepted analytics
    anonymous = sorted(v[0]["anonymousId"] for v in visitors
                       if not any(ev.get("userId") for ev in v)
                       and v[0]["context"]["consent"]["categoryPreferences"]["analytics"])
    withdrawn = rng.sample(anonymous, SUBJECTS)
    _access_and_erase(embedded, cluster, asked, erased)
    _withdraw(embedded, cluster, withdrawn)
    _compare_insights(embedded, cluster, start, end, "after the privacy requests")
