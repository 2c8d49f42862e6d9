"""Web app benchmark: the overview's panels and an insight's re-render, on the query
benchmark's store (20M events x ``scale``).

1. The store and the flat baseline table are built (or reused) exactly as
   :mod:`benchmarks.query` does (its ``prepare`` and ``sync_cache``); ``aap serve`` runs
   on it.
2. Each overview panel is asked alone (``POST /api/v1/overview`` with ``panels: [p]``, as
   the page asks for it), for the last 30 days and the whole 90 days of the data: one
   warm-up, then the median of ``runs`` runs; target: at most 1 s each. The baseline, in
   this process: the same panel's statement (:class:`aap.api.overview_panels.Lean`, no
   rollup) over the flat DuckDB table (2 threads, 1 GB), as a ratio API / plain SQL.
3. In Chromium (Playwright, Debian's ``/usr/bin/chromium``), ``/insights`` signed in as
   an analyst: a daily trend of page views over the 90 days, then ``edits`` edits (the
   interval, day ↔ week, and the breakdown, none ↔ country). Per edit: from the moment the
   ``/api/v1/query`` response had arrived (its resource timing's ``responseEnd``) to the
   moment the chart's ``data-series`` changed (a MutationObserver), both on the page's
   ``performance.now()`` clock; target: the median at most 300 ms.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import duckdb
import httpx

from benchmarks.query import FLAT_COLUMNS, make_flat, median_time, prepare, sync_cache

PANEL_TARGET_S = 1.0
RENDER_TARGET_MS = 300.0
FIRST, LAST = "2026-08-03", "2026-10-31"
"""The store's 90 days (:mod:`aap.testing.query_data`)."""
RANGES = {"last 30 days": ("2026-10-02", LAST), "90 days": (FIRST, LAST)}
CHROMIUM = "/usr/bin/chromium"
MAIN = ".result .insight-view [data-series]"

# in the page: every change of the main chart's data-series, on performance.now()
WATCH_JS = """() => {
  window.__renders = [];
  let last = null;
  const look = () => {
    const el = document.querySelector('MAIN');
    const v = el ? el.getAttribute('data-series') : null;
    if (v !== null && v !== last) { last = v; window.__renders.push([performance.now(), v]); }
  };
  new MutationObserver(look).observe(document.body,
    {subtree: true, childList: true, attributes: true, attributeFilter: ['data-series']});
  look();
}""".replace("MAIN", MAIN)

QUERY_ENDS_JS = """() => performance.getEntriesByType('resource')
  .filter(e => e.name.endsWith('/api/v1/query')).map(e => e.responseEnd)"""


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _ensure_flat(data: Path, log: Any) -> None:
    """The flat table with the overview's columns too (a store of an older run lacks
    them: it is made again)."""
    con = duckdb.connect(str(data / "flat.duckdb"), read_only=True)
    try:
        have = {r[0] for r in con.execute("DESCRIBE events").fetchall()}
    finally:
        con.close()
    if not {c.strip() for c in FLAT_COLUMNS.split(",")} <= have:
        t0 = time.perf_counter()
        make_flat(data)
        log(f"flat baseline table made again with the overview's columns in "
            f"{time.perf_counter() - t0:.1f} s")


class Range:
    """A range as :class:`aap.api.overview_panels.Lean` takes it."""

    def __init__(self, first: str, last: str) -> None:
        from aap.api.overview import parse_range

        r = parse_range(first, last)
        self.start, self.end, self.labels = r.start, r.end, r.labels


def plain(flat: duckdb.DuckDBPyConnection, panel: str, rng: Range) -> Any:
    """The panel's answer by plain SQL over the flat table."""
    from aap.api.overview import EVENT_BREAKDOWNS
    from aap.api.overview_panels import Lean

    lean = Lean(flat, [], daily=False)
    if panel == "figures":
        return lean.figures(rng)
    if panel == "series":
        return lean.series(rng)
    if panel in EVENT_BREAKDOWNS:
        return lean.top(panel, EVENT_BREAKDOWNS[panel], rng, 10)
    return lean.session_top(panel, rng, 10)


def overview_panels(client: httpx.Client, flat: duckdb.DuckDBPyConnection, runs: int,
                    log: Any) -> list[dict[str, Any]]:
    from aap.api.overview import PANELS

    out = []
    for name, (first, last) in RANGES.items():
        rng = Range(first, last)
        for panel in PANELS:
            body = {"from": first, "to": last, "panels": [panel]}

            def api(body: dict[str, Any] = body) -> Any:
                r = client.post("/api/v1/overview", json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code}: {r.text}")
                return r.json()

            t_api, answer = median_time(api, runs)
            t_sql = same = None
            if panel != "consent":  # (the flat table has no purposes)
                def sql(p: str = panel, r: Range = rng) -> Any:
                    return plain(flat, p, r)

                t_sql, want = median_time(sql, runs)
                got = (answer["breakdowns"][panel] if panel not in ("figures", "series")
                       else answer[panel])
                same = got == want
            out.append({"range": name, "panel": panel, "api_s": t_api, "plain_sql_s": t_sql,
                        "same": same})
            log(f"{name}, {panel}: API {t_api:.3f} s"
                + (f", plain SQL {t_sql:.3f} s" if t_sql is not None else ""))
    return out


def insight_renders(url: str, key: str, edits: int, log: Any) -> list[float]:
    """Milliseconds from each edit's API answer to the chart showing it."""
    from playwright.sync_api import sync_playwright

    out: list[float] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            ctx = browser.new_context(viewport={"width": 1280, "height": 800})
            ctx.set_default_timeout(600_000)
            page = ctx.new_page()
            r = page.request.post(url + "/api/v1/session", data={"key": key})
            assert r.ok, r.text()
            page.goto(url + "/insights")
            page.wait_for_selector("#insight-kind")
            for field, value in (("date-from", FIRST), ("date-to", LAST)):
                page.fill(f"#{field}", value)
                with page.expect_response(lambda r: r.url.endswith("/api/v1/query")):
                    page.press(f"#{field}", "Tab")
            page.wait_for_selector(MAIN)
            page.evaluate(WATCH_JS)
            plan = [("#trends-interval", "week"), ("#trends-interval", "day"),
                    ("#trends-breakdown", "country"), ("#trends-breakdown", "")]
            for i in range(edits):
                field, value = plan[i % len(plan)]
                n_renders = page.evaluate("() => window.__renders.length")
                n_ends = len(page.evaluate(QUERY_ENDS_JS))
                with page.expect_response(lambda r: r.url.endswith("/api/v1/query")) as resp:
                    if field == "#trends-interval":
                        page.select_option(field, value)
                    else:
                        page.fill(field, value)
                        page.press(field, "Tab")
                if not resp.value.ok:
                    raise RuntimeError(f"the insight failed: {resp.value.text()}")
                page.wait_for_function(f"() => window.__renders.length > {n_renders}",
                                       timeout=60_000)
                page.wait_for_function(
                    f"() => performance.getEntriesByType('resource').filter(e =>"
                    f" e.name.endsWith('/api/v1/query')).length > {n_ends}", timeout=60_000)
                end = page.evaluate(QUERY_ENDS_JS)[-1]
                shown = page.evaluate("() => window.__renders[window.__renders.length - 1][0]")
                out.append(shown - end)
                log(f"edit {i + 1} ({field} = {value or '(none)'}): chart {shown - end:.1f} ms"
                    " after the answer")
            ctx.close()
        finally:
            browser.close()
    return out


def run(scale: float = 1.0, runs: int = 3, edits: int = 8,
        data_dir: Path | None = None) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from aap.api.keys import ApiKeys
    from aap.runner import ServerProcess
    from benchmarks.common import verdict

    console = Console(width=max(Console().width, 120))

    def log(msg: str) -> None:
        console.print(msg, style="dim", highlight=False)

    load_before = _load()
    events, persons = int(20_000_000 * scale), int(500_000 * scale)
    console.print(f"[bold]aap web benchmark[/bold]: {events:,} events, {persons:,} persons, "
                  f"90 days; median of {runs} runs after a warm-up; {edits} insight edits")
    tmp = None
    if data_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="aap-bench-web-"))
        data_dir = tmp
    data = data_dir / "data"
    try:
        prepare(data, events, persons, log)
        _ensure_flat(data, log)
        sync_cache(data, log)
        flat = duckdb.connect(str(data / "flat.duckdb"), read_only=True,
                              config={"threads": 2, "memory_limit": "1GB"})
        _, key = ApiKeys(data).create("analyst", "bench-web")
        env = {"AAP_HOT_DAYS": "100000", "AAP_WARM_DAYS": "100000", "AAP_COLD_DAYS": "760",
               "AAP_TIERING_INTERVAL_S": "100000"}
        t0 = time.perf_counter()
        with ServerProcess(data, workers=1, env=env).start(timeout=300) as server, \
                httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"},
                             timeout=600) as client:
            log(f"server up in {time.perf_counter() - t0:.1f} s")
            panels = overview_panels(client, flat, runs, log)
            renders = insight_renders(server.url, key, edits, log)
        flat.close()

        judged = scale == 1
        table = Table(title=f"Overview panels on {events:,} events, POST /api/v1/overview "
                            "with one panel each")
        for c in ("range", "panel", "API (median)", "plain SQL", "ratio", "target", "",
                  "same answer"):
            table.add_column(c, justify="left" if c in ("range", "panel") else "right")
        for r in panels:
            ok = r["api_s"] <= PANEL_TARGET_S
            ratio = r["api_s"] / r["plain_sql_s"] if r["plain_sql_s"] else None
            table.add_row(r["range"], r["panel"], f"{r['api_s']:.3f} s",
                          f"{r['plain_sql_s']:.3f} s" if r["plain_sql_s"] is not None else "—",
                          f"{ratio:.2f}x" if ratio is not None else "—",
                          f"≤ {PANEL_TARGET_S:g} s", verdict(ok) if judged else "(size)",
                          {True: "yes", False: "[red]NO[/red]", None: "—"}[r["same"]])
        console.print(table)
        missed = [f"{r['panel']} ({r['range']})" for r in panels
                  if r["api_s"] > PANEL_TARGET_S]
        slowest = max(panels, key=lambda r: r["api_s"])
        console.print(f"slowest panel: {slowest['panel']} ({slowest['range']}) "
                      f"{slowest['api_s']:.3f} s; over {PANEL_TARGET_S:g} s: "
                      + (", ".join(missed) or "none")
                      + ("" if judged else " (the target is for --scale 1)"))
        med = statistics.median(renders)
        console.print(f"insight re-render after its answer: median {med:.1f} ms, "
                      f"max {max(renders):.1f} ms of {len(renders)} edits "
                      f"(target ≤ {RENDER_TARGET_MS:g} ms: {verdict(med <= RENDER_TARGET_MS)})")
        console.print(f"load average (1, 5, 15 min) before: {load_before}, after: "
                      f"{_load()} on {os.cpu_count()} cores")
        return {"panels": panels, "renders_ms": renders}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


@click.command("web")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Fraction of the full size (20M events, 500k persons).")
@click.option("--runs", type=int, default=3, show_default=True, help="Timed runs per panel.")
@click.option("--edits", type=int, default=8, show_default=True,
              help="Insight edits timed in Chromium.")
@click.option("--data-dir", "bench_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Keep (and reuse) the generated data here (as `bench query`).")
def main(scale: float, runs: int, edits: int, bench_dir: Path | None) -> None:
    """The overview's panels (≤ 1 s each) and an insight's re-render (≤ 300 ms) at 20M."""
    run(scale=scale, runs=runs, edits=edits, data_dir=bench_dir)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="python -m benchmarks.web")
