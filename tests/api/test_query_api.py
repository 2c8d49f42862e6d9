"""The query API end to end: a real server on 127.0.0.1, events through the Segment
endpoint and the processor, API keys made with the CLI, answers over HTTP; on both engines
of the shared state (the files under the data dir, then PostgreSQL: ``meta_url_module``),
where the keys, saved insights and cohorts live."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.datadir import DataDir
from aap.runner import ServerProcess, create_source
from aap.store.meta import open_meta
from tests.conftest import slow_fixture

DAY = (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0, second=0,
                                                      microsecond=0)


def at(minutes: int) -> str:
    return (DAY + timedelta(minutes=minutes)).isoformat()


def aap(data: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aap", *args, "--data-dir", str(data)],
                          input=stdin, capture_output=True, text=True, timeout=120)


def new_key(data: Path, role: str) -> str:
    out = aap(data, "keys", "create", "--role", role)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


BATCH = [
    # a1 browses anonymously, then signs up as u1: one person, one device (its browser
    # SDK sends the anonymousId with every event, also after the login: one session)
    {"type": "page", "anonymousId": "a1", "name": "Home", "timestamp": at(0),
     "properties": {"path": "/"}},
    {"type": "page", "anonymousId": "a1", "name": "Pricing", "timestamp": at(1),
     "properties": {"path": "/pricing"}},
    {"type": "identify", "anonymousId": "a1", "userId": "u1", "timestamp": at(2),
     "traits": {"plan": "pro"}},
    {"type": "track", "anonymousId": "a1", "userId": "u1", "event": "Signed Up",
     "timestamp": at(3)},
    {"type": "track", "anonymousId": "a1", "userId": "u1", "event": "Order Completed",
     "timestamp": at(10),
     "properties": {"revenue": 10, "order_id": "o1"}},
    {"type": "track", "userId": "u2", "event": "Signed Up", "timestamp": at(5),
     "context": {"ip": "81.2.69.160"}},
    {"type": "identify", "userId": "u2", "timestamp": at(4), "traits": {"plan": "free"}},
    {"type": "track", "userId": "u3", "event": "Signed Up", "timestamp": at(20)},
    {"type": "track", "userId": "u3", "event": "Order Completed", "timestamp": at(30),
     "properties": {"revenue": 30, "order_id": "o3"}},
]


class Api:
    def __init__(self, server: ServerProcess, keys: dict[str, str]) -> None:
        self.server = server
        self.keys = keys

    def call(self, method: str, path: str, role: str | None = "analyst", **kw: Any
             ) -> httpx.Response:
        headers = kw.pop("headers", {})
        if role:
            headers["Authorization"] = f"Bearer {self.keys[role]}"
        return httpx.request(method, self.server.url + "/api/v1" + path, headers=headers,
                             timeout=60, **kw)

    def query(self, doc: dict[str, Any], role: str = "analyst") -> dict[str, Any]:
        r = self.call("POST", "/query", role, json=doc)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


@slow_fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, meta_url_module: str) -> Iterator[Api]:
    data = tmp_path_factory.mktemp("api") / "data"
    # a historical import of events whose purpose (analytics) rests on a contract: these
    # tests are about queries; consent is tested in tests/privacy/
    write_key = create_source(data, "web", "--historical", "--basis", "contract")
    keys = {role: new_key(data, role) for role in ("viewer", "analyst", "privacy", "admin")}
    server = ServerProcess(data, workers=2).start()
    try:
        r = httpx.post(server.url + "/v1/batch", json={"batch": BATCH}, auth=(write_key, ""))
        assert r.status_code == 200, r.text
        server.wait_processed()
        yield Api(server, keys)
    finally:
        server.stop()


# -- keys --

def test_keys_create_prints_the_key_alone_on_the_last_line_and_stores_a_slow_hash(
        api: Api) -> None:
    data = api.server.data_dir
    out = aap(data, "keys", "create", "--role", "viewer", "--name", "dash")
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("aap_") and " " not in key
    # the registry the CLI wrote to: meta.db, or PostgreSQL (AAP_META_URL of the module)
    rows = [(i, role, bytes(h), bytes(salt)) for i, role, h, salt in open_meta(
        DataDir(data).meta_db).fetchall("SELECT id, role, hash, salt FROM api_keys")]
    stored = b"".join(r[2] for r in rows) + b"".join(r[3] for r in rows)
    assert key.encode() not in stored and key.split("_", 2)[2].encode() not in stored
    _, key_id, secret = key.split("_", 2)
    (row,) = [r for r in rows if r[0] == key_id]
    assert row[1] == "viewer"
    # the stored hash is scrypt (n=2^14, r=8, p=1) of the secret with the key's own salt
    assert row[2] == hashlib.scrypt(secret.encode(), salt=row[3], n=2**14, r=8, p=1, dklen=32)
    assert hashlib.sha256(secret.encode()).digest() != row[2]
    listed = aap(data, "keys", "list").stdout
    assert "dash" in listed and "role viewer" in listed and key not in listed


def test_missing_bad_and_revoked_keys_get_401_with_a_json_body(api: Api) -> None:
    data = api.server.data_dir
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eDo="},
                    {"Authorization": "Bearer aap_000000000000_" + "x" * 43}):
        r = httpx.post(api.server.url + "/api/v1/query", json={"kind": "sql", "query": "SELECT 1"},
                       headers=headers)
        assert r.status_code == 401
        assert set(r.json()) == {"code", "message", "detail"}
    key = new_key(data, "analyst")
    ok = httpx.post(api.server.url + "/api/v1/query", json={"kind": "sql", "query": "SELECT 1"},
                    headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200
    key_id = key.split("_")[1]
    assert aap(data, "keys", "revoke", key_id).returncode == 0
    r = httpx.post(api.server.url + "/api/v1/query", json={"kind": "sql", "query": "SELECT 1"},
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401 and r.json()["code"] == "invalid_api_key"
    assert "revoked" in aap(data, "keys", "list").stdout


def test_roles_too_low_get_403(api: Api) -> None:
    r = api.call("POST", "/query", "viewer", json={"kind": "sql", "query": "SELECT 1"})
    assert r.status_code == 403 and r.json()["code"] == "role_too_low"
    assert set(r.json()) == {"code", "message", "detail"}
    r = api.call("GET", "/keys", "analyst")
    assert r.status_code == 403
    r = api.call("GET", "/keys", "admin")
    assert r.status_code == 200 and len(r.json()["keys"]) >= 4


def test_viewer_runs_saved_insights_only(api: Api) -> None:
    doc = {"kind": "trends", "series": [{"event": "Signed Up"}], "date_from": "-3d"}
    r = api.call("POST", "/insights", "viewer", json={"name": "signups", "query": doc})
    assert r.status_code == 403
    saved = api.call("POST", "/insights", "analyst", json={"name": "signups", "query": doc})
    assert saved.status_code == 200
    listed = api.call("GET", "/insights", "viewer").json()["insights"]
    assert [i["name"] for i in listed] == ["signups"]
    run = api.call("GET", f"/insights/{saved.json()['id']}", "viewer")
    assert run.status_code == 200
    assert sum(run.json()["result"]["series"][0]["values"]) == 3
    bad = api.call("POST", "/insights", "analyst", json={"name": "x", "query": {"kind": "no"}})
    assert bad.status_code == 400


# -- insights over the API --

def test_trends_through_the_api_count_merged_persons_once(api: Api) -> None:
    out = api.query({"kind": "trends", "series": [
        {"event": None, "math": "persons"}, {"event": "Signed Up"},
        {"event": "Order Completed", "math": "sum", "property": "revenue"}],
        "date_from": DAY.date().isoformat(), "date_to": DAY.date().isoformat()})
    assert [s["values"] for s in out["series"]] == [[3], [3], [40.0]]
    assert out["series"][0]["dates"] == [DAY.date().isoformat()]


def test_funnel_through_the_api(api: Api) -> None:
    out = api.query({"kind": "funnel", "steps": [{"event": "$page"}, {"event": "Signed Up"},
                                                 {"event": "Order Completed"}],
                     "window": "1h", "date_from": "-3d"})
    assert [s["count"] for s in out["steps"]] == [1, 1, 1]  # a1 = u1, merged
    assert [s["median_seconds_to_convert"] for s in out["steps"]] == [None, 180.0, 420.0]
    out = api.query({"kind": "funnel", "steps": [{"event": "Signed Up"},
                                                 {"event": "Order Completed"}],
                     "window": "8m", "date_from": "-3d"})
    assert [s["count"] for s in out["steps"]] == [3, 1]


def test_retention_paths_stickiness_lifecycle_through_the_api(api: Api) -> None:
    ret = api.query({"kind": "retention", "start_event": "Signed Up",
                     "return_event": "Order Completed", "period": "day", "periods": 2,
                     "date_from": "-3d"})
    # found by its date, not its place: the cohorts end today, and a run may pass midnight
    # after DAY was set
    (cohort,) = [c for c in ret["cohorts"] if c["start"] == DAY.date().isoformat()]
    assert cohort["size"] == 3
    paths = api.query({"kind": "paths", "start_event": "$page", "depth": 3,
                       "date_from": "-3d"})
    assert paths["paths"] == [{"steps": ["$page", "Signed Up", "Order Completed"], "count": 1}]
    st = api.query({"kind": "stickiness", "series": [{"event": "Signed Up"}],
                    "date_from": "-3d"})
    assert st["series"][0]["values"][0] == 3
    lc = api.query({"kind": "lifecycle", "event": "Signed Up", "date_from": "-3d"})
    assert sum(lc["new"]) == 3


def test_person_property_filter_and_breakdown(api: Api) -> None:
    out = api.query({"kind": "trends", "series": [{"event": "Signed Up"}], "date_from": "-3d",
                     "breakdown": "plan", "breakdown_type": "person"})
    got = {s["breakdown_value"]: sum(s["values"]) for s in out["series"]}
    assert got == {"pro": 1, "free": 1, None: 1}
    out = api.query({"kind": "trends", "series": [{"event": "Signed Up"}], "date_from": "-3d",
                     "filters": [{"property": "plan", "type": "person", "value": "pro"}]})
    assert sum(out["series"][0]["values"]) == 1
    out = api.query({"kind": "funnel", "steps": [{"event": "Signed Up"},
                                                 {"event": "Order Completed"}],
                     "date_from": "-3d", "breakdown": "plan", "breakdown_type": "person",
                     "breakdown_limit": 1})
    assert [s["count"] for s in out["steps"]] == [3, 2]
    got = {b["breakdown_value"]: [s["count"] for s in b["steps"]] for b in out["breakdown"]}
    # ties in size are ranked by value: "free" is the top one, "pro" goes to "other";
    # "not set" (u3) is always kept
    assert got == {"free": [1, 0], None: [1, 1], "other": [1, 1]}


def test_cohorts_static_and_behavioural_as_filter_and_breakdown(api: Api) -> None:
    # a static cohort processes raw identifiers: role privacy
    refused = api.call("POST", "/cohorts", json={"name": "vip", "static": {"ids": ["a1"]}})
    assert refused.status_code == 403 and refused.json()["code"] == "personal_data"
    static = api.call("POST", "/cohorts", "privacy",
                      json={"name": "vip", "static": {"ids": ["a1", "u3"]}})
    assert static.status_code == 200, static.text
    buyers = api.call("POST", "/cohorts", json={
        "name": "buyers", "behavioural": {"event": "Order Completed", "min_count": 1,
                                          "days": 30}})
    assert buyers.status_code == 200
    sid, bid = static.json()["id"], buyers.json()["id"]
    # a1 is u1's anonymous id: the static cohort reaches u1 through the merge
    out = api.query({"kind": "trends", "series": [{"event": "Signed Up"}], "date_from": "-3d",
                     "cohort": sid})
    assert sum(out["series"][0]["values"]) == 2
    out = api.query({"kind": "trends", "series": [{"event": "Signed Up", "math": "persons"}],
                     "date_from": "-3d", "breakdown_type": "cohort",
                     "breakdown_cohorts": [sid, bid]})
    assert {s["breakdown_value"]: sum(s["values"]) for s in out["series"]} == \
        {"vip": 2, "buyers": 2}
    listed = api.call("GET", "/cohorts", "viewer").json()["cohorts"]
    assert {c["name"] for c in listed} >= {"vip", "buyers"}
    assert "a1" not in json.dumps(listed)  # only hashes of ids are kept
    missing = api.call("POST", "/query", json={"kind": "trends", "series": [{"event": "x"}],
                                               "cohort": 999})
    assert missing.status_code == 404


# -- the sql kind --

def test_sql_hides_personal_columns_below_privacy(api: Api) -> None:
    r = api.call("POST", "/query", json={"kind": "sql",
                                         "query": "SELECT person_id FROM events LIMIT 1"})
    assert r.status_code == 403 and "privacy" in r.json()["message"]
    assert r.json()["code"] == "personal_data" and "events.person_id" in r.json()["message"]
    cols = api.query({"kind": "sql", "query": "SELECT * FROM persons"})["columns"]
    assert "traits" not in cols and "person_id" not in cols
    out = api.query({"kind": "sql", "query": "SELECT count(DISTINCT person_id) FROM events"},
                    role="privacy")
    assert out["rows"] == [[3]]
    out = api.query({"kind": "sql", "query": "SELECT event, count(*) AS n FROM events"
                     " GROUP BY event ORDER BY n DESC, event LIMIT 2"})
    assert out == {"kind": "sql", "columns": ["event", "n"],
                   "rows": [["Signed Up", 3], ["$identify", 2]], "truncated": False}


@pytest.mark.parametrize("query", [
    "DROP TABLE events",
    "SELECT 1; SELECT 2",
    "COPY (SELECT 1) TO '/tmp/x.csv'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM events_raw",
    "SELECT * FROM main.persons",
    "ATTACH '/tmp/x.duckdb' AS x",
    "PRAGMA database_list",
    "SET enable_external_access = true",
    "INSERT INTO events SELECT * FROM events",
    "SELECT * FROM person_overrides",
    "this is not sql",
])
def test_sql_accepts_exactly_one_select_on_the_views(api: Api, query: str) -> None:
    r = api.call("POST", "/query", "admin", json={"kind": "sql", "query": query})
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"code", "message", "detail"}


def test_sql_has_no_file_access_even_through_functions(api: Api) -> None:
    r = api.call("POST", "/query", "admin", json={
        "kind": "sql", "query": "SELECT (SELECT count(*) FROM glob('/etc/*')) AS n"})
    assert r.status_code == 400
    r = api.call("POST", "/query", "admin", json={
        "kind": "sql", "query": "WITH x AS (SELECT * FROM read_text('/etc/hostname')) SELECT 1"})
    assert r.status_code == 400


def test_sql_time_and_row_limits(api: Api) -> None:
    r = api.call("POST", "/query", json={
        "kind": "sql", "timeout_s": 0.5,
        "query": "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t)"
                 " SELECT max(n) FROM t"})
    assert r.status_code == 400 and r.json()["code"] == "timeout"
    out = api.query({"kind": "sql", "limit": 2,
                     "query": "SELECT event FROM events ORDER BY timestamp"})
    assert len(out["rows"]) == 2 and out["truncated"] is True


# -- bad input --

@pytest.mark.parametrize("body", [
    b"{", b"[]", b'{"kind": "trends"}', b'{"kind": "nope"}',
    b'{"kind": "trends", "series": [{"event": "x"}], "timezone": "Mars/Olympus"}',
    b'{"kind": "trends", "series": [{"event": "x"}], "date_from": "last tuesday"}',
    b'{"kind": "trends", "series": [{"event": "x"}], "date_from": "2026-01-02", "date_to": "2026-01-01"}',
    b'{"kind": "trends", "series": [{"event": "x", "math": "sum"}]}',
    b'{"kind": "trends", "series": [{"event": "x"}], "formula": "__import__(1)"}',
    b'{"kind": "trends", "series": [{"event": "x"}], "interval": "hour", "date_from": "2000-01-01"}',
    b'{"kind": "trends", "series": [{"event": "x"}], "filters": [{"property": "a", "operator": "gt", "value": "z"}]}',
    b'{"kind": "trends", "series": [{"event": "x"}], "filters": [{"property": "a", "operator": "regex", "value": "("}]}',
    b'{"kind": "funnel", "steps": [{"event": "a"}]}',
    b'{"kind": "funnel", "steps": [{"event": "a"}, {"event": "b"}], "window": "0d"}',
    b'{"kind": "funnel", "steps": [{"event": "a"}, {"event": "b"}], "exclusions": [{"event": "c", "from_step": 1, "to_step": 1}]}',
    b'{"kind": "paths", "depth": 11}',
    b'{"kind": "paths", "start_event": "a", "end_event": "b"}',
    b'{"kind": "retention", "periods": 0}',
    b'{"kind": "trends", "series": [{"event": "x"}], "unknown": 1}',
])
def test_bad_documents_get_a_4xx_json_error(api: Api, body: bytes) -> None:
    r = api.call("POST", "/query", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert set(r.json()) == {"code", "message", "detail"}


@pytest.mark.parametrize("path", ["/api/v1/../../../internal/sql", "/api/v1/%2e%2e/x",
                                  "/api/v1/query/../../../internal/api/v1/keys"])
def test_paths_cannot_walk_out_of_the_api(api: Api, path: str) -> None:
    """A raw request (clients would normalise the dots) with a viewer key."""
    body = b'{"sql": "DELETE FROM persons"}'
    request = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
               f"{api.keys['viewer']}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", api.server.port), timeout=120) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.split(b"\r\n", 1)[0] in (b"HTTP/1.1 404 Not Found", b"HTTP/1.1 400 Bad Request")
    assert api.query({"kind": "sql", "query": "SELECT count(*) FROM persons"})["rows"] == [[3]]


def test_openapi_document(api: Api) -> None:
    r = httpx.get(api.server.url + "/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.") and "/api/v1/query" in doc["paths"]
    assert "Trends" in doc["components"]["schemas"]


# -- the CLI --

def test_aap_query_file_prints_a_table_and_json(api: Api, tmp_path: Path) -> None:
    f = tmp_path / "funnel.json"
    f.write_text(json.dumps({"kind": "funnel", "steps": [{"event": "Signed Up"},
                                                         {"event": "Order Completed"}],
                             "date_from": "-3d"}))
    out = aap(api.server.data_dir, "query", str(f))
    assert out.returncode == 0, out.stderr
    assert "Signed Up" in out.stdout and "66.7%" in out.stdout
    out = aap(api.server.data_dir, "query", str(f), "--json")
    assert [s["count"] for s in json.loads(out.stdout)["steps"]] == [3, 2]
    out = aap(api.server.data_dir, "query", "-", stdin='{"kind": "nope"}')
    assert out.returncode != 0 and "kind is one of" in out.stderr
    key = api.keys["analyst"]
    out = subprocess.run([sys.executable, "-m", "aap", "query", str(f), "--json", "--url",
                          api.server.url, "--key", key], capture_output=True, text=True)
    assert json.loads(out.stdout)["steps"][1]["count"] == 2
