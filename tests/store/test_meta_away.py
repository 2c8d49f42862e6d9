"""The shared state's PostgreSQL goes away (``pg_ctl stop -m immediate``, a server of this
test's own) and comes back: a statement meanwhile fails as the shared state out of reach
(:func:`aap.store.meta.unavailable`); once the database was found away the next ones fail
after :data:`~aap.store.meta.AWAY_WAIT_S`, not after the pool's whole wait for a
connection (:data:`~aap.store.meta.POOL_WAIT_S`), so a request that needs it is answered
503 soon; once it is back, statements go through again."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from aap.lifecycle import child_env
from aap.runner import ServerProcess
from aap.store import meta
from aap.store.meta import MetaUnavailable, PostgresMeta, unavailable
from tests.pg import new_database, postgres_cluster

pytestmark = pytest.mark.slow  # a PostgreSQL server of its own, stopped and started


def test_statements_fail_soon_while_the_database_is_away_and_go_through_once_back() -> None:
    assert meta.AWAY_WAIT_S * 5 < meta.POOL_WAIT_S
    with postgres_cluster() as cluster:
        db = PostgresMeta(new_database(cluster.url))
        db.execute("CREATE TABLE t (x INTEGER)")
        assert db.execute("INSERT INTO t VALUES (?)", (1,)) == 1
        cluster.stop()
        with pytest.raises(Exception) as first:  # the lost connection, or the pool's wait
            db.fetchall("SELECT x FROM t")
        assert unavailable(first.value), repr(first.value)
        for _ in range(3):  # found away: each waits AWAY_WAIT_S, not POOL_WAIT_S
            t0 = time.monotonic()
            with pytest.raises(Exception) as again:
                db.fetchall("SELECT x FROM t")
            took = time.monotonic() - t0
            assert unavailable(again.value), repr(again.value)
            # POOL_WAIT_S (30 s) is the pool's wait by construction: a wait this much
            # shorter is AWAY_WAIT_S, however busy the machine
            assert took < meta.POOL_WAIT_S * 2 / 3, took
        cluster.start()
        deadline = time.monotonic() + 120
        while True:  # the pool connects again in the background
            try:
                assert db.fetchall("SELECT x FROM t") == [(1,)]
                break
            except Exception as exc:
                assert unavailable(exc) and time.monotonic() < deadline, repr(exc)
                time.sleep(0.5)
        assert db.execute("INSERT INTO t VALUES (?)", (2,)) == 1
        assert db._pool not in meta._away  # back to the pool's whole wait


def test_a_role_started_while_the_database_is_away_waits_for_it_and_starts_once_back(
        tmp_path: Path) -> None:
    """What ``aap serve`` / ``aap process`` do before anything else (``_servable``): wait,
    saying so, instead of exiting to be started again and again."""
    with postgres_cluster() as cluster:
        cluster.stop()
        said: list[str] = []
        waiting = threading.Event()

        def say(msg: str) -> None:
            said.append(msg)
            waiting.set()

        waiter = threading.Thread(target=meta.wait_until_reachable, args=(cluster.url, say))
        waiter.start()
        assert waiting.wait(120), "nothing said while the database is away"
        assert waiter.is_alive(), said  # it cannot have returned: the server is down
        assert "cannot be reached" in said[0] and "waiting for it" in said[0], said
        assert "secret-pw" not in said[0]  # where, not who: no password in the log
        cluster.start()
        waiter.join(120)
        assert not waiter.is_alive(), "still waiting once the database is back"
        assert said[-1].endswith("reached; starting"), said


@pytest.mark.parametrize("change, why", [
    (lambda url: url.rsplit("/", 1)[0] + "/no_such_db", "does not exist"),
    (lambda url: url.replace("secret-pw", "wrong-pw"), "password authentication failed"),
])
def test_a_refused_connection_is_a_clear_error_at_once_not_a_wait(
        change: Callable[[str], str], why: str) -> None:
    """A server that answers and refuses (a configuration to fix) is not waited for: the
    role exits with the server's reason, and no password in it."""
    with postgres_cluster() as cluster:
        said: list[str] = []
        with pytest.raises(MetaUnavailable, match=why) as caught:
            meta.wait_until_reachable(change(cluster.url), said.append)
        assert not said
        assert "-pw" not in str(caught.value)


def test_aap_process_started_while_the_database_is_away_waits_and_serves_once_back(
        tmp_path: Path) -> None:
    """The processor role itself (``aap process``, which ``aap serve --role processor``
    starts): alive and saying it waits while the database is away; its core answers once
    the database is back."""
    with postgres_cluster() as cluster:
        url = new_database(cluster.url)
        cluster.stop()
        env = child_env({**os.environ, "AAP_META_URL": url})
        log = tmp_path / "process.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "aap", "process", "--data-dir",
                                     str(tmp_path / "d")], stdout=out,
                                    stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 120
            while "waiting for it" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            assert proc.poll() is None, log.read_text()
            cluster.start()
            core = ServerProcess(tmp_path / "d")
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    assert core.sql("SELECT count(*) FROM events_raw") == [[0]]
                    break
                except httpx.ConnectError:  # the core's socket is not there yet
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.5)
            assert "reached; starting" in log.read_text()
            assert "secret-pw" not in log.read_text()
        finally:
            proc.terminate()
            proc.wait(60)


def test_a_pool_tries_again_at_least_every_few_seconds() -> None:
    """psycopg_pool doubles the wait between its attempts to reconnect without bound
    (1, 2, 4, 8, 16, 32 s…): after a 20 s outage a role's next try could come half a
    minute after PostgreSQL was back, and CI saw a query node answer 503 then. The
    attempts the pools make (the class psycopg_pool's pool module makes them with) wait
    at most ``RECONNECT_MAX_S``, and still give up at the pool's ``reconnect_timeout``."""
    import psycopg_pool.pool as pool_module
    from psycopg_pool.base import AttemptWithBackoff

    meta._bounded_reconnects()
    meta._bounded_reconnects()  # once is enough: not wrapped twice
    attempt = pool_module.AttemptWithBackoff(timeout=60.0)
    delays = []
    now = 0.0
    while not attempt.time_to_give_up(now):
        attempt.update_delay(now)
        delays.append(attempt.delay)
        now += attempt.delay
    assert 0.9 <= delays[0] <= 1.1 and delays[1] > delays[0]  # still growing at first
    assert max(delays) == meta.RECONNECT_MAX_S and delays.count(meta.RECONNECT_MAX_S) > 5
    assert now == pytest.approx(60.0)  # the pool's own deadline holds
    assert isinstance(attempt, AttemptWithBackoff) and type(attempt) is not AttemptWithBackoff
