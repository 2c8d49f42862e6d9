"""Schema versions: a data dir written before versions existed opens and migrates; a
fresh one starts at the latest version; one newer than the code is refused."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import duckdb
import pytest

from aap.privacy import consent, requests
from aap.privacy.consent import ConsentLedger
from aap.privacy.requests import RequestStore
from aap.sources import SCHEMA as SOURCES_SCHEMA
from aap.sources import Sources
from aap.store.migrations import (
    Schema,
    SchemaTooNew,
    columns,
    duckdb_version,
    migrate_sqlite,
    sql_step,
    statements,
)
from aap.store.schema import EVENT_COLUMNS
from aap.store.warehouse import SCHEMA as WAREHOUSE_SCHEMA
from aap.store.warehouse import Warehouse


def user_version(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        return int(con.execute("PRAGMA user_version").fetchone()[0])
    finally:
        con.close()


def old_sqlite(path: Path, script: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.executescript(script)
    con.commit()
    con.close()


def test_a_fresh_data_dir_starts_at_the_latest_versions(tmp_path: Path) -> None:
    Sources(tmp_path).close()
    ConsentLedger(tmp_path)
    RequestStore(tmp_path)
    Warehouse(tmp_path / "warehouse").close()
    assert user_version(tmp_path / "meta.db") == SOURCES_SCHEMA.latest >= 1
    assert user_version(tmp_path / "privacy" / "consent.db") == consent.SCHEMA.latest >= 1
    assert user_version(tmp_path / "privacy" / "requests.db") == requests.SCHEMA.latest >= 1
    con = duckdb.connect(str(tmp_path / "warehouse" / "hot.duckdb"))
    try:
        assert duckdb_version(con) == WAREHOUSE_SCHEMA.latest >= 1
    finally:
        con.close()


def test_a_source_registry_of_the_first_release_migrates(tmp_path: Path) -> None:
    old_sqlite(tmp_path / "meta.db", """
        CREATE TABLE sources (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
            key_hash TEXT NOT NULL UNIQUE, key_hint TEXT NOT NULL, created_at INTEGER NOT NULL,
            allowed_origins TEXT NOT NULL, rate_limit REAL NOT NULL);
        INSERT INTO sources VALUES ('src_old', 'web', 'h', 'wk_abc…', 1, '["*"]', 0);
    """)
    sources = Sources(tmp_path)
    try:
        src = sources.by_id("src_old")
        assert src is not None
        assert (src.historical, src.purposes, src.mode, src.controller) == (
            False, (("analytics", "consent"),), "standard", None)
        _, key = sources.new_server_key("web")  # the columns and index added since work
        assert sources.by_key(key) is not None
    finally:
        sources.close()
    assert user_version(tmp_path / "meta.db") == SOURCES_SCHEMA.latest
    Sources(tmp_path).close()  # opening again changes nothing
    assert user_version(tmp_path / "meta.db") == SOURCES_SCHEMA.latest


def test_a_consent_ledger_and_a_request_queue_of_the_first_release_migrate(
        tmp_path: Path) -> None:
    old_sqlite(tmp_path / "privacy" / "consent.db", """
        CREATE TABLE statements (seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL,
            source TEXT NOT NULL, subject INTEGER NOT NULL, purposes TEXT NOT NULL,
            policy_version TEXT, channel TEXT NOT NULL);
        INSERT INTO statements (at_ms, source, subject, purposes, channel)
            VALUES (5, 'src_a', 7, '{"analytics": false}', 'api');
    """)
    old_sqlite(tmp_path / "privacy" / "requests.db", """
        CREATE TABLE requests (id TEXT PRIMARY KEY, type TEXT NOT NULL,
            subject_keys TEXT NOT NULL, named TEXT NOT NULL, traits TEXT,
            created_at INTEGER NOT NULL, status TEXT NOT NULL, finished_at INTEGER,
            result TEXT, error TEXT);
    """)
    ledger = ConsentLedger(tmp_path)
    [(_, st)] = ledger.since(0)
    assert (st.subject, st.purposes, st.scope, st.history) == (7, {"analytics": False}, "",
                                                              consent.FULL)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):  # triggers made too
        sqlite3.connect(ledger.path).execute("DELETE FROM statements")
    RequestStore(tmp_path)
    con = sqlite3.connect(tmp_path / "privacy" / "requests.db")
    assert {"filed_by", "lift", "sealed_traits", "scope", "claimed_by", "lease_until"} <= {
        r[1] for r in con.execute("PRAGMA table_info(requests)")}
    con.close()
    assert user_version(ledger.path) == consent.SCHEMA.latest
    assert user_version(tmp_path / "privacy" / "requests.db") == requests.SCHEMA.latest


def test_a_request_queue_of_version_1_gets_its_claim_columns(tmp_path: Path) -> None:
    """The queue before workers claimed requests (version 1): the claim columns are added
    (and, version 3, where an erasure keeps what it found), and a worker claims its
    pending request (once)."""
    old_sqlite(tmp_path / "privacy" / "requests.db", """
        CREATE TABLE requests (id TEXT PRIMARY KEY, type TEXT NOT NULL,
            subject_keys TEXT NOT NULL, named TEXT NOT NULL, traits TEXT,
            created_at INTEGER NOT NULL, status TEXT NOT NULL, finished_at INTEGER,
            result TEXT, error TEXT, filed_by TEXT, lift INTEGER NOT NULL DEFAULT 0,
            sealed_traits BLOB, scope TEXT);
        INSERT INTO requests (id, type, subject_keys, named, created_at, status)
            VALUES ('pr_old', 'restriction', '[1]', '{}', 1, 'pending');
        PRAGMA user_version = 1;
    """)
    store = RequestStore(tmp_path)
    assert user_version(tmp_path / "privacy" / "requests.db") == requests.SCHEMA.latest == 3
    assert store.get("pr_old")["status"] == "pending"
    worker = requests.Requests.__new__(requests.Requests)  # the claim alone, no Rights
    worker._db, worker.worker, worker.lease_s = store._db, "w1", 60.0
    claimed = worker.claim()
    assert claimed is not None and claimed[0] == "pr_old" and claimed[-1] is None  # reach
    assert worker.claim() is None  # nothing else to claim: it is held
    assert store.get("pr_old")["status"] == "running"


def test_a_warehouse_made_before_purposes_and_versions_migrates(tmp_path: Path) -> None:
    path = tmp_path / "warehouse"
    path.mkdir()
    con = duckdb.connect(str(path / "hot.duckdb"))
    old = ", ".join(f'"{n}" {t}' for n, t, _ in EVENT_COLUMNS if n != "purposes")
    con.execute(f"CREATE TABLE events_raw ({old})")
    con.execute("INSERT INTO events_raw (message_id, source, type, event, timestamp)"
                " VALUES ('m1', 'src_a', 'track', 'Bought', TIMESTAMP '2026-01-02 03:04:05')")
    con.execute("CREATE VIEW events AS SELECT * FROM events_raw")  # views were persistent
    con.close()
    wh = Warehouse(path)
    try:
        _, rows = wh.query("SELECT message_id, event, purposes FROM events")
        assert rows == [("m1", "Bought", None)]
        assert "purposes" in columns(wh.con, "events_raw")
        assert duckdb_version(wh.con) == WAREHOUSE_SCHEMA.latest
        assert {"quarantined_events", "tier_files"} <= {
            r[0] for r in wh.con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    finally:
        wh.close()


def test_steps_run_in_order_from_the_stored_version_and_a_newer_one_is_refused(
        tmp_path: Path) -> None:
    create = "CREATE TABLE IF NOT EXISTS t (a INTEGER, b TEXT, c TEXT);"
    v1 = Schema("t", create, steps=(sql_step("CREATE TABLE t (a INTEGER);"),
                                    sql_step("ALTER TABLE t ADD COLUMN b TEXT;")))
    v2 = Schema("t", create, steps=(*v1.steps, sql_step("ALTER TABLE t ADD COLUMN c TEXT;")))
    con = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    con.execute("CREATE TABLE t (a INTEGER, b TEXT)")
    con.execute("PRAGMA user_version = 2")
    assert migrate_sqlite(con, v2) == 2
    assert columns(con, "t") == {"a", "b", "c"}
    assert migrate_sqlite(con, v2) == 3
    with pytest.raises(SchemaTooNew):
        migrate_sqlite(con, Schema("t", create, steps=v1.steps))
    con.close()


def test_a_store_sharing_a_file_keeps_its_version_in_a_row_of_its_own(tmp_path: Path) -> None:
    """Two stores in one file (``meta.db``): the file's ``user_version`` is the first
    one's; the second one's version is its row of ``aap_schema_versions``, from which its
    steps run (a table without a row is at version 0), and a newer row is refused."""
    owner = Schema("o", "CREATE TABLE IF NOT EXISTS o (a INTEGER);",
                   steps=(sql_step("CREATE TABLE o (a INTEGER);"),) * 3)
    create = "CREATE TABLE IF NOT EXISTS t (a INTEGER, b TEXT);"
    v0 = Schema("t", "CREATE TABLE IF NOT EXISTS t (a INTEGER);", steps=(), shares_file=True)
    v1 = Schema("t", create, steps=(sql_step("ALTER TABLE t ADD COLUMN b TEXT;"),),
                shares_file=True)
    con = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    assert migrate_sqlite(con, owner) == 0
    con.execute("CREATE TABLE t (a INTEGER)")  # as a release before versions made it
    assert migrate_sqlite(con, v0) == 0  # at version 0 already: its row is written
    assert migrate_sqlite(con, v1) == 0 and columns(con, "t") == {"a", "b"}
    assert migrate_sqlite(con, v1) == 1  # recorded: nothing runs again
    assert con.execute("SELECT name, version FROM aap_schema_versions").fetchall() == [("t", 1)]
    assert con.execute("PRAGMA user_version").fetchone() == (3,)  # still the owner's
    assert migrate_sqlite(con, owner) == 3
    with pytest.raises(SchemaTooNew, match="the t database"):
        migrate_sqlite(con, v0)
    fresh = sqlite3.connect(tmp_path / "y.db", isolation_level=None)
    fresh.execute("PRAGMA user_version = 7")  # another store's, newer than v1's steps
    assert migrate_sqlite(fresh, v1) == 0 and columns(fresh, "t") == {"a", "b"}
    assert migrate_sqlite(fresh, v1) == 1
    con.close()
    fresh.close()


def test_a_script_splits_into_statements_with_trigger_bodies_whole() -> None:
    script = """
        CREATE TABLE a (x TEXT DEFAULT ';');
        CREATE TRIGGER n BEFORE DELETE ON a BEGIN SELECT RAISE(ABORT, 'no'); END;
    """
    assert [s.split()[1] for s in statements(script)] == ["TABLE", "TRIGGER"]
    assert json.dumps(list(statements(""))) == "[]"
