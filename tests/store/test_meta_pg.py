"""The shared state on both engines (:mod:`aap.store.meta`): the source registry, the
keystore and the consent ledger behave alike on the SQLite files under the data dir and
on PostgreSQL (``AAP_META_URL``); on PostgreSQL, processes that make and destroy keys at
the same moment agree on one key per subject and never keep a key for a destroyed
subject, and a reader following the consent ledger while several processes write it
misses no statement; and no raw id remembered in the keystore or named in a consent
statement reaches PostgreSQL's files in clear.

The PostgreSQL cases start a server (tests/pg.py) and are marked ``slow``; the SQLite
cases run in ``scripts/test --fast``."""

from __future__ import annotations

import multiprocessing
import secrets
import struct
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aap.datadir import DataDir
from aap.privacy import consent
from aap.privacy.consent import FULL, NONE, ConsentLedger, ConsentState, Statement
from aap.privacy.keystore import KeyDestroyed, Keystore
from aap.privacy.requests import RequestStore
from aap.sources import SCHEMA as SOURCES_SCHEMA
from aap.sources import SourceExists, Sources, hash_key
from aap.store.meta import PostgresMeta, SQLiteMeta, open_meta, pg_sql
from aap.store.migrations import SchemaTooNew
from tests.pg import Cluster, all_bytes, every_row, new_database
from tests.pg import fresh_database as _fresh
from tests.store import meta_workers

PG_TABLES = {"aap_schema_versions", "sources", "data_keys", "identifiers", "personal_traits",
             "forgotten", "destroyed", "statements", "statements_ledger"}


def _open(ks: Keystore, subject: int, sealed: bytes) -> str:
    return ks.open(subject, "id", sealed).decode()


# -- the seam --

def test_the_default_is_the_files_under_the_data_dir(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AAP_META_URL", raising=False)
    Sources(tmp_path).close()
    Keystore(tmp_path).close()
    ConsentLedger(tmp_path).close()
    assert (tmp_path / "meta.db").is_file()
    assert (tmp_path / "privacy" / "consent.db").is_file()
    assert (tmp_path / "keys" / "keystore.db").stat().st_mode & 0o777 == 0o600
    assert isinstance(open_meta(tmp_path / "x.db"), SQLiteMeta)


def test_placeholders_become_psycopgs() -> None:
    assert pg_sql("SELECT a FROM t WHERE b = ? AND c LIKE '%x'") == \
        "SELECT a FROM t WHERE b = %s AND c LIKE '%%x'"


def test_a_url_that_is_not_postgresql_is_refused(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AAP_META_URL", "mysql://u:p@h/db")
    with pytest.raises(ValueError, match="AAP_META_URL must be a postgresql:// URL"):
        Sources(tmp_path)


# -- the source registry, on both engines --

def test_a_created_source_is_found_by_its_key_id_and_name(tmp_path: Path, meta_url: str) -> None:
    reg = Sources(tmp_path)
    src, key = reg.create("web", allowed_origins=("https://a.example",), rate_limit=12.5,
                          purposes={"analytics": "legitimate_interest"})
    assert reg.by_key(key) == src
    assert reg.by_id(src.id) == src == reg.by_name("web")
    assert reg.by_key("wk_nope") is None and reg.by_name("nope") is None
    assert src.rate_limit == 12.5 and src.allowed_origins == ("https://a.example",)
    assert src.purposes == (("analytics", "legitimate_interest"),)
    reg.close()
    again = Sources(tmp_path)  # another process sees it
    assert again.by_key(key) == src and again.list() == [src]


def test_a_duplicate_name_is_refused(tmp_path: Path, meta_url: str) -> None:
    reg = Sources(tmp_path)
    reg.create("web")
    with pytest.raises(SourceExists):
        reg.create("web")
    with pytest.raises(ValueError):
        reg.create("other", purposes={"no_such_purpose": "consent"})
    assert [s.name for s in reg.list()] == ["web"]


def test_updates_server_keys_and_controller_groups(tmp_path: Path, meta_url: str) -> None:
    reg = Sources(tmp_path)
    src, key = reg.create("web")
    for name in ("b-app", "a-app"):
        reg.create(name)
    order = [(s.created_at, s.name) for s in reg.list()]
    assert order == sorted(order) and len(order) == 3
    assert reg.set_rate_limit("web", 3.0).rate_limit == 3.0
    out = reg.update("web", allowed_origins=("https://x.example",), rate_limit=0.25)
    assert out.allowed_origins == ("https://x.example",) and out.rate_limit == 0.25
    assert reg.by_key(key) == out
    _, sk1 = reg.new_server_key("web")
    _, sk2 = reg.new_server_key("web")
    assert reg.by_key(sk1) is None  # the old server key stops working
    found = reg.by_key(sk2)
    assert found is not None and found.server_key and found.id == src.id
    write = reg.by_key(key)
    assert write is not None and not write.server_key
    grouped = reg.set_controller("web", "shop")
    assert grouped.scope == "controller:shop" and reg.scopes()[src.id] == "controller:shop"
    assert reg.set_controller("web", None).scope == src.id
    with pytest.raises(ValueError):
        reg.set_controller("web", "not a group!")


def test_no_write_key_is_stored_in_clear(tmp_path: Path, meta_url: str) -> None:
    reg = Sources(tmp_path)
    _, key = reg.create("web")
    _, sk = reg.new_server_key("web")
    stored = repr(every_row(meta_url)) if meta_url else b"".join(
        p.read_bytes() for p in tmp_path.glob("meta.db*")).decode("latin-1")
    assert key not in stored and sk not in stored
    assert hash_key(key) in stored  # what is stored: the digest


# -- the keystore, on both engines --

def test_a_subject_gets_one_key_that_every_instance_shares(tmp_path: Path, meta_url: str
                                                           ) -> None:
    ks = Keystore(tmp_path)
    subjects = list(range(-600, 600))  # more than a chunk of 500
    keys = ks.keys_for(subjects)
    assert set(keys) == set(subjects)
    sealed = {s: ks.seal(keys[s], s, "id", f"user-{s}".encode()) for s in subjects}
    other = Keystore(tmp_path)  # another process: nothing cached
    assert other.keys_for([10_000], create=False) == {}
    again = other.keys_for(subjects)
    assert all(_open(other, s, sealed[s]) == f"user-{s}" for s in subjects)
    assert len(again) == len(subjects)
    assert _count(tmp_path, meta_url, "data_keys") == len(subjects)


def test_a_destroyed_key_is_gone_and_never_made_again(tmp_path: Path, meta_url: str) -> None:
    ks = Keystore(tmp_path)
    watcher = Keystore(tmp_path)
    keys = ks.keys_for([1, 2, 3])
    watcher.keys_for([1, 2, 3])
    ks.remember({1: "alice@example.com", 2: "bob@example.com"})
    ks.rectify_personal_traits([1], {"email": "alice@example.com"})
    sealed = ks.seal(keys[1], 1, "id", b"alice")
    assert ks.destroy([1, 1, 4]) == 1
    assert ks.destroy([1]) == 0
    with pytest.raises(KeyDestroyed):
        ks.open(1, "id", sealed)
    assert ks.identifier(1) is None and ks.identifier(2) == "bob@example.com"
    assert ks.personal_traits([1]) == {}
    assert ks.keys_for([1, 4]) == {}
    fresh = Keystore(tmp_path)  # nothing cached: the database says no
    assert fresh.keys_for([1, 4]) == {} and set(fresh.keys_for([2, 3, 5])) == {2, 3, 5}
    assert {1, 4} <= watcher.refresh_destroyed()
    assert watcher.keys_for([1], create=False) == {}
    assert _count(tmp_path, meta_url, "data_keys", "subject = 1") == 0
    assert _count(tmp_path, meta_url, "identifiers", "subject = 1") == 0
    assert _count(tmp_path, meta_url, "personal_traits", "subject = 1") == 0


def test_a_forgotten_subject_leaves_every_cache_and_may_come_back(tmp_path: Path,
                                                                  meta_url: str) -> None:
    ks = Keystore(tmp_path)
    other = Keystore(tmp_path)
    ks.remember({7: "carol@example.com"})
    old = other.keys_for([7])[7]
    assert ks.forget([7]) == 1
    assert ks.identifier(7) is None
    assert other.refresh_forgotten(force=True) == {7}
    assert other.keys_for([7], create=False) == {}
    new = other.keys_for([7])[7]  # not suppressed: a new subject
    assert new is not old
    assert Keystore(tmp_path).keys_for([7], create=False).keys() == {7}


def test_raw_ids_and_personal_traits_are_kept_sealed_once(tmp_path: Path, meta_url: str
                                                          ) -> None:
    ks = Keystore(tmp_path)
    ks.remember({1: "first", 2: "two"})
    ks.remember({1: "second"})  # the first one stays
    assert Keystore(tmp_path).identifier(1) == "first"
    assert ks.identifier(3) is None
    assert ks.rectify_personal_traits([1, 2], {"email": "a@x", "name": "A"}) == {
        "email": "a@x", "name": "A"}
    assert ks.rectify_personal_traits([1, 2], {"name": None, "phone": "1"}) == {
        "email": "a@x", "phone": "1"}
    assert Keystore(tmp_path).personal_traits([2]) == {"email": "a@x", "phone": "1"}
    assert _count(tmp_path, meta_url, "personal_traits") == 2
    assert ks.rectify_personal_traits([99], {"x": 1}) == {}  # no key: nothing kept


# -- the consent ledger, on both engines --

def _st(at: int, subject: int, purposes: dict[str, bool], source: str = "src_a",
        scope: str = "", history: int = FULL, channel: str = "api") -> Statement:
    return Statement(at, source, subject, purposes, "v1", channel, scope, history)


def test_the_ledger_is_read_in_the_order_it_was_written(tmp_path: Path, meta_url: str) -> None:
    ledger = ConsentLedger(tmp_path)
    first = [_st(10, 1, {"analytics": True}),
             _st(10, 2, {"analytics": True, "ads": False}, history=True)]  # a bool: FULL
    ledger.record(first)
    ledger.record([])  # nothing to write: no transaction
    later = [_st(5, 1, {"analytics": False}, scope="controller:shop", history=NONE,
                 channel="banner")]
    ledger.record(later)
    other = ConsentLedger(tmp_path)  # another process
    rows = other.since(0)
    # read back as written, each with its scope (the source's when none was named)
    written = [st._replace(scope=st.where) for st in (*first, *later)]
    assert [st for _, st in rows] == written
    seqs = [seq for seq, _ in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert [st for _, st in other.since(seqs[1])] == [rows[2][1]]
    assert other.since(seqs[2]) == []
    assert other.history([1]) == [written[0], written[2]]
    assert other.history([]) == [] and other.history([99]) == []
    many = list(range(1000, 1600))  # more than one statement's worth of ids
    ledger.record([_st(20, s, {"analytics": True}) for s in many])
    assert [st.subject for st in other.history([*many, 2])] == [2, *many]  # in ledger order


def test_consent_state_follows_the_ledger_written_elsewhere(tmp_path: Path, meta_url: str
                                                           ) -> None:
    writer = ConsentState(ConsentLedger(tmp_path))
    reader = ConsentState(ConsentLedger(tmp_path), interval=3600)
    writer.record([_st(1, 7, {"analytics": True})])
    reader.refresh(force=True)
    assert reader.of(["src_a"], [7], "analytics") == (True, 1)
    writer.record([_st(2, 7, {"analytics": False})])
    reader.refresh()  # within the interval: not read yet
    assert reader.of(["src_a"], [7], "analytics") == (True, 1)
    reader.refresh(force=True)
    assert reader.of(["src_a"], [7], "analytics", history=True) == (False, 2)
    assert ("src_a", 7) in reader.withdrawn
    assert reader.latest == writer.latest and reader.binding == writer.binding


def test_the_ledger_counts_grants_refusals_and_withdrawals_per_day(tmp_path: Path,
                                                                   meta_url: str) -> None:
    day = 86_400_000
    t0 = 1_767_225_600_000  # 2026-01-01T00:00Z
    ledger = ConsentLedger(tmp_path)
    ledger.record([_st(t0 + 5, 1, {"analytics": True, "ads": False}),  # grant, refusal
                   _st(t0 + 6, 2, {"analytics": False}, source="src_b"),  # refusal
                   _st(t0 + day, 1, {"analytics": False}),  # withdrawal
                   _st(t0 + day + 1, 1, {"ads": False}),  # a no after a no: a refusal
                   _st(t0 + 3 * day, 3, {"analytics": True})])  # outside the range
    got = ledger.by_day(t0, t0 + 2 * day, None)
    assert got == [("2026-01-01", "ads", "src_a", 0, 1, 0),
                   ("2026-01-01", "analytics", "src_a", 1, 0, 0),
                   ("2026-01-01", "analytics", "src_b", 0, 1, 0),
                   ("2026-01-02", "ads", "src_a", 0, 1, 0),
                   ("2026-01-02", "analytics", "src_a", 0, 0, 1)]
    assert ledger.by_day(t0, t0 + 2 * day, "src_b") == [("2026-01-01", "analytics", "src_b",
                                                          0, 1, 0)]


def test_each_ledger_has_an_id_of_its_own(tmp_path: Path, meta_url: str, request: Any
                                          ) -> None:
    """The processor keeps its position per ledger id: a data dir whose file ledger had
    reached ``seq`` 500 and that moves to PostgreSQL must not skip the new ledger's first
    500 statements."""
    ledger = ConsentLedger(tmp_path)
    if not meta_url:
        assert ledger.id == ""  # the file: the position's name of before ids
        return
    assert len(ledger.id) == 36 and ConsentLedger(tmp_path / "other").id == ledger.id
    cluster: Cluster = request.getfixturevalue("pg")
    elsewhere = ConsentLedger(tmp_path, url=new_database(cluster.url))
    assert elsewhere.id not in ("", ledger.id)


def test_the_ledger_refuses_edits(tmp_path: Path, meta_url: str) -> None:
    ledger = ConsentLedger(tmp_path)
    ledger.record([_st(1, 1, {"analytics": True})])
    for sql in ("UPDATE statements SET purposes = '{}'", "DELETE FROM statements"):
        with pytest.raises(Exception, match="append-only"):
            ledger.db.execute(sql)
    assert [st.purposes for _, st in ledger.since(0)] == [{"analytics": True}]


# -- PostgreSQL only --

@pytest.mark.slow
def test_schema_versions_on_postgresql(tmp_path: Path, pg: Cluster) -> None:
    _fresh(pg.url)
    Sources(tmp_path, url=pg.url).close()
    Keystore(tmp_path, url=pg.url).close()
    ConsentLedger(tmp_path, url=pg.url).close()
    Sources(tmp_path, url=pg.url).close()  # opening again changes nothing
    with psycopg.connect(pg.url) as con:
        versions = dict(con.execute("SELECT name, version FROM aap_schema_versions"
                                    ).fetchall())
        tables = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
        assert versions == {"sources": SOURCES_SCHEMA.latest, "data_keys": 1,
                            "statements": consent.SCHEMA.latest}
        assert tables == PG_TABLES
        con.execute("UPDATE aap_schema_versions SET version = 99 WHERE name = 'sources'")
    with pytest.raises(SchemaTooNew, match="sources"):
        Sources(tmp_path, url=pg.url)
    db = open_meta(tmp_path / "unused.db", pg.url)
    assert isinstance(db, PostgresMeta) and "secret-pw" not in db.where


@pytest.mark.slow
def test_processes_making_keys_at_once_agree_on_one_key_per_subject(
        tmp_path: Path, pg: Cluster) -> None:
    _fresh(pg.url)
    Keystore(tmp_path, url=pg.url).close()  # the master key file and the tables
    rounds = [[r * 1000 + i for i in range(400)] for r in range(8)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    outs = [ctx.Queue(), ctx.Queue()]
    ins = [ctx.Queue(), ctx.Queue()]
    result = ctx.Queue()
    procs = [ctx.Process(target=meta_workers.make_keys,
                         args=(str(tmp_path), pg.url, rounds, barrier, outs[i], ins[i], result))
             for i in (0, 1)]
    for p in procs:
        p.start()
    try:
        sealed = [outs[0].get(timeout=300), outs[1].get(timeout=300)]
        ins[0].put(sealed[1])  # each opens what the other sealed
        ins[1].put(sealed[0])
        results = [result.get(timeout=300), result.get(timeout=300)]
    finally:
        for p in procs:
            p.join(timeout=60)
    n = sum(len(r) for r in rounds)
    assert results == [(n, n), (n, n)]
    with psycopg.connect(pg.url) as con:
        count, distinct = con.execute("SELECT count(*), count(DISTINCT subject) FROM data_keys"
                                      ).fetchone() or (0, 0)
    assert count == distinct == n


@pytest.mark.slow
def test_a_destroy_racing_keys_for_never_leaves_a_key(tmp_path: Path, pg: Cluster) -> None:
    _fresh(pg.url)
    Keystore(tmp_path, url=pg.url).close()
    rounds = [[r * 1000 + i for i in range(50)] for r in range(60)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    result = ctx.Queue()
    procs = [ctx.Process(target=meta_workers.race_destroy,
                         args=(str(tmp_path), pg.url, rounds, barrier, role, result))
             for role in ("make", "destroy")]
    for p in procs:
        p.start()
    try:
        done = dict([result.get(timeout=300), result.get(timeout=300)])
    finally:
        for p in procs:
            p.join(timeout=60)
    subjects = [s for r in rounds for s in r]
    with psycopg.connect(pg.url) as con:
        left = con.execute("SELECT count(*) FROM data_keys JOIN destroyed USING (subject)"
                           ).fetchone()
        destroyed = con.execute("SELECT count(*) FROM destroyed").fetchone()
    assert left == (0,) and destroyed == (len(subjects),)
    assert Keystore(tmp_path, url=pg.url).keys_for(subjects) == {}
    print("keys made before their destroy:", done["make"], "of", len(subjects))


WRITERS = 4
ROUNDS = 300


@pytest.mark.slow
def test_a_reader_of_the_ledger_misses_no_statement_of_concurrent_writers(
        tmp_path: Path, pg: Cluster) -> None:
    """Several processes record statements at the same time (each subject a grant, then a
    withdrawal) while a :class:`ConsentState` in another process refreshes in a loop: it
    applies every statement, once, in ``seq`` order, and ends in the state a fresh full
    read gives (every subject withdrawn). On PostgreSQL a ``seq`` is drawn at insert and
    seen at commit: were the writers not taking turns, a later ``seq`` could commit first
    and the reader, past it, would skip the earlier one for good."""
    _fresh(pg.url)
    ConsentLedger(tmp_path, url=pg.url).close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS + 1)
    stop = ctx.Event()
    done = ctx.Queue()
    result = ctx.Queue()
    poller = ctx.Process(target=meta_workers.poll_consent,
                         args=(str(tmp_path), pg.url, barrier, stop, result))
    writers = [ctx.Process(target=meta_workers.record_statements,
                           args=(str(tmp_path), pg.url, w, ROUNDS, barrier, done))
               for w in range(WRITERS)]
    for p in (poller, *writers):
        p.start()
    try:
        finished = sorted(done.get(timeout=600) for _ in writers)
        stop.set()
        seen, latest, binding, withdrawn, polls = result.get(timeout=300)
    finally:
        stop.set()
        for p in (poller, *writers):
            p.join(timeout=60)
    assert finished == list(range(WRITERS))
    with psycopg.connect(pg.url) as con:
        every = [r[0] for r in con.execute("SELECT seq FROM statements ORDER BY seq")]
    assert len(every) == 2 * WRITERS * ROUNDS
    missed = sorted(set(every) - set(seen))
    assert not missed, f"the reader skipped {len(missed)} statements, e.g. seq {missed[:5]}"
    assert seen == every  # each once, in order
    fresh = ConsentState(ConsentLedger(tmp_path, url=pg.url))
    fresh.refresh(force=True)
    assert (latest, binding, withdrawn) == (fresh.latest, fresh.binding, fresh.withdrawn)
    assert withdrawn == {(f"src_{w}", w * 1_000_000 + i)
                         for w in range(WRITERS) for i in range(ROUNDS)}
    print(f"{len(every)} statements from {WRITERS} writers; the reader polled {polls} times")


@pytest.mark.slow
def test_no_raw_id_reaches_postgresql_in_clear(tmp_path: Path, pg: Cluster) -> None:
    """Canary: raw ids and personal traits remembered in the keystore or waiting in a
    rectification request, and the data keys themselves, appear in no file of the
    cluster (tables, WAL) nor in any row; only wrapped keys and sealed values are stored
    (a control shows the scan sees those)."""
    _fresh(pg.url)
    ks = Keystore(tmp_path, url=pg.url)
    tag = secrets.token_hex(6)
    ids = {s: f"canary-{tag}-{s}@example.com" for s in range(1, 41)}
    ks.remember(ids)
    for s in range(1, 41, 4):
        ks.rectify_personal_traits([s], {"name": f"Canary Trait {tag} {s}"})
    requests = RequestStore(tmp_path, url=pg.url)
    for s in range(31, 41, 3):  # waiting in the queue, a non-personal trait beside them
        requests.add("rectification", [s], {"userId": True}, {
            "email": f"canary-req-{tag}-{s}@example.com", "name": f"Canary Req {tag} {s}",
            "plan": f"plan-{tag}"})
    raw_keys = {s: _raw_key(ks, s) for s in ids}
    ks.destroy(range(1, 11))
    ks.forget(range(11, 21))
    with psycopg.connect(pg.url, autocommit=True) as con:
        con.execute("CHECKPOINT")  # what was written reaches the table files too
        wrapped = bytes(con.execute("SELECT wrapped FROM data_keys WHERE subject = 30"
                                    ).fetchone()[0])  # type: ignore[index]
    secrets_ = [v.encode() for v in ids.values()] + [
        f"Canary Trait {tag}".encode(), f"canary-req-{tag}".encode(), f"Canary Req {tag}".encode()]
    rows = repr(every_row(pg.url)).encode()
    files = all_bytes(pg.data)
    assert wrapped in files  # the control: the scan sees what is stored
    assert f"plan-{tag}".encode() in files  # and the queue's rows (a trait not personal)
    assert rows.count(tag.encode()) == rows.count(f"plan-{tag}".encode()) == 4
    assert not [x for x in secrets_ if x in files]
    assert not [s for s, k in raw_keys.items() if k in files or k.hex().encode() in rows]


# -- helpers --

def _raw_key(ks: Keystore, subject: int) -> bytes:
    row = ks._db.fetchone("SELECT wrapped FROM data_keys WHERE subject = ?", (subject,))
    assert row is not None
    return ks.master.unwrap(subject, bytes(row[0]))


def _count(data_dir: Path, url: str, table: str, where: str = "true") -> int:
    db = open_meta(data_dir / "keys" / "keystore.db", url)
    row = db.fetchone(f"SELECT count(*) FROM {table} WHERE {where}")
    return int(row[0]) if row else 0


def test_many_rows_become_one_statement_per_chunk() -> None:
    class Cur:
        def __init__(self) -> None:
            self.ran: list[tuple[str, list[Any]]] = []

        def execute(self, sql: str, params: list[Any]) -> None:
            self.ran.append((sql, params))

    from aap.store.meta import _PgTx

    cur = Cur()
    _PgTx(cur).executemany("INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO NOTHING",
                           [(i, str(i)) for i in range(1001)])
    assert [len(p) for _, p in cur.ran] == [2000, 2]
    assert cur.ran[1] == ("INSERT INTO t (a, b) VALUES (%s, %s) ON CONFLICT (a) DO NOTHING",
                          [1000, "1000"])
    assert cur.ran[0][0].count("(%s, %s)") == 1000
    # columns of integers and bytes only: one array per column
    cur.ran.clear()
    _PgTx(cur).executemany("INSERT INTO t VALUES (?, ?, ?) ON CONFLICT (a) DO NOTHING",
                           [(i, bytes([i, 0, 255]), -i) for i in range(3)])
    assert cur.ran == [("INSERT INTO t SELECT * FROM unnest(%s::bigint[], %s::bytea[],"
                        " %s::bigint[]) ON CONFLICT (a) DO NOTHING",
                        ["{0,1,2}", '{"\\\\x0000ff","\\\\x0100ff","\\\\x0200ff"}',
                         "{0,-1,-2}"])]
    # a bool is no integer here, nor a NULL: one placeholder per value, as before
    for row in ((1, True), (1, None)):
        cur.ran.clear()
        _PgTx(cur).executemany("INSERT INTO t VALUES (?, ?)", [row])
        assert cur.ran == [("INSERT INTO t VALUES (%s, %s)", list(row))]


@pytest.mark.slow
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.integers(-2**63, 2**63 - 1), st.binary(max_size=80),
                               st.integers(-2**63, 2**63 - 1)),
                     max_size=30, unique_by=lambda r: r[0]))
def test_rows_of_integers_and_bytes_are_stored_exactly(pg: Cluster, rows: list[Any]) -> None:
    """What the array path writes reads back the same: every byte value, empty bytes,
    the ends of bigint's range; ``ON CONFLICT`` acts as with ``VALUES``."""
    from aap.store.meta import _PgTx

    with psycopg.connect(pg.url, autocommit=True) as con:
        con.execute("DROP TABLE IF EXISTS many")
        con.execute("CREATE TABLE many (a bigint PRIMARY KEY, b bytea NOT NULL, c bigint)")
        with con.transaction(), con.cursor() as cur:
            _PgTx(cur).executemany("INSERT INTO many VALUES (?, ?, ?) ON CONFLICT (a)"
                                   " DO NOTHING", rows + [(r[0], b"other", 0) for r in rows])
        got = con.execute("SELECT a, b, c FROM many ORDER BY a").fetchall()
    assert [(a, bytes(b), c) for a, b, c in got] == sorted(rows)


@pytest.mark.slow
def test_a_server_given_the_url_keeps_sources_and_keys_in_postgresql(
        tmp_path: Path, pg: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole path: ``aap sources create`` and ``aap serve`` (its collector workers and
    core) with ``AAP_META_URL``: the source is found in PostgreSQL, the raw ids are sealed
    under keys made there, the processor's identities are there, and no keystore (or
    identities) file is made under the data dir."""
    from tests.conftest import start

    _fresh(pg.url)
    monkeypatch.setenv("AAP_META_URL", pg.url)
    user = f"user-{secrets.token_hex(4)}"
    r = start(tmp_path, env={"AAP_META_URL": pg.url})
    try:
        batch = {"batch": [{"type": "track", "event": "E", "userId": user, "messageId": "m1"},
                           {"type": "track", "event": "E", "anonymousId": "a-1",
                            "messageId": "m2"}]}
        assert r.post("/v1/batch", json=batch).status_code == 200
        stored = r.stored()  # unsealed with the keys in PostgreSQL
        deadline = time.monotonic() + 120  # the processor stitches them in PostgreSQL
        with psycopg.connect(pg.url, autocommit=True) as con:
            while con.execute("SELECT count(*) FROM identity_ids").fetchone() != (2,):
                assert time.monotonic() < deadline, "the processor stitched no identity"
                time.sleep(0.1)
    finally:
        r.server.stop()
    assert sorted(str(e.user_id or e.anonymous_id) for e in stored) == sorted([user, "a-1"])
    with psycopg.connect(pg.url) as con:
        assert [r[0] for r in con.execute("SELECT name FROM sources")] == ["test-source"]
        assert con.execute("SELECT count(*) FROM data_keys").fetchone() == (2,)
        # two ids, two persons, in the shared identities
        assert con.execute("SELECT count(DISTINCT person_id) FROM identity_ids").fetchone(
            ) == (2,)
    assert not DataDir(r.data_dir).keystore_db.exists()
    assert not DataDir(r.data_dir).identities_db.exists()
    # API keys, sessions, cohorts, dashboards and devices too: no meta.db is made
    assert not DataDir(r.data_dir).meta_db.exists()


@pytest.mark.slow
def test_no_raw_id_of_a_consent_statement_reaches_postgresql(
        tmp_path: Path, pg: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Canary: ids named through the API in consent statements (``POST /v1/consent``, an
    event's own consent, ``Sec-GPC: 1``) reach the ledger in PostgreSQL as keyed ids
    only: no raw id in any row nor in any file of the cluster (tables, WAL), while the
    keyed ids (the control) are found in both; and no ``consent.db`` is made."""
    from aap.privacy.ids import IdHasher
    from tests.conftest import start

    _fresh(pg.url)
    monkeypatch.setenv("AAP_META_URL", pg.url)
    tag = secrets.token_hex(6)
    user, anon = f"canary-{tag}-user@example.com", f"canary-{tag}-anon"
    r = start(tmp_path, env={"AAP_META_URL": pg.url})
    try:
        assert r.post("/v1/consent", json={"userId": user, "anonymousId": anon,
                                           "purposes": {"analytics": True}}).status_code == 200
        event = {"type": "track", "event": "E", "userId": user, "messageId": "m1",
                 "context": {"consent": {"categoryPreferences": {"analytics": False}}}}
        assert r.post("/v1/batch", json={"batch": [event]}, headers={"Sec-GPC": "1"}
                      ).status_code == 200
    finally:
        r.server.stop()
    keys = {IdHasher.for_data_dir(r.data_dir).key(x) for x in (user, anon)}
    with psycopg.connect(pg.url, autocommit=True) as con:
        stored = con.execute("SELECT subject, channel FROM statements").fetchall()
        con.execute("CHECKPOINT")
    assert {s for s, _ in stored} == keys  # the control: the ledger holds the keyed ids
    assert {c for _, c in stored} >= {"api", "event", "gpc"}
    rows = repr(every_row(pg.url)).encode()
    files = all_bytes(pg.data)
    assert all(struct.pack("<q", k) in files for k in keys)  # the scan sees the ledger's rows
    assert tag.encode() not in rows and tag.encode() not in files
    assert not DataDir(r.data_dir).consent_db.exists()


def test_an_unreachable_server_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    from aap.runner import free_port
    from aap.store.meta import MetaUnavailable

    url = f"postgresql://aap:pw-canary@127.0.0.1:{free_port()}/aap"
    with pytest.raises(MetaUnavailable, match=r"AAP_META_URL: cannot use postgresql://127\.0\.0\.1"
                       ) as caught:
        Keystore(tmp_path, url=url)
    assert "pw-canary" not in str(caught.value)


def test_append_keeps_every_value_nulls_and_empty_strings_apart(tmp_path: Path,
                                                                 meta_url: str) -> None:
    """Tx.append (COPY of Arrow's CSV on PostgreSQL, executemany on SQLite): every row
    arrives as it was, an empty string stays one and a null stays NULL, quotes,
    backslashes, tabs, newlines and commas included; the columns are matched by name."""
    import pyarrow as pa

    from aap.store.meta import open_meta

    db = open_meta(tmp_path / "m.db", meta_url)
    db.execute("CREATE TABLE IF NOT EXISTS ap_t (k BIGINT NOT NULL, p INTEGER, s TEXT)")
    odd = "it's \\ \"odd\"\t\n, ok"
    rows = [(k, k % 7 if k % 5 else None, f"x{k}" if k % 3 else ("" if k % 2 else None))
            for k in range(5000)] + [(-1, 2, odd), (2**62, None, "")]
    table = pa.table({"s": pa.array([r[2] for r in rows], pa.string()),  # not the order
                      "k": pa.array([r[0] for r in rows], pa.int64()),   # of the table
                      "p": pa.array([r[1] for r in rows], pa.int32())})
    db.write(lambda t: t.append("ap_t", table))
    db.write(lambda t: t.append("ap_t", table.slice(0, 0)))
    assert sorted(db.fetchall("SELECT k, p, s FROM ap_t")) == sorted(rows)
    assert db.fetchall("SELECT count(*) FROM ap_t WHERE s IS NULL") == [
        (sum(1 for r in rows if r[2] is None),)]
