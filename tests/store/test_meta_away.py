"""The shared state's PostgreSQL goes away (``pg_ctl stop -m immediate``, a server of this
test's own) and comes back: a statement meanwhile fails as the shared state out of reach
(:func:`aap.store.meta.unavailable`); once the database was found away the next ones fail
after :data:`~aap.store.meta.AWAY_WAIT_S`, not after the pool's whole wait for a
connection (:data:`~aap.store.meta.POOL_WAIT_S`), so a request that needs it is answered
503 soon; once it is back, statements go through again."""

from __future__ import annotations

import time

import pytest

from aap.store import meta
from aap.store.meta import PostgresMeta, unavailable
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
