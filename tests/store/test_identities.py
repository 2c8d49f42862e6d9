"""Identities and merges shared by several processors (:mod:`aap.store.identities`): the
identity rules of :mod:`aap.process.identity`, run chunk by chunk on the shared store in
one transaction each, give the persons the plain in-memory rules give; a chunk applied
again gives the same persons; and on PostgreSQL two processes applying the two halves of
the same identities at the same moment end with one person per identity, exactly as a
serial run.

What is asserted about order: a chunk is applied atomically, so the result is that of
*some* serial order of the chunks (each process's chunks in its own order). With the
rules where order matters (an anonymousId already identified as another user is not
merged: the shared device), the PostgreSQL property checks that the partition of keys is
one of the partitions the serial orders give; the workload of the two-process test is one
whose partition is the same in every order, and the test checks that too.

The PostgreSQL cases start a server (tests/pg.py) and are marked ``slow``; the SQLite
cases run in ``scripts/test --fast``."""

from __future__ import annotations

import itertools
import multiprocessing
import threading
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aap.store.identities import SharedIdentities
from tests.conftest import examples
from tests.pg import Cluster
from tests.pg import fresh_database as _fresh
from tests.store import identity_workers as w
from tests.store.identity_workers import Chunk, Ev

USERS = [1, 2, 3]
ANONS = [11, 12, 13, 14]

event = st.one_of(
    st.tuples(st.just("track"), st.sampled_from([None, *USERS]), st.sampled_from([None, *ANONS]),
              st.none()).filter(lambda e: e[1] is not None or e[2] is not None),
    st.tuples(st.just("identify"), st.sampled_from(USERS), st.sampled_from(ANONS), st.none()),
    st.tuples(st.just("alias"), st.sampled_from(USERS), st.none(),
              st.sampled_from([*USERS, *ANONS])),
)
chunks = st.lists(st.lists(event, min_size=1, max_size=4), min_size=1, max_size=3)


def store_partition(store: SharedIdentities, events: list[Ev]) -> set[frozenset[int]]:
    return w.partition(store.persons_of(w.keys_of(events)))


def interleavings(a: list[Chunk], b: list[Chunk]) -> list[list[Chunk]]:
    """Every order of the chunks that keeps each process's chunks in its own order."""
    out = []
    for picks in itertools.combinations(range(len(a) + len(b)), len(a)):
        ia, ib = iter(a), iter(b)
        out.append([next(ia) if i in picks else next(ib) for i in range(len(a) + len(b))])
    return out


def assert_flat(rows: list[tuple[int, int]]) -> None:
    """No override leads to a person that is itself merged (one lookup resolves)."""
    olds = {old for old, _ in rows}
    assert not [(o, n) for o, n in rows if n in olds]


# -- on both engines --

def test_chunks_give_the_persons_of_the_plain_rules(tmp_path: Path, meta_url: str) -> None:
    a0, alice, bob, a1 = 11, 1, 2, 12
    chunks: list[Chunk] = [
        [("track", None, a0, None), ("track", bob, None, None), ("track", alice, None, None)],
        [("identify", alice, a0, None), ("track", None, a1, None)],
        [("identify", bob, a0, None),  # Bob logs in on Alice's device: no merge
         ("alias", alice, None, a1)],  # alias: a1's person joins Alice's
    ]
    store = SharedIdentities(tmp_path, meta_url)
    persons = [p for c in chunks for p in w.apply_chunk(store, c).result]
    events = [e for c in chunks for e in c]
    assert store_partition(store, events) == w.serial_partition(chunks) == {
        frozenset({a0, alice, a1}), frozenset({bob})}
    now = store.persons_of(w.keys_of(events))
    assert SharedIdentities(tmp_path, meta_url).persons_of(now) == now  # another instance
    # every event's person, resolved now, is the person of the id it came by
    by = [e[1] if e[1] is not None else e[2] for e in events]
    assert [_resolver(store, persons)[p] for p in persons] == [now[k] for k in by]  # type: ignore[index]
    again = w.apply_chunk(store, [("track", None, a0, None)])
    assert again.result == [now[a0]] and not again.changes.new_ids
    assert persons[0] != now[a0]  # a0's first person was merged into Alice's …
    assert again.mirror.overrides == {persons[0]: now[a0]}  # … and the warehouse learns it


def test_a_chunk_applied_again_gives_the_same_persons(tmp_path: Path, meta_url: str) -> None:
    """A processor that crashed after the store's commit and before its warehouse's
    applies the chunk again: same persons (as resolved), nothing new in the store, and
    the warehouse is given the same rows."""
    chunk: Chunk = [("track", 2, None, None), ("track", None, 11, None),
                    ("identify", 2, 11, None), ("track", None, 12, None),
                    ("alias", 2, None, 12), ("identify", 1, 13, None)]
    store = SharedIdentities(tmp_path, meta_url)
    first = w.apply_chunk(store, chunk)
    second = w.apply_chunk(store, chunk)
    resolve = store.persons_of(w.keys_of(chunk))
    merged = {**first.changes.overrides}
    assert [merged.get(p, p) for p in first.result] == second.result
    assert second.changes.new_ids == {} and second.changes.overrides == {}
    assert second.mirror.new_ids == first.mirror.new_ids
    assert second.mirror.overrides == first.mirror.overrides
    assert second.mirror.identified == {resolve[2], resolve[1]}
    assert w.partition(resolve) == w.serial_partition([chunk])


def test_merges_are_flattened_and_survive_a_reopen(tmp_path: Path, meta_url: str) -> None:
    store = SharedIdentities(tmp_path, meta_url)
    w.apply_chunk(store, [("track", None, 11, None), ("track", None, 12, None),
                          ("track", None, 13, None)])
    w.apply_chunk(store, [("alias", 12, None, 11)])  # 11's person → 12's
    w.apply_chunk(store, [("alias", 13, None, 12)])  # 12's (and so 11's) → 13's
    store.close()
    again = SharedIdentities(tmp_path, meta_url)
    persons = again.persons_of([11, 12, 13])
    assert len(set(persons.values())) == 1
    applied = w.apply_chunk(again, [("track", None, 11, None)])
    assert applied.result == [persons[13]]
    assert set(applied.mirror.overrides.values()) == {persons[13]}


def test_new_persons_do_not_reuse_the_warehouses_numbers(tmp_path: Path, meta_url: str
                                                         ) -> None:
    store = SharedIdentities(tmp_path, meta_url)
    store.ensure_above(500)
    store.ensure_above(10)  # never goes down
    [p] = w.apply_chunk(store, [("track", None, 11, None)]).result
    assert p >= 500


def test_forgotten_ids_come_back_as_new_persons(tmp_path: Path, meta_url: str) -> None:
    store = SharedIdentities(tmp_path, meta_url)
    [p] = w.apply_chunk(store, [("identify", 1, 11, None)]).result[:1]
    assert store.forget([1, 11]) == 2
    assert store.persons_of([1, 11]) == {}
    [q] = w.apply_chunk(store, [("track", None, 11, None)]).result
    assert q != p


# more than the profile's count on CI would cost a store per example: 200 is plenty for
# chunks of at most 4 events over 7 ids
@settings(max_examples=examples(200), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=chunks, b=chunks, order=st.randoms(use_true_random=False))
def test_any_interleaving_gives_the_serial_runs_persons(tmp_path_factory: pytest.TempPathFactory,
                                                       a: list[Chunk], b: list[Chunk],
                                                       order: object) -> None:
    """SQLite (its writers take turns): the chunks of two processes, interleaved in any
    order, give exactly what the plain rules give over the chunks in that order — the
    partition, and each event's person (as resolved now)."""
    picks = [*(["a"] * len(a)), *(["b"] * len(b))]
    order.shuffle(picks)  # type: ignore[attr-defined]
    ia, ib = iter(a), iter(b)
    seq = [next(ia) if x == "a" else next(ib) for x in picks]
    store = SharedIdentities(tmp_path_factory.mktemp("ids"), "")
    persons = [p for c in seq for p in w.apply_chunk(store, c).result]
    events = [e for c in seq for e in c]
    ref, ref_persons = w.serial(seq)
    assert store_partition(store, events) == w.serial_partition(seq)
    # the same events share a person in both (numbers differ: compare by the keys')
    now = store.persons_of(w.keys_of(events))
    rename = {now[k]: ref.resolve(p) for k, p in ref.ids.items()}
    resolved_now = _resolver(store, persons)
    assert [rename[resolved_now[p]] for p in persons] == [ref.resolve(p) for p in ref_persons]
    store.close()


def _resolver(store: SharedIdentities, persons: list[int]) -> dict[int, int]:
    """Each person number as the store's overrides resolve it now."""
    rows = dict(store._db.fetchall("SELECT old_person_id, person_id FROM identity_overrides"))
    return {p: rows.get(p, p) for p in persons}


# -- PostgreSQL: processors at the same moment --

def _pg_state(url: str) -> tuple[dict[int, int], list[tuple[int, int]]]:
    with psycopg.connect(url) as con:
        ids = dict(con.execute("SELECT id_key, person_id FROM identity_ids").fetchall())
        over = con.execute("SELECT old_person_id, person_id FROM identity_overrides").fetchall()
    return ids, over


@pytest.mark.slow
def test_two_processes_see_the_two_halves_of_identities_at_once(tmp_path: Path, pg: Cluster
                                                                 ) -> None:
    """Process A sees identify(U_i, X_i); process B sees track(X_i) and identify(U_i, Y_i)
    (in either order). Users V_i, W_i, T_i are persons of their own at first; A sees
    alias(W_i ← V_i), B alias(T_i ← W_i): merges of the same person at once. Both apply
    the chunks of the same identities at the same moment (a barrier per round). At the end
    {U_i, X_i, Y_i} is one person and {V_i, W_i, T_i} another, in both processes' view,
    every event of both resolves to its person, no two share one, the overrides are flat,
    and the partition is the serial run's (either order)."""
    _fresh(pg.url)
    store = SharedIdentities(tmp_path, pg.url)
    n, per = 600, 20
    U, X, Y, V, W, T = (k * 1_000_000 for k in range(1, 7))
    seed: list[Ev] = [("track", k + i, None, None) for i in range(n) for k in (V, W, T)]
    w.apply_chunk(store, seed)
    store.close()
    half_a: list[list[Ev]] = []
    half_b: list[list[Ev]] = []
    for r in range(n // per):
        ids = range(r * per, (r + 1) * per)
        half_a.append([("identify", U + i, X + i, None) for i in ids])
        chunk_b: list[Ev] = []
        for i in ids:
            pair: list[Ev] = [("track", None, X + i, None), ("identify", U + i, Y + i, None)]
            chunk_b.extend(pair if i % 2 else pair[::-1])
        half_b.append(chunk_b)
        # the merges in rounds of their own (no new key in them: no unique index to meet)
        half_a.append([("alias", W + i, None, V + i) for i in ids])
        half_b.append([("alias", T + i, None, W + i) for i in ids])
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    result = ctx.Queue()
    procs = [ctx.Process(target=w.run_half, args=(str(tmp_path), pg.url, half, barrier, result))
             for half in (half_a, half_b)]
    for p in procs:
        p.start()
    try:
        got = [result.get(timeout=300), result.get(timeout=300)]
    finally:
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    ids, over = _pg_state(pg.url)
    assert_flat(over)
    merged = dict(over)
    resolve = {k: merged.get(p, p) for k, p in ids.items()}
    assert len(ids) == 6 * n
    groups = [{resolve[k + i] for k in keys} for i in range(n) for keys in ((U, X, Y), (V, W, T))]
    assert all(len(g) == 1 for g in groups)
    assert len({next(iter(g)) for g in groups}) == 2 * n  # no two share a person
    runs = sum(g[2] for g in got)
    print(f"chunks: {len(half_a) + len(half_b)}, runs of the rules: {runs}")
    for (persons, view, _), half in zip(sorted(got, key=lambda g: len(g[0])), (half_a, half_b),
                                        strict=True):
        events = [e for c in half for e in c]
        assert view == {k: resolve[k] for k in w.keys_of(events)}  # each process's view
        for person, e in zip(persons, events, strict=True):  # every event, resolved now
            key = e[1] if e[1] is not None else e[2]
            assert merged.get(person, person) == resolve[key]  # type: ignore[index]
    expected = w.serial_partition([seed, *half_a, *half_b])
    assert expected == w.serial_partition([seed, *half_b, *half_a])
    assert w.partition(resolve) == expected


def _threads(url: str, halves: list[list[Chunk]], data: Path) -> list[list[int]]:
    """Two processors as threads (one connection each), each chunk at the same moment;
    returns each one's events' persons."""
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    persons: list[list[int]] = [[] for _ in halves]

    def run(n: int) -> None:
        half = halves[n]
        store = SharedIdentities(data, url)
        try:
            for i in range(max(len(h) for h in halves)):
                barrier.wait(timeout=60)
                if i < len(half):
                    persons[n].extend(w.apply_chunk(store, half[i]).result)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(halves))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return persons


@pytest.mark.slow
@settings(max_examples=examples(60), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=chunks, b=chunks)
def test_concurrent_chunks_give_the_partition_of_some_serial_order(
        tmp_path_factory: pytest.TempPathFactory, pg: Cluster, a: list[Chunk], b: list[Chunk]
) -> None:
    """Two processors applying their chunks at the same moment on PostgreSQL: the final
    partition of keys is that of one of the serial orders of the chunks (each
    processor's in its own order), the overrides are flat, and every event's person is
    now the person of the id it came by."""
    _fresh(pg.url)
    data = tmp_path_factory.mktemp("ids")
    SharedIdentities(data, pg.url).close()
    persons = _threads(pg.url, [a, b], data)
    ids, over = _pg_state(pg.url)
    assert_flat(over)
    merged = dict(over)
    resolve = {k: merged.get(p, p) for k, p in ids.items()}
    assert w.partition(resolve) in [w.serial_partition(order) for order in interleavings(a, b)]
    for got, half in zip(persons, (a, b), strict=True):
        events = [e for c in half for e in c]
        assert [merged.get(p, p) for p in got] == [
            resolve[e[1] if e[1] is not None else e[2]] for e in events]  # type: ignore[index]
