"""A collector worker on PostgreSQL (``AAP_META_URL``) goes on answering while a request
waits for the shared state (:mod:`aap.collect.shared`).

A real ``aap serve`` (one worker) on a real PostgreSQL: the consent ledger's table is
locked by another session, so the next batch's consent gate waits for it (seen in
``pg_stat_activity``). Meanwhile the same worker answers its health check, its metrics,
the privacy portal and a batch with an unknown key (refused before the gate); four more
batches queue behind the first (``aap_shared_state_queued``). Once the lock is released
every batch is accepted and every event stored, and the four queued ones went through
the gate and the keystore as one group (``aap_shared_state_groups_total``)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from aap.runner import ServerProcess, create_source
from tests.pg import Cluster, new_database

pytestmark = pytest.mark.slow  # PostgreSQL and a server


@pytest.fixture
def server(tmp_path: Path, pg: Cluster, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[tuple[ServerProcess, str, str]]:
    url = new_database(pg.url)
    monkeypatch.setenv("AAP_META_URL", url)
    key = create_source(tmp_path, "shop", "--basis", "legitimate_interest")
    srv = ServerProcess(tmp_path, workers=1).start()
    try:
        yield srv, key, url
    finally:
        srv.stop()


def _batch(n: int) -> dict[str, Any]:
    return {"batch": [{"type": "track", "event": "Waited", "anonymousId": f"a-{uuid.uuid4()}",
                       "messageId": str(uuid.uuid4())} for _ in range(n)]}


def _metrics(url: str) -> dict[str, float]:
    r = httpx.get(url + "/metrics", timeout=60)
    assert r.status_code == 200, r.text
    return {name: float(v) for name, _, v in (line.rpartition(" ") for line in r.text.splitlines()
                                              if line and not line.startswith("#"))}


def _waiting_on_lock(con: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND pid <> pg_backend_pid()").fetchall()]


def test_a_batch_waiting_for_postgresql_does_not_stop_the_worker(
        server: tuple[ServerProcess, str, str]) -> None:
    srv, key, url = server
    post = lambda body, **kw: httpx.post(srv.url + "/v1/batch", json=body,  # noqa: E731
                                         auth=(key, ""), **kw)
    assert post(_batch(3), timeout=60).status_code == 200  # the caches are warm
    answers: list[httpx.Response] = []

    def send(n: int) -> threading.Thread:
        thread = threading.Thread(target=lambda: answers.append(post(_batch(n), timeout=300)),
                                  daemon=True)
        thread.start()
        return thread

    with psycopg.connect(url) as locker:
        locker.execute("LOCK TABLE statements IN ACCESS EXCLUSIVE MODE")
        waiting = [send(5)]
        with psycopg.connect(url, autocommit=True) as watcher:
            deadline = time.monotonic() + 120
            while not (queries := _waiting_on_lock(watcher)):
                assert time.monotonic() < deadline, "the batch never reached the ledger"
                assert waiting[0].is_alive(), [a.text for a in answers]
                time.sleep(0.05)
        assert any("statements" in q for q in queries), queries
        # the same (only) worker answers meanwhile; before, these waited for the lock
        health = httpx.get(srv.url + "/healthz", timeout=60)
        assert health.status_code == 200, health.text
        portal = httpx.get(srv.url + "/v1/portal/shop", timeout=60)
        assert portal.status_code == 200 and portal.json()["source"] == "shop"
        refused = httpx.post(srv.url + "/v1/batch", json=_batch(1), auth=("nope", ""),
                             timeout=60)
        assert refused.status_code == 401, refused.text
        waiting += [send(2) for _ in range(4)]
        deadline = time.monotonic() + 120
        while _metrics(srv.url).get("aap_shared_state_queued", 0) < 4:
            assert time.monotonic() < deadline, "the batches never queued"
            time.sleep(0.05)
        assert all(t.is_alive() for t in waiting) and not answers  # all still waiting
        locker.rollback()
    for thread in waiting:
        thread.join(300)
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    counts = _metrics(srv.url)
    # the warm-up, the first batch, and the four that queued behind it as one group
    assert counts["aap_shared_state_calls_total"] == 6, counts
    assert counts["aap_shared_state_groups_total"] == 3, counts
    assert counts["aap_shared_state_queued"] == 0, counts
    srv.wait_processed()
    assert srv.sql("SELECT count(*) FROM events WHERE event = 'Waited'") == [[3 + 5 + 4 * 2]]


def _restart(con: psycopg.Connection[Any], url: str) -> None:
    """Every session of the database ends, as when its server restarts or fails over."""
    con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                " AND pid <> pg_backend_pid()", (url.rsplit("/", 1)[1],))


def test_a_restart_of_the_shared_database_is_a_503_to_retry_never_a_500(
        server: tuple[ServerProcess, str, str]) -> None:
    """The server's sessions end under it: a batch (new persons: the keystore on
    PostgreSQL) is answered 503 ``shared_state_unavailable`` with Retry-After, a stream
    message is nacked with that code (the connection stays open), and each goes through
    once it is sent again: nothing accepted is lost, nothing is stored twice."""
    from websockets.sync.client import connect

    srv, key, url = server
    acked: list[str] = []

    def send() -> httpx.Response:
        body = _batch(3)
        r = httpx.post(srv.url + "/v1/batch", json=body, auth=(key, ""), timeout=60)
        assert r.status_code in (200, 503), r.text
        if r.status_code == 200:
            acked.extend(ev["messageId"] for ev in body["batch"])
        return r

    assert send().status_code == 200
    refused = []
    with psycopg.connect(url, autocommit=True) as con:
        for _ in range(5):
            _restart(con, url)
            if (r := send()).status_code == 503:
                refused.append(r)
    assert refused, "no request met a dead session: the test proves nothing"
    for r in refused:
        assert r.json()["code"] == "shared_state_unavailable", r.text
        assert int(r.headers["retry-after"]) > 0
    with psycopg.connect(url, autocommit=True) as con, connect(
            srv.url.replace("http://", "ws://") + "/v1/stream", open_timeout=60,
            subprotocols=["aap.v1", "key." + key]) as ws:  # type: ignore[list-item]
        def recv() -> dict[str, Any]:
            while "ping" in (got := json.loads(ws.recv(60))):
                ws.send(json.dumps({"pong": got["ping"]}))
            return got  # type: ignore[no-any-return]

        assert "ready" in recv()
        nacked, seq = [], 0
        for _ in range(5):
            _restart(con, url)
            batch = _batch(2)["batch"]
            seq += 1
            ws.send(json.dumps({"seq": seq, "batch": batch}))
            while "nack" in (got := recv()):  # sent again until it is stored
                assert got["nack"] == seq, got
                nacked.append(got)
                seq += 1
                ws.send(json.dumps({"seq": seq, "batch": batch}))
            assert got == {"ack": seq, "accepted": 2, "rejected": []}, got
            acked.extend(ev["messageId"] for ev in batch)
    assert nacked, "no stream message met a dead session: the test proves nothing"
    assert all(n["code"] == "shared_state_unavailable" and n["retry_after"] > 0
               for n in nacked), nacked
    deadline = time.monotonic() + 60
    while (r := send()).status_code != 200:  # the pool has reconnected
        assert time.monotonic() < deadline, r.text
        time.sleep(0.5)
    srv.wait_processed(timeout=300)
    stored = [row[0] for row in srv.sql("SELECT message_id FROM events")]
    assert len(stored) == len(set(stored)), "stored twice"
    assert set(stored) == set(acked), (set(acked) - set(stored), set(stored) - set(acked),
                                       nacked)
