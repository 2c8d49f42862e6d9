"""The shared flags (:mod:`aap.store.flags`) and a warehouse's mirror of them, on both
engines of the shared state (PostgreSQL: marked ``slow``): what is set, lifted and erased
reaches the mirror before the next query reads it; a flag follows a merge of the shared
identities; the flags a warehouse held before it mirrored are adopted once; an identity
store made before flags existed gets their tables. On
PostgreSQL, two processes setting and clearing flags while a third mirrors them: the
mirror ends equal to the store. Without ``AAP_META_URL`` nothing is mirrored."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import psycopg
import pytest

from aap.store import flags, identities
from aap.store.flags import SharedFlags
from aap.store.identities import SharedIdentities
from aap.store.migrations import statements
from aap.store.warehouse import Warehouse
from tests.pg import Cluster
from tests.pg import fresh_database as _fresh
from tests.store import flags_workers as w
from tests.store import identity_workers as iw


def test_set_lift_and_erase_reach_the_mirror_before_a_query(tmp_path: Path, meta_url: str
                                                            ) -> None:
    store = SharedFlags(tmp_path, meta_url)
    wh = Warehouse(tmp_path / "wh")
    other = SharedFlags(tmp_path, meta_url)  # another process's writes, say
    mirror = flags.mirror(wh, store)
    assert w.local(wh) == w.shared(store) == set()
    assert other.set_flag([1, 2], "restricted") == 2
    assert other.set_flag([2], "objected") == 1
    assert other.set_flag([1], "restricted") == 0  # flagged already: kept as it was
    # the query reads person_flags as before: the mirror is brought up to date first
    assert wh.query("SELECT person_id, flag FROM person_flags ORDER BY 1, 2")[1] == [
        (1, "restricted"), (2, "objected"), (2, "restricted")]
    assert w.local(wh) == w.shared(store)  # with the times they were set at
    assert wh.query("SELECT count(*) FROM events")[1] == [(0,)]
    reads = mirror.refreshes
    wh.fresh_flags()  # nothing changed: one look at the counter, no rows read
    assert mirror.refreshes == reads
    assert other.clear_flag([1], "restricted") == 1
    assert other.clear_flag([1], "restricted") == 0
    wh.fresh_flags()
    assert {(p, f) for p, f, _ in w.local(wh)} == {(2, "objected"), (2, "restricted")}
    assert other.erase([2]) == 2
    wh.fresh_flags()
    assert w.local(wh) == w.shared(store) == set()
    with pytest.raises(ValueError):
        other.set_flag([3], "hidden")


def test_a_flag_follows_a_merge_and_covers_merged_persons(tmp_path: Path, meta_url: str
                                                          ) -> None:
    ids = SharedIdentities(tmp_path, meta_url)
    store = SharedFlags(tmp_path, meta_url)
    anon, user = 11, 1
    iw.apply_chunk(ids, [("track", None, anon, None), ("track", user, None, None)])
    before = ids.persons_of([anon, user])
    assert before[anon] != before[user]
    store.set_flag([before[anon]], "restricted")
    iw.apply_chunk(ids, [("identify", user, anon, None)])  # the anonymous person merges
    after = ids.persons_of([anon, user])
    survivor = after[user]
    assert after[anon] == survivor
    merged = ({before[anon], before[user]} - {survivor}).pop()
    # the merge's transaction gave the survivor the merged person's restriction
    assert store.flagged([survivor], "restricted") == {survivor}
    # lifting it through either number lifts it from both (the shared merges are read)
    assert store.clear_flag([merged], "restricted") == 2
    assert store.flagged([survivor, merged], "restricted") == set()
    # and flagging the merged number flags the survivor too
    assert store.set_flag([merged], "objected") == 2
    assert store.flagged([survivor], "objected") == {survivor}
    assert store.erase([survivor]) == 2
    assert w.shared(store) == set()


def test_a_warehouses_own_flags_are_adopted_once(tmp_path: Path, meta_url: str) -> None:
    wh = Warehouse(tmp_path / "wh")
    wh.con.execute("INSERT INTO person_flags VALUES (7, 'restricted', TIMESTAMP"
                   " '2026-05-01 12:00:00.250')")
    store = SharedFlags(tmp_path, meta_url)
    flags.mirror(wh, store)
    assert w.shared(store) == {(7, "restricted", 1777636800250)} == w.local(wh)
    store.clear_flag([7], "restricted")
    wh.close()
    wh = Warehouse(tmp_path / "wh")  # started again: not adopted a second time
    wh.con.execute("INSERT INTO person_flags VALUES (8, 'objected', now())")
    flags.mirror(wh, store)
    assert w.local(wh) == w.shared(store) == set()


def test_an_identity_store_made_before_flags_gets_their_tables(tmp_path: Path, meta_url: str
                                                               ) -> None:
    """The flags' tables come with version 1 of the shared identities' schema: a store at
    version 0 (identities only) is brought up to it when opened."""
    if meta_url:
        with psycopg.connect(meta_url, autocommit=True) as con:
            for statement in statements(identities._PG_SCHEMA):
                con.execute(statement)
            con.execute("CREATE TABLE aap_schema_versions (name TEXT PRIMARY KEY,"
                        " version INTEGER NOT NULL)")
            con.execute("INSERT INTO aap_schema_versions VALUES ('identity_ids', 0)")
    else:
        con = sqlite3.connect(tmp_path / "identities.db")
        con.executescript(identities._SCHEMA)
        con.close()
    ids = SharedIdentities(tmp_path, meta_url)
    iw.apply_chunk(ids, [("track", None, 11, None)])
    person = ids.persons_of([11])[11]
    store = SharedFlags(tmp_path, meta_url)
    assert store.set_flag([person], "restricted") == 1
    assert store.flagged([person], "restricted") == {person}
    version = (store._db.fetchone("SELECT version FROM aap_schema_versions WHERE name ="
                                  " 'identity_ids'") if meta_url else
               store._db.fetchone("PRAGMA user_version"))
    assert version == (identities.SCHEMA.latest,) == (2,)  # 2: rectifications' tables too


def test_without_meta_url_nothing_is_mirrored(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh")
    assert flags.attach(wh, tmp_path, "") is None
    assert wh.flags is None
    assert not (tmp_path / "identities.db").exists()  # no second store in the default
    wh.fresh_flags()  # nothing to do


# -- on PostgreSQL: writers at once, a mirror following them --

@pytest.mark.slow
def test_a_mirror_following_two_writers_ends_equal_to_the_store(tmp_path: Path, pg: Cluster
                                                                ) -> None:
    """Two processes set and clear flags of the same 60 persons at once (clears in the
    first half only: a clear makes the mirror read every row again, which would hide a
    row it skipped), each holding its transaction open a few ms after drawing its change
    number, while a third process mirrors them in a loop. The mirror, brought up to date
    once after the writers stopped, holds exactly the store's rows. (With numbers drawn
    from a sequence, no turns and inserts that read nothing first, it missed rows in
    each of three runs.)"""
    _fresh(pg.url)
    SharedFlags(tmp_path, pg.url).close()  # the tables, made once
    ctx = multiprocessing.get_context("spawn")
    start, stop = ctx.Barrier(3), ctx.Event()
    result = ctx.Queue()
    writers = [ctx.Process(target=w.write, args=(str(tmp_path), pg.url, seed, start, result))
               for seed in (1, 2)]
    follower = ctx.Process(target=w.follow, args=(str(tmp_path), pg.url, start, stop, result))
    for p in (*writers, follower):
        p.start()
    try:
        done = [result.get(timeout=300), result.get(timeout=300)]
        stop.set()
        mirrored, refreshes = result.get(timeout=300)
    finally:
        stop.set()
        for p in (*writers, follower):
            p.join(timeout=60)
    store = SharedFlags(tmp_path, pg.url)
    assert sorted(d[0] for d in done) == ["writer", "writer"]
    assert sum(d[1] for d in done) > 200  # the writers did add rows
    assert refreshes > 10  # the mirror followed them while they wrote
    assert set(mirrored) == w.shared(store)
    print(f"rows {len(mirrored)}, writes {[d[1] for d in done]}, mirror reads {refreshes}")
