"""Benchmark: a collector worker's ingestion with the shared state on PostgreSQL
(``AAP_META_URL``), its calls on a thread of their own and grouped
(:mod:`aap.collect.shared`, the default) against the same calls on the event loop, one
request at a time (``AAP_SHARED_STATE_THREAD=false``, the baseline), in the same run.

    python -m benchmarks.sharedstate [--duration 15] [--clients 8] [--events 10] [--consent]
    (or: aap bench sharedstate)

A PostgreSQL of tests/pg.py (started here), then for each mode a fresh data dir and
database, ``aap serve`` with one worker, and ``--clients`` closed-loop clients (threads
of this process) sending ``POST /v1/batch`` of ``--events`` events, each event a new
person (a browser's traffic: every request brings new ids, so a data key and a sealed id
each to the keystore). ``--consent``: the source's analytics rest on consent and every
event carries its person's "yes" (``context.consent.categoryPreferences``, a consent
banner's traffic), so each request also writes statements to the consent ledger, whose
writers take turns, and an entry to the audit chain. Printed per mode: events/s and
requests/s answered 200, the requests' p50 and p95 latency, and PostgreSQL's committed
transactions per request (``pg_stat_database.xact_commit``: every read outside a
transaction counts one too, and the processor's own are in it); then the ratios to the
baseline. The modes run in turn, ``--rounds`` times each, and the best round of each is
printed (the machine's noise lowers a figure, never raises it).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import click
import httpx

from benchmarks.common import check_idle, percentile

MODES = (("on the event loop (baseline)", "false"), ("on its own thread, grouped", "true"))


def _commits(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        row = con.execute("SELECT xact_commit FROM pg_stat_database"
                          " WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def run_mode(pg_url: str, thread: str, duration: float, clients: int, events: int,
             consent: bool = False) -> dict[str, float]:
    """One mode's round: a fresh database and data dir, one worker, the load."""
    from tests.pg import new_database

    from aap.runner import ServerProcess, create_source

    url = new_database(pg_url)
    saved = {k: os.environ.get(k) for k in ("AAP_META_URL", "AAP_SHARED_STATE_THREAD")}
    os.environ.update({"AAP_META_URL": url, "AAP_SHARED_STATE_THREAD": thread})
    data = Path(tempfile.mkdtemp(prefix="aap-bench-shared-"))
    try:
        key = create_source(data, "shop", *(() if consent else ("--basis",
                                                                 "legitimate_interest")))
        server = ServerProcess(data, workers=1).start()
        try:
            return _load(server.url, key, url, duration, clients, events, consent)
        finally:
            server.stop()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _load(base: str, key: str, url: str, duration: float, clients: int, events: int,
          consent: bool) -> dict[str, float]:
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Event()
    deadline = [0.0]
    context = {"consent": {"categoryPreferences": {"analytics": True}}} if consent else {}

    def client() -> None:
        mine: list[float] = []
        with httpx.Client(auth=(key, ""), timeout=120) as http:
            start.wait()
            while time.monotonic() < deadline[0]:
                body = {"batch": [{"type": "track", "event": "Viewed",
                                   "anonymousId": str(uuid.uuid4()),
                                   "messageId": str(uuid.uuid4()), "context": context}
                                  for _ in range(events)]}
                t = time.perf_counter()
                r = http.post(base + "/v1/batch", json=body)
                mine.append(time.perf_counter() - t)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    break
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    before = _commits(url)
    t0 = time.monotonic()
    deadline[0] = t0 + duration
    start.set()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    after = _commits(url)
    if failures:
        raise click.ClickException(f"a request failed: {failures[0]}")
    ms = sorted(x * 1000 for x in latencies)
    n = len(ms)
    return {"events_s": n * events / took, "requests_s": n / took, "p50_ms": percentile(ms, 50),
            "p95_ms": percentile(ms, 95), "commits": (after - before) / max(n, 1)}


@click.command("sharedstate")
@click.option("--duration", default=15.0, show_default=True, help="Seconds of load per round.")
@click.option("--clients", default=8, show_default=True,
              help="Concurrent clients (closed loop, each waits for its answer).")
@click.option("--events", default=10, show_default=True,
              help="Events per request, each of a new person.")
@click.option("--rounds", default=2, show_default=True,
              help="Rounds of each mode, in turn; the best of each is printed.")
@click.option("--consent", is_flag=True,
              help="Every event carries its person's consent (ledger and audit writes too).")
def main(duration: float, clients: int, events: int, rounds: int, consent: bool) -> None:
    """A collector worker on PostgreSQL: shared-state calls grouped on a thread against
    the same calls on the event loop."""
    from rich.console import Console
    from tests.pg import postgres_server

    console = Console()
    info: dict[str, Any] = {}
    check_idle(console, info)
    best: dict[str, dict[str, float]] = {}
    with postgres_server() as pg_url:
        for _ in range(rounds):
            for name, thread in MODES:
                got = run_mode(pg_url, thread, duration, clients, events, consent)
                if name not in best or got["events_s"] > best[name]["events_s"]:
                    best[name] = got
    console.print(f"one collector worker, AAP_META_URL on PostgreSQL, {clients} clients,"
                  f" {events} events a request (each of a new person"
                  f"{', with its consent' if consent else ''}), {duration:g} s,"
                  f" best of {rounds}:")
    for name, _ in MODES:
        g = best[name]
        console.print(f"  {name:30} {g['events_s']:9,.0f} events/s {g['requests_s']:7,.0f}"
                      f" requests/s  p50 {g['p50_ms']:6.1f} ms  p95 {g['p95_ms']:6.1f} ms"
                      f"  {g['commits']:5.2f} PostgreSQL commits a request")
    base, new = best[MODES[0][0]], best[MODES[1][0]]
    console.print(f"  ratio to the baseline: events/s {new['events_s'] / base['events_s']:.2f},"
                  f" p50 {new['p50_ms'] / base['p50_ms']:.2f},"
                  f" commits a request {new['commits'] / base['commits']:.2f}")


if __name__ == "__main__":
    main()
