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
