"""Paths from the session start over arrays read in storage order, without a sort.

The query cache stores each tier file's rows ordered by (``session_hash``, timestamp,
event): read in that order, every session of a file comes as one run of rows in time
order, events at the same instant by name — the order paths are read in. So the
cached rows need no sort; only the hot and uncached rows (a few days) are sorted, and
the sessions that have rows in more than one file (across midnight, or into the hot
tier) are gathered and sorted on their own. Then, per run: collapse repeated steps,
keep the first ``depth``, and count the paths — all vectorised (numpy).

The order is checked on the rows read (a file's rows must come in storage order); if
it is not there, the rows are sorted first, so the answer never depends on it.
Used for event paths without an anchor event when the cache needs nothing applied at
query time (:class:`aap.query.snapshot.Views`); ``paths`` returns None otherwise and
the SQL runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aap.query.common import Context, SQLBuilder, needs_persons

MAX_CODES = 2 ** 62
# up to this many possible paths, counted with one bincount; beyond, by sorting
BINCOUNT_MAX_CODES = 1 << 24


def _in_order(f: np.ndarray, s: np.ndarray, t: np.ndarray, c: np.ndarray) -> bool:
    """Each file's rows are in (session, time, step) order."""
    if len(s) < 2:
        return True
    same_file = f[1:] == f[:-1]
    ds, dt = s[1:], t[1:]
    up = (ds > s[:-1]) | ((ds == s[:-1]) & ((dt > t[:-1]) | ((dt == t[:-1]) & (c[1:] >= c[:-1]))))
    return bool(np.all(up | ~same_file))


def _run_starts(seg: np.ndarray, s: np.ndarray) -> np.ndarray:
    new = np.empty(len(s), dtype=bool)
    if len(s):
        new[0] = True
        new[1:] = (s[1:] != s[:-1]) | (seg[1:] != seg[:-1])
    return new


def _first_steps(c: np.ndarray, new: np.ndarray, drop: np.ndarray | None, depth: int,
                 base: int) -> np.ndarray:
    """Per run (not dropped): its first ``depth`` steps after collapsing repeats, as one
    number in base ``base`` (step + 1 per digit, 0 where the path ended)."""
    # a row is kept if it starts a run or changes step
    keep = new.copy()
    keep[1:] |= c[1:] != c[:-1]
    if drop is not None:
        keep &= ~drop
    kept = np.flatnonzero(keep)
    starts = np.flatnonzero(new[kept])  # positions among the kept rows
    lengths = np.diff(starts, append=len(kept))
    codes = (c[kept[starts]].astype(np.int64) + 1) * base ** (depth - 1)
    for j in range(1, depth):
        more = np.flatnonzero(lengths > j)
        if not len(more):
            break
        codes[more] += (c[kept[starts[more] + j]].astype(np.int64) + 1) * base ** (depth - 1 - j)
    return codes


def paths(ctx: Context, b: SQLBuilder, where: str, names: list[str], depth: int,
          limit: int) -> list[tuple[list[str], int]] | None:
    if ctx.cached_files is None:
        return None
    base = len(names) + 1
    if base ** depth >= MAX_CODES:
        return None
    read = _read(ctx, b, where, names)
    if read is None:
        return None  # an event without a name
    groups = _gather_split_sessions(read)
    codes = np.concatenate([_first_steps(gc, new, drop, depth, base)
                            for gc, new, drop in groups])
    if not len(codes):
        return []
    found, counts = _top_counts(codes, base ** depth, limit)
    out = [(_decode(x, names, depth, base), int(n))
           for x, n in zip(found.tolist(), counts.tolist(), strict=True)]
    out.sort(key=lambda pn: (-pn[1], pn[0]))
    return out[:limit]


_Group = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # session, time, step, run start


def _read(ctx: Context, b: SQLBuilder, where: str, names: list[str]) -> list[_Group] | None:
    """The cached rows (in storage order, or sorted when they are not) and the live rows
    (sorted), each with its run starts; None when an event has no name."""
    literals = ", ".join("'" + n.replace("'", "''") + "'" for n in names)
    code = f"coalesce(enum_code(CAST(e.event AS ENUM({literals}))), -1)::SMALLINT"
    files = ", ".join(map(str, ctx.cached_files or ())) or "NULL"
    cached = b.run_numpy(ctx, f"SELECT e.file_no AS f, e.session_hash AS s,"
                              f" epoch_us(e.timestamp) AS t, coalesce(e.event_code, 0) AS c"
                              f" FROM query_cache e WHERE e.file_no IN ({files}) AND {where}")
    live = b.run_numpy(ctx, f"SELECT hash(e.session_id) AS s, epoch_us(e.timestamp) AS t,"
                            f" {code} AS c FROM events_live e WHERE {where} ORDER BY s, t, c")
    step_of = _step_numbers(ctx, names)
    f = cached["f"].astype(np.int32, copy=False)
    s, t, c = cached["s"], cached["t"], step_of[cached["c"]]
    del cached
    if (c < 0).any() or (live["c"] < 0).any():
        return None
    if not _in_order(f, s, t, c):
        order = np.lexsort((c, t, s, f))
        f, s, t, c = f[order], s[order], t[order], c[order]
    return [(s, t, c, _run_starts(f, s)),
            (live["s"], live["t"], live["c"], _run_starts(np.zeros(len(live["s"]), np.int8),
                                                          live["s"]))]


def _step_numbers(ctx: Context, names: list[str]) -> np.ndarray:
    """The cache's event numbers → this query's step numbers (names in sorted order)."""
    numbers = ctx.cur.execute("SELECT code, name FROM query_cache_names").fetchall()
    step_of = np.full(max((n for n, _ in numbers), default=0) + 1, -1, dtype=np.int16)
    rank = {name: i for i, name in enumerate(names)}
    for n, name in numbers:
        step_of[n] = rank.get(name, -1)
    return step_of


def _gather_split_sessions(
        groups: list[_Group]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Sessions with runs in more than one file (or in the hot tier too) are taken out of
    their groups (whole runs) and sorted together as a third group. Per group: its steps,
    its run starts and the rows taken out (None: none)."""
    heads = [np.flatnonzero(new) for _, _, _, new in groups]
    by_session = np.sort(np.concatenate([g[0][h] for g, h in zip(groups, heads, strict=True)]))
    split = by_session[1:][by_session[1:] == by_session[:-1]]
    drops: list[np.ndarray | None] = [None, None]
    if len(split):
        parts = []
        for i, ((gs, gt, gc, _), h) in enumerate(zip(groups, heads, strict=True)):
            first = h[np.isin(gs[h], split)]
            if not len(first):
                continue
            rows = _whole_runs(h, first, len(gs))
            drop = np.zeros(len(gs), dtype=bool)
            drop[rows] = True
            drops[i] = drop
            parts.append((gs[rows], gt[rows], gc[rows]))
        ss, st, sc = (np.concatenate(x) for x in zip(*parts, strict=True))
        order = np.lexsort((sc, st, ss))
        ss, sc = ss[order], sc[order]
        groups = [*groups, (ss, st, sc, _run_starts(np.zeros(len(ss), np.int8), ss))]
        drops.append(None)
    return [(gc, new, drop) for (_, _, gc, new), drop in zip(groups, drops, strict=True)]


def _whole_runs(heads: np.ndarray, first: np.ndarray, size: int) -> np.ndarray:
    """The rows of the runs starting at ``first`` (among the run starts ``heads`` of a
    group of ``size`` rows)."""
    ends = np.append(heads, size)[np.searchsorted(heads, first) + 1]
    lengths = ends - first
    return np.repeat(first - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())


def _top_counts(codes: np.ndarray, space: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct codes and their counts, only those that can be in the top ``limit``."""
    if space <= BINCOUNT_MAX_CODES:
        counts = np.bincount(codes)
        found = np.flatnonzero(counts)
        counts = counts[found]
    else:
        found, counts = np.unique(codes, return_counts=True)
    if len(found) > limit:
        least = np.partition(counts, len(counts) - limit)[len(counts) - limit]
        found, counts = found[counts >= least], counts[counts >= least]
    return found, counts


def _decode(x: int, names: list[str], depth: int, base: int) -> list[str]:
    path = []
    for j in range(depth):
        d = (x // base ** (depth - 1 - j)) % base
        if d == 0:
            break
        path.append(names[d - 1])
    return path


def applies(q: Any) -> bool:
    return (q.path_type != "page" and q.start_event is None and q.end_event is None
            and not needs_persons(q.filters))
