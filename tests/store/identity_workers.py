"""Chunks of identity events applied to the shared identities (:mod:`aap.store.identities`)
and to the plain in-memory rules, for tests/store/test_identities.py; and what its
spawned processes run (kept free of pytest's imports so that they start quickly).

An event is ``(type, user key, anonymous key, previous key)``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from aap.process.identity import Identities
from aap.process.steps import assign_persons
from aap.store.identities import Applied, SharedIdentities

Ev = tuple[str, int | None, int | None, int | None]
Chunk = Sequence[Ev]


def keys_of(events: Iterable[Ev]) -> set[int]:
    return {k for e in events for k in e[1:] if k is not None}


def _columns(chunk: Chunk) -> tuple[list[str], list[int | None], list[int | None],
                                   list[int | None]]:
    return ([e[0] for e in chunk], [e[1] for e in chunk], [e[2] for e in chunk],
            [e[3] for e in chunk])


def apply_chunk(store: SharedIdentities, chunk: Chunk, runs: list[int] | None = None
                ) -> Applied[list[int]]:
    """The chunk through the identity rules on the shared store, as the processor's
    step runs it (:func:`aap.process.steps.shared_identity`); each run of the rules
    (a transaction refused runs them again) is counted in ``runs``."""
    types, users, anons, prev = _columns(chunk)

    def run(ids: Identities) -> list[int]:
        if runs is not None:
            runs.append(1)
        return assign_persons(types, users, anons, prev, ids)

    return store.apply(keys_of(chunk), run)


def serial(chunks: Iterable[Chunk]) -> tuple[Identities, list[int]]:
    """The plain in-memory rules over the chunks in this order: the identities and each
    event's person."""
    ids = Identities()
    persons: list[int] = []
    for chunk in chunks:
        persons.extend(assign_persons(*_columns(chunk), ids))
    return ids, persons


def partition(person_of: dict[int, int]) -> set[frozenset[int]]:
    """Keys grouped by their person."""
    groups: dict[int, set[int]] = {}
    for key, p in person_of.items():
        groups.setdefault(p, set()).add(key)
    return {frozenset(g) for g in groups.values()}


def serial_partition(chunks: Iterable[Chunk]) -> set[frozenset[int]]:
    ids, _ = serial(chunks)
    return partition({k: ids.resolve(p) for k, p in ids.ids.items()})


def run_half(data_dir: str, url: str, chunks: list[list[Ev]], barrier: Any, result: Any
             ) -> None:
    """One processor's half: at each round, at the same moment as the other process,
    apply the round's chunk; hand out each event's person (as the chunk gave it) and
    every key's person as the store resolves it at the end."""
    store = SharedIdentities(Path(data_dir), url)
    persons: list[int] = []
    runs: list[int] = []
    for chunk in chunks:
        barrier.wait(timeout=120)
        persons.extend(apply_chunk(store, chunk, runs).result)
    barrier.wait(timeout=120)  # both are done: the final view
    keys = keys_of(e for c in chunks for e in c)
    result.put((persons, store.persons_of(keys), len(runs)))
    store.close()
