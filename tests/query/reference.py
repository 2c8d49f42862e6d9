"""Plain-Python reference implementations of every insight, written from the definitions
in the issue and the module docstrings, as directly as possible (no SQL, no cleverness).
The property tests compare the engine with these on random event sets."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import combinations
from typing import Any
from zoneinfo import ZoneInfo


@dataclass
class Ev:
    message_id: str
    event: str
    ts: datetime  # naive UTC
    person: int  # resolved through merges
    session: str
    props: dict[str, Any] = field(default_factory=dict)
    country: str | None = None
    type: str = "track"
    path: str | None = None


def local(ts: datetime, tz: str) -> datetime:
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    if tz == "UTC":
        return ts
    return ts.replace(tzinfo=UTC).astimezone(ZoneInfo(tz)).replace(tzinfo=None)


def bucket(t: datetime, interval: str) -> datetime:
    if interval == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    d = datetime(t.year, t.month, t.day)
    if interval == "day":
        return d
    if interval == "week":
        return d - timedelta(days=d.weekday())
    return d.replace(day=1)


def next_bucket(b: datetime, interval: str, n: int = 1) -> datetime:
    if interval == "hour":
        return b + timedelta(hours=n)
    if interval == "day":
        return b + timedelta(days=n)
    if interval == "week":
        return b + timedelta(weeks=n)
    m = b.year * 12 + b.month - 1 + n
    return datetime(m // 12, m % 12 + 1, 1)


def all_buckets(start: datetime, end: datetime, interval: str) -> list[datetime]:
    out, b = [], bucket(start, interval)
    while b < end:
        out.append(b)
        b = next_bucket(b, interval)
    return out


def bounds(q: dict[str, Any]) -> tuple[datetime, datetime]:
    s = date.fromisoformat(q["date_from"])
    e = date.fromisoformat(q["date_to"]) + timedelta(days=1)
    return datetime(s.year, s.month, s.day), datetime(e.year, e.month, e.day)


def prop(e: Ev, name: str) -> str | None:
    if name == "country":
        return e.country
    if name == "event":
        return e.event
    v = e.props.get(name)
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def passes(e: Ev, filters: list[dict[str, Any]]) -> bool:
    for f in filters:
        v = prop(e, f["property"])
        op = f.get("operator", "eq")
        value = f.get("value")
        if op == "eq" and v != str(value):
            return False
        if op == "neq" and v == str(value):
            return False
        if op == "in" and v not in [str(x) for x in value]:
            return False
        if op == "contains" and (v is None or str(value).lower() not in v.lower()):
            return False
        if op == "regex" and (v is None or re.search(str(value), v) is None):
            return False
        if op in ("gt", "lt"):
            try:
                x = float(v)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return False
            if not (x > value if op == "gt" else x < value):
                return False
        if op == "is_set" and v is None:
            return False
        if op == "is_not_set" and v is not None:
            return False
    return True


def in_range(evs: list[Ev], q: dict[str, Any]) -> list[Ev]:
    start, end = bounds(q)
    tz = q.get("timezone", "UTC")
    return [e for e in evs if start <= local(e.ts, tz) < end and passes(e, q.get("filters", []))]


def quantile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    pos = (len(xs) - 1) * p
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def aggregate(sel: list[Ev], math: str, prop_name: str | None) -> Any:
    if math == "total":
        return len(sel)
    if math == "persons":
        return len({e.person for e in sel})
    if math == "sessions":
        return len({e.session for e in sel})
    if math == "unique":
        return len({prop(e, prop_name or "") for e in sel} - {None})
    vals = []
    for e in sel:
        v = prop(e, prop_name or "")
        try:
            vals.append(float(v))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pass
    if math == "sum":
        return sum(vals)
    if not vals:
        return None
    return {"avg": lambda: sum(vals) / len(vals), "min": lambda: min(vals),
            "max": lambda: max(vals), "median": lambda: quantile(vals, 0.5),
            "p90": lambda: quantile(vals, 0.9), "p99": lambda: quantile(vals, 0.99)}[math]()


def trends(evs: list[Ev], q: dict[str, Any]) -> list[dict[str, Any]]:
    tz, interval = q.get("timezone", "UTC"), q.get("interval", "day")
    start, end = bounds(q)
    bs = all_buckets(start, end, interval)
    out = []
    for s in q["series"]:
        sel = [e for e in in_range(evs, q) if s.get("event") is None or e.event == s["event"]]
        groups: dict[Any, list[Ev]] = defaultdict(list)
        if q.get("breakdown"):
            for e in sel:
                groups[prop(e, q["breakdown"])].append(e)
            ranked = sorted(groups, key=lambda v: (-len(groups[v]), v is None, v or ""))
            top = set(ranked[:q.get("breakdown_limit", 25)])
            merged: dict[Any, list[Ev]] = defaultdict(list)
            for v, es in groups.items():
                merged[v if v is None or v in top else ("other",)].extend(es)
            groups = merged
        else:
            groups[None] = sel
        for v in sorted(groups, key=lambda k: (k == ("other",), k is None, k or "")
                        if not isinstance(k, tuple) else (True, False, "")):
            values = []
            for b in bs:
                inb = [e for e in groups[v] if bucket(local(e.ts, tz), interval) == b]
                r = aggregate(inb, s.get("math", "total"), s.get("property"))
                math = s.get("math", "total")
                values.append(0 if r is None and math in ("total", "persons", "sessions", "unique", "sum")
                              else r)
            out.append({"breakdown_value": "other" if isinstance(v, tuple) else v,
                        "values": values})
    return out


# -- funnels --

def _entities(sel: list[Ev], by: str) -> dict[Any, list[Ev]]:
    out: dict[Any, list[Ev]] = defaultdict(list)
    for e in sel:
        out[e.person if by == "person" else e.session].append(e)
    return out


def _brute_level(events: list[Ev], steps: list[str], t0: datetime, w: timedelta) -> int:
    """Deepest k with t0 = t_1 < t_2 < … < t_k ≤ t0 + w, by trying every subsequence."""
    best = 1
    cands = sorted({e.ts for e in events if t0 < e.ts <= t0 + w})
    by_t = defaultdict(set)
    for e in events:
        by_t[e.ts].add(e.event)
    for k in range(2, len(steps) + 1):
        found = any(all(steps[i + 1] in by_t[c[i]] for i in range(k - 1))
                    for c in combinations(cands, k - 1))
        if not found:
            break
        best = k
    return best


def funnel(evs: list[Ev], q: dict[str, Any]) -> dict[str, Any]:
    steps = [s["event"] for s in q["steps"]]
    n = len(steps)
    w = _window(q.get("window", "14d"))
    order = q.get("order", "ordered")
    by = q.get("aggregate_by", "person")
    sel = in_range(evs, q)
    levels: dict[Any, int] = {}
    times: dict[Any, list[datetime]] = {}
    for ent, es in _entities(sel, by).items():
        es.sort(key=lambda e: e.ts)
        best: tuple[int, datetime, list[datetime]] | None = None
        if order == "any":
            for a in es:
                if a.event not in steps:
                    continue
                lv = sum(1 for s in steps if any(e.event == s and a.ts <= e.ts <= a.ts + w
                                                 for e in es))
                if best is None or lv > best[0]:
                    best = (lv, a.ts, [])
        else:
            distinct = sorted({e.ts for e in es})
            for a in es:
                if a.event != steps[0]:
                    continue
                chain = [a.ts]
                for s in steps[1:]:
                    prev = chain[-1]
                    later = [e.ts for e in es if e.event == s and e.ts > prev]
                    if not later:
                        break
                    nxt = min(later)
                    if order == "strict":
                        following = [t for t in distinct if t > prev]
                        if nxt != following[0]:
                            break
                    chain.append(nxt)
                lv = max(k for k in range(1, len(chain) + 1) if chain[k - 1] <= a.ts + w)
                if order == "ordered":
                    assert lv == _brute_level(es, steps, a.ts, w), "greedy is not optimal?"
                if _excluded(es, q, chain, lv, a.ts + w):
                    continue
                if best is None or lv > best[0] or (lv == best[0] and a.ts < best[1]):
                    best = (lv, a.ts, chain[:lv])
        if best is not None:
            levels[ent] = best[0]
            times[ent] = best[2]
    counts = [sum(1 for v in levels.values() if v >= k + 1) for k in range(n)]
    medians: list[float | None] = [None]
    for k in range(1, n):
        if order == "any":
            medians.append(None)
            continue
        d = [(times[x][k] - times[x][k - 1]).total_seconds() for x, v in levels.items()
             if v >= k + 1]
        medians.append(statistics.median(d) if d and order != "any" else None)
    return {"counts": counts, "medians": medians}


def _excluded(es: list[Ev], q: dict[str, Any], chain: list[datetime], lv: int,
              window_end: datetime) -> bool:
    n = len(q["steps"])
    for x in q.get("exclusions", []):
        fr = x.get("from_step", 0)
        to = x.get("to_step", n - 1)
        if lv <= fr:
            continue
        lo = chain[fr]
        for e in es:
            if e.event != x["event"] or not e.ts > lo:
                continue
            if (lv > to and e.ts < chain[to]) or (lv <= to and e.ts <= window_end):
                return True
    return False


def _window(text: str) -> timedelta:
    n, unit = int(text[:-1]), text[-1]
    return timedelta(seconds=n * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit])


# -- retention --

def periods_between(a: datetime, b: datetime, period: str) -> int:
    if period == "hour":
        return int((b - a).total_seconds() // 3600)
    if period == "day":
        return (b - a).days
    if period == "week":
        return (b - a).days // 7
    return (b.year - a.year) * 12 + b.month - a.month


def retention(evs: list[Ev], q: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    tz, period, periods = q.get("timezone", "UTC"), q.get("period", "week"), q["periods"]
    start, end = bounds(q)
    start = bucket(start, period)
    cohorts = all_buckets(start, end, period)
    horizon = min(next_bucket(cohorts[-1], period, periods),
                  next_bucket(bucket(local(now, tz), period), period))
    horizon = max(horizon, end)
    ok = [e for e in evs if passes(e, q.get("filters", []))]
    members: dict[datetime, set[int]] = defaultdict(set)
    if q.get("mode", "first_time") == "first_time":
        first: dict[int, datetime] = {}
        for e in ok:
            if e.event == q["start_event"]:
                first[e.person] = min(first.get(e.person, e.ts), e.ts)
        for p, t in first.items():
            lt = local(t, tz)
            if start <= lt < end:
                members[bucket(lt, period)].add(p)
    else:
        for e in ok:
            lt = local(e.ts, tz)
            if e.event == q["start_event"] and start <= lt < end:
                members[bucket(lt, period)].add(e.person)
    returned: dict[int, set[datetime]] = defaultdict(set)
    for e in ok:
        lt = local(e.ts, tz)
        if e.event == q["return_event"] and start <= lt < horizon:
            returned[e.person].add(bucket(lt, period))
    out = []
    for c in cohorts:
        values = []
        for i in range(periods):
            if next_bucket(c, period, i) >= horizon:
                break
            if i == 0:
                values.append(len(members[c]))
            else:
                values.append(sum(1 for p in members[c]
                                  if any(r > c and periods_between(c, r, period) == i
                                         for r in returned[p])))
        out.append({"start": c.date().isoformat() if period != "hour" else c.isoformat(),
                    "size": values[0] if values else 0, "values": values})
    return out


# -- paths --

def paths(evs: list[Ev], q: dict[str, Any]) -> list[tuple[tuple[str, ...], int]]:
    excluded = set(q.get("exclude_events", ["$identify", "$group", "$alias"]))
    sel = [e for e in in_range(evs, q) if e.event not in excluded]
    depth = q.get("depth", 3)
    counter: dict[tuple[str, ...], int] = defaultdict(int)
    for _, es in _entities(sel, "session").items():
        es.sort(key=lambda e: (e.ts, e.event))
        seq: list[str] = []
        for e in es:
            if not seq or seq[-1] != e.event:
                seq.append(e.event)
        if q.get("start_event"):
            if q["start_event"] not in seq:
                continue
            i = seq.index(q["start_event"])
            path = seq[i:i + depth]
        elif q.get("end_event"):
            if q["end_event"] not in seq:
                continue
            j = len(seq) - 1 - seq[::-1].index(q["end_event"])
            path = seq[max(0, j - depth + 1):j + 1]
        else:
            path = seq[:depth]
        if path:
            counter[tuple(path)] += 1
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:q.get("limit", 20)]


# -- stickiness, lifecycle --

def stickiness(evs: list[Ev], q: dict[str, Any]) -> list[int]:
    tz, interval = q.get("timezone", "UTC"), q.get("interval", "day")
    start, end = bounds(q)
    n = len(all_buckets(start, end, interval))
    active: dict[int, set[datetime]] = defaultdict(set)
    for e in in_range(evs, q):
        if e.event == q["series"][0]["event"]:
            active[e.person].add(bucket(local(e.ts, tz), interval))
    return [sum(1 for s in active.values() if len(s) == k) for k in range(1, n + 1)]


def lifecycle(evs: list[Ev], q: dict[str, Any]) -> dict[str, list[int]]:
    tz, interval = q.get("timezone", "UTC"), q.get("interval", "day")
    start, end = bounds(q)
    bs = all_buckets(start, end, interval)
    ok = [e for e in evs if e.event == q["event"] and passes(e, q.get("filters", []))]
    first: dict[int, datetime] = {}
    active: dict[int, set[datetime]] = defaultdict(set)
    for e in ok:
        b = bucket(local(e.ts, tz), interval)
        first[e.person] = min(first.get(e.person, b), b)
        active[e.person].add(b)
    out: dict[str, list[int]] = {k: [] for k in ("new", "returning", "resurrecting", "dormant")}
    for b in bs:
        prev = next_bucket(b, interval, -1)
        counts = dict.fromkeys(out, 0)
        for p, bset in active.items():
            if b in bset:
                if first[p] == b:
                    counts["new"] += 1
                elif prev in bset:
                    counts["returning"] += 1
                else:
                    counts["resurrecting"] += 1
            elif prev in bset:
                counts["dormant"] += 1
        for k in out:
            out[k].append(counts[k])
    return out
