"""The persons behind data-subject requests, in the warehouse: who an id belongs to
(with every person merged into them), and the changes rights make to their profiles —
rectified traits (Art. 16), restriction (Art. 18) and objection (Art. 21) flags.
Removing their events is :mod:`aap.privacy.removal`.

Flags: the warehouse's ``person_flags`` table is their record; with ``AAP_META_URL``
the record is the shared store (:mod:`aap.store.flags`), written here, and the table is
its mirror, brought up to date at once (and before every query, on every node).
Rectified traits: with ``AAP_META_URL`` recorded on the shared store too, and merged by
every warehouse into its own profiles (:mod:`aap.store.rectifications`)."""

from __future__ import annotations

import json
from typing import Any

from aap.store.rewrite import rewrite_tables
from aap.store.tiers import read_again
from aap.store.warehouse import Warehouse


def person_closure(wh: Warehouse, id_keys: list[int]) -> tuple[set[int], set[int]]:
    """The persons these ids belong to, with every person merged into them, and all
    the id keys of those persons."""
    cur = wh.con.cursor()
    if not id_keys:
        return set(), set()
    found = {int(r[0]) for r in cur.execute(
        "SELECT coalesce(o.person_id, i.person_id) FROM person_ids i LEFT JOIN"
        " person_overrides o ON o.old_person_id = i.person_id"
        " WHERE list_contains($keys, i.id_key)", {"keys": list(id_keys)}).fetchall()}
    if not found:
        return set(), set(id_keys)
    persons = found | {int(r[0]) for r in cur.execute(
        "SELECT old_person_id FROM person_overrides WHERE list_contains($persons, person_id)",
        {"persons": sorted(found)}).fetchall()}
    keys = set(id_keys) | {int(r[0]) for r in cur.execute(
        "SELECT id_key FROM person_ids WHERE list_contains($persons, person_id)",
        {"persons": sorted(persons)}).fetchall()}
    return persons, keys


def shared_persons(wh: Warehouse, id_keys: list[int] | set[int]) -> set[int]:
    """With ``AAP_META_URL``: the persons of these ids in the shared identities (a person
    whose events only another warehouse holds is found too); otherwise none."""
    if wh.flags is None or not id_keys:
        return set()
    return wh.flags.persons_of(id_keys)


def identified(wh: Warehouse, persons: set[int]) -> bool:
    """Whether any of these persons is identified (has had a userId)."""
    if not persons:
        return False
    return bool(wh.con.cursor().execute(
        "SELECT count(*) FROM persons WHERE identified AND list_contains($persons, person_id)",
        {"persons": sorted(persons)}).fetchone()[0])  # type: ignore[index]


def sources_of(wh: Warehouse, persons: set[int]) -> set[str]:
    """The sources the persons' events came from, in every tier."""
    if not persons:
        return set()

    def read() -> set[str]:
        with wh.snapshot() as cur:
            return {r[0] for r in cur.execute(
                "SELECT DISTINCT source FROM events_all WHERE list_contains($persons,"
                " person_id)", {"persons": sorted(persons)}).fetchall()}
    return read_again(read)


def flag_persons(wh: Warehouse, persons: set[int], flag: str) -> int:
    """Mark persons ``restricted`` (Art. 18: kept, left out of every query) or
    ``objected`` (Art. 21: left out of profiling)."""
    if wh.flags is not None:
        wh.flags.set_flag(persons, flag)
        return len(persons)
    with wh.write_lock, wh.transaction() as cur:
        for p in sorted(persons):
            cur.execute("INSERT INTO person_flags VALUES ($person, $flag, now())"
                        " ON CONFLICT DO NOTHING", {"person": p, "flag": flag})
    return len(persons)


def unflag_persons(wh: Warehouse, persons: set[int], flag: str) -> int:
    """Lift a restriction or withdraw an objection; how many flags were removed."""
    if not persons:
        return 0
    if wh.flags is not None:
        return wh.flags.clear_flag(persons, flag)
    with wh.write_lock, wh.transaction() as cur:
        row = cur.execute("DELETE FROM person_flags WHERE flag = $flag"
                          " AND list_contains($persons, person_id)",
                          {"flag": flag, "persons": sorted(persons)}).fetchone()
    return int(row[0]) if row else 0


def is_flagged(wh: Warehouse, persons: set[int], flag: str) -> bool:
    if not persons:
        return False
    wh.fresh_flags()
    return wh.con.cursor().execute(
        "SELECT count(*) FROM person_flags WHERE flag = $flag"
        " AND list_contains($persons, person_id)",
        {"flag": flag, "persons": sorted(persons)}).fetchone()[0] > 0  # type: ignore[index]


def rectify_traits(wh: Warehouse, persons: set[int], traits: dict[str, Any]) -> int:
    """Merge corrected traits into the persons' profiles (``null`` removes a trait). With
    ``AAP_META_URL`` the rectification is recorded on the shared store, and every
    warehouse merges it into its own profiles (:mod:`aap.store.rectifications`)."""
    if not persons:
        return 0
    if wh.rectifications is not None:
        return wh.rectifications.rectify(persons, traits)
    with wh.write_lock, wh.transaction() as cur:
        row = cur.execute(
            "UPDATE persons SET traits = json_merge_patch(coalesce(traits, '{}'), $traits)"
            " WHERE list_contains($persons, person_id)",
            {"traits": json.dumps(traits), "persons": sorted(persons)}).fetchone()
    rewrite_tables(wh, persons)  # publishing: their published profiles as they are now
    return int(row[0]) if row else 0
