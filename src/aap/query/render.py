"""Insight results as terminal tables (``aap query``, ``aap demo``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.table import Table


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _short(d: str) -> str:
    """``2026-11-21`` → ``11-21``; hours ``2026-11-21T14:00:00`` → ``21 14h``."""
    if "T" in d:
        return f"{d[8:10]} {d[11:13]}h"
    return d[5:]


def render(result: dict[str, Any], title: str | None = None, max_columns: int = 14) -> Table:
    t = Table(title=title)
    _RENDERERS.get(result.get("kind"), _other)(t, result, max_columns)
    return t


def _trends(t: Table, result: dict[str, Any], max_columns: int) -> None:
    series = result["series"]
    dates = series[0]["dates"] if series else []
    shown = dates[-max_columns:]
    t.add_column("series", no_wrap=True)
    for d in shown:
        t.add_column(_short(d), justify="right")
    for s in series:
        name = s["label"]
        if s.get("breakdown_value") is not None or s.get("is_other"):
            name += f" · {s['breakdown_value']}"
        if s.get("compare"):
            name += f" ({s['compare']})"
        t.add_row(name, *[_fmt(v) for v in s["values"][-len(shown):]])


def _funnel(t: Table, result: dict[str, Any], max_columns: int) -> None:
    t.add_column("step", no_wrap=True)
    t.add_column("count", justify="right")
    t.add_column("conversion", justify="right")
    t.add_column("from previous", justify="right")
    t.add_column("median time", justify="right")
    groups = [(None, result["steps"])] + [
        (b["breakdown_value"], b["steps"]) for b in result.get("breakdown", [])]
    for bv, steps in groups:
        for i, s in enumerate(steps):
            med = s["median_seconds_to_convert"]
            t.add_row(f"{i + 1}. {s['label']}" + (f" · {bv}" if bv is not None else ""),
                      _fmt(s["count"]), f"{s['conversion']:.1%}",
                      f"{s['conversion_from_previous']:.1%}",
                      "-" if med is None else f"{med:,.0f} s")


def _retention(t: Table, result: dict[str, Any], max_columns: int) -> None:
    cohorts = result["cohorts"]
    n = max((len(c["values"]) for c in cohorts), default=0)
    t.add_column("cohort")
    t.add_column("size", justify="right")
    for i in range(1, n):
        t.add_column(f"+{i}", justify="right")
    for c in cohorts:
        size = c["size"]
        cells = [f"{v / size:.0%}" if size else "-" for v in c["values"][1:]]
        t.add_row(c["start"], _fmt(size), *cells, *[""] * (n - len(c["values"])))


def _paths(t: Table, result: dict[str, Any], max_columns: int) -> None:
    t.add_column("path", no_wrap=True)
    t.add_column("count", justify="right")
    for p in result["paths"]:
        t.add_row(" → ".join(p["steps"]), _fmt(p["count"]))


def _stickiness(t: Table, result: dict[str, Any], max_columns: int) -> None:
    t.add_column("series")
    for s in result["series"]:
        for k in s["intervals"]:
            t.add_column(str(k), justify="right")
        break
    for s in result["series"]:
        t.add_row(s["label"], *[_fmt(v) for v in s["values"]])


def _lifecycle(t: Table, result: dict[str, Any], max_columns: int) -> None:
    t.add_column("status", no_wrap=True)
    shown = result["dates"][-max_columns:]
    for d in shown:
        t.add_column(_short(d), justify="right")
    for st in ("new", "returning", "resurrecting", "dormant"):
        t.add_row(st, *[_fmt(v) for v in result[st][-len(shown):]])


def _sql(t: Table, result: dict[str, Any], max_columns: int) -> None:
    for c in result["columns"]:
        t.add_column(c)
    for r in result["rows"]:
        t.add_row(*[_fmt(v) for v in r])
    if result.get("truncated"):
        t.caption = "truncated at the row limit"


def _other(t: Table, result: dict[str, Any], max_columns: int) -> None:
    t.add_column("result")
    t.add_row(str(result))


_RENDERERS: dict[Any, Callable[[Table, dict[str, Any], int], None]] = {
    "trends": _trends, "funnel": _funnel, "retention": _retention, "paths": _paths,
    "stickiness": _stickiness, "lifecycle": _lifecycle, "sql": _sql,
}
