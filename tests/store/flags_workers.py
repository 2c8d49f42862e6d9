"""What tests/store/test_flags.py reads, and what its spawned processes run (kept free of
pytest's imports so that they start quickly)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from aap.store import flags
from aap.store.flags import FLAGS, Row, SharedFlags, _ms
from aap.store.warehouse import Warehouse

PERSONS = 400
ROUNDS = 300


def local(wh: Warehouse) -> set[Row]:
    """The warehouse's ``person_flags`` (as the store keeps them: times in ms)."""
    return {(int(p), str(f), _ms(t)) for p, f, t in wh.con.cursor().execute(
        "SELECT person_id, flag, set_at FROM person_flags").fetchall()}


def shared(store: SharedFlags) -> set[Row]:
    return set(store.rows())


def write(data_dir: str, url: str, seed: int, start: Any, result: Any) -> None:
    """Set flags of three random persons a round; in the first half, some rounds lift
    them instead. Says how many rows it added."""
    store = SharedFlags(Path(data_dir), url)
    rng = random.Random(seed)
    draw = flags.next_flag_change

    def slow_commit(tx: Any) -> int:
        """The number drawn, then a few ms before the commit (a slow network): a number
        drawn out of commit order would be seen late by the mirror."""
        n = draw(tx)
        time.sleep(rng.uniform(0, 0.004))
        return n

    flags.next_flag_change = slow_commit  # type: ignore[attr-defined]
    start.wait(timeout=120)
    added = 0
    for i in range(ROUNDS):
        persons = rng.sample(range(1, PERSONS + 1), 3)
        flag = rng.choice(FLAGS)
        if i < ROUNDS // 2 and rng.random() < 0.3:
            store.clear_flag(persons, flag)
        else:
            added += store.set_flag(persons, flag)
    result.put(("writer", added))


def follow(data_dir: str, url: str, start: Any, stop: Any, result: Any) -> None:
    """Mirror the flags into a warehouse of its own, again and again until told to stop,
    then once more; says what the mirror holds and how many reads found changes."""
    wh = Warehouse(Path(data_dir) / "mirror")
    mirror = flags.mirror(wh, SharedFlags(Path(data_dir), url))
    start.wait(timeout=120)
    while not stop.is_set():
        wh.fresh_flags()
    wh.fresh_flags()
    result.put((sorted(local(wh)), mirror.refreshes))
    wh.close()
