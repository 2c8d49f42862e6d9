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


def paths(ctx: Context, b: SQLBuilder, where: str, names: list[str], depth: int,
          limit: int) -> list[tuple[list[str], int]] | None:
    if ctx.cached_files is None:
        return None
    base = len(names) + 1
    if base ** depth >= MAX_CODES:
        return None
    literals = ", ".join("'" + n.replace("'", "''") + "'" for n in names)
    code = f"enum_code(CAST(e.event AS ENUM({literals})))::SMALLINT"
    files = ", ".join(map(str, ctx.cached_files)) or "NULL"
    cached = b.run_numpy(ctx, f"SELECT e.file_no AS f, e.session_hash AS s,"
                              f" epoch_us(e.timestamp) AS t, {code} AS c FROM query_cache e"
                              f" WHERE e.file_no IN ({files}) AND {where}")
    live = b.run_numpy(ctx, f"SELECT hash(e.session_id) AS s, epoch_us(e.timestamp) AS t,"
                            f" {code} AS c FROM events_live e WHERE {where} ORDER BY s, t, c")
    f = cached["f"].astype(np.int32, copy=False)
    s, t, c = cached["s"], cached["t"], cached["c"]
    if not _in_order(f, s, t, c):
        order = np.lexsort((c, t, s, f))
        f, s, t, c = f[order], s[order], t[order], c[order]
    seg = np.concatenate([f, np.full(len(live["s"]), -1, dtype=np.int32)])
    s = np.concatenate([s, live["s"]])
    t = np.concatenate([t, live["t"]])
    c = np.concatenate([c, live["c"]])
    if not len(s):
        return []
    new = _run_starts(seg, s)
    # sessions with rows in more than one file (or in the hot tier too): sorted apart
    heads = s[new]
    by_session = np.sort(heads)
    split = by_session[1:][by_session[1:] == by_session[:-1]]
    if len(split):
        m = np.isin(heads, split)[np.cumsum(new) - 1]  # rows of runs of those sessions
        order = np.lexsort((c[m], t[m], s[m]))
        keep = ~m
        seg = np.concatenate([seg[keep], np.full(len(order), -2, dtype=np.int32)])
        s = np.concatenate([s[keep], s[m][order]])
        c = np.concatenate([c[keep], c[m][order]])
        new = _run_starts(seg, s)
    # collapse repeated steps, then the first ``depth`` steps of every session
    keep = new.copy()
    keep[1:] |= c[1:] != c[:-1]
    idx = np.flatnonzero(keep)
    cc, cn = c[idx], new[idx]
    run = np.cumsum(cn) - 1
    starts = np.flatnonzero(cn)
    pos = np.arange(len(idx)) - starts[run]
    near = pos < depth
    run, pos, cc = run[near], pos[near], cc[near].astype(np.int64)
    codes = np.zeros(len(starts), dtype=np.int64)
    for j in range(depth):
        sel = pos == j
        codes[run[sel]] += (cc[sel] + 1) * base ** (depth - 1 - j)
    if base ** depth <= 1 << 24:
        counts = np.bincount(codes)
        found = np.flatnonzero(counts)
        counts = counts[found]
    else:
        found, counts = np.unique(codes, return_counts=True)
    if len(found) > limit:  # only paths that can be in the top ``limit``
        least = np.partition(counts, len(counts) - limit)[len(counts) - limit]
        found, counts = found[counts >= least], counts[counts >= least]
    out: list[tuple[list[str], int]] = []
    for x, n in zip(found.tolist(), counts.tolist(), strict=True):
        path = []
        for j in range(depth):
            d = (x // base ** (depth - 1 - j)) % base
            if d == 0:
                break
            path.append(names[d - 1])
        out.append((path, int(n)))
    out.sort(key=lambda pn: (-pn[1], pn[0]))
    return out[:limit]


def applies(q: Any) -> bool:
    return (q.path_type != "page" and q.start_event is None and q.end_event is None
            and not needs_persons(q.filters))
