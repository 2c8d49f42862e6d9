"""A shared part of ``aap cluster up --collectors 2 --processors 2 --query 1`` (Kafka on
librdkafka's mock cluster) goes away under load and comes back: what clients were
answered meanwhile and what was published once it was back (:func:`through_outage`).
Used by ``test_cluster_pg_outage.py`` (PostgreSQL) and ``test_cluster_s3.py`` (S3)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from aap.cluster import query_dir, query_env
from aap.runner import create_source
from aap.settings import Settings
from aap.store.meta import open_meta, unavailable
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse
from tests.cluster_up import cluster_up
from tests.e2e.test_cluster_crash import BATCH, PARTITIONS, _consents
from tests.e2e.test_cluster_equivalence import _traffic
from tests.e2e.test_query_nodes import COUNT_SQL, Node
from tests.kafka_mock import Cluster, topic_of
from tests.test_cluster import _pids

CLIENTS = 2
RATE = 500
"""Events a second each client offers at most."""
DOWN_S = 20.0
"""How long the part stays away: longer than a publishing turn's retries, shorter than
the mock's window of a partition (see ``tests/e2e/test_cluster_crash.py``)."""
PROCESSORS = 2
MIN_ACKED = 1000
"""Events acknowledged before the part goes away (it waits for them): the load it meets."""


class Answers:
    """What the clients were answered, by status (and the first odd ones in full): a 200,
    or a 503 with ``Retry-After`` and a JSON body naming the problem, is not odd."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_status: Counter[int] = Counter()
        self.odd: list[str] = []

    def add(self, where: str, r: httpx.Response) -> None:
        with self.lock:
            self.by_status[r.status_code] += 1
            ok = r.status_code == 200 or (
                r.status_code == 503 and r.headers.get("retry-after")
                and isinstance(body(r).get("message"), str))
            if not ok and len(self.odd) < 10:
                self.odd.append(f"{where}: {r.status_code} {r.headers} {r.text[:500]}")


def _parent(pid: int) -> int | None:
    try:  # the field after the command's name, which is in parentheses
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _mains(pids: list[int]) -> set[int]:
    """Of a role's processes, those whose parent is not one of them (not a worker)."""
    return {p for p in pids if _parent(p) not in pids}


def _published_user(events: list[dict[str, Any]], published: set[str]) -> str | None:
    """A person with a login whose events are published already (None: nobody yet)."""
    return next((ev["userId"] for ev in events
                 if ev.get("userId") and ev["messageId"] in published), None)


def _events_of(events: list[dict[str, Any]], user: str) -> set[str]:
    """The message ids of a person's events: by their login, and by the anonymous ids
    they logged in from (merged into them)."""
    anons = {ev["anonymousId"] for ev in events if ev.get("userId") == user}
    return {ev["messageId"] for ev in events
            if ev.get("userId") == user or ev.get("anonymousId") in anons}


def body(r: httpx.Response) -> dict[str, Any]:
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
            content = msgspec.json.encode({"batch": batch})
            ahead = t0 + i / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            while not stop.is_set():
                turn += 1
                client = clients[turn % len(clients)]
                try:
                    r = client.post("/v1/batch", content=content,
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


def published(reader: Warehouse) -> list[Any]:
    """The message ids in the published files (what a query node reads), with repeats;
    asked again while the reader's own connection to a restarted PostgreSQL fails, or
    its reads of the restarted S3 stand-in fail (``Warehouse.query`` reads again an
    answer that broke off, a few times only)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return [r[0] for r in reader.query("SELECT message_id FROM events_all")[1]]
        except Exception as exc:
            if ((not unavailable(exc) and not reader.tiers.away(exc))
                    or time.monotonic() > deadline):
                raise
            time.sleep(0.5)


def _answering(node: Node, timeout: float = 120) -> None:
    """Wait until the query node answers a query again: each of its pools connects to a
    restarted PostgreSQL at its next attempt (psycopg_pool's, doubling from 1 s), and it
    answers 503 with Retry-After until then (CI saw one right after the outage)."""
    deadline = time.monotonic() + timeout
    while True:
        r = node.post("/query", {"kind": "sql", "query": COUNT_SQL}, "privacy")
        if r.status_code != 503:
            return
        assert time.monotonic() < deadline, f"the query node still answers {r.text}"
        time.sleep(float(r.headers.get("Retry-After", "1")))


@dataclass
class Outcome:
    answers: Answers
    acked: set[str]
    during: int
    """Events acknowledged while the part was away."""
    asked: httpx.Response
    """A query on the query node while the part was away."""
    filed: httpx.Response
    """A privacy request filed on the query node while the part was away."""
    health: dict[str, int]
    """Each role's ``/healthz`` status while the part was away."""
    died: tuple[list[int], list[int]]
    """The roles' processes before and after."""
    ids: list[str]
    """Published once it was back, with repeats."""
    counted: int
    """The query node's count of events once it was back."""
    done: dict[str, Any]
    """An access request filed once it was back, when it ended."""
    filed_then: dict[str, Any] | None
    """The request filed while the part was away (if it was taken), when it ended."""
    erasure: httpx.Response
    """An erasure, filed while the part was away, of a person whose events were published
    before."""
    erased: set[str]
    """That person's events acknowledged (none, if the erasure was not taken)."""
    erasure_then: dict[str, Any] | None
    """The erasure (if it was taken), when it ended."""
    log: str


def through_outage(tmp_path: Path, meta: str, env: dict[str, str], tiers: TierConfig,
                   down: Callable[[], None], back: Callable[[], None],
                   kill_processor: bool = False) -> Outcome:
    """The cluster on the shared state ``meta`` (a PostgreSQL database), ``env`` added
    to its environment and its tier files in ``tiers``, under load from
    :data:`CLIENTS` clients; once something is published, ``down()``, a query, a privacy
    request and each role's ``/healthz`` meanwhile, ``back()`` after :data:`DOWN_S`; the
    load stops; then what was published, once every acknowledged event is (or the test
    fails after 10 minutes). ``kill_processor``: meanwhile a processor is killed
    (``kill -9``); its replacement must start while the part is away and stay up (S3
    away: it runs; PostgreSQL away: it waits for it, :func:`aap.store.meta.wait_until_reachable`)."""
    kafka = Cluster()
    env = {"AAP_LOG_URL": kafka.url(), "AAP_META_URL": meta, "AAP_PUBLISH_SECONDS": "1",
           **env}
    kafka.topic(topic_of(env["AAP_LOG_URL"]), PARTITIONS)
    data = tmp_path / "cluster"
    with pytest.MonkeyPatch.context() as mp:  # the sources are on the shared store
        mp.setenv("AAP_META_URL", meta)
        key = create_source(data, "demo-site")
    events = [ev for v in _traffic(200_000) for ev in v]
    acked: set[str] = set()
    answers = Answers()
    stop = threading.Event()
    reader = Warehouse(tmp_path / "reader", tiers=TierStore(tiers),
                       shared_list=open_meta(tmp_path / "reader.db", meta))
    try:
        with cluster_up(data, tmp_path / "cluster.log", env=env, processors=PROCESSORS,
                        query=1) as up:
            before = sorted(_pids("--role", "", str(data)))
            node = Node("query node", up.query_urls[0], query_dir(data, 0),
                        {**env, **query_env(Settings(data_dir=str(data)))})
            threads = [threading.Thread(target=_sender, args=(
                up.urls, key, events[c::CLIENTS], acked, answers, stop))
                for c in range(CLIENTS)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 300  # a load worth the name before the outage
            # (a busy machine's is slow), and a person with a login published to erase
            while len(acked) < MIN_ACKED or not (
                    user := _published_user(events, set(published(reader)))):
                assert time.monotonic() < deadline, up.log.read_text()[-3000:]
                time.sleep(0.5)
            down()
            down_at, down_since = len(acked), time.monotonic()
            # each may wait for a connection to PostgreSQL as long as its pool waits: 30 s
            asked = node.post("/query", {"kind": "sql", "query": COUNT_SQL}, "privacy")
            filed = node.post("/privacy/requests", {"type": "access", "subject": {
                "userId": "someone"}}, "privacy")
            erasure = node.post("/privacy/requests", {"type": "erasure", "subject": {
                "userId": user}}, "privacy")
            for r in (asked, filed, erasure):
                answers.add("query node", r)
            probes = [*up.urls, *(f"http://127.0.0.1:{up.base + len(up.urls) + i}"
                                  for i in range(PROCESSORS))]
            health = {u: httpx.get(u + "/healthz", timeout=30).status_code for u in probes}
            killed: list[int] = []  # the processor killed, its replacement
            went: set[int] = set()
            if kill_processor:
                killed.append(min(_mains(up.pids("processor"))))
                went = {killed[0], *(p for p in up.pids("processor")
                                     if _parent(p) == killed[0])}  # with its children
                os.kill(killed[0], signal.SIGKILL)
                deadline = time.monotonic() + 120
                while not (new := _mains(up.pids("processor")) - set(before)):
                    assert time.monotonic() < deadline, "the processor was not replaced"
                    time.sleep(0.2)
                killed.append(min(new))
            time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_since)))
            during = len(acked) - down_at
            if kill_processor:  # the replacement started while the part was away and
                exits = [line for line in up.log.read_text().splitlines()  # stays up
                         if "exited with" in line]
                assert len(exits) == 1 and "-9" in exits[0], (
                    f"the killed processor's replacement did not stay up: {exits}")
            back()
            time.sleep(5)
            stop.set()
            for t in threads:
                t.join(120)
            print(f"answers {dict(answers.by_status)}; acked {len(acked)}, during the"
                  f" outage {during}; meanwhile the query: {asked.status_code}, the"
                  f" privacy request: {filed.status_code}; odd {answers.odd}")
            after = sorted(_pids("--role", "", str(data)))
            if kill_processor:  # every other process is the same; the replacement lives
                mains = _mains(up.pids("processor"))
                assert killed[1] in mains, "the replacement processor died"
                # the killed one's children went with it; the replacement's are new
                before = [p for p in before if p not in went]
                after = [p for p in after if p != killed[1] and _parent(p) != killed[1]]
            # the erased person's events are not waited for (check_common: none is there)
            gone = _events_of(events, user) if erasure.status_code == 200 else set()
            deadline = time.monotonic() + 600
            while missing := acked - gone - set(published(reader)):
                assert time.monotonic() < deadline, (
                    f"{len(missing)} of {len(acked)} acknowledged events not published:"
                    f" {up.log.read_text()[-3000:]}")
                time.sleep(1.0)
            # the requests filed meanwhile end (a killed processor's claim on one runs
            # out after its 60 s lease) before what is published is read
            filed_then = (node.finished(filed.json()["id"], timeout=300)
                          if filed.status_code == 200 else None)
            erasure_then = (node.finished(erasure.json()["id"], timeout=300)
                            if erasure.status_code == 200 else None)
            time.sleep(3)  # a batch published twice would show now
            ids = published(reader)
            _answering(node)
            counted = node.count()
            done = node.erase("someone", "access", timeout=180)
            erased = gone & acked
            log = up.log.read_text()
    finally:
        stop.set()
        reader.close()
        kafka.stop()
    return Outcome(answers, acked, during, asked, filed, health, (before, after), ids,
                   counted, done, filed_then, erasure, erased, erasure_then, log)


def check_common(out: Outcome) -> None:
    """What holds through either outage: no odd answer, no role died or was unhealthy,
    every acknowledged event published once and counted, no record set aside, and
    privacy requests are worked again."""
    assert not out.answers.odd, out.answers.odd
    before, after = out.died
    assert before == after, f"a role died: {before} → {after}"
    assert set(out.health.values()) == {200}, out.health
    doubled = {m: n for m, n in Counter(out.ids).items() if n > 1}
    assert not doubled, f"{len(doubled)} events published twice"
    assert out.acked - out.erased <= set(out.ids) and len(out.acked) >= MIN_ACKED
    left = out.erased & set(out.ids)
    assert not left, (f"{len(left)} of the erased person's {len(out.erased)} events are"
                      f" still published: {sorted(left)[:5]}; the erasure:"
                      f" {(out.erasure_then or {}).get('result')}")
    assert out.counted == len(out.ids)
    assert "cannot be processed; set aside" not in out.log
    assert out.done["status"] == "done"
