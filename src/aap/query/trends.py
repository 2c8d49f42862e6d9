"""Trends: a value per series per interval, optionally broken down, combined by a formula
and compared with the previous period.

math ``total`` counts events, ``persons`` distinct persons (merged ids count once),
``sessions`` distinct sessions, ``unique`` distinct values of a ``property`` (devices
active: ``device_id``); ``sum`` / ``avg`` / ``min`` / ``max`` / ``median`` /
``p90`` / ``p99`` aggregate a numeric ``property`` (events where it is not a number are
left out; quantiles interpolate linearly). A breakdown keeps the 25 values (default) with
the most events over the range and puts the rest into ``other``.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aap.errors import BadRequest
from aap.query import rollup
from aap.query.common import (
    Context,
    Range,
    SQLBuilder,
    bucket_sql,
    buckets,
    cohort_sql,
    date_range,
    event_match_sql,
    from_events,
    label,
    numeric_property_sql,
    property_sql,
)
from aap.query.models import PROPERTY_MATH, Series, Trends

OTHER = "\x00other"
AGG = {
    "total": "count(*)",
    "persons": "count(DISTINCT person_id)",
    "sessions": "count(DISTINCT session_id)",
    "unique": "count(DISTINCT v)",
    "sum": "sum(v)",
    "avg": "avg(v)",
    "min": "min(v)",
    "max": "max(v)",
    "median": "quantile_cont(v, 0.5)",
    "p90": "quantile_cont(v, 0.9)",
    "p99": "quantile_cont(v, 0.99)",
}
COUNTING = ("total", "persons", "sessions", "unique", "sum")


def series_label(s: Series) -> str:
    if s.label:
        return s.label
    name = s.event if s.event is not None else "all events"
    return name if s.math == "total" else f"{name} ({s.math}{' ' + s.property if s.property else ''})"


def _validate(q: Trends) -> None:
    for i, s in enumerate(q.series):
        if s.math in PROPERTY_MATH and not s.property:
            raise BadRequest(f"series {i}: math {s.math} needs a numeric `property`",
                             code="invalid_insight")
        if s.math == "unique" and not s.property:
            raise BadRequest(f"series {i}: math unique needs the `property` whose distinct"
                             " values it counts", code="invalid_insight")
    if q.breakdown_type == "cohort" and not q.breakdown_cohorts:
        raise BadRequest("breakdown_type cohort needs `breakdown_cohorts` (cohort ids)",
                         code="invalid_insight")
    if q.breakdown_type != "cohort" and q.breakdown_cohorts:
        raise BadRequest("`breakdown_cohorts` needs breakdown_type cohort", code="invalid_insight")


def _series_rows(ctx: Context, q: Trends, s: Series, rng: Range
                 ) -> dict[str | None, dict[datetime, Any]]:
    """breakdown value → bucket → value."""
    b = SQLBuilder()
    where = " AND ".join([
        f"e.timestamp >= {b.p(rng.start_utc)}", f"e.timestamp < {b.p(rng.end_utc)}",
        event_match_sql(b, s.event, [*q.filters, *s.filters]),
    ])
    if q.cohort is not None:
        where += f" AND e.person_id IN {cohort_sql(b, ctx, q.cohort)}"
    v = (numeric_property_sql(s.property) if s.math in PROPERTY_MATH and s.property else
         property_sql(s.property) if s.math == "unique" and s.property else "NULL")
    # counts of events and persons per UTC day or longer: from the rollup where cached
    daily = s.math in ("total", "persons") and rollup.usable(
        ctx, [rng], q.interval, [*q.filters, *s.filters], q.breakdown, q.breakdown_type)
    src = from_events(q, s.filters, breakdown_type=q.breakdown_type,
                      table="events_daily" if daily else "events")
    bucket = bucket_sql(rng, q.interval)
    agg = "sum(n)" if daily and s.math == "total" else AGG[s.math]
    cols = ("e.person_id, NULL AS session_id, NULL AS v, e.n" if daily else
            f"e.person_id, e.session_id, {v} AS v, 1 AS n")
    if q.breakdown is None and q.breakdown_type != "cohort":
        sql = (f"WITH base AS (SELECT {bucket} AS bucket, {cols}"
               f" FROM {src} WHERE {where})"
               f" SELECT NULL, bucket, {agg} FROM base GROUP BY bucket")
    elif q.breakdown_type == "cohort":
        parts = []
        for cid in q.breakdown_cohorts:
            assert ctx.cohort is not None
            name = ctx.cohort(cid).name
            parts.append(f"SELECT {b.p(name)} AS bv, {bucket} AS bucket, {cols}"
                         f" FROM {src} WHERE {where}"
                         f" AND e.person_id IN {cohort_sql(b, ctx, cid)}")
        sql = (f"WITH base AS ({' UNION ALL '.join(parts)})"
               f" SELECT bv, bucket, {agg} FROM base GROUP BY bv, bucket")
    else:
        return _breakdown_rows(ctx, b, s, src, where, bucket, cols, agg, q)
    out: dict[str | None, dict[datetime, Any]] = {}
    for bv, bucket_start, value in b.run(ctx, sql):
        out.setdefault(bv, {})[bucket_start] = value
    return out


COMBINE: dict[str, Callable[[list[Any]], Any]] = {
    "total": sum, "sum": lambda xs: sum(x for x in xs if x is not None),
    "min": lambda xs: min((x for x in xs if x is not None), default=None),
    "max": lambda xs: max((x for x in xs if x is not None), default=None),
}
"""Maths whose value over the "other" group follows from the values of its members."""


def _breakdown_rows(ctx: Context, b: SQLBuilder, s: Series, src: str, where: str,
                    bucket: str, cols: str, agg: str, q: Trends
                    ) -> dict[str | None, dict[datetime, Any]]:
    """One pass per value and bucket; the top values are those with the most events. The
    rest are combined into "other" from their own values when the math allows (counts,
    sums, min, max), else by a second pass over just those values."""
    bv = property_sql(q.breakdown or "", q.breakdown_type)
    inner = f"SELECT {bucket} AS bucket, {cols}, {bv} AS bv FROM {src} WHERE {where}"
    rows = b.run(ctx, f"SELECT bv, bucket, {agg}, sum(n) FROM ({inner}) GROUP BY bv, bucket")
    events: dict[str | None, int] = {}
    out: dict[str | None, dict[datetime, Any]] = {}
    for value, bucket_start, x, n in rows:
        events[value] = events.get(value, 0) + int(n)
        out.setdefault(value, {})[bucket_start] = x
    ranked = sorted(events, key=lambda k: (-events[k], k is None, k or ""))
    top = set(ranked[:q.breakdown_limit])
    rest = [k for k in ranked if k is not None and k not in top]
    if not rest:
        return out
    if s.math in COMBINE:
        other: dict[datetime, list[Any]] = {}
        for k in rest:
            for bucket_start, x in out.pop(k).items():
                other.setdefault(bucket_start, []).append(x)
        out[OTHER] = {bk: COMBINE[s.math](xs) for bk, xs in other.items()}
        return out
    for k in rest:
        del out[k]
    again = b.run(ctx, f"SELECT bucket, {agg} FROM ({inner}) WHERE list_contains({b.p(rest)}, bv)"
                       " GROUP BY bucket")
    out[OTHER] = {bucket_start: x for bucket_start, x in again}
    return out


def _number(v: Any, math: str) -> Any:
    if v is None:
        return 0 if math in COUNTING else None
    if math in ("total", "persons", "sessions", "unique"):
        return int(v)
    return float(v)


def _run_period(ctx: Context, q: Trends, rng: Range) -> list[dict[str, Any]]:
    bs = buckets(rng, q.interval)
    dates = [label(x, q.interval) for x in bs]
    out = []
    for letter, s in zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", q.series, strict=False):
        rows = _series_rows(ctx, q, s, rng)
        if q.breakdown is None and q.breakdown_type != "cohort":
            rows.setdefault(None, {})
        keys = sorted(rows, key=lambda k: (k == OTHER, k is None, k or ""))
        if q.breakdown_type == "cohort":
            order = {ctx.cohort(c).name: i for i, c in enumerate(q.breakdown_cohorts)} if ctx.cohort else {}
            keys = sorted(rows, key=lambda k: order.get(k or "", 0))
        for k in keys:
            values = [_number(rows[k].get(x), s.math) for x in bs]
            item: dict[str, Any] = {"label": series_label(s), "letter": letter,
                                    "breakdown_value": "other" if k == OTHER else k,
                                    "dates": dates, "values": values}
            if k == OTHER:
                item["is_other"] = True
            out.append(item)
    if q.formula:
        out = _apply_formula(q, out, dates)
    for item in out:
        item.pop("letter", None)
    return out


def _apply_formula(q: Trends, series: list[dict[str, Any]], dates: list[str]
                   ) -> list[dict[str, Any]]:
    fn = compile_formula(q.formula or "", len(q.series))
    by_key: dict[tuple[Any, bool], dict[str, list[Any]]] = {}
    for item in series:
        key = (item["breakdown_value"], bool(item.get("is_other")))
        by_key.setdefault(key, {})[item["letter"]] = item["values"]
    out = []
    zeros = [0] * len(dates)
    for (bv, other), letters in by_key.items():
        values = []
        for i in range(len(dates)):
            env = {x: (letters.get(x) or zeros)[i] for x in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:len(q.series)]}
            values.append(fn(env))
        f_item: dict[str, Any] = {"label": q.formula, "breakdown_value": bv, "dates": dates,
                                  "values": values}
        if other:
            f_item["is_other"] = True
        out.append(f_item)
    return out


_OPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b,
}


MAX_FORMULA_NUMBER = 1e15
MAX_FORMULA_DEPTH = 50


def compile_formula(text: str, n_series: int) -> Callable[[dict[str, Any]], float | None]:
    """``A/B``, ``(A+B)*100``…: letters name the series in order; + - * / and numbers.
    A division by zero, or a missing value, gives null."""
    if text.count("(") > MAX_FORMULA_DEPTH:
        raise BadRequest(f"formula {text[:60]!r}: at most {MAX_FORMULA_DEPTH} parentheses",
                         code="invalid_formula")
    try:
        tree = ast.parse(text.strip().upper(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise BadRequest(f"formula {text!r} is not valid: use series letters, numbers and "
                         "+ - * / ( )", code="invalid_formula") from None
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n_series]
    _check_formula(tree, text, letters)

    def value(env: dict[str, Any]) -> float | None:
        v = _evaluate(tree, env)
        return v if v is None or math.isfinite(v) else None  # an overflow is no number

    return value


def _check_formula(node: ast.AST, text: str, letters: str, depth: int = 0) -> None:
    """Only the series ``letters``, numbers no larger than :data:`MAX_FORMULA_NUMBER`,
    + - * / and parentheses, nested no deeper than twice :data:`MAX_FORMULA_DEPTH`."""
    if depth > 2 * MAX_FORMULA_DEPTH:
        raise BadRequest(f"formula {text[:60]!r} is nested too deep", code="invalid_formula")
    if isinstance(node, ast.Expression):
        _check_formula(node.body, text, letters, depth + 1)
    elif isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        _check_formula(node.left, text, letters, depth + 1)
        _check_formula(node.right, text, letters, depth + 1)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        _check_formula(node.operand, text, letters, depth + 1)
    elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        if not abs(node.value) <= MAX_FORMULA_NUMBER:  # also inf (1e400) and nan
            raise BadRequest(f"formula {text[:60]!r}: numbers must be at most "
                             f"{MAX_FORMULA_NUMBER:.0e} in size", code="invalid_formula")
    elif isinstance(node, ast.Name) and node.id in letters:
        pass
    else:
        raise BadRequest(f"formula {text!r}: only the letters {', '.join(letters)}, numbers "
                         "and + - * / ( ) are allowed", code="invalid_formula")


def _evaluate(node: ast.AST, env: dict[str, Any]) -> float | None:
    """A checked formula's value for the series values ``env``; None for a missing value
    or a division by zero."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, env)
    if isinstance(node, ast.Constant):
        return float(node.value)  # type: ignore[arg-type]
    if isinstance(node, ast.Name):
        v = env[node.id]
        return None if v is None else float(v)
    if isinstance(node, ast.UnaryOp):
        x = _evaluate(node.operand, env)
        return None if x is None else (-x if isinstance(node.op, ast.USub) else x)
    assert isinstance(node, ast.BinOp)
    a, b = _evaluate(node.left, env), _evaluate(node.right, env)
    if a is None or b is None or (isinstance(node.op, ast.Div) and b == 0):
        return None
    return _OPS[type(node.op)](a, b)


def run(ctx: Context, q: Trends) -> dict[str, Any]:
    _validate(q)
    rng = date_range(q, ctx.now)
    series = _run_period(ctx, q, rng)
    if q.compare:
        for item in series:
            item["compare"] = "current"
        previous = _run_period(ctx, q, rng.shifted_back())
        for item in previous:
            item["compare"] = "previous"
        series += previous
    return {"kind": "trends", "interval": q.interval, "timezone": rng.tzname, "series": series}
