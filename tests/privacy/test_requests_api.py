"""Data-subject requests through the REST API: roles, statuses, and what each type does;
on both engines of the shared state (the files under the data dir, and PostgreSQL with
``AAP_META_URL``, where the queue and the audit chain are rows)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from aap.datadir import DataDir
from aap.runner import ServerProcess, create_source
from tests.conftest import slow_fixture
from tests.pg import Cluster, fresh_database


class Api:
    def __init__(self, server: ServerProcess, write_key: str, keys: dict[str, str]) -> None:
        self.server, self.write_key, self.keys = server, write_key, keys

    def request(self, body: Any, role: str = "privacy") -> httpx.Response:
        return httpx.post(self.server.url + "/api/v1/privacy/requests", json=body,
                          headers={"Authorization": f"Bearer {self.keys[role]}"}, timeout=30)

    def get(self, path: str, role: str = "privacy") -> httpx.Response:
        return httpx.get(self.server.url + "/api/v1/privacy/requests" + path,
                         headers={"Authorization": f"Bearer {self.keys[role]}"}, timeout=30)

    def run(self, body: Any) -> dict[str, Any]:
        r = self.request(body)
        assert r.status_code == 200 and r.json()["status"] == "pending", r.text
        rid = r.json()["id"]
        deadline = time.monotonic() + 180  # generous: a loaded machine
        while (got := self.get("/" + rid).json())["status"] in ("pending", "running"):
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
        return dict(got)

    def person(self, name: str) -> None:
        anon, user = f"anon-{name}", f"user-{name}"
        batch = [{"type": "page", "anonymousId": anon, "name": "Home"},
                 {"type": "identify", "anonymousId": anon, "userId": user,
                  "traits": {"plan": "free", "email": f"{name}@example.org"}},
                 {"type": "track", "userId": user, "event": "Signed Up"}]
        for m in batch:
            m["messageId"] = str(uuid.uuid4())
        r = httpx.post(self.server.url + "/v1/batch", auth=(self.write_key, ""),
                       json={"batch": batch})
        assert r.json()["accepted"] == 3


def new_key(data: Path, role: str) -> str:
    out = subprocess.run([sys.executable, "-m", "aap", "keys", "create", "--role", role,
                          "--data-dir", str(data)], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@slow_fixture(scope="module", params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Api]:
    with pytest.MonkeyPatch.context() as mp:  # the CLI and the server inherit it
        if request.param == "postgresql":
            cluster: Cluster = request.getfixturevalue("pg")
            fresh_database(cluster.url)
            mp.setenv("AAP_META_URL", cluster.url)
        else:
            mp.delenv("AAP_META_URL", raising=False)
        data = tmp_path_factory.mktemp("requests") / "data"
        write_key = create_source(data, "app", "--basis", "contract")
        keys = {role: new_key(data, role) for role in ("analyst", "privacy", "admin")}
        server = ServerProcess(data, workers=1).start()
        try:
            a = Api(server, write_key, keys)
            for name in ("ann", "ben", "cai", "dee", "eve"):
                a.person(name)
            server.wait_processed()
            yield a
        finally:
            server.stop()


def test_roles_and_bad_requests(api: Api) -> None:
    body = {"type": "access", "subject": {"userId": "user-ann"}}
    r = api.request(body, role="analyst")
    assert r.status_code == 403 and r.json()["code"] == "role_too_low"
    r = httpx.post(api.server.url + "/api/v1/privacy/requests", json=body)
    assert r.status_code == 401
    for bad, code in (({"type": "forget", "subject": {"userId": "u"}}, "invalid_request"),
                      ({"type": "access", "subject": {}}, "missing_identity"),
                      ({"type": "rectification", "subject": {"userId": "u"}}, "invalid_request"),
                      ({"type": "access"}, "invalid_request")):
        r = api.request(bad)
        assert r.status_code == 400 and r.json()["code"] == code, (bad, r.text)
    assert api.get("/pr_0123456789abcdef").status_code == 404


def test_access_request_and_its_export(api: Api) -> None:
    done = api.run({"type": "access", "subject": {"anonymousId": "anon-ann"}})
    assert done["status"] == "done" and done["result"]["events"] == 3
    r = api.get(f"/{done['id']}/export")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        events = json.loads(z.read("events.json"))
    assert sorted(e["event"] for e in events) == ["$identify", "$page", "Signed Up"]


def test_restriction_hides_the_person_from_queries(api: Api) -> None:
    before = api.server.sql("SELECT count(*) FROM events")[0][0]
    done = api.run({"type": "restriction", "subject": {"userId": "user-ben"}})
    assert done["status"] == "done" and done["result"]["persons"] >= 1
    assert api.server.sql("SELECT count(*) FROM events")[0][0] == before - 3  # type: ignore[operator]
    assert api.server.sql("SELECT count(*) FROM events_raw WHERE event = 'Signed Up'"
                          ) == [[5]]  # kept, only out of the queries


def test_rectification_and_objection(api: Api) -> None:
    done = api.run({"type": "rectification", "subject": {"userId": "user-cai"},
                    "traits": {"plan": "pro"}})
    assert done["status"] == "done" and done["result"]["persons"] == 1
    assert api.server.sql("SELECT count(*) FROM persons WHERE traits->>'plan' = 'pro'") == [[1]]
    # a personal trait: kept sealed in the keystore, shown by the access export
    done = api.run({"type": "rectification", "subject": {"userId": "user-cai"},
                    "traits": {"email": "cai.new@example.org"}})
    assert done["status"] == "done", done
    assert done["result"]["personal_traits"] == ["email"]
    assert done["result"]["personal_traits_kept"] == 1
    access = api.run({"type": "access", "subject": {"anonymousId": "anon-cai"}})
    r = api.get(f"/{access['id']}/export")
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert json.loads(z.read("personal_traits.json")) == {"email": "cai.new@example.org"}
        logged = json.loads(z.read("log_events.json"))
        others = b"".join(z.read(n) for n in z.namelist() if n != "log_events.json")
    # the old value is held only sealed in the log, as it was sent: the export shows it
    # there (Art. 15: what is held), and in no other file
    assert [e["traits"]["email"] for e in logged if e["type"] == "identify"] == [
        "cai@example.org"]
    assert b"cai@example.org" not in others
    for f in DataDir(api.server.data_dir).keys.iterdir():  # and the new one is sealed
        assert b"cai.new@example.org" not in f.read_bytes(), f
    done = api.run({"type": "objection", "subject": {"userId": "user-dee"}})
    assert done["status"] == "done"
    assert api.server.sql("SELECT count(*) FROM person_flags WHERE flag = 'objected'") == [[1]]


def test_erasure_request_gives_a_receipt(api: Api) -> None:
    done = api.run({"type": "erasure", "subject": {"userId": "user-eve"}})
    assert done["status"] == "done"
    receipt = done["result"]
    assert receipt["type"] == "erasure" and receipt["removed"]["hot_events"] == 3
    assert len(receipt["digest"]) == 64
    assert api.server.sql("SELECT count(*) FROM events_raw WHERE properties IS NOT NULL"
                          " AND person_id NOT IN (SELECT person_id FROM persons)") == [[0]]


def test_the_queue_and_the_audit_chain_are_where_the_url_says(api: Api) -> None:
    done = api.run({"type": "objection", "subject": {"userId": "nobody"}, "lift": True})
    assert done["status"] == "done"
    url = api.server.env.get("AAP_META_URL", "")
    paths = DataDir(api.server.data_dir)
    assert paths.requests_db.exists() == paths.audit_log.exists() == (not url)
    out = subprocess.run([sys.executable, "-m", "aap", "audit", "verify", "--data-dir",
                          str(api.server.data_dir)], capture_output=True, text=True,
                         env=api.server.env)
    assert out.returncode == 0 and "chain intact" in out.stdout, out
    if url:
        with psycopg.connect(url) as con:
            assert con.execute("SELECT status FROM requests WHERE id = %s", (done["id"],)
                               ).fetchone() == ("done",)
            actions = [json.loads(e)["action"] for (e,) in con.execute(
                "SELECT entry FROM audit_entries ORDER BY seq")]
        assert actions[0] == "source.created" and actions.count("key.created") == 3
        assert actions[-1] == "privacy.objection_lifted"
