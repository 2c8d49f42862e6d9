"""Rights from the CLI (rectify, restrict, object), what each one reaches, erasure from
saved cohorts, and the audit of reads and admin actions, on one running server whose
persons have events in the hot and warm tiers (and in the query cache)."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.datadir import DataDir
from aap.privacy.audit import AuditLog
from aap.privacy.ids import IdHasher
from aap.runner import ServerProcess, create_source
from tests.conftest import slow_fixture
from tests.privacy.test_requests_api import new_key

PEOPLE = ("rita", "otto", "olga", "cora", "erin", "ivan")


def aap(data: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "aap", *args, "--data-dir", str(data)],
                         capture_output=True, text=True)
    if ok:
        assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return out


class World:
    def __init__(self, server: ServerProcess, write_key: str, keys: dict[str, str]) -> None:
        self.server, self.write_key, self.keys = server, write_key, keys
        self.data = server.data_dir

    def send(self, name: str, days_ago: float, *events: str) -> None:
        at = (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()
        batch: list[dict[str, Any]] = [{"type": "identify", "anonymousId": f"anon-{name}",
                                        "userId": f"user-{name}", "timestamp": at,
                                        "traits": {"plan": "free", "email": f"{name}@ex.org"}}]
        batch += [{"type": "track", "userId": f"user-{name}", "event": e, "timestamp": at,
                   "properties": {"who": name}} for e in events]
        for m in batch:
            m["messageId"] = str(uuid.uuid4())
        r = httpx.post(self.server.url + "/v1/batch", auth=(self.write_key, ""),
                       json={"batch": batch})
        assert r.json()["accepted"] == len(batch), r.text

    def api(self, method: str, path: str, role: str = "privacy", body: Any = None
            ) -> httpx.Response:
        return httpx.request(method, self.server.url + "/api/v1" + path, json=body, timeout=60,
                             headers={"Authorization": f"Bearer {self.keys[role]}"})

    def sql(self, query: str, role: str = "privacy") -> list[list[Any]]:
        r = self.api("POST", "/query", role, {"kind": "sql", "query": query})
        assert r.status_code == 200, r.text
        return list(r.json()["rows"])

    def who(self) -> dict[str, int]:
        """Events per person as every query sees them (through the query cache)."""
        return {w: n for w, n in self.sql(
            "SELECT json_extract_string(properties, '$.who') AS w, count(*) FROM events"
            " WHERE w IS NOT NULL GROUP BY w")}

    def key_id(self, role: str) -> str:
        return self.keys[role].split("_")[1]

    def audit(self, action: str) -> list[dict[str, Any]]:
        return [e for e in AuditLog(self.data).entries() if e["action"] == action]


@slow_fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = tmp_path_factory.mktemp("rights") / "data"
    write_key = create_source(data, "app", "--basis", "contract", "--historical")
    keys = {role: new_key(data, role) for role in ("analyst", "privacy", "admin")}
    env = {"AAP_HOT_DAYS": "1", "AAP_TIERING_INTERVAL_S": "0.5",
           "AAP_QUERY_CACHE_INTERVAL_S": "0.5"}
    server = ServerProcess(data, workers=1, env=env).start()
    try:
        w = World(server, write_key, keys)
        for name in PEOPLE:
            w.send(name, 3, "Order Completed", "Viewed")   # warm
            w.send(name, 0, "Order Completed")             # hot
        server.wait_processed()
        deadline = time.monotonic() + 180
        while server.sql("SELECT count(*) FROM query_cache_files")[0][0] == 0:  # type: ignore[misc]
            assert time.monotonic() < deadline, "the warm day should be in the query cache"
            time.sleep(0.2)
        assert w.who() == {n: 3 for n in PEOPLE}
        yield w
    finally:
        server.stop()


def test_rectify_from_the_cli(world: World) -> None:
    out = aap(world.data, "privacy", "rectify", "--user-id", "user-cora", "--trait", "plan=team",
              "--trait", "email=cora.fixed@ex.org", "--trait", "seats=3")
    result = json.loads(out.stdout)
    assert result["traits"] == ["plan", "seats"] and result["personal_traits"] == ["email"]
    # non-personal traits: in the profile, for every query at once
    assert world.sql("SELECT traits->>'plan', traits->>'seats' FROM persons"
                     " WHERE traits->>'seats' IS NOT NULL") == [["team", "3"]]
    # personal traits: shown by the access export, never the old value; nothing in clear
    zip_path = world.data.parent / "cora.zip"
    aap(world.data, "privacy", "export", "--user-id", "user-cora", "--out", str(zip_path))
    with zipfile.ZipFile(zip_path) as z:
        assert json.loads(z.read("personal_traits.json")) == {"email": "cora.fixed@ex.org"}
        [profile] = json.loads(z.read("profile.json"))
        assert json.loads(profile["traits"]) == {"plan": "team", "seats": 3}
        # the old value is held only sealed in the log, as sent: shown there, nowhere else
        logged = json.loads(z.read("log_events.json"))
        assert {e["traits"]["email"] for e in logged if e["type"] == "identify"} == {
            "cora@ex.org"}
        assert b"cora@ex.org" not in b"".join(z.read(n) for n in z.namelist()
                                              if n != "log_events.json")
    for f in world.data.rglob("*"):
        if f.is_file():
            assert b"cora.fixed@ex.org" not in f.read_bytes(), f
    # null removes a personal trait
    aap(world.data, "privacy", "rectify", "--anonymous-id", "anon-cora", "--trait", "email=null")
    aap(world.data, "privacy", "export", "--user-id", "user-cora", "--out", str(zip_path))
    with zipfile.ZipFile(zip_path) as z:
        assert json.loads(z.read("personal_traits.json")) == {}
    # bad input: a message and a non-zero exit, no traceback
    bad = aap(world.data, "privacy", "rectify", "--user-id", "user-cora", "--trait", "plan",
              ok=False)
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr
    bad = aap(world.data, "privacy", "restrict", ok=False)
    assert bad.returncode == 2 and "--user-id" in bad.stderr
    [entry, *_] = world.audit("privacy.rectification")
    assert entry["actor"].startswith("cli:") and entry["detail"]["personal_traits"] == ["email"]
    assert "cora.fixed" not in json.dumps(entry)


def test_restriction_reaches_every_query_and_new_events(world: World) -> None:
    out = json.loads(aap(world.data, "privacy", "restrict", "--user-id", "user-rita").stdout)
    assert out == {"type": "restriction", "persons": 1}
    # a new event of the restricted person is kept (stored) but not processed into view
    world.send("rita", 0, "Came Back")
    world.server.wait_processed()
    assert world.server.sql("SELECT count(*) FROM events_raw WHERE event = 'Came Back'") == [[1]]
    assert "rita" not in world.who()  # sql kind, hot tier and the query cache's warm copy
    assert world.sql("SELECT count(*) FROM persons") == [[len(PEOPLE) - 1]]
    assert world.sql("SELECT count(*) FROM events WHERE event = 'Came Back'") == [[0]]
    trends = world.api("POST", "/query", "analyst", {
        "kind": "trends", "series": [{"event": "Came Back"}], "interval": "day"}).json()
    assert sum(v or 0 for s in trends["series"] for v in s["values"]) == 0
    # the person's own access export still shows everything (Art. 15 is theirs)
    done = world.api("POST", "/privacy/requests", body={
        "type": "access", "subject": {"userId": "user-rita"}}).json()
    result = wait(world, done["id"])
    assert result["result"]["restricted"] is True and result["result"]["events"] == 7
    # lifting it brings everything back, the event that came meanwhile included
    out = json.loads(aap(world.data, "privacy", "restrict", "--user-id", "user-rita",
                         "--lift").stdout)
    assert out["lifted"] is True and out["flags_removed"] == 1
    assert world.who()["rita"] == 4
    assert [e["action"] for e in AuditLog(world.data).entries()
            if e["action"].startswith("privacy.restriction")] == [
        "privacy.restriction", "privacy.restriction_lifted"]


def wait(world: World, rid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while (got := world.api("GET", f"/privacy/requests/{rid}").json())["status"] in (
            "pending", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert got["status"] == "done", got
    return dict(got)


def test_objection_leaves_behavioural_cohorts_only(world: World) -> None:
    beh = world.api("POST", "/cohorts", "analyst", {"name": "buyers", "behavioural": {
        "event": "Order Completed", "min_count": 2, "days": 30}}).json()["id"]
    # a list of raw ids: role privacy makes it; an analyst may count it
    static = world.api("POST", "/cohorts", "privacy", {
        "name": "chosen", "static": {"ids": ["user-otto", "user-olga"]}}).json()["id"]

    def members(cohort: int) -> float:
        r = world.api("POST", "/query", "analyst", {
            "kind": "trends", "series": [{"event": "Order Completed", "math": "persons"}],
            "interval": "month", "cohort": cohort})
        assert r.status_code == 200, r.text
        return max(v or 0 for s in r.json()["series"] for v in s["values"])

    before = members(beh)
    assert before >= 3 and members(static) == 2
    out = json.loads(aap(world.data, "privacy", "object", "--user-id", "user-otto").stdout)
    assert out == {"type": "objection", "persons": 1}
    assert members(beh) == before - 1  # profiling: without Otto
    assert members(static) == 2  # a list an analyst chose is not profiling
    assert world.who()["otto"] == 3  # and his events still count in plain analytics
    aap(world.data, "privacy", "object", "--user-id", "user-otto", "--lift")
    assert members(beh) == before


def test_erasure_takes_the_person_out_of_saved_cohorts(world: World) -> None:
    cid = world.api("POST", "/cohorts", "privacy", {
        "name": "pair", "static": {"ids": ["user-erin", "anon-erin", "user-ivan"]}}).json()["id"]
    access = world.api("POST", "/privacy/requests", body={
        "type": "access", "subject": {"userId": "user-erin"}}).json()["id"]
    wait(world, access)
    assert world.api("GET", f"/privacy/requests/{access}/export").status_code == 200
    hasher = IdHasher.for_data_dir(world.data)
    erin = {hasher.key("user-erin"), hasher.key("anon-erin")}

    def stored_keys() -> set[int]:
        con = sqlite3.connect(DataDir(world.data).meta_db)
        try:
            (definition,) = con.execute("SELECT definition FROM cohorts WHERE id = ?",
                                        (cid,)).fetchone()
        finally:
            con.close()
        return set(json.loads(definition)["id_keys"])

    assert erin <= stored_keys()
    done = world.api("POST", "/privacy/requests", body={
        "type": "erasure", "subject": {"userId": "user-erin"}}).json()["id"]
    receipt = wait(world, done)["result"]
    derived = receipt["derived"]
    assert derived["static_cohort_ids_removed"] == 2 and derived["static_cohorts_changed"] >= 1
    assert derived["query_cache_rows"] == 3  # her warm day's rows, copied into the cache
    assert derived["access_exports_deleted"] == 1
    assert stored_keys() == {hasher.key("user-ivan")}
    assert "erin" not in world.who()
    gone = world.api("GET", f"/privacy/requests/{access}/export")
    assert gone.status_code == 404 and gone.json()["code"] == "export_erased"
    assert world.server.sql("SELECT count(*) FROM query_cache WHERE person_id NOT IN"
                            " (SELECT person_id FROM persons)") == [[0]]


def test_reads_and_admin_actions_are_audited(world: World) -> None:
    privacy, admin = world.key_id("privacy"), world.key_id("admin")
    n = len(world.audit("data.read"))
    # aggregates and an analyst's queries read no personal column: not recorded
    world.sql("SELECT count(*), count(DISTINCT event) FROM events")
    world.sql("SELECT event FROM events LIMIT 1", role="analyst")
    assert len(world.audit("data.read")) == n
    rows = world.sql("SELECT person_id, properties FROM events WHERE event = 'Viewed'")
    world.sql("SELECT * FROM persons LIMIT 1")
    *_, by_column, by_star = world.audit("data.read")
    assert by_column["actor"] == f"key:{privacy}"
    assert by_column["detail"]["columns"] == ["events.person_id", "events.properties"]
    assert by_column["detail"]["rows"] == len(rows) and len(by_column["detail"]["query_sha256"]) == 64
    assert by_star["detail"]["columns"] == ["persons.person_id", "persons.traits"]
    # `aap query` on the same machine (the core's socket) is named by its OS user
    doc = world.data.parent / "personal.json"
    doc.write_text(json.dumps({"kind": "sql", "query": "SELECT person_id FROM events LIMIT 1"}))
    aap(world.data, "query", str(doc), "--role", "privacy")
    assert world.audit("data.read")[-1]["actor"].startswith("cli:")
    # an access export downloaded through the API
    rid = world.api("POST", "/privacy/requests", body={
        "type": "access", "subject": {"userId": "user-ivan"}}).json()["id"]
    wait(world, rid)
    body = world.api("GET", f"/privacy/requests/{rid}/export").content
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        assert "events.json" in z.namelist()
    [download] = [e for e in world.audit("privacy.export_downloaded")
                  if e["detail"]["request"] == rid]
    assert download["actor"] == f"key:{privacy}" and download["detail"]["bytes"] == len(body)
    [made] = [e for e in world.audit("privacy.access") if e["actor"].endswith(rid)]
    assert made["actor"] == f"key:{privacy}/request:{rid}"
    # the CLI's export: the access and the copy it wrote
    aap(world.data, "privacy", "export", "--user-id", "user-ivan", "--out",
        str(world.data.parent / "ivan.zip"))
    assert world.audit("privacy.access")[-1]["actor"].startswith("cli:")
    assert world.audit("privacy.export_written")[-1]["actor"].startswith("cli:")
    # admin actions, by whom
    created = world.api("POST", "/keys", "admin", {"role": "viewer"}).json()
    world.api("DELETE", f"/keys/{created['id']}", "admin")
    assert world.audit("key.created")[-1]["actor"] == f"key:{admin}"
    assert world.audit("key.revoked")[-1]["actor"] == f"key:{admin}"
    assert world.audit("key.revoked")[-1]["detail"] == {"key_id": created["id"]}
    world.api("POST", "/cohorts", "analyst", {"name": "viewers", "behavioural": {
        "event": "Viewed"}})
    assert world.audit("cohort.created")[-1]["actor"] == f"key:{world.key_id('analyst')}"
    aap(world.data, "sources", "secret", "app")
    assert world.audit("source.secret_shown")[-1]["actor"].startswith("cli:")
    assert world.audit("source.created")[0]["actor"].startswith("cli:")
    # no raw id or personal value in any entry, and the chain holds
    text = DataDir(world.data).audit_log.read_text()
    assert "user-ivan" not in text and "@ex.org" not in text
    assert "ok:" in aap(world.data, "audit", "verify").stdout
