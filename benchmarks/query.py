"""Query benchmark: every insight through the real API, against plain DuckDB SQL.

1. A deterministic generator (:mod:`aap.testing.query_data`) makes ``20M x scale`` events
   of ``500k x scale`` persons over 90 days; they are loaded through the store's own
   write path (``Warehouse.write`` per day, then the tiering operations): the last 7 days
   stay hot (DuckDB), older days are warm Parquet files, the first full month is a cold
   archive; every tenth person has an anonymous first session merged by a
   ``person_overrides`` row.
2. The same events, merges resolved, are copied into one flat DuckDB table for the
   baseline: hand-written plain SQL answering the same questions (same semantics), run
   in this process with the same memory limit and 2 threads.
3. ``aap serve`` runs on the data dir; each insight is sent to ``POST /api/v1/query``
   with an analyst key: one warm-up, then the median of ``runs`` runs. The baseline
   likewise. The ratio is API / plain SQL.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import duckdb
import httpx

MAX_RATIO = 1.5
"""No insight slower than this many times its plain-SQL twin."""

START = "2026-08-03"
END = "2026-10-31"

INSIGHTS: list[tuple[str, float, dict[str, Any]]] = [
    ("trends, daily page views by country (top 25 + other), 90 days", 0.3, {
        "kind": "trends", "series": [{"event": "$page", "math": "total"}],
        "interval": "day", "breakdown": "country", "date_from": START, "date_to": END}),
    ("trends, daily unique persons by country, 90 days", 0.3, {
        "kind": "trends", "series": [{"event": "$page", "math": "persons"}],
        "interval": "day", "breakdown": "country", "date_from": START, "date_to": END}),
    ("funnel, 4 steps, 7-day window, 90 days", 0.5, {
        "kind": "funnel", "steps": [{"event": "Product Viewed"}, {"event": "Product Added"},
                                    {"event": "Checkout Started"}, {"event": "Order Completed"}],
        "window": "7d", "date_from": START, "date_to": END}),
    ("retention, 12 weeks, first time", 0.6, {
        "kind": "retention", "start_event": "Signed Up", "return_event": "$page",
        "period": "week", "periods": 12, "date_from": START, "date_to": "2026-10-25"}),
    ("paths, depth 3 from session start, 90 days", 1.5, {
        "kind": "paths", "depth": 3, "limit": 10, "date_from": START, "date_to": END}),
    ("stickiness, days active of 30", 0.5, {
        "kind": "stickiness", "series": [{"event": "$page"}], "interval": "day",
        "date_from": "2026-10-02", "date_to": END}),
    ("lifecycle, weekly, 90 days", 0.5, {
        "kind": "lifecycle", "event": "$page", "interval": "week", "date_from": START,
        "date_to": END}),
]

# Hand-written plain DuckDB SQL over one flat table ``events`` (merges resolved), answering
# the same questions with the same rules.
LO, HI = "TIMESTAMP '2026-08-03'", "TIMESTAMP '2026-11-01'"
PLAIN: list[str] = [
    f"""WITH e AS (SELECT date_trunc('day', timestamp) AS d, country FROM events
                   WHERE event = '$page' AND timestamp >= {LO} AND timestamp < {HI}),
        top AS (SELECT country FROM e GROUP BY country ORDER BY count(*) DESC LIMIT 25)
    SELECT d, CASE WHEN country IS NULL OR country IN (SELECT country FROM top) THEN country
                   ELSE 'other' END AS c, count(*)
    FROM e GROUP BY ALL""",
    f"""WITH e AS (SELECT date_trunc('day', timestamp) AS d, person_id, country FROM events
                   WHERE event = '$page' AND timestamp >= {LO} AND timestamp < {HI}),
        top AS (SELECT country FROM e GROUP BY country ORDER BY count(*) DESC LIMIT 25)
    SELECT d, CASE WHEN country IS NULL OR country IN (SELECT country FROM top) THEN country
                   ELSE 'other' END AS c, count(DISTINCT person_id)
    FROM e GROUP BY ALL""",
    f"""WITH ev AS (SELECT person_id AS pid, timestamp AS t, event FROM events
                    WHERE timestamp >= {LO} AND timestamp < {HI} AND event IN
                    ('Product Viewed', 'Product Added', 'Checkout Started', 'Order Completed')),
        s0 AS (SELECT pid, t FROM ev WHERE event = 'Product Viewed'),
        s1 AS (SELECT pid, t FROM ev WHERE event = 'Product Added'),
        s2 AS (SELECT pid, t FROM ev WHERE event = 'Checkout Started'),
        s3 AS (SELECT pid, t FROM ev WHERE event = 'Order Completed'),
        c1 AS (SELECT s0.pid, s0.t AS t0, s1.t AS t1 FROM s0 ASOF LEFT JOIN s1
               ON s0.pid = s1.pid AND s1.t > s0.t),
        c2 AS (SELECT c1.*, s2.t AS t2 FROM c1 ASOF LEFT JOIN s2 ON c1.pid = s2.pid AND s2.t > c1.t1),
        c3 AS (SELECT c2.*, s3.t AS t3 FROM c2 ASOF LEFT JOIN s3 ON c2.pid = s3.pid AND s3.t > c2.t2),
        lv AS (SELECT pid, max(CASE WHEN t1 IS NULL OR t1 > t0 + INTERVAL 7 DAY THEN 1
                                    WHEN t2 IS NULL OR t2 > t0 + INTERVAL 7 DAY THEN 2
                                    WHEN t3 IS NULL OR t3 > t0 + INTERVAL 7 DAY THEN 3 ELSE 4 END)
                                    AS level FROM c3 GROUP BY pid)
    SELECT count(*) FILTER (WHERE level >= 1), count(*) FILTER (WHERE level >= 2),
           count(*) FILTER (WHERE level >= 3), count(*) FILTER (WHERE level >= 4) FROM lv""",
    f"""WITH co AS (SELECT person_id, date_trunc('week', min(timestamp)) AS c FROM events
                    WHERE event = 'Signed Up' GROUP BY person_id
                    HAVING min(timestamp) >= {LO} AND min(timestamp) < TIMESTAMP '2026-10-26'),
        re AS (SELECT DISTINCT person_id, date_trunc('week', timestamp) AS r FROM events
               WHERE event = '$page' AND timestamp >= {LO} AND timestamp < {HI})
    SELECT c, 0, count(*) FROM co GROUP BY c
    UNION ALL
    SELECT c, datediff('day', c, r) // 7 AS i, count(*) FROM co JOIN re USING (person_id)
    WHERE r > c AND datediff('day', c, r) // 7 < 12 GROUP BY ALL""",
    f"""WITH c AS (SELECT session_id, timestamp, message_id, event,
                          lag(event) OVER (PARTITION BY session_id ORDER BY timestamp, message_id)
                          AS prev
                   FROM events WHERE timestamp >= {LO} AND timestamp < {HI}
                   AND event NOT IN ('$identify', '$group', '$alias')),
        d AS (SELECT session_id, event, row_number() OVER (PARTITION BY session_id
                     ORDER BY timestamp, message_id) AS n
              FROM c WHERE prev IS NULL OR prev <> event),
        p AS (SELECT list(event ORDER BY n) AS path FROM d WHERE n <= 3 GROUP BY session_id)
    SELECT path, count(*) AS k FROM p GROUP BY path ORDER BY k DESC, path LIMIT 10""",
    f"""WITH a AS (SELECT person_id, count(DISTINCT date_trunc('day', timestamp)) AS k FROM events
                   WHERE event = '$page' AND timestamp >= TIMESTAMP '2026-10-02'
                   AND timestamp < {HI} GROUP BY person_id)
    SELECT k, count(*) FROM a GROUP BY k""",
    f"""WITH f AS (SELECT person_id, min(date_trunc('week', timestamp)) AS first FROM events
                   WHERE event = '$page' GROUP BY person_id),
        a AS (SELECT DISTINCT person_id, date_trunc('week', timestamp) AS w FROM events
              WHERE event = '$page' AND timestamp >= TIMESTAMP '2026-07-27' AND timestamp < {HI}),
        s AS (SELECT a.person_id, w, first,
                     lag(w) OVER (PARTITION BY a.person_id ORDER BY w) AS prev,
                     lead(w) OVER (PARTITION BY a.person_id ORDER BY w) AS nxt
              FROM a JOIN f USING (person_id))
    SELECT w, CASE WHEN w = first THEN 'new' WHEN prev = w - INTERVAL 7 DAY THEN 'returning'
                   ELSE 'resurrecting' END, count(*) FROM s GROUP BY ALL
    UNION ALL SELECT w + INTERVAL 7 DAY, 'dormant', count(*) FROM s
    WHERE nxt IS NULL OR nxt != w + INTERVAL 7 DAY GROUP BY ALL""",
]


def median_time(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    out = fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def prepare(data_dir: Path, events: int, persons: int, log: Callable[[str], None]) -> None:
    from aap.testing.query_data import generate, load

    marker = data_dir / "bench-query.json"
    params = {"events": events, "persons": persons, "days": 90, "seed": 42}
    if marker.exists() and json.loads(marker.read_text()) == params:
        log(f"reusing the loaded data in {data_dir}")
        return
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    data = generate(events, persons, 90, 42)
    log(f"generated {data.total_events:,} events of {len(data.persons):,} persons "
        f"({len(data.overrides):,} merged ids) in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    stats = load(data_dir, data)
    del data
    log(f"loaded through Warehouse.write and the tiering operations in "
        f"{time.perf_counter() - t0:.1f} s: " + ", ".join(
            f"{t} {rows:,} rows in {files} files" if t != "hot" else f"hot {rows:,} rows"
            for t, (files, rows, _) in stats.items()))
    t0 = time.perf_counter()
    make_flat(data_dir)
    log(f"flat baseline table in {time.perf_counter() - t0:.1f} s")
    marker.write_text(json.dumps(params))


def sync_cache(data_dir: Path, log: Callable[[str], None]) -> None:
    """Fill the query cache before the server starts (the core's own sync would do the
    same in the background, and queries would read Parquet until it is done)."""
    from aap.query.cache import QueryCache
    from aap.store.tiers import TierConfig, TierStore
    from aap.store.warehouse import Warehouse

    t0 = time.perf_counter()
    wh = Warehouse(data_dir / "warehouse", tiers=TierStore(TierConfig(str(data_dir / "tiers"))))
    try:
        done = QueryCache(wh).sync()
    finally:
        wh.close()
    if done["copied"]:
        log(f"query cache: copied {done['rows']:,} rows of {done['copied']} tier files in "
            f"{time.perf_counter() - t0:.1f} s")


FLAT_COLUMNS = ("message_id, event, timestamp, person_id, session_id, country, properties, type,"
                " path, referrer_domain, utm_source, utm_medium, utm_campaign, region,"
                " device_type, browser, os")
"""The columns of the flat baseline table (those of the insights and the overview's)."""


def make_flat(data_dir: Path) -> None:
    from aap.store.warehouse import Warehouse

    wh = Warehouse(data_dir / "warehouse")
    flat = duckdb.connect(str(data_dir / "flat.duckdb"))
    try:
        with wh.snapshot() as cur:
            reader = cur.sql(f"SELECT {FLAT_COLUMNS} FROM events").to_arrow_reader(1_000_000)
            flat.register("src", reader)
            flat.execute("CREATE OR REPLACE TABLE events AS SELECT * FROM src ORDER BY timestamp")
            flat.unregister("src")
            reader.close()
    finally:
        flat.close()
        wh.close()


def run(scale: float = 1.0, runs: int = 3, data_dir: Path | None = None,
        only: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    from rich.console import Console
    from rich.table import Table

    from aap.api.keys import ApiKeys
    from aap.runner import ServerProcess

    console = Console(width=max(Console().width, 120))

    def log(msg: str) -> None:
        console.print(msg, style="dim", highlight=False)

    load_before = _load()
    events, persons = int(20_000_000 * scale), int(500_000 * scale)
    console.print(f"[bold]aap query benchmark[/bold]: {events:,} events, {persons:,} persons, "
                  f"90 days; median of {runs} runs after a warm-up")
    tmp = None
    if data_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="aap-bench-query-"))
        data_dir = tmp
    data = data_dir / "data"
    try:
        prepare(data, events, persons, log)
        sync_cache(data, log)
        flat = duckdb.connect(str(data / "flat.duckdb"), read_only=True,
                              config={"threads": 2, "memory_limit": "1GB"})
        _, key = ApiKeys(data).create("analyst", "bench")
        env = {"AAP_HOT_DAYS": "100000", "AAP_WARM_DAYS": "100000", "AAP_COLD_DAYS": "760",
               "AAP_TIERING_INTERVAL_S": "100000"}
        results: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        # the core loads every tier's dedup keys before it answers: give it time at 20M
        with ServerProcess(data, workers=1, env=env).start(timeout=300) as server, \
                httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"},
                             timeout=600) as client:
            log(f"server up in {time.perf_counter() - t0:.1f} s")

            for i, (name, target, doc) in enumerate(INSIGHTS):
                if only and i not in only:
                    continue

                def api(doc: dict[str, Any] = doc) -> Any:
                    r = client.post("/api/v1/query", json=doc)
                    if r.status_code != 200:
                        raise RuntimeError(f"{r.status_code}: {r.text}")
                    return r.json()

                t_api, out = median_time(api, runs)
                def plain(sql: str = PLAIN[i]) -> Any:
                    return flat.execute(sql).fetchall()

                t_sql, _ = median_time(plain, runs)
                results.append({"insight": name, "api_s": t_api, "plain_sql_s": t_sql,
                                "ratio": t_api / t_sql, "target_s": target,
                                "summary": summarize(out)})
                log(f"{name}: API {t_api:.3f} s, plain SQL {t_sql:.3f} s")
        flat.close()
        table = Table(title=f"Insights on {events:,} events through POST /api/v1/query")
        for c in ("insight", "API (median)", "plain SQL", "ratio", "target", "", "result"):
            table.add_column(c, justify="left" if c in ("insight", "result") else "right")
        for r in results:
            # the absolute targets are for the full size; the ratio's at any size
            r["target_met"] = None if scale != 1 else r["api_s"] <= r["target_s"]
            r["ratio_met"] = r["ratio"] <= MAX_RATIO
            verdict = ("PASS" if r["target_met"] and r["ratio_met"] else
                       "MISS" if r["target_met"] is not None or not r["ratio_met"] else "(size)")
            table.add_row(r["insight"], f"{r['api_s']:.3f} s", f"{r['plain_sql_s']:.3f} s",
                          f"{r['ratio']:.2f}x", f"≤ {r['target_s']} s", verdict, r["summary"])
        console.print(table)
        worst = max((r["ratio"] for r in results), default=0)
        console.print(f"slowest relative to plain SQL: {worst:.2f}x (target ≤ {MAX_RATIO}x: "
                      f"{'PASS' if worst <= MAX_RATIO else 'MISS'})")
        if scale == 1:
            missed = [r["insight"] for r in results if not r["target_met"]]
            console.print("absolute targets: " + ("PASS (all)" if not missed else
                                                  f"MISS ({len(missed)}: {'; '.join(missed)})"))
        else:
            console.print("absolute targets: not judged (they are for --scale 1)")
        console.print(f"load average (1, 5, 15 min) before: {load_before}, after: "
                      f"{_load()} on {os.cpu_count()} cores")
        return results
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def summarize(out: dict[str, Any]) -> str:
    kind = out.get("kind")
    if kind == "trends":
        return f"{len(out['series'])} series"
    if kind == "funnel":
        return " → ".join(f"{s['count']:,}" for s in out["steps"])
    if kind == "retention":
        c = out["cohorts"][0]
        return f"first cohort {c['size']:,}: " + ", ".join(f"{v:,}" for v in c["values"][1:4]) + "…"
    if kind == "paths":
        p = out["paths"][0]
        return f"{' → '.join(p['steps'])} ({p['count']:,})"
    if kind == "stickiness":
        return "1 day: " + f"{out['series'][0]['values'][0]:,}"
    if kind == "lifecycle":
        return f"new in last week: {out['new'][-1]:,}"
    return ""


@click.command("query")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Fraction of the full size (20M events, 500k persons).")
@click.option("--runs", type=int, default=3, show_default=True, help="Timed runs per insight.")
@click.option("--data-dir", "bench_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Keep (and reuse) the generated data here.")
@click.option("--only", type=int, multiple=True, help="Run only insight number N (0-based).")
def main(scale: float, runs: int, bench_dir: Path | None, only: tuple[int, ...]) -> None:
    """Every insight through the API vs hand-written plain DuckDB SQL."""
    run(scale=scale, runs=runs, data_dir=bench_dir, only=only)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="python -m benchmarks.query")
