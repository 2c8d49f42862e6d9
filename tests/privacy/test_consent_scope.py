"""Consent and rights are scoped to their source (or its controller group), and a public
write key cannot destroy: on the real server, over real sockets.

Sources: ``solo`` is its own controller; ``shop-a`` and ``shop-b`` are one controller's
(group ``shop``); ``limited`` may send almost nothing. ``solo`` and ``shop-a`` have a
server (secret) key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aap.datadir import DataDir
from aap.privacy.consent import ConsentLedger
from aap.runner import ServerProcess
from tests.conftest import examples, slow_fixture

SOURCES = ("solo", "shop-a", "shop-b")
SCOPE = {"solo": "solo", "shop-a": "shop", "shop-b": "shop"}
SERVER_KEY_OF_SCOPE = {"solo": "solo", "shop": "shop-a"}
PER_SUBJECT = 8


def aap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aap", *args], capture_output=True, text=True)


def token(secret_b64: str, source_id: str, subject: dict[str, str]) -> str:
    """A subject token as a site's backend makes it (README, Self-service)."""
    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    secret = base64.urlsafe_b64decode(secret_b64 + "=" * (-len(secret_b64) % 4))
    body = b64(json.dumps({"src": source_id, "sub": subject,
                           "exp": int(time.time()) + 900}).encode())
    return body + "." + b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())


@dataclass
class World:
    server: ServerProcess
    data: Path
    write: dict[str, str] = field(default_factory=dict)
    server_key: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)

    def post(self, path: str, body: dict[str, Any], key: str | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(self.server.url + path, json=body, headers=headers or {},
                          auth=(key, "") if key else None, timeout=30)

    def consent(self, key: str, body: dict[str, Any]) -> httpx.Response:
        return self.post("/v1/consent", body, key)

    def track(self, key: str, event: str, user: str | None = None, anon: str | None = None,
              **extra: Any) -> int:
        m: dict[str, Any] = {"type": "track", "event": event, "messageId": str(uuid.uuid4()),
                             **extra}
        if user:
            m["userId"] = user
        if anon:
            m["anonymousId"] = anon
        r = self.post("/v1/batch", {"batch": [m]}, key)
        assert r.status_code == 200, r.text
        accepted: int = r.json()["accepted"]
        return accepted

    def ledger(self, sql: str) -> int:
        """A count over the server's consent ledger (the file, or PostgreSQL)."""
        row = ConsentLedger(self.data).db.fetchone(sql)
        assert row is not None
        return int(row[0])

    def settled(self) -> None:
        """Everything in the log processed and every ledger statement applied to what is
        stored (polled, generous timeouts)."""
        self.server.wait_processed(timeout=60)
        last = self.ledger("SELECT coalesce(max(seq), 0) FROM statements")
        ledger_id = ConsentLedger(self.data).id  # the processor's position is per ledger
        position = f"consent_applied:{ledger_id}" if ledger_id else "consent_applied"
        deadline = time.monotonic() + 60
        while True:
            got = self.server.sql(
                "SELECT value FROM processor_state WHERE name = ?", [position])
            if got and got[0][0] >= last:
                return
            assert time.monotonic() < deadline, f"consent applied {got}, ledger at {last}"
            time.sleep(0.1)

    def stored(self, like: str) -> list[tuple[str, str]]:
        """(source name, event) of the stored events whose name starts with ``like``."""
        names = {v: k for k, v in self.ids.items()}
        rows = self.server.sql("SELECT source, event FROM events WHERE starts_with(event, ?)",
                               [like])
        return sorted((names[r[0]], r[1]) for r in rows)


@slow_fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, meta_url_module: str) -> Iterator[World]:
    """The sources and their server, on each engine of the shared state."""
    data = tmp_path_factory.mktemp("scope") / "data"
    w_keys: dict[str, str] = {}
    s_keys: dict[str, str] = {}
    for name, args in (("solo", ["--server-key"]),
                       ("shop-a", ["--controller", "shop", "--server-key"]),
                       ("shop-b", []), ("limited", ["--rate-limit", "0.01"])):
        r = aap("sources", "create", name, "--data-dir", str(data), *args)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.strip().splitlines()
        w_keys[name] = lines[-1]
        if "--server-key" in args:
            s_keys[name] = lines[0].rsplit(" ", 1)[-1]
            assert s_keys[name].startswith("sk_")
    # a source joins its controller's group after it was created
    r = aap("sources", "controller", "shop-b", "shop", "--data-dir", str(data))
    assert r.returncode == 0 and "controller:shop" in r.stdout, r.stderr
    listing = aap("sources", "list", "--data-dir", str(data)).stdout
    ids = {line.split("\t")[1]: line.split("\t")[0] for line in listing.splitlines()}
    secrets = {n: aap("sources", "secret", n, "--data-dir", str(data)
                      ).stdout.strip().splitlines()[-1] for n in SOURCES}
    server = ServerProcess(data, workers=2,
                           env={"AAP_CONSENT_PER_SUBJECT_PER_MINUTE": str(PER_SUBJECT)}).start()
    try:
        yield World(server, data, w_keys, s_keys, ids, secrets)
    finally:
        server.stop()


def test_keys_are_hashed_and_the_write_key_stays_alone_on_the_last_line(
        world: World, meta_url_module: str) -> None:
    if meta_url_module:  # the registry's rows in PostgreSQL
        import psycopg

        with psycopg.connect(meta_url_module) as con:
            meta = repr(con.execute("SELECT * FROM sources").fetchall()).encode()
    else:
        meta = DataDir(world.data).meta_db.read_bytes()
    for key in (*world.write.values(), *world.server_key.values()):
        assert key.encode() not in meta
        assert hashlib.sha256(key.encode()).hexdigest().encode() in meta
    assert all(k.startswith("wk_") for k in world.write.values())
    listing = aap("sources", "list", "--data-dir", str(world.data)).stdout
    assert "controller shop" in listing and "server key sk_" in listing
    # a new server key replaces the old one, also in running workers that knew the old
    old = world.server_key["solo"]

    def status(key: str) -> int:
        return httpx.post(world.server.url + "/v1/consent", auth=(key, ""), json={
            "userId": uuid.uuid4().hex, "purposes": {"analytics": True}}, timeout=30).status_code

    assert status(old) == 200 and status(old) == 200
    r = aap("sources", "server-key", "solo", "--data-dir", str(world.data))
    assert r.returncode == 0
    new = r.stdout.strip().splitlines()[-1]
    assert new.startswith("sk_") and new != old
    world.server_key["solo"] = new
    assert status(new) == 200
    deadline = time.monotonic() + 60
    while status(old) != 401:
        assert time.monotonic() < deadline, "the replaced server key still works"
        time.sleep(0.5)
    bad = aap("sources", "controller", "solo", "no spaces!", "--data-dir", str(world.data))
    assert bad.returncode != 0 and "controller group" in bad.stderr
    assert "Traceback" not in bad.stderr


ops = st.lists(st.tuples(st.sampled_from(SOURCES), st.integers(0, 1), st.booleans(),
                         st.booleans()), min_size=1, max_size=6)


# each example: a run of grants and withdrawals against a live server
@settings(max_examples=examples(10),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=ops)
def test_consent_acts_only_in_its_scope_and_only_trusted_statements_reach_history(
        world: World, ops: list[tuple[str, int, bool, bool]]) -> None:
    """Random grants and withdrawals (public write key or server key) over sources and
    userIds, against a model of scoped consent: what each source collects afterwards,
    and what stays stored from before, match the model; nothing crosses scopes."""
    tag = uuid.uuid4().hex[:10]
    users = [f"{tag}-u{i}" for i in range(2)]
    for user in users:  # everyone consented everywhere, through the backends
        for name in SERVER_KEY_OF_SCOPE.values():
            assert world.consent(world.server_key[name], {
                "userId": user, "purposes": {"analytics": True}}).status_code == 200
    for name in SOURCES:
        for i, user in enumerate(users):
            assert world.track(world.write[name], f"{tag}-before-{i}", user) == 1
    world.settled()
    assert len(world.stored(f"{tag}-before")) == len(SOURCES) * len(users)

    latest = {(scope, i): True for scope in SERVER_KEY_OF_SCOPE for i in range(len(users))}
    erased: set[tuple[str, int]] = set()
    for name, i, granted, trusted in ops:
        scope = SCOPE[name]
        key = world.server_key[SERVER_KEY_OF_SCOPE[scope]] if trusted else world.write[name]
        r = world.consent(key, {"userId": users[i], "purposes": {"analytics": granted}})
        assert r.status_code == 200, r.text
        latest[scope, i] = granted
        if trusted and not granted:
            erased.add((scope, i))

    after = []
    for name in SOURCES:
        for i, user in enumerate(users):
            got = world.track(world.write[name], f"{tag}-after-{i}", user)
            assert got == int(latest[SCOPE[name], i]), (name, i, ops)
            if got:
                after.append((name, f"{tag}-after-{i}"))
    world.settled()
    want = sorted((name, f"{tag}-before-{i}") for name in SOURCES for i in range(len(users))
                  if (SCOPE[name], i) not in erased)
    assert world.stored(f"{tag}-before") == want, ops
    assert world.stored(f"{tag}-after") == sorted(after), ops


def test_a_public_key_stops_collection_but_cannot_erase_history(world: World) -> None:
    user, key = "victim-" + uuid.uuid4().hex[:8], world.write["solo"]
    assert world.consent(world.server_key["solo"], {
        "userId": user, "purposes": {"analytics": True}}).status_code == 200
    assert world.track(key, "history-1", user) == 1
    assert world.track(key, "history-2", user) == 1
    world.settled()
    # anyone holding the page's write key: through the consent API, through an event's
    # own consent, and through Sec-GPC
    assert world.consent(key, {"userId": user, "purposes": {"analytics": False}}
                         ).status_code == 200
    assert world.track(key, "history-3", user) == 0  # collection stopped at once
    assert world.track(key, "history-4", user,
                       context={"consent": {"categoryPreferences": {"analytics": False}}}) == 0
    world.settled()
    assert world.stored("history-") == [("solo", "history-1"), ("solo", "history-2")]
    # the site's backend, with the server key, may
    assert world.consent(world.server_key["solo"], {
        "userId": user, "purposes": {"analytics": False}}).status_code == 200
    world.settled()
    assert world.stored("history-") == []


def test_an_anonymous_id_acts_at_once(world: World) -> None:
    anon, key = "anon-" + uuid.uuid4().hex[:8], world.write["shop-a"]
    assert world.consent(key, {"anonymousId": anon, "purposes": {"analytics": True}}
                         ).status_code == 200
    assert world.track(key, "anon-history-a", anon=anon) == 1
    assert world.track(world.write["shop-b"], "anon-history-b", anon=anon) == 1  # same group
    assert world.track(world.write["solo"], "anon-history-solo", anon=anon) == 0  # not given
    world.settled()
    assert len(world.stored("anon-history-")) == 2
    assert world.consent(key, {"anonymousId": anon, "purposes": {"analytics": False}}
                         ).status_code == 200
    world.settled()
    assert world.stored("anon-history-") == []


def test_a_subject_token_may_change_history_of_its_scope_only(world: World) -> None:
    user = "tok-" + uuid.uuid4().hex[:8]
    for name in SERVER_KEY_OF_SCOPE.values():
        assert world.consent(world.server_key[name], {
            "userId": user, "purposes": {"analytics": True}}).status_code == 200
    for name in SOURCES:
        assert world.track(world.write[name], "tok-history", user) == 1
    world.settled()
    mine = {"Authorization": "Subject " + token(world.secrets["shop-b"], world.ids["shop-b"],
                                                {"userId": user})}
    # a token speaks for its own person only
    r = world.post("/v1/consent", {"userId": "someone-else", "purposes": {"analytics": False}},
                   headers=mine)
    assert r.status_code == 403 and r.json()["code"] == "not_your_subject"
    r = world.post("/v1/consent", {"purposes": {"analytics": False}}, headers=mine)
    assert r.status_code == 200 and r.json()["recorded"] == 1
    world.settled()
    assert world.stored("tok-history") == [("solo", "tok-history")]


def test_consent_is_rate_limited_per_source_and_per_subject(world: World) -> None:
    def rows() -> int:
        return world.ledger("SELECT count(*) FROM statements")

    before = rows()
    answers = [world.consent(world.write["limited"], {"userId": f"rl-{i}",
                                                      "purposes": {"analytics": True}})
               for i in range(12)]
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    # 0.01 statements/s, shared by 2 workers: one each at most, whatever the machine's speed
    assert len(ok) <= 2 and len(ok) + len(refused) == len(answers)
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert {r.json()["code"] for r in refused} == {"rate_limited"}
    assert rows() - before == len(ok)

    user = "flood-" + uuid.uuid4().hex[:8]
    before = rows()
    answers = [world.consent(world.write["solo"], {"userId": user,
                                                   "purposes": {"analytics": i % 2 == 0}})
               for i in range(4 * PER_SUBJECT)]
    ok = [r for r in answers if r.status_code == 200]
    assert len(ok) <= 2 * PER_SUBJECT  # per worker and minute
    refused = [r for r in answers if r.status_code == 429]
    assert refused and {r.json()["code"] for r in refused} == {"consent_rate_limited"}
    assert rows() - before == len(ok)


@pytest.mark.slow
def test_back_pressure_applies_to_consent(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # the files under the data dir: the module's PostgreSQL pass may have set
    # AAP_META_URL, whose audit chain another data dir's audit key may not extend
    monkeypatch.delenv("AAP_META_URL", raising=False)
    data = tmp_path / "data"
    r = aap("sources", "create", "web", "--data-dir", str(data))
    key = r.stdout.strip().splitlines()[-1]
    server = ServerProcess(data, workers=1, env={"AAP_MIN_FREE_DISK_MB": str(10**12)})
    server.start(healthy=False)
    try:
        r = httpx.post(server.url + "/v1/consent", auth=(key, ""),
                       json={"userId": "u", "purposes": {"analytics": True}})
        assert r.status_code == 503 and r.json()["code"] == "backpressure"
        assert int(r.headers["retry-after"]) >= 1
    finally:
        server.stop()


def test_subject_requests_are_bound_to_their_controller(world: World) -> None:
    user = "req-" + uuid.uuid4().hex[:8]

    def auth(name: str) -> dict[str, str]:
        return {"Authorization": "Subject " + token(world.secrets[name], world.ids[name],
                                                    {"userId": user})}

    r = world.post("/v1/privacy/requests", {"type": "access"}, headers=auth("shop-a"))
    assert r.status_code == 200, r.text
    rid = r.json()["id"]
    url = f"{world.server.url}/v1/privacy/requests/{rid}"
    deadline = time.monotonic() + 60
    while (got := httpx.get(url, headers=auth("shop-b"))).json()["status"] in ("pending",
                                                                               "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert got.status_code == 200 and got.json()["status"] == "done"  # same controller
    # the same person, through another controller's token: nothing there
    for path in ("", "/export"):
        r = httpx.get(url + path, headers=auth("solo"))
        assert r.status_code == 404 and r.json()["code"] == "not_found", r.text
    assert httpx.get(url + "/export", headers=auth("shop-a")).status_code == 200


def test_self_service_refuses_undocumented_types(world: World) -> None:
    mine = {"Authorization": "Subject " + token(world.secrets["solo"], world.ids["solo"],
                                                {"userId": "rect"})}
    for kind in ("rectification", "sale", ""):
        r = world.post("/v1/privacy/requests", {"type": kind}, headers=mine)
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["code"] == "invalid_request"
        for allowed in ("access", "erasure", "restriction", "objection"):
            assert allowed in body["message"]
        assert "rectification" not in body["message"]


def test_a_subject_request_acts_on_its_controllers_data_only(world: World) -> None:
    user = "scoped-" + uuid.uuid4().hex[:8]
    for name in SERVER_KEY_OF_SCOPE.values():
        assert world.consent(world.server_key[name], {
            "userId": user, "purposes": {"analytics": True}}).status_code == 200
    for name in SOURCES:
        assert world.track(world.write[name], "scoped-history", user) == 1
    world.settled()
    mine = {"Authorization": "Subject " + token(world.secrets["shop-b"], world.ids["shop-b"],
                                                {"userId": user})}

    def run(kind: str) -> dict[str, Any]:
        r = world.post("/v1/privacy/requests", {"type": kind}, headers=mine)
        assert r.status_code == 200, r.text
        url = f"{world.server.url}/v1/privacy/requests/{r.json()['id']}"
        deadline = time.monotonic() + 60
        while (got := httpx.get(url, headers=mine).json())["status"] in ("pending", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert got["status"] == "done", got
        return got

    access = run("access")["result"]
    assert access["events"] == 2  # shop-a's and shop-b's; not solo's
    erasure = run("erasure")["result"]
    assert erasure["scope"] == "controller:shop" and erasure["removed"]["hot_events"] == 2
    world.settled()
    assert world.stored("scoped-history") == [("solo", "scoped-history")]
    # the controller collects nothing more of them; the other one goes on
    assert world.track(world.write["shop-a"], "scoped-later", user) == 0
    assert world.track(world.write["solo"], "scoped-later", user) == 1


def test_a_public_key_cannot_erase_a_person_through_an_anonymous_id_it_linked(
        world: World) -> None:
    """Anyone with the write key can link an anonymousId of their own to a userId (an
    identify call); a withdrawal about that anonymousId must not reach the person's
    history."""
    user, key = "linked-" + uuid.uuid4().hex[:8], world.write["solo"]
    mine = "attacker-" + uuid.uuid4().hex[:8]
    assert world.consent(world.server_key["solo"], {
        "userId": user, "purposes": {"analytics": True}}).status_code == 200
    assert world.track(key, "linked-history", user) == 1
    r = world.post("/v1/identify", {"userId": user, "anonymousId": mine}, key)
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    world.settled()
    assert world.consent(key, {"anonymousId": mine, "purposes": {"analytics": False}}
                         ).status_code == 200
    world.settled()
    assert world.stored("linked-history") == [("solo", "linked-history")]


def test_a_ledger_from_before_scopes_keeps_its_rows_valid(tmp_path: Path) -> None:
    """Old rows gain no scope and full history: they read as scoped to their source."""
    from aap.privacy.consent import FULL, NONE, Statement

    DataDir(tmp_path).privacy.mkdir()
    con = sqlite3.connect(DataDir(tmp_path).consent_db)
    con.executescript("""
        CREATE TABLE statements (seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL,
            source TEXT NOT NULL, subject INTEGER NOT NULL, purposes TEXT NOT NULL,
            policy_version TEXT, channel TEXT NOT NULL);
        INSERT INTO statements (at_ms, source, subject, purposes, channel)
            VALUES (5, 'src_old', 42, '{"analytics": false}', 'api');""")
    con.commit()
    con.close()
    ledger = ConsentLedger(tmp_path, url="")  # a file of an older release: SQLite
    ledger.record([Statement(6, "src_new", 42, {"analytics": True}, None, "api",
                             "controller:shop", NONE)])
    (_, old), (_, new) = ledger.since(0)
    assert (old.where, old.history, old.purposes) == ("src_old", FULL, {"analytics": False})
    assert (new.where, new.history) == ("controller:shop", NONE)
    with pytest.raises(sqlite3.IntegrityError):  # still append-only
        sqlite3.connect(DataDir(tmp_path).consent_db).execute("DELETE FROM statements")
