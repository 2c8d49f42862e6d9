"""Funnels with the rule of ClickHouse's ``windowFunnel`` (which PostHog uses).

A person (or session, with ``aggregate_by: session``) reaches step k when some step-1
event is followed by events of steps 2..k, each strictly later than the one before, with
step k no later than ``window`` after that step-1 event, all inside the date range.

Compiled as chains of ASOF joins: from every step-1 event, the earliest step-2 event
strictly after it, then the earliest step-3 event strictly after that, … Taking the
earliest candidate at every step is optimal for a fixed start, so the chain's level is
the deepest step reached in the window, and a person's level is the best over their
chains. ``strict``: step k+1 must also be at the person's very next timestamp (no other
event in between). ``any``: from every event of any step, the steps that have an event
at or after it and within the window, in any order.

Exclusions: a chain is discarded when the exclusion event happens strictly after its
``from_step`` event and strictly before its ``to_step`` event (or, when the chain did not
reach ``to_step``, no later than the end of its window). A person or session with no
remaining chain is not counted. Times to convert come from the person's best chain (the
deepest; among those, the earliest start).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import msgspec

from aap.errors import BadRequest
from aap.query import funnel_arrays
from aap.query.common import (
    Context,
    SQLBuilder,
    base_where,
    date_range,
    event_match_sql,
    from_events,
    property_sql,
)
from aap.query.models import Funnel

OTHER = "\x00other"
_WINDOW = re.compile(r"^(\d{1,6})\s*(s|m|h|d|w)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_WINDOW_DAYS = 366


def parse_window(text: str) -> timedelta:
    m = _WINDOW.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise BadRequest(f"window {text!r}: use a positive number with s, m, h, d or w "
                         "(e.g. 7d)", code="invalid_window")
    seconds = int(m.group(1)) * _UNIT[m.group(2)]
    if seconds > MAX_WINDOW_DAYS * 86400:
        raise BadRequest(f"the window is at most {MAX_WINDOW_DAYS} days", code="invalid_window")
    return timedelta(seconds=seconds)


def _validate(q: Funnel) -> None:
    n = len(q.steps)
    for x in q.exclusions:
        to = n - 1 if x.to_step is None else x.to_step
        if not 0 <= x.from_step < to <= n - 1:
            raise BadRequest(f"exclusion {x.event}: need 0 <= from_step < to_step <= {n - 1}",
                             code="invalid_insight")
    if q.order == "any" and q.exclusions:
        raise BadRequest("exclusions need an ordered or strict funnel", code="invalid_insight")


def run(ctx: Context, q: Funnel) -> dict[str, Any]:
    _validate(q)
    window = parse_window(q.window)
    b = SQLBuilder()
    scan = _scan(b, ctx, q)
    if funnel_arrays.applies(q):
        got = funnel_arrays.counts_and_medians(ctx, b, q, scan.src, scan.where, scan.matches,
                                               window)
        if got is not None:
            return _result(q, _steps(q, (None, *got[0], *got[1])))
    w = b.p(window)
    ctes = [f"s{i} AS ({scan.step_events(m)})" for i, m in enumerate(scan.matches + scan.excl)]
    if q.order == "any":
        ctes += _any_order_chains(len(q.steps), w)
    else:
        ctes += _ordered_chains(q, scan, w)
        ctes += _exclusions(q, w)
    rows = b.run(ctx, _count_sql(b, q, ctes))
    if not q.breakdown:
        return _result(q, _steps(q, rows[0] if rows else None))
    return _with_breakdown(ctx, q, rows)


@dataclass(frozen=True)
class _Scan:
    """What every step's events are read from: the entity counted, the events' source
    and filter, the match of each step and exclusion, and the breakdown value."""

    entity: str
    src: str
    where: str
    matches: list[str]
    excl: list[str]
    bv: str

    def step_events(self, match: str) -> str:
        # Each step's events straight from the events (the cache is sorted by event, so
        # an event-name filter skips most of it), not from one shared scan flagged per step.
        return (f"SELECT {self.entity} AS pid, e.timestamp AS t, {self.bv} AS bv"
                f" FROM {self.src} WHERE {self.where} AND {match}")


def _scan(b: SQLBuilder, ctx: Context, q: Funnel) -> _Scan:
    rng = date_range(q, ctx.now)
    entity = "e.person_id" if q.aggregate_by == "person" else "e.session_id"
    extra = [f for s in q.steps for f in s.filters] + [f for x in q.exclusions for f in x.filters]
    src = from_events(q, extra, breakdown_type=q.breakdown_type)
    where = base_where(b, ctx, q, rng)
    matches = [event_match_sql(b, s.event, s.filters) for s in q.steps]
    excl = [event_match_sql(b, x.event, x.filters) for x in q.exclusions]
    bv = property_sql(q.breakdown, q.breakdown_type) if q.breakdown else "NULL"
    return _Scan(entity, src, where, matches, excl, bv)


def _any_order_chains(n: int, w: str) -> list[str]:
    """``any``: from every event of any step, the steps with an event at or after it and
    within the window."""
    ctes = ["c0 AS (" + " UNION ".join(f"SELECT pid, t AS t0, bv FROM s{i}"
                                       for i in range(n)) + ")"]
    for i in range(n):
        ctes.append(f"c{i + 1} AS (SELECT c{i}.*, s{i}.t AS x{i} FROM c{i} ASOF LEFT JOIN s{i}"
                    f" ON c{i}.pid = s{i}.pid AND s{i}.t >= c{i}.t0)")
    level = " + ".join(f"(x{i} IS NOT NULL AND x{i} <= t0 + {w})::INTEGER" for i in range(n))
    ctes.append(f"chains AS (SELECT pid, bv, t0, {level} AS level,"
                f" {', '.join(f'NULL::TIMESTAMP AS t{i}' for i in range(1, n))} FROM c{n})")
    return ctes


def _ordered_chains(q: Funnel, scan: _Scan, w: str) -> list[str]:
    """``ordered`` and ``strict``: from every step-1 event, the earliest event of each next
    step strictly after the one before (``strict``: at the person's very next timestamp);
    ``lv`` holds each chain with its level."""
    n = len(q.steps)
    ctes = ["c0 AS (SELECT pid, bv, t AS t0 FROM s0)"]
    if q.order == "strict":
        ctes.append(f"allts AS (SELECT DISTINCT {scan.entity} AS pid, e.timestamp AS t"
                    f" FROM {scan.src} WHERE {scan.where}),"
                    " nxt AS (SELECT pid, t, lead(t) OVER (PARTITION BY pid ORDER BY t) AS tn"
                    " FROM allts)")
    for i in range(1, n):
        prev = f"t{i - 1}"
        if q.order == "strict":
            ctes.append(f"a{i} AS (SELECT c{i - 1}.*, s{i}.t AS u{i} FROM c{i - 1} ASOF LEFT JOIN"
                        f" s{i} ON c{i - 1}.pid = s{i}.pid AND s{i}.t > c{i - 1}.{prev})")
            ctes.append(f"c{i} AS (SELECT a{i}.* EXCLUDE (u{i}), CASE WHEN u{i} = nxt.tn"
                        f" THEN u{i} END AS t{i} FROM a{i} LEFT JOIN nxt"
                        f" ON nxt.pid = a{i}.pid AND nxt.t = a{i}.{prev})")
        else:
            ctes.append(f"c{i} AS (SELECT c{i - 1}.*, s{i}.t AS t{i} FROM c{i - 1} ASOF LEFT JOIN"
                        f" s{i} ON c{i - 1}.pid = s{i}.pid AND s{i}.t > c{i - 1}.{prev})")
    level = "CASE " + " ".join(
        f"WHEN t{i} IS NULL OR t{i} > t0 + {w} THEN {i}" for i in range(1, n)) + f" ELSE {n} END"
    ctes.append(f"lv AS (SELECT *, {level} AS level FROM c{n - 1})")
    return ctes


def _exclusions(q: Funnel, w: str) -> list[str]:
    """The chains of ``lv`` left after each exclusion, as ``chains``."""
    n = len(q.steps)
    ctes = []
    last = "lv"
    for j, x in enumerate(q.exclusions):
        k = n + j
        to = n - 1 if x.to_step is None else x.to_step
        fr = x.from_step
        ctes.append(f"x{j} AS (SELECT {last}.*, s{k}.t AS xt{j} FROM {last} ASOF LEFT JOIN s{k}"
                    f" ON {last}.pid = s{k}.pid AND s{k}.t > {last}.t{fr})")
        ctes.append(f"y{j} AS (SELECT * EXCLUDE (xt{j}) FROM x{j} WHERE NOT ("
                    f"level > {fr} AND xt{j} IS NOT NULL AND CASE WHEN level > {to}"
                    f" THEN xt{j} < t{to} ELSE xt{j} <= t0 + {w} END))")
        last = f"y{j}"
    ctes.append(f"chains AS (SELECT * FROM {last})")
    return ctes


def _count_sql(b: SQLBuilder, q: Funnel, ctes: list[str]) -> str:
    """The best chain per entity (and breakdown value), then per breakdown value the
    count at each step and the median time from each step to the next."""
    n = len(q.steps)
    key = "level::BIGINT * 100000000000000000 - epoch_us(t0)"
    times = ", ".join(f"t{i}" for i in range(n))
    top = ("top AS (SELECT bv FROM chains GROUP BY bv ORDER BY count(DISTINCT pid) DESC,"
           f" bv NULLS LAST LIMIT {b.p(q.breakdown_limit)})" if q.breakdown else
           "top AS (SELECT NULL AS bv)")
    ctes = [*ctes, top]
    mark = (f"CASE WHEN bv IS NULL OR bv IN (SELECT bv FROM top) THEN bv ELSE {b.p(OTHER)} END"
            if q.breakdown else "NULL")
    ctes.append(f"best AS (SELECT pid, {mark} AS bv, max(level) AS level,"
                f" arg_max(struct_pack({times}), {key}) AS ts FROM chains GROUP BY ALL)")
    counts = ", ".join(f"count(*) FILTER (WHERE level >= {k + 1})" for k in range(n))
    medians = ", ".join(
        f"quantile_cont(epoch(ts.t{k}) - epoch(ts.t{k - 1}), 0.5) FILTER (WHERE level >= {k + 1})"
        for k in range(1, n)) if q.order != "any" else ", ".join("NULL" for _ in range(1, n))
    return f"WITH {', '.join(ctes)} SELECT bv, {counts}, {medians} FROM best GROUP BY bv"


def _result(q: Funnel, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "funnel", "aggregate_by": q.aggregate_by, "steps": steps}


def _with_breakdown(ctx: Context, q: Funnel, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """The overall steps (without the breakdown: a person counts once, at their best) and
    the steps per breakdown value, the largest first and "other" last."""
    overall = run(ctx, msgspec.structs.replace(q, breakdown=None))
    rows.sort(key=lambda r: (r[0] == OTHER, -int(r[1] or 0), r[0] is None, r[0] or ""))
    breakdown = []
    for r in rows:
        item: dict[str, Any] = {"breakdown_value": "other" if r[0] == OTHER else r[0],
                                "steps": _steps(q, r)}
        if r[0] == OTHER:
            item["is_other"] = True
        breakdown.append(item)
    return {**_result(q, overall["steps"]), "breakdown": breakdown}


def _steps(q: Funnel, row: tuple[Any, ...] | None) -> list[dict[str, Any]]:
    """``row``: (breakdown value, count per step…, median time per step after the first…)."""
    n = len(q.steps)
    counts_ = [int(x or 0) for x in row[1:n + 1]] if row else [0] * n
    meds = list(row[n + 1:]) if row else [None] * (n - 1)
    out = []
    for k, s in enumerate(q.steps):
        c = counts_[k]
        prev = counts_[k - 1] if k else c
        out.append({
            "event": s.event, "label": s.label or s.event or "any event", "count": c,
            "conversion": (c / counts_[0]) if counts_[0] else 0.0,
            "conversion_from_previous": (c / prev) if prev else 0.0,
            "median_seconds_to_convert": None if k == 0 or meds[k - 1] is None
            else float(meds[k - 1] or 0),
        })
    return out
