"""The shared record of rectifications (:mod:`aap.store.rectifications`) on both engines
of the shared state (PostgreSQL: marked ``slow``): a rectification is recorded for the
persons the shared identities merged together, numbered in order; an erasure of either
number deletes every row of theirs; an identity store at version 1 (before the record)
gets its tables when opened. Without ``AAP_META_URL`` nothing is attached. What each
warehouse does with the record: tests/privacy/test_rectification_shared.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg

from aap.store import identities, rectifications
from aap.store.identities import SharedIdentities
from aap.store.migrations import statements
from aap.store.rectifications import SharedRectifications
from aap.store.warehouse import Warehouse
from tests.store import identity_workers as iw


def test_a_rectification_covers_merged_persons_and_an_erasure_removes_it(
        tmp_path: Path, meta_url: str) -> None:
    ids = SharedIdentities(tmp_path, meta_url)
    store = SharedRectifications(tmp_path, meta_url)
    anon, user, other = 11, 1, 2
    iw.apply_chunk(ids, [("track", None, anon, None), ("track", user, None, None),
                         ("track", other, None, None)])
    iw.apply_chunk(ids, [("identify", user, anon, None)])  # the anonymous person merges
    persons = ids.persons_of([anon, user, other])
    survivor, bystander = persons[user], persons[other]
    assert store.since(0) == []
    first = store.record([survivor], {"plan": "pro", "size": None})
    second = store.record([bystander], {"plan": "free"})
    assert first is not None and second is not None and (first.seq, second.seq) == (1, 2)
    assert first.traits == '{"plan": "pro", "size": null}'
    assert survivor in first.persons and len(first.persons) == 2  # with the merged one
    assert store.since(0) == [first, second] and store.since(1) == [second]
    assert store.numbered([2]) == [second]
    assert store.record([], {"plan": "x"}) is None
    [merged_number] = first.persons - {survivor}
    assert store.erase([merged_number]) == 2  # through the merged number: both rows
    assert store.since(0) == [second]
    store.close()
    ids.close()


def test_an_identity_store_at_version_1_gets_the_records_tables(tmp_path: Path,
                                                                 meta_url: str) -> None:
    if meta_url:
        with psycopg.connect(meta_url, autocommit=True) as con:
            for statement in statements(identities._PG_SCHEMA + identities._PG_FLAGS):
                con.execute(statement)
            con.execute("CREATE TABLE aap_schema_versions (name TEXT PRIMARY KEY,"
                        " version INTEGER NOT NULL)")
            con.execute("INSERT INTO aap_schema_versions VALUES ('identity_ids', 1)")
    else:
        con = sqlite3.connect(tmp_path / "identities.db")
        con.executescript(identities._SCHEMA + identities._FLAGS)
        con.execute("PRAGMA user_version = 1")
        con.close()
    store = SharedRectifications(tmp_path, meta_url)
    r = store.record([5], {"plan": "pro"})
    assert r is not None and store.since(0) == [r]
    version = (store._db.fetchone("SELECT version FROM aap_schema_versions WHERE name ="
                                  " 'identity_ids'") if meta_url else
               store._db.fetchone("PRAGMA user_version"))
    assert version == (identities.SCHEMA.latest,) == (2,)
    store.close()


def test_without_meta_url_nothing_is_attached(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh")
    assert rectifications.attach(wh, tmp_path, "") is None
    assert wh.rectifications is None
    assert not (tmp_path / "identities.db").exists()
    wh.close()
