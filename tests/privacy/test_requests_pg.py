"""The rights-request queue on both engines of the shared state: the SQLite file under the
data dir (the default) and PostgreSQL (``AAP_META_URL``). On PostgreSQL, several cores
work one queue: each request is claimed by one worker and run exactly once; a request
left running by a worker that died is run again once its lease ran out, and one whose
worker is alive is left alone."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from aap import errors
from aap.datadir import DataDir
from aap.privacy.audit import AuditLog
from aap.privacy.ids import IdHasher
from aap.privacy.keystore import Keystore
from aap.privacy.requests import RequestStore
from tests.pg import Cluster
from tests.pg import fresh_database as _fresh
from tests.privacy import pg_workers


def test_requests_are_filed_found_and_listed(tmp_path: Path, meta_url: str) -> None:
    store = RequestStore(tmp_path)
    a = store.add("access", [11, 12], {"userId": True}, None, filed_by="key:k1")
    b = store.add("restriction", [11], {"userId": True}, None, filed_by="key:k1", lift=True)
    c = store.add("erasure", [13], {"self_service": True}, None, scope="src_1")
    other = RequestStore(tmp_path)  # another process
    assert other.get(a) == {"id": a, "type": "access", "created_at": other.get(a)["created_at"],
                            "status": "pending", "finished_at": None}
    assert other.owner(a) == ([11, 12], None) and other.owner(c) == ([13], "src_1")
    listed = other.list()
    assert {r["id"] for r in listed["requests"]} == {a, b, c} and listed["next"] is None
    assert [r["id"] for r in other.list(kind="restriction")["requests"]] == [b]
    assert other.list(kind="restriction")["requests"][0]["lift"] is True
    assert other.list(status="done")["requests"] == []
    page = other.list(limit=2)
    rest = other.list(limit=2, before=page["next"])
    assert len(page["requests"]) == 2 and page["next"] is not None
    assert {r["id"] for r in page["requests"] + rest["requests"]} == {a, b, c}
    assert [r["id"] for r in other.mine(13, ("src_1",))] == [c]
    assert other.mine(11, ("src_1",)) == []
    with pytest.raises(errors.NotFound):
        other.get("pr_nope")
    with pytest.raises(errors.BadRequest):
        other.list(before="pr_nope")
    with pytest.raises(errors.BadRequest):
        store.add("forgetting", [1], {}, None)


def test_a_persons_requests_come_newest_first(tmp_path: Path, meta_url: str) -> None:
    """Within one second too: in the order they were filed (SQLite's rowid; a column of
    that name on PostgreSQL)."""
    store = RequestStore(tmp_path)
    filed = [store.add("access", [5], {"self_service": True}, None, scope="src_1")
             for _ in range(6)]
    assert [r["id"] for r in store.mine(5, ("src_1",))] == filed[::-1]


def test_personal_traits_wait_sealed(tmp_path: Path, meta_url: str) -> None:
    store = RequestStore(tmp_path)
    rid = store.add("rectification", [21], {"userId": True},
                    {"plan": "pro", "email": "sealed-canary@example.com"})
    row = store._db.fetchone("SELECT traits, sealed_traits FROM requests WHERE id = ?", (rid,))
    assert row is not None and json.loads(row[0]) == {"plan": "pro"}
    assert b"sealed-canary" not in bytes(row[1])
    assert store._open_personal(bytes(row[1])) == {"email": "sealed-canary@example.com"}


# -- several workers on one queue, on PostgreSQL --

def _shared_dirs(tmp_path: Path, url: str, n: int) -> list[Path]:
    """``n`` data dirs (each core has its own warehouse) with the same keys."""
    first = tmp_path / "d0"
    Keystore(first, url=url).close()
    IdHasher.for_data_dir(first)
    AuditLog(first, url=url)
    dirs = [first]
    for i in range(1, n):
        shutil.copytree(DataDir(first).keys, DataDir(tmp_path / f"d{i}").keys)
        dirs.append(tmp_path / f"d{i}")
    return dirs


@pytest.mark.slow
def test_two_workers_run_each_request_exactly_once(tmp_path: Path, pg: Cluster) -> None:
    """Two cores (two processes, a warehouse each) start working the same queue of 80
    requests at the same moment: every request ends ``done``, and the shared audit
    chain holds exactly one entry for each (a request run twice would have two)."""
    _fresh(pg.url)
    dirs = _shared_dirs(tmp_path, pg.url, 2)
    store = RequestStore(dirs[0], url=pg.url)
    hasher = IdHasher.for_data_dir(dirs[0])
    kinds = ("restriction", "objection")
    rids = [store.add(kinds[i % 2], [hasher.key(f"user-{i}")], {"userId": True}, None,
                      filed_by="key:k1") for i in range(80)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    result = ctx.Queue()
    procs = [ctx.Process(target=pg_workers.work_off, args=(str(d), pg.url, barrier, result))
             for d in dirs]
    for p in procs:
        p.start()
    try:
        ran = dict([result.get(timeout=300), result.get(timeout=300)])
    finally:
        for p in procs:
            p.join(timeout=60)
    statuses = Counter(store.get(rid)["status"] for rid in rids)
    assert statuses == {"done": len(rids)}
    entries = AuditLog(dirs[0], url=pg.url).entries()
    runs = Counter(e["actor"].rsplit("request:", 1)[1] for e in entries
                   if "request:" in e["actor"])
    assert runs == dict.fromkeys(rids, 1)
    assert sorted(e["action"] for e in entries) == sorted(f"privacy.{k}" for k in
                                                          kinds * (len(rids) // 2))
    assert AuditLog(dirs[0], url=pg.url).verify().ok
    assert sum(ran.values()) == len(rids)
    print("requests run by each worker:", sorted(ran.values()))


def _wait_done(store: RequestStore, rid: str, timeout: float = 120.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while (got := store.get(rid))["status"] in ("pending", "running"):
        assert time.monotonic() < deadline, got
        time.sleep(0.05)
    return got


@pytest.mark.slow
def test_a_dead_workers_request_runs_again_once_its_lease_ran_out(tmp_path: Path,
                                                                   pg: Cluster) -> None:
    _fresh(pg.url)
    [data] = _shared_dirs(tmp_path, pg.url, 1)
    requests, wh = pg_workers.core_side(data, pg.url, lease_s=1.0)
    orphan = requests.add("restriction", [1], {"userId": True}, None)
    held = requests.add("restriction", [2], {"userId": True}, None)
    fresh = requests.add("objection", [3], {"userId": True}, None)
    now = int(time.time())
    with psycopg.connect(pg.url) as con:  # as two other workers left them
        con.execute("UPDATE requests SET status = 'running', claimed_by = 'dead:1',"
                    " lease_until = %s WHERE id = %s", (now - 5, orphan))
        con.execute("UPDATE requests SET status = 'running', claimed_by = 'alive:2',"
                    " lease_until = %s WHERE id = %s", (now + 3600, held))
    requests.start()  # on PostgreSQL, starting resets nothing: 'alive:2' may be running
    try:
        assert _wait_done(requests, orphan)["status"] == "done"
        assert _wait_done(requests, fresh)["status"] == "done"
    finally:
        requests.close()
        wh.close()
    assert requests.get(held)["status"] == "running"
    with psycopg.connect(pg.url) as con:
        owners = dict(con.execute("SELECT id, claimed_by FROM requests").fetchall())
    assert owners == {orphan: requests.worker, held: "alive:2", fresh: requests.worker}


@pytest.mark.slow
def test_a_long_request_keeps_its_claim(tmp_path: Path, pg: Cluster) -> None:
    """A request that runs for several leases is renewed by its worker: a second worker
    polling all along never claims it, and it runs once."""
    _fresh(pg.url)
    dirs = _shared_dirs(tmp_path, pg.url, 2)
    slow, wh1 = pg_workers.core_side(dirs[0], pg.url, lease_s=2.0)
    other, wh2 = pg_workers.core_side(dirs[1], pg.url, lease_s=2.0)
    flag = slow.rights.flag_keys
    started = []

    def flag_slowly(*args: object, **kw: object) -> dict[str, object]:
        started.append(time.monotonic())
        time.sleep(6.0)  # three leases
        return flag(*args, **kw)  # type: ignore[arg-type]

    slow.rights.flag_keys = flag_slowly  # type: ignore[method-assign]
    rid = slow.add("restriction", [7], {"userId": True}, None)
    slow.start()
    try:
        deadline = time.monotonic() + 120
        while not started:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        other.start()
        assert _wait_done(slow, rid)["status"] == "done"
    finally:
        slow.close()
        other.close()
        wh1.close()
        wh2.close()
    entries = AuditLog(dirs[0], url=pg.url).entries()
    assert [e["actor"] for e in entries] == [f"request:{rid}"]
    assert len(started) == 1
