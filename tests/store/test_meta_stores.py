"""The rest of ``meta.db`` on the shared-state seam (:mod:`aap.store.meta`): API keys, web
sessions and sign-in links, cohorts and saved insights, dashboards and devices behave
alike on the SQLite file under the data dir and on PostgreSQL (``AAP_META_URL``); a
``meta.db`` written by the code before the seam opens with its rows; two processes that
make keys and sessions and consume the same links at once lose nothing and use each link
once; and no API key, session or link token, device key or broker password reaches
PostgreSQL in clear (only their hashes).

The PostgreSQL cases start a server (tests/pg.py) and are marked ``slow``; the SQLite
cases run in ``scripts/test --fast``."""

from __future__ import annotations

import base64
import hashlib
import multiprocessing
import secrets
import sqlite3
import time
from pathlib import Path

import msgspec
import psycopg
import pytest

from aap.api.keys import ApiKeys
from aap.datadir import DataDir
from aap.devices import BRIDGE_USER, Devices, broker_hash
from aap.errors import NotFound
from aap.privacy.ids import IdHasher
from aap.query.cohorts import Cohorts
from aap.query.dashboards import Dashboards, NewDashboard
from aap.query.models import BehaviouralCohort, CohortSpec, StaticCohort
from aap.sources import SCHEMA as SOURCES_SCHEMA
from aap.sources import Sources
from aap.store.meta import MetaDB, open_meta
from aap.web.sessions import Sessions, create_link
from tests.pg import Cluster, all_bytes, every_row
from tests.pg import fresh_database as _fresh
from tests.store import meta_workers

STORES = ("api_keys", "web_sessions", "cohorts", "dashboards", "devices")
"""The stores of ``meta.db`` beside the source registry (their schemas' names)."""


def _db(data: Path, url: str) -> MetaDB:
    """The shared state as the stores see it (to change a row behind their back)."""
    return open_meta(DataDir(data).meta_db, url)


# -- API keys and web sessions, on both engines --

def test_a_key_is_verified_listed_and_revoked_everywhere(tmp_path: Path, meta_url: str) -> None:
    keys = ApiKeys(tmp_path)
    record, key = keys.create("analyst", "ana")
    assert keys.verify(key) == record and keys.get(record.id) == record
    other = ApiKeys(tmp_path)  # another process: nothing cached
    assert other.verify(key) == record
    assert other.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert other.verify("aap_nope") is None and other.get("000000000000") is None
    second, _ = other.create("admin")
    assert [k.id for k in keys.list()] == [k.id for k in sorted(
        (record, second), key=lambda k: (k.created_at, k.id))]
    with pytest.raises(ValueError, match="unknown role"):
        keys.create("root")
    assert other.revoke(record.id) and not other.revoke(record.id)
    assert keys.verify(key) is None  # revoked in one process: refused in the other
    got = keys.get(record.id)
    assert got is not None and got.revoked_at is not None
    actions = [e["action"] for e in keys.audit.entries()]
    assert actions.count("key.created") == 2 and actions.count("key.revoked") == 1


def test_sessions_links_and_their_end_on_both_engines(tmp_path: Path, meta_url: str) -> None:
    keys = ApiKeys(tmp_path)
    key, _ = keys.create("privacy")
    sessions = Sessions(tmp_path, keys, ttl_s=3600)
    token, live = sessions.create(key, "key")
    elsewhere = Sessions(tmp_path, ApiKeys(tmp_path), ttl_s=3600)  # another collector
    assert elsewhere.get(token) == live
    b, _ = sessions.create(key, "key")
    _db(tmp_path, meta_url).execute("UPDATE web_sessions SET expires_at = 1 WHERE"
                                    " token_hash = ?", (hashlib.sha256(b.encode()).digest(),))
    assert elsewhere.get(b) is None  # expired
    assert elsewhere.end(token) and sessions.get(token) is None and not sessions.end(token)
    link = create_link(tmp_path, key.id)
    got = elsewhere.consume_link(link)
    assert got is not None and got.id == key.id
    assert sessions.consume_link(link) is None  # used up, in every process
    assert sessions.consume_link(create_link(tmp_path, key.id, ttl=-1)) is None
    c, _ = sessions.create(key, "key")
    keys.revoke(key.id)
    assert elsewhere.get(c) is None  # its key revoked
    # rows a day past their end are dropped by the next sign-in
    _db(tmp_path, meta_url).execute("UPDATE web_sessions SET expires_at = 5")
    other, _ = keys.create("viewer")
    sessions.create(other, "key")
    assert _db(tmp_path, meta_url).fetchone("SELECT count(*) FROM web_sessions") == (1,)


# -- cohorts, saved insights and dashboards, on both engines --

TREND = {"kind": "trends", "series": [{"event": "$page"}], "date_from": "-7d"}


def test_cohorts_and_saved_insights_on_both_engines(tmp_path: Path, meta_url: str) -> None:
    cohorts = Cohorts(tmp_path)
    static = cohorts.create(CohortSpec(name="vip", static=StaticCohort(ids=["u1", "u2", "u1"])))
    behavioural = cohorts.create(CohortSpec(name="buyers", behavioural=BehaviouralCohort(
        event="Purchase", min_count=2, days=7)))
    assert static["kind"] == "static" and behavioural["kind"] == "behavioural"
    assert behavioural["id"] > static["id"] > 0
    other = Cohorts(tmp_path)
    hasher = IdHasher.for_data_dir(tmp_path)
    got = other.get(static["id"])
    assert got.name == "vip" and got.id_keys == sorted({hasher.key("u1"), hasher.key("u2")})
    assert other.get(behavioural["id"]).event == "Purchase"
    listed = other.list()
    assert [(c["name"], c.get("ids")) for c in listed] == [("vip", 2), ("buyers", None)]
    assert listed[1]["definition"] == {"event": "Purchase", "min_count": 2, "days": 7,
                                       "person_filters": []}
    assert other.forget({hasher.key("u1"), 12345}) == {"static_cohorts_changed": 1,
                                                        "static_cohort_ids_removed": 1}
    assert cohorts.get(static["id"]).id_keys == [hasher.key("u2")]
    assert other.delete(static["id"]) and not cohorts.delete(static["id"])
    assert not cohorts.delete(2**63)
    for missing in (static["id"], 0, 2**63):
        with pytest.raises(NotFound):
            cohorts.get(missing)
    saved = cohorts.save_insight("pages", TREND)
    assert other.insight(saved["id"]) == ("pages", TREND)
    assert [i["name"] for i in other.insights()] == ["pages"]
    with pytest.raises(NotFound):
        other.insight(saved["id"] + 1)
    again = cohorts.create(CohortSpec(name="again", static=StaticCohort(ids=["u3"])))
    assert again["id"] > behavioural["id"]  # an id is never given twice


def test_dashboards_on_both_engines(tmp_path: Path, meta_url: str) -> None:
    dashboards = Dashboards(tmp_path)  # first: it makes the saved insights' table too
    cohorts = Cohorts(tmp_path)
    a, b = (cohorts.save_insight(n, TREND)["id"] for n in ("a", "b"))
    made = dashboards.create(NewDashboard(name="Weekly", insights=[b, a, b]))
    assert made["insights"] == [b, a]
    other = Dashboards(tmp_path)
    got = other.get(made["id"])
    assert got["name"] == "Weekly" and got["insights"] == [{"id": b, "name": "b"},
                                                           {"id": a, "name": "a"}]
    with pytest.raises(NotFound, match=f"no saved insight with id {b + 100}"):
        other.create(NewDashboard(name="x", insights=[a, b + 100]))
    second = other.create(NewDashboard(name="Empty"))
    assert [d["name"] for d in dashboards.list()] == ["Weekly", "Empty"]
    assert second["id"] > made["id"]
    assert dashboards.delete(second["id"]) and not other.delete(second["id"])
    assert not other.delete(0) and not other.delete(2**63)
    with pytest.raises(NotFound):
        other.get(second["id"])


# -- devices, on both engines --

def test_devices_and_the_broker_files_on_both_engines(tmp_path: Path, meta_url: str) -> None:
    Sources(tmp_path).create("home", purposes={"device_diagnostics": "legitimate_interest"})
    devices = Devices(tmp_path)
    dev, key = devices.register("home", "thermostat-12")
    other = Devices(tmp_path)
    assert other.by_key(key) == dev == other.by_id(dev.id) == other.by_topic("home",
                                                                               "thermostat-12")
    with pytest.raises(ValueError, match="already has a device named"):
        other.register("home", "thermostat-12")
    with pytest.raises(ValueError, match="no source named"):
        other.register("nowhere", "t1")
    dev2, key2 = other.register("home", "thermostat-13")
    assert [d.name for d in devices.list()] == ["thermostat-12", "thermostat-13"]
    first = devices.bridge_password()
    second = other.bridge_password()  # the bridge user's row is replaced, not doubled
    passwd = (tmp_path / "devices" / "mosquitto.passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in passwd] == [BRIDGE_USER, *sorted([dev.id, dev2.id])]
    salt = passwd[0].split("$")[3]
    assert passwd[0] == f"{BRIDGE_USER}:" + broker_hash(second, base64.b64decode(salt))
    assert first != second
    assert devices.revoke(dev.id).revoked_at is not None
    assert other.by_key(key) is None and other.by_key(key2) == dev2
    assert other.by_topic("home", "thermostat-12") is None
    acl = (tmp_path / "devices" / "mosquitto.acl").read_text()
    assert dev.id not in acl and f"user {dev2.id}" in acl


# -- a meta.db written before the seam --

_OLD_DDL = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS web_sessions (
    token_hash BLOB PRIMARY KEY,
    key_id TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    ended_at INTEGER
);
CREATE INDEX IF NOT EXISTS web_sessions_key ON web_sessions (key_id);
CREATE TABLE IF NOT EXISTS web_links (
    token_hash BLOB PRIMARY KEY,
    key_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
CREATE TABLE IF NOT EXISTS cohorts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    definition TEXT NOT NULL,
    size_hint INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS saved_insights (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    query TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dashboards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    insights TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    source_id TEXT NOT NULL,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    key_hint TEXT NOT NULL,
    broker_hash TEXT NOT NULL,
    owner_subject INTEGER,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    UNIQUE (source_id, name)
);
CREATE TABLE IF NOT EXISTS broker_users (
    username TEXT PRIMARY KEY,
    broker_hash TEXT NOT NULL
);
"""
"""The DDL of these tables as the code before the seam made them (``executescript`` of
each module's ``_SCHEMA``, no schema version)."""


def test_a_meta_db_written_before_the_seam_opens_with_its_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data dir of the last release: ``meta.db`` holds the source registry (at its
    ``user_version``) and these tables, made and filled by the old code's statements.
    The new code opens it in place: every row is read back, the old key, session, link
    and device key still work, new ids follow the old ones, and each store's version is
    recorded beside the registry's without changing it."""
    monkeypatch.delenv("AAP_META_URL", raising=False)
    src, _ = Sources(tmp_path).create(
        "home", purposes={"device_diagnostics": "legitimate_interest"})
    path = DataDir(tmp_path).meta_db
    now = int(time.time())
    key_id, secret, salt = "0123456789ab", secrets.token_urlsafe(32), secrets.token_bytes(16)
    old_key = f"aap_{key_id}_{secret}"
    token, link, dev_key = (secrets.token_urlsafe(32) for _ in range(3))
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(_OLD_DDL)
    # the old code's statements, verbatim
    old.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, NULL)", (
        key_id, "old-admin", "admin", salt,
        hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32), now - 60))
    old.execute("INSERT INTO web_sessions VALUES (?, ?, ?, ?, ?, NULL)",
                (hashlib.sha256(token.encode()).digest(), key_id, "admin", now, now + 3600))
    old.execute("INSERT INTO web_links VALUES (?, ?, ?, ?, NULL)",
                (hashlib.sha256(link.encode()).digest(), key_id, now, now + 900))
    old.execute("INSERT INTO saved_insights (name, query, created_at) VALUES (?, ?, ?)",
                ("old pages", msgspec.json.encode(TREND).decode(), now))
    old.execute("INSERT INTO cohorts (name, kind, definition, size_hint, created_at)"
                " VALUES (?, ?, ?, ?, ?)", ("old vip", "static", '{"id_keys":[7,9]}', 2, now))
    old.execute("INSERT INTO dashboards (name, insights, created_at) VALUES (?, ?, ?)",
                ("old board", "[1]", now))
    old.execute("INSERT INTO devices (id, source_id, name, key_hash, key_hint, broker_hash,"
                " owner_subject, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ("dev_00aa", src.id, "old-thermo", hashlib.sha256(dev_key.encode()).hexdigest(),
                 "dk_xxxx…", broker_hash(dev_key), None, now))
    old.execute("INSERT OR REPLACE INTO broker_users VALUES (?, ?)", (BRIDGE_USER, "$7$old"))
    old.close()

    keys = ApiKeys(tmp_path)
    record = keys.verify(old_key)
    assert record is not None and (record.id, record.name, record.role) == (
        key_id, "old-admin", "admin")
    sessions = Sessions(tmp_path, keys, ttl_s=3600)
    live = sessions.get(token)
    assert live is not None and live.key.id == key_id
    consumed = sessions.consume_link(link)
    assert consumed is not None and consumed.id == key_id
    cohorts = Cohorts(tmp_path)
    assert cohorts.get(1).id_keys == [7, 9] and cohorts.insight(1) == ("old pages", TREND)
    assert cohorts.create(CohortSpec(name="new", static=StaticCohort(ids=["u"])))["id"] == 2
    dashboards = Dashboards(tmp_path)
    assert dashboards.get(1)["insights"] == [{"id": 1, "name": "old pages"}]
    assert dashboards.create(NewDashboard(name="new"))["id"] == 2
    devices = Devices(tmp_path)
    found = devices.by_key(dev_key)
    assert found is not None and found.name == "old-thermo"
    devices.bridge_password()  # replaces the old row (ON CONFLICT), one row still
    assert _db(tmp_path, "").fetchall("SELECT count(*) FROM broker_users") == [(1,)]
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA user_version").fetchone() == (SOURCES_SCHEMA.latest,)
        assert dict(con.execute("SELECT name, version FROM aap_schema_versions")) == \
            dict.fromkeys(STORES, 0)
    finally:
        con.close()
    assert [s.name for s in Sources(tmp_path).list()] == ["home"]


def test_a_fresh_meta_db_records_each_stores_version(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AAP_META_URL", raising=False)
    ApiKeys(tmp_path)  # first, before the registry: its user_version stays the registry's
    Sessions(tmp_path, ApiKeys(tmp_path), 60)
    Dashboards(tmp_path)
    Devices(tmp_path)
    con = sqlite3.connect(DataDir(tmp_path).meta_db)
    try:
        assert con.execute("PRAGMA user_version").fetchone() == (SOURCES_SCHEMA.latest,)
        assert dict(con.execute("SELECT name, version FROM aap_schema_versions")) == \
            dict.fromkeys(STORES, 0)
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        con.close()


# -- several processes at once --

KEYS_EACH = 12
LINKS = 60


@pytest.mark.slow  # two processes
def test_two_processes_make_keys_and_sessions_and_use_each_link_once(
        tmp_path: Path, meta_url: str) -> None:
    """Two processes, at the same moment: 12 keys each, a session of each key, and every
    one of 60 one-time links tried by both. Every key and session of both is found by a
    third, and each link was used by exactly one of them."""
    keys = ApiKeys(tmp_path)
    owner, _ = keys.create("admin")
    links = [create_link(tmp_path, owner.id) for _ in range(LINKS)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    result = ctx.Queue()
    procs = [ctx.Process(target=meta_workers.keys_and_sessions,
                         args=(str(tmp_path), meta_url, KEYS_EACH, links, barrier, result))
             for _ in range(2)]
    for p in procs:
        p.start()
    try:
        outs = [result.get(timeout=300), result.get(timeout=300)]
    finally:
        for p in procs:
            p.join(timeout=60)
    made = [k for m, _, _ in outs for k in m]
    tokens = [t for _, ts, _ in outs for t in ts]
    used = [link for _, _, c in outs for link in c]
    fresh = ApiKeys(tmp_path)
    assert len(made) == 2 * KEYS_EACH and all(fresh.verify(k) is not None for k in made)
    sessions = Sessions(tmp_path, fresh, ttl_s=3600)
    assert len(tokens) == 2 * KEYS_EACH and all(sessions.get(t) is not None for t in tokens)
    assert sorted(used) == sorted(links), "each link used exactly once"
    assert len(fresh.list()) == 2 * KEYS_EACH + 1
    print("links used by each process:", [len(c) for _, _, c in outs])


# -- PostgreSQL only --

@pytest.mark.slow
def test_no_key_token_or_password_reaches_postgresql_in_clear(
        tmp_path: Path, pg: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Canary: API keys, session and link tokens, device keys and the bridge's broker
    password appear in no row and in no file of the cluster (tables, WAL), while what is
    stored of them, their hashes, is found (the control)."""
    _fresh(pg.url)
    url = pg.url
    monkeypatch.setenv("AAP_META_URL", url)  # the audit chain there too
    Sources(tmp_path, url=url).create("home", purposes={
        "device_diagnostics": "legitimate_interest"})
    keys = ApiKeys(tmp_path, url=url)
    record, api_key = keys.create("admin", "canary")
    sessions = Sessions(tmp_path, keys, ttl_s=3600, url=url)
    token, live = sessions.create(record, "key")
    link = create_link(tmp_path, record.id, url=url)
    spent = create_link(tmp_path, record.id, url=url)
    assert sessions.consume_link(spent) is not None
    devices = Devices(tmp_path, url=url)
    _, dev_key = devices.register("home", "canary-thermo")
    password = devices.bridge_password()
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("CHECKPOINT")  # what was written reaches the table files too
    secret = api_key[len(f"aap_{record.id}_"):]
    clear = [api_key, secret, token, live.csrf, link, spent, dev_key, password]
    rows = every_row(url)
    text = repr(rows)
    files = all_bytes(pg.data)
    values = [v for _, table in rows for row in table for v in row]
    digest = hashlib.sha256(token.encode()).digest()
    assert digest in [bytes(v) for v in values if isinstance(v, (bytes, memoryview))]
    assert digest in files  # the control: the scan sees the session's row
    assert hashlib.sha256(dev_key.encode()).hexdigest().encode() in files
    assert not [c for c in clear if c in text]
    assert not [c for c in clear if c.encode() in files]
    assert not DataDir(tmp_path).meta_db.exists()  # nothing of meta.db under the data dir
