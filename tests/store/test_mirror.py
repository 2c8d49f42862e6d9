"""A query node's ``person_overrides`` mirrors the shared merges (:mod:`aap.store.mirror`):
new merges are added, a merge moved to another person is updated, an erased one is
deleted, and a reload with nothing new changes nothing; on both engines of the shared
state."""

from __future__ import annotations

from pathlib import Path

from aap.store.identities import SharedIdentities
from aap.store.mirror import OverridesMirror
from aap.store.warehouse import Warehouse
from tests.store import identity_workers as w


def _table(wh: Warehouse) -> set[tuple[int, int]]:
    return set(wh.con.execute("SELECT old_person_id, person_id FROM person_overrides"
                              ).fetchall())


def test_the_mirror_follows_the_shared_merges(tmp_path: Path, meta_url: str) -> None:
    store = SharedIdentities(tmp_path, meta_url)
    wh = Warehouse(tmp_path / "wh")
    try:
        mirror = OverridesMirror(wh, store)
        assert mirror.reload() == 0 and _table(wh) == set()
        w.apply_chunk(store, [("track", None, 11, None), ("track", None, 12, None),
                              ("track", None, 13, None), ("track", None, 14, None)])
        w.apply_chunk(store, [("alias", 12, None, 11)])  # 11's person → 12's
        assert mirror.reload() == 1
        assert _table(wh) == set(store.overrides()) and len(_table(wh)) == 1
        w.apply_chunk(store, [("alias", 13, None, 12)])  # 11's and 12's → 13's: one moves
        before = _table(wh)
        assert mirror.reload() == 2  # one updated, one added
        assert _table(wh) == set(store.overrides()) != before
        assert len({p for _, p in _table(wh)}) == 1
        assert mirror.reload() == 0  # nothing new: nothing written
        persons = store.persons_of([11, 12, 13])
        store.erase({persons[13]}, [11, 12, 13])  # an erasure drops the person's merges
        assert store.overrides() == []
        assert mirror.reload() == 2 and _table(wh) == set()
        assert mirror.rows == 0 and mirror.loaded_at > 0
    finally:
        wh.close()
        store.close()
