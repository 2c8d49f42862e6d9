"""Processors sharing identities (``AAP_META_URL``, :mod:`aap.store.identities`), each
with its own log and warehouse, as the processors of one Kafka group are: an identity
whose halves reach two processors is one person in both warehouses, and a chunk whose
warehouse write failed (after the shared store committed) is written again with the
same persons; shared identities out of reach hold the records back without setting them
aside, and so does a restart of the database whichever part of it the chunk used. Runs
on both engines of the shared state (PostgreSQL: marked ``slow``)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import psycopg
import pytest

from aap.events import Event, encode_events
from aap.log.base import Append
from aap.log.sqlite import SQLiteLog
from aap.privacy.ids import IdHasher
from aap.privacy.keystore import Keystore
from aap.process.processor import SET_ASIDE_FAILURES, Processor
from aap.store.identities import IdentitiesUnavailable, SharedIdentities
from aap.store.warehouse import Warehouse
from tests.pg import Cluster
from tests.process.test_processor import Flaky, drain, ev

HASHER = IdHasher(b"k" * 32)
RESOLVED_IDS = ("SELECT i.id_key, coalesce(o.person_id, i.person_id) FROM person_ids i"
                " LEFT JOIN person_overrides o ON o.old_person_id = i.person_id")


def append(log: SQLiteLog, *events: Event) -> None:
    log.append([Append("s", len(events), encode_events(list(events)))])


def processor(log: SQLiteLog, wh: Warehouse, shared: Path, url: str) -> Processor:
    return Processor(log, wh, HASHER, chunk_records=1,
                     identities=SharedIdentities(shared, url))


def by_message(wh: Warehouse) -> dict[str, int]:
    """Each event's person as the warehouse's queries see it (through its overrides)."""
    return dict(wh.query("SELECT message_id, person_id FROM events")[1])  # type: ignore[arg-type]


def test_the_halves_of_an_identity_are_one_person_in_both_warehouses(
        tmp_path: Path, meta_url: str) -> None:
    log_a, log_b = SQLiteLog(tmp_path / "log-a"), SQLiteLog(tmp_path / "log-b")
    wh_a, wh_b = Warehouse(tmp_path / "wh-a"), Warehouse(tmp_path / "wh-b")
    shared = tmp_path / "shared"
    shared.mkdir()
    proc_a = processor(log_a, wh_a, shared, meta_url)
    proc_b = processor(log_b, wh_b, shared, meta_url)
    # B: a0 and a1 browse anonymously; A: alice logs in alone, then on a0's device
    append(log_b, ev(1, anonymous_id="a0"), ev(2, anonymous_id="a1"))
    append(log_a, ev(3, user_id="alice", anonymous_id=None))
    append(log_a, ev(4, type="identify", event=None, user_id="alice", anonymous_id="a0"))
    # B: bob identifies on a1; a0 comes back (B learns that a0 is alice's now)
    append(log_b, ev(5, type="identify", event=None, user_id="bob", anonymous_id="a1"),
           ev(6, anonymous_id="a0"))
    append(log_a, ev(7, anonymous_id="a1"))  # A: a1 is bob's
    for proc in (proc_b, proc_a, proc_a, proc_b, proc_a):  # one record each, in this order
        assert proc.run_once() == 1
    assert proc_a.run_once() == proc_b.run_once() == 0  # (and the last writes are done)
    proc_a.close()
    proc_b.close()
    ids_a, ids_b = dict(wh_a.query(RESOLVED_IDS)[1]), dict(wh_b.query(RESOLVED_IDS)[1])
    key = HASHER.key
    both = ids_a.keys() & ids_b.keys()
    assert both == {key("a0"), key("a1")}
    assert {k: ids_a[k] for k in both} == {k: ids_b[k] for k in both}
    store = SharedIdentities(shared, meta_url)
    persons = store.persons_of([key(x) for x in ("a0", "a1", "alice", "bob")])
    assert persons[key("a0")] == persons[key("alice")] != persons[key("a1")] == persons[key("bob")]
    # every event, in whichever warehouse, is the person of its ids in the shared store
    events = {**by_message(wh_a), **by_message(wh_b)}
    alice, bob = persons[key("alice")], persons[key("bob")]
    assert events == {"m1": alice, "m2": bob, "m3": alice, "m4": alice, "m5": bob,
                      "m6": alice, "m7": bob}
    # B's warehouse learned the merge A made (a0 came back to B after it)
    assert dict(wh_b.query("SELECT message_id, person_id FROM events_raw")[1])["m1"] != alice


def test_a_failed_write_is_written_again_with_the_same_persons(tmp_path: Path, meta_url: str
                                                               ) -> None:
    """The shared store committed the chunk, the warehouse did not: the chunk runs again
    (the store already holds its ids) and the warehouse ends as one that never failed."""
    log = SQLiteLog(tmp_path / "log")
    append(log, ev(1, anonymous_id="a0"), ev(2, user_id="alice", anonymous_id=None))
    append(log, ev(3, type="identify", event=None, user_id="alice", anonymous_id="a0"),
           ev(4, anonymous_id="a0"))
    append(log, ev(5, anonymous_id="a1"))
    flaky = Flaky(tmp_path / "flaky", fail_when="m3", times=2)
    shared = tmp_path / "shared"
    shared.mkdir()
    drain(processor(log, flaky, shared, meta_url))
    assert flaky.times == 0
    events = by_message(flaky)
    assert len(events) == 5
    assert events["m1"] == events["m2"] == events["m3"] == events["m4"] != events["m5"]
    identified = flaky.query("SELECT person_id FROM persons WHERE identified")[1]
    assert identified == [(events["m1"],)]
    assert flaky.query("SELECT count(*) FROM person_overrides")[1] == [(1,)]


@pytest.mark.slow
def test_shared_identities_out_of_reach_hold_the_records_without_setting_them_aside(
        tmp_path: Path, pg: Cluster) -> None:
    """PostgreSQL refuses the processor's connections for a while (its sessions ended,
    its database closed to new ones): the chunk fails, is not counted against its
    records (which would be set aside after five failures), and is written once the
    database is back."""
    name = "ids_" + secrets.token_hex(4)
    with psycopg.connect(pg.url, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    url = pg.database_url(name)
    log = SQLiteLog(tmp_path / "log")
    for i in range(1, 5):
        append(log, ev(i, anonymous_id=f"a{i % 2}"))
    wh = Warehouse(tmp_path / "wh")
    (tmp_path / "shared").mkdir()
    proc = processor(log, wh, tmp_path / "shared", url)
    assert proc.run_once() == 1
    with psycopg.connect(pg.url, autocommit=True) as con:
        con.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s", (name,))
        try:
            with pytest.raises(IdentitiesUnavailable):
                proc.run_once()
            assert proc.failures == 0 and not proc.dropped
        finally:
            con.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if not proc.run_once():
                break
        except IdentitiesUnavailable:  # the pool reconnects
            time.sleep(0.5)
    proc.close()
    assert sorted(by_message(wh)) == ["m1", "m2", "m3", "m4"] and not proc.dropped
    events = by_message(wh)
    assert events["m1"] == events["m3"] != events["m2"] == events["m4"]


@pytest.mark.slow
def test_a_restart_of_the_shared_database_sets_no_record_aside(tmp_path: Path, pg: Cluster
                                                                ) -> None:
    """The keystore on PostgreSQL (its destroyed ids read at each chunk, with no error of
    its own around the driver's): the server ends every session, as a restart or a
    fail-over does, more times than a record may fail before it is set aside. Each
    chunk fails on its dead connection; none is counted against the record, and it is
    written once a session holds."""
    name = "ks_" + secrets.token_hex(4)
    with psycopg.connect(pg.url, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    url = pg.database_url(name)
    log = SQLiteLog(tmp_path / "log")
    append(log, ev(1, anonymous_id="a1"))
    append(log, ev(2, anonymous_id="a2"))
    wh = Warehouse(tmp_path / "wh")
    keystore = Keystore(tmp_path / "ks", url=url)
    proc = Processor(log, wh, HASHER, chunk_records=1, destroyed=keystore.refresh_destroyed)
    assert proc.run_once() == 1
    failed = 0
    with psycopg.connect(pg.url, autocommit=True) as con:
        for _ in range(SET_ASIDE_FAILURES + 2):
            # the pool's new connection (it replaces the one that failed, on a thread of
            # its own) is there before it is cut: the chunk meets a dead one, every time
            deadline = time.monotonic() + 60
            while not con.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                                  " AND state = 'idle'", (name,)).fetchone()[0]:  # type: ignore[index]
                assert time.monotonic() < deadline, "the pool did not reconnect"
                time.sleep(0.05)
            con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = %s", (name,))
            try:
                proc.run_once()
            except psycopg.OperationalError:
                failed += 1
            assert proc.failures == 0 and not proc.dropped
    assert failed > SET_ASIDE_FAILURES
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if not proc.run_once():
                break
        except psycopg.OperationalError:  # the pool reconnects
            time.sleep(0.5)
    proc.close()
    assert sorted(by_message(wh)) == ["m1", "m2"] and not proc.dropped
    assert not wh.query("SELECT * FROM dead_letters")[1]
