"""The admin API end to end (sources and health): a real server on 127.0.0.1, keys made
with the CLI, answers over HTTP, the data dir read afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.runner import ServerProcess, create_source
from tests.conftest import slow_fixture


def new_key(data: Path, role: str) -> str:
    out = subprocess.run([sys.executable, "-m", "aap", "keys", "create", "--role", role,
                          "--data-dir", str(data)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


class Admin:
    def __init__(self, server: ServerProcess, keys: dict[str, str], write_key: str) -> None:
        self.server = server
        self.keys = keys
        self.write_key = write_key

    def call(self, method: str, path: str, role: str = "admin", **kw: Any) -> httpx.Response:
        return httpx.request(method, self.server.url + "/api/v1" + path, timeout=60,
                             headers={"Authorization": f"Bearer {self.keys[role]}"}, **kw)

    def ok(self, method: str, path: str, **kw: Any) -> Any:
        r = self.call(method, path, **kw)
        assert r.status_code == 200, r.text
        return r.json()


@slow_fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    data = tmp_path_factory.mktemp("admin") / "data"
    write_key = create_source(data, "web", "--historical", "--basis", "contract")
    keys = {role: new_key(data, role) for role in ("privacy", "admin")}
    server = ServerProcess(data, workers=2).start()
    try:
        yield Admin(server, keys, write_key)
    finally:
        server.stop()


def send(admin: Admin, key: str, **extra: Any) -> httpx.Response:
    return httpx.post(admin.server.url + "/v1/batch", auth=(key, ""), timeout=60, json={
        "batch": [{"type": "track", "event": "Admin Test", "anonymousId": "adm-1", **extra}]})


ROUTES = [("GET", "/sources", None), ("POST", "/sources", {"name": "by-privacy"}),
          ("PATCH", "/sources/web", {"rate_limit": 5}), ("POST", "/sources/web/server_key", None),
          ("GET", "/health", None)]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_privacy_role_gets_403(admin: Admin, method: str, path: str, body: Any) -> None:
    r = admin.call(method, path, role="privacy", json=body)
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "role_too_low"
    assert "admin" in r.json()["message"]
    names = [s["name"] for s in admin.ok("GET", "/sources")["sources"]]
    assert "by-privacy" not in names  # nothing was done


def test_created_source_key_works_at_the_collector_and_is_never_shown_again(
        admin: Admin) -> None:
    out = admin.ok("POST", "/sources", json={
        "name": "shop", "origins": ["https://shop.example"], "rate_limit": 0,
        "purposes": {"analytics": "contract"}, "historical": True, "server_key": True})
    key, secret = out["write_key"], out["server_key_secret"]
    assert key.startswith("wk_") and secret.startswith("sk_")
    assert out["origins"] == ["https://shop.example"]
    assert out["purposes"] == {"analytics": "contract"}
    assert out["key_hint"] == key[:7] + "…"
    # the collector takes the key at once; a made-up one is refused
    assert send(admin, key).status_code == 200
    assert send(admin, "wk_" + "x" * 32).status_code == 401
    listed = admin.call("GET", "/sources")
    assert listed.status_code == 200
    assert key not in listed.text and secret not in listed.text
    shop = next(s for s in listed.json()["sources"] if s["name"] == "shop")
    assert shop["id"] == out["id"] and shop["server_key"] is True
    assert "write_key" not in shop and "server_key_secret" not in shop
    # nothing under the data dir holds either key in clear (only their digests)
    admin.server.wait_processed()
    for path in admin.server.data_dir.rglob("*"):
        if path.is_file() and not path.is_socket():
            blob = path.read_bytes()
            assert key.encode() not in blob, path
            assert secret.encode() not in blob, path


def test_new_server_key_replaces_the_old_one(admin: Admin) -> None:
    made = admin.ok("POST", "/sources", json={"name": "api-backend", "historical": True,
                                              "purposes": {"analytics": "contract"}})
    assert made["server_key"] is False
    first = admin.ok("POST", f"/sources/{made['id']}/server_key")["server_key_secret"]
    assert send(admin, first).status_code == 200
    second = admin.ok("POST", "/sources/api-backend/server_key")
    assert second["server_key"] is True and second["server_key_secret"].startswith("sk_")
    assert send(admin, second["server_key_secret"]).status_code == 200
    # the old one stops working once the workers read the key again (aap.collect.keys.KNOWN_TTL_S, 5 s)
    deadline = time.monotonic() + 60
    while send(admin, first).status_code != 401:
        assert time.monotonic() < deadline, "the replaced server key still works after 60 s"
        time.sleep(0.5)
    listed = admin.call("GET", "/sources").text
    assert first not in listed and second["server_key_secret"] not in listed
    r = admin.call("POST", "/sources/nope/server_key")
    assert r.status_code == 404 and r.json()["code"] == "no_source"


def test_update_changes_what_is_given_and_is_audited(admin: Admin) -> None:
    made = admin.ok("POST", "/sources", json={"name": "blog"})
    assert made["purposes"] == {"analytics": "consent"} and made["origins"] == ["*"]
    out = admin.ok("PATCH", "/sources/blog", json={
        "origins": ["https://blog.example", "http://localhost:8080"], "rate_limit": 12.5,
        "purposes": {"analytics": "legitimate_interest"}})
    assert out["origins"] == ["https://blog.example", "http://localhost:8080"]
    assert out["rate_limit"] == 12.5
    assert out["purposes"] == {"analytics": "legitimate_interest"}
    # by id as well; the mode's default purposes when the mode changes alone
    cnil = admin.ok("PATCH", f"/sources/{made['id']}", json={"mode": "cnil",
                                                             "controller": "acme"})
    assert cnil["mode"] == "cnil" and cnil["controller"] == "acme"
    assert all(b == "legitimate_interest" for b in cnil["purposes"].values())
    listed = {s["name"]: s for s in admin.ok("GET", "/sources")["sources"]}
    assert listed["blog"] == cnil
    audit = [json.loads(line) for line in
             (admin.server.data_dir / "privacy" / "audit.jsonl").read_text().splitlines()]
    mine = [a for a in audit if a.get("detail", {}).get("source") == made["id"]]
    actions = [a["action"] for a in mine]
    assert actions[:1] == ["source.created"]
    assert actions.count("source.updated") == 2 and "source.controller_set" in actions
    first = next(a for a in mine if a["action"] == "source.updated")
    assert first["detail"]["rate_limit"] == 12.5
    assert first["actor"].startswith("key:")


def test_rate_limit_update_reaches_source(admin: Admin) -> None:
    out = admin.ok("PATCH", "/sources/web", json={"rate_limit": 0})
    assert out["rate_limit"] == 0


HOSTILE_NAMES = ["", "   ", "a/b", "..\\x", "tab\there", "new\nline", "nul\x00", "x" * 101,
                 " padded", "per%cent", "q?x", "h#x", "rtl\u202eexe.txt", "line\u2028sep",
                 "zero\u200bwidth"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_refused(admin: Admin, name: str) -> None:
    r = admin.call("POST", "/sources", json={"name": name})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == "invalid_name" and body["message"]


HOSTILE_ORIGINS = ["javascript:alert(1)", "https://a.example/path", "https://a.example?x=1",
                   "ftp://a.example", "https://", "https://a.example:99999", " https://a.example",
                   "https://user:pw@a.example", "https://a.example\n", "null", "<script>"]


@pytest.mark.parametrize("origin", HOSTILE_ORIGINS)
def test_hostile_origins_are_refused(admin: Admin, origin: str) -> None:
    r = admin.call("POST", "/sources", json={"name": "o-create", "origins": [origin]})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_origin" and r.json()["message"]
    r = admin.call("PATCH", "/sources/web", json={"origins": [origin]})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_origin"


@pytest.mark.parametrize(("body", "code"), [
    ({"name": "p1", "purposes": {"no-such-purpose": "consent"}}, "invalid_source"),
    ({"name": "p2", "purposes": {"analytics": "because"}}, "invalid_source"),
    ({"name": "p3", "rate_limit": -1}, "invalid_source"),
    ({"name": "p4", "mode": "sneaky"}, "invalid_mode"),
    ({"name": "p5", "controller": "bad group!"}, "invalid_source"),
    ({"name": "p6", "unknown": 1}, "bad_request"),
    ({"name": 7}, "bad_request"),
])
def test_bad_options_are_400(admin: Admin, body: dict[str, Any], code: str) -> None:
    r = admin.call("POST", "/sources", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == code and r.json()["message"]


def test_duplicate_name_and_unknown_source(admin: Admin) -> None:
    assert admin.call("POST", "/sources", json={"name": "web"}).status_code == 409
    r = admin.call("PATCH", "/sources/nope", json={"rate_limit": 1})
    assert r.status_code == 404 and r.json()["code"] == "no_source"
    assert admin.call("PATCH", "/sources/web", content=b"{not json").status_code == 400


def test_markup_in_names_is_stored_as_text(admin: Admin) -> None:
    name = '<img src=x onerror=alert(1)>"><b>&amp;'
    out = admin.ok("POST", "/sources", json={"name": name})
    assert out["name"] == name
    listed = admin.call("GET", "/sources")
    assert listed.headers["content-type"].startswith("application/json")
    assert any(s["name"] == name for s in listed.json()["sources"])


def test_health_reports_log_tiers_disk_processor(admin: Admin) -> None:
    assert send(admin, admin.write_key).status_code == 200
    admin.server.wait_processed()
    h = admin.ok("GET", "/health")
    assert h["log"]["events"] >= 1 and h["log"]["size_bytes"] > 0
    assert h["log"]["lag_max"] == max(h["log"]["lag_events"].values(), default=0)
    assert h["tiers"]["hot"]["rows"] >= 1 and h["tiers"]["hot"]["bytes"] > 0
    assert set(h["tiers"]) == {"hot", "warm", "cold"}
    assert h["disk"]["free_bytes"] > 0 and h["disk"]["total_bytes"] >= h["disk"]["free_bytes"]
    proc = h["processor"]
    assert proc["running"] is True and proc["position"] >= 1
    assert proc["last_write_at"] is not None and proc["dead_letters"] == 0
    # the numbers are the ones the core has: the processed position, the hot rows
    assert proc["position"] == admin.server.processed_position()
    rows = admin.server.sql("SELECT count(*) FROM events_raw")[0][0]
    assert h["tiers"]["hot"]["rows"] == rows
    assert h["core"]["up"] is True
    assert h["workers"] == {"configured": 2, "up": 2}
