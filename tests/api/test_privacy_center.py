"""The privacy center's API (issue 14 §3): the requests queue, one person's consent
history, the record of processing with retention status, the CNIL report, the audit log
(browse and verify) and the person lookup.

A real server on 127.0.0.1 with a key of every role. An analyst (and a viewer) gets 403
on every route; lookups are audited with hashed ids, never raw ones; a canary userId and
trait never reach any answer an analyst gets; bad bodies and query strings answer 400.
On both engines of the shared state (with ``AAP_META_URL``, the requests queue and the
audit chain are rows in PostgreSQL).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from aap.datadir import DataDir
from aap.privacy.audit import AuditLog
from aap.runner import ServerProcess, create_source
from tests.api.test_query_api import new_key
from tests.conftest import slow_fixture
from tests.pg import Cluster, fresh_database

CANARY_USER = "center-canary-user-7731"
CANARY_EMAIL = "center-canary@example.test"
OTHER_USER = "center-other-user-2209"
DAY = (datetime.now(UTC) - timedelta(days=1)).replace(hour=10, minute=0, second=0,
                                                      microsecond=0)


def at(minutes: int) -> str:
    return (DAY + timedelta(minutes=minutes)).isoformat()


BATCH = [
    {"type": "identify", "userId": CANARY_USER, "anonymousId": "center-anon-1",
     "timestamp": at(0), "traits": {"plan": "pro", "email": CANARY_EMAIL}},
    {"type": "page", "userId": CANARY_USER, "name": "Home", "timestamp": at(1),
     "properties": {"path": "/"}},
    {"type": "track", "userId": CANARY_USER, "event": "Order Completed", "timestamp": at(2),
     "properties": {"order_id": "o-center-1", "revenue": 12.5, "currency": "EUR"}},
    {"type": "track", "userId": OTHER_USER, "event": "Signed Up", "timestamp": at(3)},
]

ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/privacy/requests", None),
    ("POST", "/privacy/consent/lookup", {"userId": CANARY_USER}),
    ("GET", "/privacy/record", None),
    ("GET", "/privacy/cnil", None),
    ("GET", "/audit", None),
    ("GET", "/audit/verify", None),
    ("POST", "/privacy/persons/lookup", {"userId": CANARY_USER}),
]


class Api:
    def __init__(self, server: ServerProcess, keys: dict[str, str], write_key: str) -> None:
        self.server = server
        self.keys = keys
        self.write_key = write_key

    def call(self, method: str, path: str, role: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.server.url + "/api/v1" + path, timeout=120,
                             headers={"Authorization": f"Bearer {self.keys[role]}"}, **kw)

    def audit(self) -> list[dict[str, Any]]:
        url = self.server.env.get("AAP_META_URL", "")
        if url:
            return AuditLog(self.server.data_dir, url=url).entries()
        lines = DataDir(self.server.data_dir).audit_log.read_text().splitlines()
        return [json.loads(x) for x in lines if x]

    def key_id(self, role: str) -> str:
        """The id of this role's key (keys read ``aap_<id>_<secret>``)."""
        return self.keys[role].split("_")[1]


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
        data = tmp_path_factory.mktemp("center") / "data"
        write_key = create_source(data, "web", "--historical", "--basis", "contract")
        create_source(data, "audience", "--mode", "cnil")
        keys = {role: new_key(data, role) for role in ("viewer", "analyst", "privacy", "admin")}
        server = ServerProcess(data, workers=1).start()
        try:
            r = httpx.post(server.url + "/v1/batch", json={"batch": BATCH},
                           auth=(write_key, ""), timeout=60)
            assert r.status_code == 200, r.text
            r = httpx.post(server.url + "/v1/consent", auth=(write_key, ""), timeout=60, json={
                "userId": CANARY_USER, "purposes": {"analytics": True, "marketing": False},
                "policy_version": "2026-11", "channel": "banner"})
            assert r.status_code == 200, r.text
            server.wait_processed(timeout=120)
            yield Api(server, keys, write_key)
        finally:
            server.stop()


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_analyst_and_viewer_get_403_on_every_route(api: Api, method: str, path: str,
                                                   body: Any) -> None:
    before = len(api.audit())
    for role in ("viewer", "analyst"):
        r = api.call(method, path, role, json=body) if body else api.call(method, path, role)
        assert r.status_code == 403, (role, r.text)
        err = r.json()
        assert err["code"] == "role_too_low" and "needs role privacy" in err["message"]
        assert CANARY_USER not in r.text and CANARY_EMAIL not in r.text
    # refused calls read nothing, so nothing is audited as viewed
    assert not [e for e in api.audit()[before:] if e["action"].endswith(".viewed")]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_privacy_and_admin_get_answers(api: Api, method: str, path: str, body: Any) -> None:
    for role in ("privacy", "admin"):
        r = api.call(method, path, role, json=body) if body else api.call(method, path, role)
        assert r.status_code == 200, (role, r.text)
        assert r.headers["content-type"].startswith("application/json")


def test_queue_lists_requests_filters_and_pages(api: Api) -> None:
    filed = []
    for kind in ("access", "restriction", "access"):
        r = api.call("POST", "/privacy/requests", "privacy",
                     json={"type": kind, "subject": {"userId": OTHER_USER}})
        assert r.status_code == 200, r.text
        filed.append(r.json()["id"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = [api.call("GET", f"/privacy/requests/{rid}", "privacy").json() for rid in filed]
        if all(g["status"] in ("done", "failed") for g in got):
            break
        time.sleep(0.2)
    r = api.call("GET", "/privacy/requests", "privacy", params={"limit": 500})
    assert r.status_code == 200, r.text
    listed = {q["id"]: q for q in r.json()["requests"]}
    privacy_key = api.key_id("privacy")
    for rid in filed:
        one = api.call("GET", f"/privacy/requests/{rid}", "privacy").json()
        row = listed[rid]
        assert {k: row[k] for k in one} == one  # the list shows what the single GET shows
        assert row["filed_by"] == f"key:{privacy_key}"
        assert row["status"] == "done"
    assert OTHER_USER not in r.text  # the queue holds no subject ids
    # newest first (requests filed in the same second: by id)
    ids = [q["id"] for q in r.json()["requests"]]
    order = [(q["created_at"], q["id"]) for q in r.json()["requests"]]
    assert order == sorted(order, reverse=True)
    # filters
    r = api.call("GET", "/privacy/requests", "privacy", params={"type": "restriction"})
    assert {q["type"] for q in r.json()["requests"]} == {"restriction"}
    assert filed[1] in {q["id"] for q in r.json()["requests"]}
    r = api.call("GET", "/privacy/requests", "privacy", params={"status": "pending"})
    assert all(q["status"] == "pending" for q in r.json()["requests"])
    # paging: one at a time walks the same list
    walked, before = [], None
    while True:
        params: dict[str, Any] = {"limit": 1, **({"before": before} if before else {})}
        page = api.call("GET", "/privacy/requests", "privacy", params=params).json()
        walked += [q["id"] for q in page["requests"]]
        before = page["next"]
        if before is None:
            break
    assert walked == ids


def test_access_summary_and_erasure_receipt_are_in_the_queue(api: Api) -> None:
    user = "center-erased-" + str(time.time_ns())
    r = httpx.post(api.server.url + "/v1/batch", auth=(api.write_key, ""), timeout=60,
                   json={"batch": [{"type": "track", "userId": user, "event": "Gone",
                                    "timestamp": at(5)}]})
    assert r.status_code == 200, r.text
    api.server.wait_processed(timeout=120)
    r = api.call("POST", "/privacy/requests", "privacy",
                 json={"type": "erasure", "subject": {"userId": user}})
    rid = r.json()["id"]
    deadline = time.monotonic() + 120
    while api.call("GET", f"/privacy/requests/{rid}", "privacy").json()["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    listed = api.call("GET", "/privacy/requests", "privacy", params={"type": "erasure"}).json()
    row = next(q for q in listed["requests"] if q["id"] == rid)
    assert row["result"]["type"] == "erasure" and row["result"]["digest"]
    assert row["result"]["persons"] == 1
    # the person is gone: the lookup says so, clearly
    r = api.call("POST", "/privacy/persons/lookup", "privacy", json={"userId": user})
    assert r.status_code == 404, r.text
    assert r.json()["code"] == "person_erased"


def test_consent_lookup_answers_history_and_is_audited(api: Api) -> None:
    before = len(api.audit())
    r = api.call("POST", "/privacy/consent/lookup", "privacy", json={"userId": CANARY_USER})
    assert r.status_code == 200, r.text
    out = r.json()
    got = {(h["purpose"], h["granted"], h["channel"], h["policy_version"], h["source"])
           for h in out["history"]}
    assert ("analytics", True, "banner", "2026-11", "web") in got
    assert ("marketing", False, "banner", "2026-11", "web") in got
    assert out["current"]["marketing"]["granted"] is False
    assert all(h["gpc"] is False for h in out["history"])
    entries = [e for e in api.audit()[before:] if e["action"] == "consent.viewed"]
    assert len(entries) == 1
    assert entries[0]["actor"] == f"key:{api.key_id('privacy')}"
    assert entries[0]["detail"]["statements"] == len(out["history"])
    assert CANARY_USER not in json.dumps(entries[0])


def test_person_lookup_opens_traits_and_is_audited(api: Api) -> None:
    before = len(api.audit())
    r = api.call("POST", "/privacy/persons/lookup", "privacy", json={"userId": CANARY_USER})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["erased"] is False
    assert out["events"]["total"] == 3 == out["events"]["shown"]
    stamps = [e["timestamp"] for e in out["events"]["rows"]]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    assert {e["type"] for e in out["events"]["rows"]} == {"identify", "page", "track"}
    assert out["sessions"] and sum(s["events"] for s in out["sessions"]) == 3
    assert [o["order_id"] for o in out["orders"]] == ["o-center-1"]
    assert out["traits_opened"]["email"] == CANARY_EMAIL  # sealed, opened for this view
    assert out["traits_opened"]["plan"] == "pro"
    assert CANARY_USER in out["identifiers"]["userIds"]
    assert "center-anon-1" in out["identifiers"]["anonymousIds"]
    entries = [e for e in api.audit()[before:] if e["action"] == "person.viewed"]
    assert len(entries) == 1
    detail = entries[0]["detail"]
    assert detail["userId"] is True and detail["persons"] == 1 and len(detail["subjects"]) == 1
    assert CANARY_USER not in json.dumps(entries[0]) and CANARY_EMAIL not in json.dumps(entries[0])
    # the view is visible in the audit browser
    r = api.call("GET", "/audit", "privacy", params={"action": "person.viewed", "limit": 5})
    assert entries[0]["seq"] in [e["seq"] for e in r.json()["entries"]]


def test_person_lookup_of_unknown_id_is_404(api: Api) -> None:
    r = api.call("POST", "/privacy/persons/lookup", "privacy",
                 json={"anonymousId": "never-seen-" + str(time.time_ns())})
    assert r.status_code == 404, r.text
    assert r.json()["code"] == "person_not_found"


def test_analyst_never_sees_the_canary(api: Api) -> None:
    """Every route an analyst can call that lists or runs something: no canary id or trait."""
    for method, path, body in [*ROUTES, ("GET", "/insights", None), ("GET", "/cohorts", None),
                               ("POST", "/query", {"kind": "trends", "series": [
                                   {"event": "Order Completed"}], "breakdown": "plan"})]:
        r = api.call(method, path, "analyst", json=body) if body else \
            api.call(method, path, "analyst")
        assert CANARY_USER not in r.text and CANARY_EMAIL not in r.text, (path, r.text)


def test_record_shows_purposes_and_tier_status(api: Api) -> None:
    r = api.call("GET", "/privacy/record", "privacy")
    out = r.json()
    assert out["markdown"].startswith("# Record of processing activities (GDPR Art. 30)")
    ids = [p["id"] for p in out["purposes"]]
    assert "analytics" in ids and "audience_measurement" in ids
    analytics = next(p for p in out["purposes"] if p["id"] == "analytics")
    assert {"name": "web", "basis": "contract"} in analytics["sources"]
    assert set(analytics["retention_days"]) == {"hot", "warm", "cold"}
    tiers = {t["tier"]: t for t in out["tiers"]}
    assert set(tiers) == {"hot", "warm", "cold"}
    # the hot tier holds the batch: its oldest event is the batch's oldest or older
    assert tiers["hot"]["events"] >= len(BATCH)
    assert tiers["hot"]["oldest"] <= DAY.replace(tzinfo=None).isoformat()
    assert tiers["hot"]["within_limit"] is True
    assert out["retention_job"]["interval_s"] > 0


def test_cnil_report_names_the_cnil_source(api: Api) -> None:
    r = api.call("GET", "/privacy/cnil", "privacy")
    out = r.json()
    assert [s["name"] for s in out["sources"]] == ["audience"]
    checks = out["sources"][0]["checks"]
    assert checks and all({"condition", "passed", "found"} <= set(c) for c in checks)
    assert out["passed"] == all(c["passed"] for c in checks)


def test_audit_browse_filters_pages_and_verify(api: Api) -> None:
    api.call("POST", "/privacy/consent/lookup", "privacy", json={"userId": OTHER_USER})
    everything = api.audit()
    r = api.call("GET", "/audit", "privacy", params={"limit": 500})
    page = r.json()["entries"]
    seqs = [e["seq"] for e in page]
    assert seqs == sorted(seqs, reverse=True)
    assert page[0] == everything[len(everything) - 1] or page[0]["seq"] >= everything[-1]["seq"]
    # filters
    r = api.call("GET", "/audit", "privacy", params={"action": "consent.viewed"})
    assert r.json()["entries"] and all(e["action"] == "consent.viewed"
                                       for e in r.json()["entries"])
    actor = f"key:{api.key_id('privacy')}"
    r = api.call("GET", "/audit", "privacy", params={"actor": actor})
    assert r.json()["entries"] and all(actor in e["actor"] for e in r.json()["entries"])
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = api.call("GET", "/audit", "privacy", params={"from": future})
    assert r.json()["entries"] == []
    today = datetime.now(UTC).date().isoformat()  # a date as `to` takes the whole day
    r = api.call("GET", "/audit", "privacy", params={"from": today, "to": today, "limit": 500})
    assert [e["seq"] for e in r.json()["entries"]] == [
        e["seq"] for e in reversed(everything) if e["at"][:10] == today][:500]
    # paging by seq walks every entry once
    walked, before = [], None
    while True:
        params: dict[str, Any] = {"limit": 7, **({"before": before} if before else {})}
        got = api.call("GET", "/audit", "privacy", params=params).json()
        walked += [e["seq"] for e in got["entries"]]
        before = got["next"]
        if before is None:
            break
    assert walked[-1] == 1 and walked == sorted(set(walked), reverse=True)
    r = api.call("GET", "/audit/verify", "privacy")
    v = r.json()
    assert v["ok"] is True and v["entries"] >= len(everything)


@pytest.mark.parametrize(("path", "body"), [
    ("/privacy/consent/lookup", b"{nope"), ("/privacy/consent/lookup", b"{}"),
    ("/privacy/consent/lookup", b'{"userId": 5}'),
    ("/privacy/consent/lookup", b'{"email": "x@example.test"}'),
    ("/privacy/persons/lookup", b"[]"), ("/privacy/persons/lookup", b"{}"),
    ("/privacy/persons/lookup", b'{"userId": null, "anonymousId": ""}'),
])
def test_bad_bodies_are_400(api: Api, path: str, body: bytes) -> None:
    r = api.call("POST", path, "privacy", content=body)
    assert r.status_code == 400, r.text
    assert {"code", "message", "detail"} <= set(r.json())


@pytest.mark.parametrize(("path", "params"), [
    ("/privacy/requests", {"limit": "0"}), ("/privacy/requests", {"limit": "x"}),
    ("/privacy/requests", {"status": "lost"}), ("/privacy/requests", {"type": "delete"}),
    ("/privacy/requests", {"before": "pr_nope"}),
    ("/audit", {"limit": "501"}), ("/audit", {"before": "-1"}), ("/audit", {"from": "yesterday"}),
    ("/audit", {"to": "2026-13-45"}),
])
def test_bad_query_strings_are_400(api: Api, path: str, params: dict[str, str]) -> None:
    r = api.call("GET", path, "privacy", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_query"


@pytest.mark.parametrize("path", ["/privacy/requests", "/audit", "/audit/verify",
                                  "/privacy/record", "/privacy/cnil"])
def test_unknown_query_parameters_are_400(api: Api, path: str) -> None:
    r = api.call("GET", path, "privacy", params={"userId": CANARY_USER})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "unknown_parameter"
