"""Resource limits on queries, against a real server: a query cannot take the core's
memory, outlive its time limit, answer without bound, or starve other keys and the
privacy requests. Slow queries are slow by construction (a recursive CTE that never
ends), so the assertions are about structure (codes, who finished before whom, the core
still the same process), never exact durations."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from aap.datadir import DataDir
from aap.query.runner import Deadline
from aap.runner import ServerProcess, create_source
from tests.conftest import slow_fixture

SLOW = ("WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t)"
        " SELECT max(n) FROM t")
"""Runs until it is stopped, on one thread, in little memory."""
SLOW_ON_EVENTS = ("WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t)"
                  " SELECT max(n) + (SELECT count(*) FROM events) FROM t")
"""The same, reading a view: the core holds a warehouse snapshot for it meanwhile."""
SQL_MEMORY = 512 * 2**20
SERVER_TIMEOUT_S = 16
CORE_PEAK_LIMIT = 1536 * 2**20
"""The core's peak resident memory must stay below this (a bomb asks for many GB)."""


def new_key(data: Path, role: str) -> str:
    out = subprocess.run([sys.executable, "-m", "aap", "keys", "create", "--role", role,
                          "--data-dir", str(data)], capture_output=True, text=True,
                         check=True, timeout=120)
    return out.stdout.strip().splitlines()[-1]


class Api:
    def __init__(self, server: ServerProcess, keys: dict[str, str]) -> None:
        self.server, self.keys = server, keys

    def post(self, path: str, body: Any, key: str, timeout: float = 120) -> httpx.Response:
        return httpx.post(self.server.url + "/api/v1" + path, json=body, timeout=timeout,
                          headers={"Authorization": f"Bearer {self.keys[key]}"})

    def sql(self, query: str, key: str = "a", **kw: Any) -> httpx.Response:
        return self.post("/query", {"kind": "sql", "query": query, **kw}, key)


def core_pid(server: ServerProcess) -> int:
    """The process of the server's session that has the warehouse open."""
    assert server.proc is not None
    sid = server.proc.pid
    warehouse = str(DataDir(server.data_dir).warehouse.resolve())
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.getsid(int(d)) != sid:
                continue
            fds = os.listdir(f"/proc/{d}/fd")
            if any(os.readlink(f"/proc/{d}/fd/{fd}").startswith(warehouse) for fd in fds):
                return int(d)
        except OSError:
            continue
    raise AssertionError("no core process found")


def status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


@slow_fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    data = tmp_path_factory.mktemp("limits") / "data"
    write_key = create_source(data, "web", "--historical", "--basis", "contract")
    keys = {"a": new_key(data, "analyst"), "b": new_key(data, "analyst"),
            "p": new_key(data, "privacy")}
    server = ServerProcess(data, workers=1, env={
        "AAP_QUERY_CONCURRENCY": "3", "AAP_QUERY_CONCURRENCY_PER_KEY": "2",
        "AAP_QUERY_QUEUE_PER_KEY": "1", "AAP_SQL_MEMORY": str(SQL_MEMORY),
        "AAP_MAX_RESPONSE_BYTES": "1000000", "AAP_SQL_WORKERS": "1",
        "AAP_MAX_INSIGHT_CELLS": "20000", "AAP_QUERY_TIMEOUT_S": str(SERVER_TIMEOUT_S),
    }).start()
    try:
        batch = [{"type": "track", "userId": f"u{i}", "event": "Signed Up",
                  "messageId": str(uuid.uuid4()), "properties": {"plan": f"p{i % 7}"}}
                 for i in range(50)]
        r = httpx.post(server.url + "/v1/batch", json={"batch": batch}, auth=(write_key, ""))
        assert r.status_code == 200 and r.json()["accepted"] == 50, r.text
        server.wait_processed()
        yield Api(server, keys)
    finally:
        server.stop()


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"code", "message", "detail"} and body["code"] == code, body
    return body


# -- memory --

@pytest.mark.parametrize("query", [
    "SELECT length(range(4000000000)) AS n",                          # one 32 GB list
    "SELECT count(*) FROM (SELECT unnest(range(2000000000)) AS x)",
    "SELECT length(list(x)) FROM (SELECT unnest(generate_series(1, 3000000000)) AS x)",
    "SELECT length(string_agg(repeat('x', 1000), '')) FROM"
    " (SELECT unnest(range(50000000)) AS x)",                      # 50 GB of text
    "SELECT sum(length(l)) FROM (SELECT list_resize([1], 1000000000) AS l"
    " FROM events)",                                                  # a huge list per row
])
def test_a_query_that_builds_huge_lists_is_refused_and_the_core_survives(
        api: Api, query: str) -> None:
    pid = core_pid(api.server)
    r = api.sql(query, timeout_s=120)
    body = assert_error(r, 400, "memory_limit")
    assert "AAP_SQL_MEMORY" in body["message"]
    assert core_pid(api.server) == pid  # the same core process, alive
    assert status(pid, "VmHWM") < CORE_PEAK_LIMIT, "the core's peak memory grew"
    ok = api.sql("SELECT count(*) AS n FROM events", key="b")
    assert ok.status_code == 200 and ok.json()["rows"] == [[50]], ok.text


# -- time --

@pytest.mark.parametrize("query", [
    SLOW,
    # a cross join of the events with itself, 8 times over
    "SELECT count(*) FROM events a, events b, events c, events d, events e, events f,"
    " events g, events h",
    "SELECT count(*) FROM (SELECT unnest(generate_series(1, 100000)) AS x) a,"
    " (SELECT unnest(generate_series(1, 100000)) AS y) b WHERE a.x * b.y % 7 = 3",
])
def test_the_time_limit_stops_the_query(api: Api, query: str) -> None:
    pid = core_pid(api.server)
    started = time.monotonic()
    r = api.sql(query, timeout_s=1)
    elapsed = time.monotonic() - started
    body = assert_error(r, 400, "timeout")
    assert "1 s" in body["message"]
    assert elapsed < 30, elapsed  # generous: the point is that it did not run to its end
    assert core_pid(api.server) == pid


def test_the_server_time_limit_caps_what_a_query_asks_for(api: Api) -> None:
    r = api.sql(SLOW, timeout_s=300)  # AAP_QUERY_TIMEOUT_S is 16 s
    body = assert_error(r, 400, "timeout")
    assert f"{SERVER_TIMEOUT_S} s" in body["message"]


def test_deadline_keeps_interrupting_until_the_work_stops() -> None:
    """An insight runs many statements; an interrupt between two of them must not be
    lost (with one ``interrupt()`` at the deadline, this loop would run to its end)."""
    con = duckdb.connect()
    started = time.monotonic()
    with pytest.raises(duckdb.InterruptException), Deadline(0.3, con) as deadline:
        for _ in range(1_000_000):
            con.execute("SELECT 1").fetchall()
            time.sleep(0.001)  # mostly between statements: where one interrupt gets lost
    assert deadline.passed
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("doc", [
    {"kind": "trends", "series": [{"event": "x"}, {"event": "y", "math": "persons"}],
     "breakdown": "country"},
    {"kind": "funnel", "steps": [{"event": "a"}, {"event": "b"}, {"event": "c"}]},
    {"kind": "retention"},
    {"kind": "paths"},
    {"kind": "stickiness", "series": [{"event": "x"}]},
    {"kind": "lifecycle"},
], ids=lambda d: d["kind"])
def test_every_insight_kind_stops_at_its_deadline(tmp_path: Path, doc: dict[str, Any]) -> None:
    """A deadline that has passed before the insight starts: each of its statements
    meets an interrupt, and the answer is a timeout, not a late result."""
    from aap.errors import BadRequest
    from aap.query.runner import run_insight
    from aap.store.warehouse import Warehouse

    wh = Warehouse(tmp_path / "warehouse")
    try:
        assert run_insight(wh, doc)["kind"] == doc["kind"]  # it runs, given the time
        with pytest.raises(BadRequest) as err:
            run_insight(wh, doc, timeout_s=1e-6)
        assert err.value.code == "timeout"
    finally:
        wh.close()


# -- size --

def test_a_large_sql_answer_is_refused_by_its_size(api: Api) -> None:
    r = api.sql("SELECT repeat('x', 1000) AS s FROM (SELECT unnest(range(3000)) AS i)",
                limit=100_000)
    body = assert_error(r, 400, "response_too_large")
    assert "AAP_MAX_RESPONSE_BYTES" in body["message"] and "1000000" in body["message"]
    small = api.sql("SELECT repeat('x', 1000) AS s FROM (SELECT unnest(range(10)) AS i)")
    assert small.status_code == 200 and len(small.json()["rows"]) == 10


@pytest.mark.parametrize(("doc", "too_many"), [
    ({"kind": "trends", "series": [{"event": f"e{i}"} for i in range(26)],
      "interval": "hour", "date_from": "-90d", "breakdown": "plan",
      "breakdown_limit": 1000}, True),
    ({"kind": "trends", "series": [{"event": "Signed Up"}], "interval": "hour",
      "date_from": "-30d", "compare": True}, False),  # 2 x 31 x 24 = 1488 cells
    ({"kind": "trends", "series": [{"event": "Signed Up"}] * 10, "interval": "hour",
      "date_from": "-30d", "compare": True}, False),  # 14880 cells
    ({"kind": "trends", "series": [{"event": "Signed Up"}] * 10, "interval": "hour",
      "date_from": "-30d", "compare": True, "breakdown": "plan",
      "breakdown_limit": 2}, True),  # x (2 + null + other): 59520 cells
    ({"kind": "stickiness", "series": [{"event": "Signed Up"}] * 26, "interval": "hour",
      "date_from": "-60d"}, True),
    ({"kind": "lifecycle", "interval": "hour", "date_from": "-200d"}, False),  # < 5000 buckets
    ({"kind": "retention", "period": "day", "periods": 120, "date_from": "-365d"}, True),
    ({"kind": "funnel", "steps": [{"event": "a"}, {"event": "b"}]}, False),
])
def test_insights_are_refused_by_their_cell_count_before_they_run(
        api: Api, doc: dict[str, Any], too_many: bool) -> None:
    r = api.post("/query", doc, "a")
    if too_many:
        body = assert_error(r, 400, "too_many_cells")
        assert body["detail"]["limit"] == 20000 and body["detail"]["cells"] > 20000
        assert "AAP_MAX_INSIGHT_CELLS" in body["message"]
    else:
        assert r.status_code == 200, r.text
        answer = r.json()
        if "series" in answer:
            assert sum(len(s["values"]) for s in answer["series"]) <= 20000


# -- concurrency --

def test_per_key_queue_other_keys_and_privacy_requests_get_through(api: Api) -> None:
    """Key a sends four slow queries at once: two run, one waits, one gets 429 at once.
    While they run, key b's small query answers and a privacy request is done."""
    pool = ThreadPoolExecutor(4)
    try:
        slow: list[Future[httpx.Response]] = [
            pool.submit(api.sql, q, timeout_s=8) for q in [SLOW, SLOW_ON_EVENTS] * 2]
        deadline = time.monotonic() + 60
        while not any(f.done() for f in slow):
            assert time.monotonic() < deadline, "no answer to any of the four queries"
            time.sleep(0.05)
        (first,) = [f for f in slow if f.done()]
        r = first.result()
        assert_error(r, 429, "too_many_queries")
        assert int(r.headers["retry-after"]) >= 1
        running = [f for f in slow if f is not first]

        small = api.sql("SELECT count(*) AS n FROM events", key="b")
        assert small.status_code == 200 and small.json()["rows"] == [[50]], small.text

        r = api.post("/privacy/requests", {"type": "erasure",
                                           "subject": {"userId": "u1"}}, "p")
        assert r.status_code == 200, r.text
        rid = r.json()["id"]
        deadline = time.monotonic() + 60
        while True:
            got = httpx.get(f"{api.server.url}/api/v1/privacy/requests/{rid}", timeout=60,
                            headers={"Authorization": f"Bearer {api.keys['p']}"}).json()
            if got["status"] not in ("pending", "running"):
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.1)
        assert got["status"] == "done", got
        # the privacy request was done while the analyst's queries were still running
        assert not all(f.done() for f in running)
        for f in running:
            assert_error(f.result(timeout=120), 400, "timeout")
    finally:
        pool.shutdown(wait=True)


# -- workers die with the core --

def sandbox_workers(parent: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"aap.query.sandbox" in cmd:
            out.append(int(d))
    return out


@pytest.mark.slow
def test_sql_workers_die_with_the_core(tmp_path: Path) -> None:
    """Killed outright (SIGKILL: no clean-up code runs), the core takes its sql workers
    with it, idle and busy ones alike."""
    data = tmp_path / "data"
    create_source(data, "web", "--historical", "--basis", "contract")
    key = new_key(data, "analyst")
    server = ServerProcess(data, workers=1, env={"AAP_SQL_WORKERS": "2"}).start()
    try:
        api = Api(server, {"a": key})
        pool = ThreadPoolExecutor(1)
        busy = pool.submit(api.sql, SLOW, timeout_s=60)
        core = core_pid(server)
        deadline = time.monotonic() + 60
        while len(workers := sandbox_workers(core)) < 2:  # one busy and at least one idle
            assert time.monotonic() < deadline, workers
            time.sleep(0.1)
        os.kill(core, 9)
        deadline = time.monotonic() + 60
        while alive := [w for w in workers if Path(f"/proc/{w}").exists()
                        and "Z" not in Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1][:3]]:
            assert time.monotonic() < deadline, f"workers left running: {alive}"
            time.sleep(0.1)
        assert busy.result(timeout=120).status_code >= 400  # answered, not left hanging
        pool.shutdown()
    finally:
        server.kill()
