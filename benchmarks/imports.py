"""Import benchmark: rows/s from Parquet and from CSV into the durable log (``aap import``,
through the collector's ingestion path in its own process), the processor's drain
behind it, and the same rows sent as HTTP batches as the same-run baseline.

One real server (``aap serve``, 2 granian workers, durable SQLite log) on a temporary
data dir. For each measurement its core process (the processor) is paused, so the
figure is the ingestion's alone, as in the ingest benchmark; then the core is resumed
and the time it takes to drain what was appended is measured (the processor's rows/s).
The rows are the ingest benchmark's events (about 300 bytes as JSON), flattened into
columns for the files; over HTTP they go as 100-event ``/v1/batch`` requests on 8
keep-alive connections from one generator process. Import rows/s count from the
command's start to its exit (start-up included).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from aap.imports.run import MAX_DEFAULT_WORKERS
from aap.runner import ServerProcess, create_source
from benchmarks.common import check_idle, cpu_seconds, machine
from benchmarks.ingest import EVENTS_PER_REQUEST, Conn, make_event

AIM_PARQUET = 300_000
MAPPING = """\
timestamp = "timestamp"
user_id = "userId"
anonymous_id = "anonymousId"
message_id = "messageId"
event = "event"
properties = ["sku", "price", "qty"]

[context]
path = "path"
title = "title"
"""


def make_rows(n: int, seed: int = 7, persons: int | None = None) -> list[dict[str, Any]]:
    """``n`` rows of the ingest benchmark's events: with ``persons``, their ids drawn
    from that many people (half signed in, half anonymous); without, nearly every row is
    a new person, as in the ingest benchmark."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out = []
    for _ in range(n):
        ev = make_event(rng, now)
        if persons:
            p = rng.randrange(persons)
            ev.pop("userId", None)
            ev.pop("anonymousId", None)
            ev["userId" if p % 2 else "anonymousId"] = f"person-{p:08d}"
        p, page = ev["properties"], ev["context"]["page"]
        out.append({"messageId": ev["messageId"], "timestamp": ev["timestamp"],
                    "userId": ev.get("userId"), "anonymousId": ev.get("anonymousId"),
                    "event": ev["event"], "sku": p["sku"], "price": p["price"],
                    "qty": p["qty"], "path": page["path"], "title": page["title"]})
    return out


def http_requests(rows: list[dict[str, Any]], key: str, port: int) -> list[bytes]:
    auth = base64.b64encode(f"{key}:".encode()).decode()
    out = []
    for i in range(0, len(rows), EVENTS_PER_REQUEST):
        batch = [{"type": "track", "messageId": r["messageId"], "timestamp": r["timestamp"],
                  **({"userId": r["userId"]} if r["userId"] else
                     {"anonymousId": r["anonymousId"]}),
                  "event": r["event"], "properties": {k: r[k] for k in ("sku", "price", "qty")},
                  "context": {"page": {"path": r["path"], "title": r["title"]}}}
                 for r in rows[i:i + EVENTS_PER_REQUEST]]
        body = json.dumps({"batch": batch}, separators=(",", ":")).encode()
        out.append(f"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic"
                   f" {auth}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
                   "\r\n\r\n".encode() + body)
    return out


async def _send(port: int, reqs: list[bytes], conns: int) -> None:
    queue = list(reversed(reqs))

    async def worker() -> None:
        conn = Conn(port)
        try:
            while queue:
                status = await conn.request(queue.pop())
                if status != 200:
                    raise RuntimeError(f"HTTP {status}")
        finally:
            conn.close()
    await asyncio.gather(*(worker() for _ in range(conns)))


def _drain(server: ServerProcess, core: int | None) -> float:
    """Resume the processor; seconds until it has consumed the whole log."""
    t0 = time.perf_counter()
    if core is not None:
        os.kill(core, signal.SIGCONT)
    server.wait_processed(timeout=1800)
    return time.perf_counter() - t0


def _pause(server: ServerProcess) -> int | None:
    core = server.core_pid()
    if core is not None:
        os.kill(core, signal.SIGSTOP)
    return core


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _import(data: Path, path: Path, mapping: Path, source: str, batch: int, workers: int
            ) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``aap import`` (its workers included)."""
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run([sys.executable, "-m", "aap", "import", str(path), "--source", source,
                    "--purpose", "analytics", "--basis", "legitimate_interest", "--mapping",
                    str(mapping), "--batch-size", str(batch), "--workers", str(workers),
                    "--json", "--data-dir", str(data)], check=True, capture_output=True)
    return time.perf_counter() - t0, _children_cpu() - c0


EVENTS_PER_PERSON = 20
"""The history of the last measurement: each person has this many events."""


def run(rows: int = 200_000, batch: int = 10_000, workers: int | None = None
        ) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    info = machine()
    workers = workers or min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)
    console.print(f"[bold]aap import benchmark[/bold]: {rows:,} rows, {batch:,} per durable"
                  f" append, {workers} workers; the same rows over HTTP as the baseline")
    check_idle(console, info)
    base = Path(tempfile.mkdtemp(prefix="aap-bench-import-"))
    runs: list[dict[str, Any]] = []
    # (kind, file, workers): each into a source of its own, so every run makes its keys
    plan = [("http", "", 0), ("parquet-1", "rows.parquet", 1),
            ("parquet", "rows.parquet", workers), ("csv", "rows.csv", workers),
            ("people", "people.parquet", workers)]
    try:
        data = base / "data"
        table = pa.Table.from_pylist(make_rows(rows))
        pq.write_table(table, base / "rows.parquet")
        pacsv.write_csv(table, base / "rows.csv")
        pq.write_table(pa.Table.from_pylist(
            make_rows(rows, persons=max(1, rows // EVENTS_PER_PERSON))), base / "people.parquet")
        (base / "map.toml").write_text(MAPPING)
        keys = {k: create_source(data, k, "--historical", "--basis", "legitimate_interest")
                for k, _, _ in plan}
        server = ServerProcess(data, workers=2).start()
        try:
            for kind, name, n in plan:
                console.print(f"  measuring {kind} ...", style="dim")
                core = _pause(server)
                if kind == "http":
                    reqs = http_requests(table.to_pylist(), keys["http"], server.port)
                    pids = [p for p in server.pids() if p != core]
                    t0, c0 = time.perf_counter(), cpu_seconds(pids)
                    asyncio.run(_send(server.port, reqs, 8))
                    took, cpu = time.perf_counter() - t0, cpu_seconds(pids) - c0
                else:
                    took, cpu = _import(data, base / name, base / "map.toml", kind, batch, n)
                drain = _drain(server, core)
                runs.append({"kind": kind, "workers": n, "rows_per_s": rows / took,
                             "seconds": took, "cpu_us_per_row": cpu / rows * 1e6,
                             "drain_s": drain, "drain_rows_per_s": rows / drain})
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    http = runs[0]["rows_per_s"]
    for r in runs:
        r["vs_http"] = r["rows_per_s"] / http
    out = Table(title="rows/s into the durable log, then the processor's drain")
    for col in ("input", "rows/s", "vs HTTP batches", "seconds", "CPU µs/row", "drain s",
                "drain rows/s"):
        out.add_column(col, justify="right")
    names = {"http": "HTTP batches (8 conns)", "parquet-1": "aap import Parquet, 1 process",
             "parquet": f"aap import Parquet, {workers} workers",
             "csv": f"aap import CSV, {workers} workers",
             "people": f"aap import Parquet, {workers} workers,"
                       f" {EVENTS_PER_PERSON} events a person"}
    for r in runs:
        out.add_row(names[r["kind"]], f"{r['rows_per_s']:,.0f}", f"{r['vs_http']:.2f}x",
                    f"{r['seconds']:.1f}", f"{r['cpu_us_per_row']:.1f}", f"{r['drain_s']:.1f}",
                    f"{r['drain_rows_per_s']:,.0f}")
    console.print(out)
    best = max(r["rows_per_s"] for r in runs if r["kind"] in ("parquet-1", "parquet", "people"))
    console.print(f"Parquet, best: {best:,.0f} rows/s against an aim of {AIM_PARQUET:,}"
                  f" ({best / AIM_PARQUET:.2f} of it). Every row but the last kind's is a new"
                  " person (a data key made, wrapped and stored for each). CPU per row: the"
                  " collector's workers for HTTP (the generator's left out), the import's"
                  " processes otherwise")
    return {"machine": info, "rows": rows, "batch": batch, "workers": workers, "runs": runs}


@click.command("imports")
@click.option("--rows", type=int, default=200_000, show_default=True, help="Rows per input.")
@click.option("--batch", type=int, default=10_000, show_default=True,
              help="Rows per durable append (aap import --batch-size).")
@click.option("--workers", type=int, default=None,
              help="aap import --workers (default: the cores, at most 4).")
def main(rows: int, batch: int, workers: int | None) -> None:
    """Rows/s from Parquet and CSV into the log (aap import) vs HTTP batches; the drain."""
    run(rows=rows, batch=batch, workers=workers)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="python -m benchmarks.imports")
