"""Ordered funnels of persons computed over sorted arrays (numpy), the common case.

The SQL compiler (:mod:`aap.query.funnel`) chains ASOF joins, each sorting its inputs
again. Here the step events are read once, sorted by (person, time), and every ASOF
step is one ``searchsorted`` on integer keys ``rank(person) * span + (t - t_min)``
(exact: microseconds, no floating point), which keep a person's events together and in
time order. The rule and the results are the same as the SQL's (the property tests
compare both with the reference): a chain starts at every step-1 event; step k+1 is the
earliest event strictly after step k; the level is the first step missing or later
than the window; a person's best chain is the deepest, then the earliest.

Used for ``order: ordered``, ``aggregate_by: person``, no exclusions and no breakdown;
``run`` returns None when the keys would not fit in 64 bits (the SQL then runs).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np

from aap.query.common import Context, SQLBuilder

_NONE = np.int64(-1)
MAX_KEY = 2 ** 62
"""Keys ``rank(person) * span + (t - t_min)`` stay below this (int64 with room)."""


def _read(ctx: Context, b: SQLBuilder, q: Any, src: str, where: str, matches: list[str]
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """(group, person, time in µs) of the events that are steps, and each step's group."""
    names = [s.event for s in q.steps]
    if ctx.cached_files is None or any(x is None for x in names) or \
            any(s.filters for s in q.steps):
        parts = [f"SELECT {i}::UTINYINT AS step, e.person_id AS pid, epoch_us(e.timestamp)"
                 f" AS t FROM {src} WHERE {where} AND {m}" for i, m in enumerate(matches)]
        res = b.run_numpy(ctx, " UNION ALL ".join(parts))
        return res["step"], res["pid"], res["t"], list(range(len(matches)))
    # steps by name only: one read of the cache, by the events' numbers, and of the rest;
    # a group per distinct name
    distinct = sorted(set(names))
    numbers = dict(b.run(ctx, "SELECT name, code FROM query_cache_names WHERE"
                              f" list_contains({b.p(distinct)}, name)"))
    of_code = np.zeros(max(numbers.values(), default=0) + 1, dtype=np.int8)
    for name, code in numbers.items():
        of_code[code] = distinct.index(name)
    files = ", ".join(map(str, ctx.cached_files)) or "NULL"
    codes = ", ".join(map(str, numbers.values())) or "NULL"
    cached = b.run_numpy(ctx, f"SELECT e.event_code AS u, e.person_id AS pid,"
                              f" epoch_us(e.timestamp) AS t FROM {_on(src, 'query_cache')}"
                              f" WHERE e.file_no IN ({files}) AND e.event_code IN ({codes})"
                              f" AND {where}")
    which = " ".join(f"WHEN {b.p(x)} THEN {i}" for i, x in enumerate(distinct))
    live = b.run_numpy(ctx, f"SELECT CASE e.event {which} END::TINYINT AS u, e.person_id AS pid,"
                            f" epoch_us(e.timestamp) AS t FROM {_on(src, 'events_live')}"
                            f" WHERE list_contains({b.p(distinct)}, e.event) AND {where}")
    return (np.concatenate([of_code[cached["u"]], live["u"]]),
            np.concatenate([cached["pid"], live["pid"]]),
            np.concatenate([cached["t"], live["t"]]), [distinct.index(x) for x in names])


def _on(src: str, table: str) -> str:
    assert src.startswith("events e")
    return table + src[len("events"):]


def counts_and_medians(ctx: Context, b: SQLBuilder, q: Any, src: str, where: str,
                       matches: list[str], window: timedelta
                       ) -> tuple[list[int], list[float | None]] | None:
    n = len(matches)
    group, pid, t, group_of = _read(ctx, b, q, src, where, matches)
    if not len(t) or not (group == group_of[0]).any():
        return [0] * n, [None] * (n - 1)
    t_min = int(t.min())
    span = int(t.max()) - t_min + 1
    rank = _person_ranks(pid, span)
    if rank is None:
        return None
    key = rank.astype(np.int64) * span + (t - t_min)
    # each group's keys in (person, time) order; steps of the same event share them
    sorted_keys = {g: np.sort(key[group == g]) for g in set(group_of)}
    chain = _chains([sorted_keys[g] for g in group_of], span)
    k0 = chain[0]
    w = int(window / timedelta(microseconds=1))
    level = np.full(len(k0), n, dtype=np.int64)
    for i in range(n - 1, 0, -1):
        fail = (chain[i] == _NONE) | (chain[i] - k0 > w)
        level[fail] = i
    best = _best_chains(k0 // span, level)
    best_level = level[best]
    counts = [int((best_level >= k + 1).sum()) for k in range(n)]
    medians: list[float | None] = []
    for k in range(1, n):
        sel = best[best_level >= k + 1]
        if not len(sel):
            medians.append(None)
            continue
        diffs = (chain[k][sel] - chain[k - 1][sel]).astype(np.float64) / 1e6
        medians.append(float(np.quantile(diffs, 0.5)))
    return counts, medians


def _person_ranks(pid: np.ndarray, span: int) -> np.ndarray | None:
    """Each event's person as a small number (the ids as they are when they fit), such
    that ``rank * span`` fits the keys; None when it cannot."""
    p_min = int(pid.min())
    if (int(pid.max()) - p_min + 1) * span < MAX_KEY:  # person ids as they are
        return pid - p_min
    persons, rank = np.unique(pid, return_inverse=True)
    if len(persons) * span >= MAX_KEY:
        return None
    return rank


def _chains(keys: list[np.ndarray], span: int) -> list[np.ndarray]:
    """From every step-1 key, the earliest key of each next step strictly after the one
    before, of the same person (:data:`_NONE` where there is none)."""
    k0 = keys[0]
    r0 = k0 // span
    chain = [k0]
    cur = k0
    for ki in keys[1:]:
        if not len(ki):
            nxt = np.full(len(k0), _NONE)
        else:
            idx = np.searchsorted(ki, cur, side="right")
            cand = ki[np.minimum(idx, len(ki) - 1)]
            ok = (cur != _NONE) & (idx < len(ki)) & (cand // span == r0)
            nxt = np.where(ok, cand, _NONE)
        chain.append(nxt)
        cur = nxt
    return chain


def _best_chains(r0: np.ndarray, level: np.ndarray) -> np.ndarray:
    """The row of each person's best chain: the deepest, then the earliest start (rows
    are in (person, start) order)."""
    starts = np.flatnonzero(np.r_[True, r0[1:] != r0[:-1]])
    seg_max = np.maximum.reduceat(level, starts)
    seg_len = np.diff(np.r_[starts, len(r0)])
    best_rows = np.flatnonzero(level == np.repeat(seg_max, seg_len))
    first = np.r_[True, r0[best_rows[1:]] != r0[best_rows[:-1]]]
    return best_rows[first]


def applies(q: Any) -> bool:
    return (q.order == "ordered" and q.aggregate_by == "person" and not q.exclusions
            and not q.breakdown)
