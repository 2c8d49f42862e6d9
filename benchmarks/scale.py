"""Scale figures: the per-event constants of ``docs/scale.md``, measured on this machine.

The capacity model of ``docs/scale.md`` multiplies a few per-event figures by the target
rate; this benchmark measures the ones the other benchmarks do not print. Four parts:

1. **Collector CPU per event** — a backlog is built through the HTTP API with the
   generator of :mod:`benchmarks.ingest` (2 granian workers, durable SQLite log, unique
   message ids as in :mod:`benchmarks.pipeline`) while the core process is paused:
   events/s and the server's CPU give µs of collector CPU per event. The templates' ids
   repeat, so after the first requests no data key is made: that cost is part 4's.
2. **Processor CPU per event** — the server is started again on that backlog; the CPU of
   the core process *and its children* (the prepare processes) from the moment it is
   healthy until the backlog is drained, per event drained meanwhile (start-up left out).
3. **Bytes per event** — the log's file (zstd-compressed JSON records) and the records'
   JSON before compression; the same JSON compressed as a record is (zstd level 1) in
   groups of 1, 10, 100 and 1,000 events (a Kafka message of one person's events is
   such a group: compressed on its own, before the producer's batch); the hot DuckDB
   file; then every day moved to the warm tier (Parquet) and on to the cold tier.
4. **Shared-state writes** — new subjects handed to the keystore in requests of 100 as
   the sealer does (``Keystore.remember``: the data keys in one write transaction, the
   sealed raw ids in a second), on the SQLite keystore and, with ``--pg`` (a temporary
   Debian PostgreSQL, as the tests start it) or ``--meta-url``, on PostgreSQL; and, on
   the files under the data dir, consent-ledger statements (one transaction each) and
   audit-log appends (each fsynced under a lock).

All on the same cores as the load generator: the figures are indicative.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import click

from aap.datadir import DataDir
from aap.log.sqlite import SQLiteLog
from aap.runner import ServerProcess, create_source
from benchmarks.common import all_proc_stats, check_idle, cpu_seconds, machine
from benchmarks.pipeline import _events_upto, _log_stats, _warehouse_position, measure_unique

SAMPLE_RECORDS = 200
"""Log records whose JSON is measured before compression."""
GROUPS = (1, 10, 100, 1000)
"""Events compressed together, for the bytes a producer batch of that size would hold."""
KEYSTORE_BATCH = 100
"""New subjects per request handed to the keystore."""


# -- processes ---------------------------------------------------------------------------


def _ppids() -> dict[int, int]:
    return {pid: int(fields[1]) for pid, fields in all_proc_stats().items()}


def tree(root: int) -> list[int]:
    """``root`` and every process descending from it."""
    parents = _ppids()
    out = [root]
    for pid in parents:
        p = parents.get(pid)
        seen = 0
        while p is not None and p > 1 and seen < 64:
            if p == root:
                out.append(pid)
                break
            p = parents.get(p)
            seen += 1
    return out


# -- 1 and 2: collector and processor CPU per event ---------------------------------------


def cpu(base: Path, events: int, clients: int, log: Callable[[str], None]) -> dict[str, Any]:
    data = base / "cpu"
    key = create_source(data, "bench", "--basis", "legitimate_interest")
    server = ServerProcess(data, workers=2).start()
    segments: list[dict[str, Any]] = []
    try:
        core = server.core_pid()
        if core is None:
            raise RuntimeError("core process not found")
        os.kill(core, signal.SIGSTOP)  # the collector's figure: the processor waits
        try:
            total = 0
            while total < events * 0.95:
                seg = max(1.0, min(10.0, (events - total) / 150_000))
                r = measure_unique(server, key, "closed", seg, clients)
                r["duration"] = seg
                segments.append(r)
                if r["ok_events"] == 0:
                    raise RuntimeError("the collector acknowledged nothing")
                total = _log_stats(DataDir(data).log)[1]
                log(f"    backlog: {total:,} events ({r['events_per_s']:,.0f}/s, server "
                    f"{r['server_cpu_cores']:.2f} cores)")
        finally:
            os.kill(core, signal.SIGCONT)
    finally:
        server.stop()
    secs = sum(s["duration"] for s in segments)
    ok = sum(s["ok_events"] for s in segments)
    srv_cpu = sum(s["server_cpu_cores"] * s["duration"] for s in segments)
    head, total, _ = _log_stats(DataDir(data).log)
    start_events = _events_upto(DataDir(data).log, _warehouse_position(data))
    server = ServerProcess(data, workers=2)
    t0 = time.perf_counter()
    server.start(timeout=300)
    try:
        core = server.core_pid()
        if core is None:
            raise RuntimeError("core process not found")
        t_up = time.perf_counter()
        pos_up = server.processed_position()
        cpu_up = cpu_seconds(tree(core))
        all_up = cpu_seconds(server.pids())
        pos = pos_up
        while pos < head:
            if time.perf_counter() - t0 > max(600.0, total / 2_000):
                raise TimeoutError(f"backlog not drained (at offset {pos} of {head})")
            time.sleep(0.1)
            pos = server.processed_position()
        t_end = time.perf_counter()
        procs = tree(core)
        cpu_end = cpu_seconds(procs)
        all_end = cpu_seconds(server.pids())
    finally:
        server.stop()
    drained = total - _events_upto(DataDir(data).log, pos_up)
    wall = t_end - t_up
    res = {
        "ingest_events": ok, "ingest_seconds": secs, "ingest_events_per_s": ok / secs,
        "collector_cpu_cores": srv_cpu / secs,
        "collector_cpu_us_per_event": srv_cpu / ok * 1e6,
        "backlog_events": total, "already_processed": start_events,
        "startup_seconds": t_up - t0, "drained_after_startup": drained,
        "drain_seconds": wall, "drain_events_per_s": drained / wall if wall else float("nan"),
        "processor_processes": len(procs),
        "processor_cpu_cores": (cpu_end - cpu_up) / wall if wall else float("nan"),
        "processor_cpu_us_per_event": (cpu_end - cpu_up) / drained * 1e6,
        "server_cpu_us_per_event_draining": (all_end - all_up) / drained * 1e6,
        "data_dir": data,
    }
    log(f"    collector {res['collector_cpu_us_per_event']:.1f} µs/event at "
        f"{res['ingest_events_per_s']:,.0f}/s; processor {res['processor_cpu_us_per_event']:.1f}"
        f" µs/event at {res['drain_events_per_s']:,.0f}/s ({len(procs)} processes)")
    return res


# -- 3: bytes per event ------------------------------------------------------------------


def _compressed_groups(docs: list[bytes]) -> dict[int, float]:
    """Bytes per event of the events' JSON compressed in groups of each size, with zstd
    level 1 as :func:`aap.events.encode_events` compresses a record (a Kafka message of
    one person holds such a group)."""
    import zstandard

    z = zstandard.ZstdCompressor(level=1)
    out = {}
    for n in GROUPS:
        used = len(docs) // n * n
        if used:
            size = sum(len(z.compress(b"[" + b",".join(docs[i:i + n]) + b"]"))
                       for i in range(0, used, n))
            out[n] = size / used
    return out


def storage(data: Path, log: Callable[[str], None]) -> dict[str, Any]:
    import msgspec

    from aap.events import payload_bytes
    from aap.store.tiering import TierPolicy, run_tiering
    from aap.store.tiers import TierConfig, TierStore
    from aap.store.warehouse import Warehouse

    paths = DataDir(data)
    con = sqlite3.connect(paths.log_db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    _, log_events, log_bytes = _log_stats(paths.log)
    lg = SQLiteLog(paths.log)
    try:
        records = lg.read(0, limit=SAMPLE_RECORDS)
    finally:
        lg.close()
    docs: list[bytes] = []
    payload = json_bytes = 0
    for r in records:
        raw = payload_bytes(r.payload)
        payload += len(r.payload)
        json_bytes += len(raw)
        docs += [msgspec.json.encode(ev) for ev in msgspec.json.decode(raw)]
    wh = Warehouse(paths.warehouse, tiers=TierStore(TierConfig(str(paths.tiers))))
    try:
        wh.con.execute("CHECKPOINT")
        hot_rows = wh.tier_stats()["hot"][1]
        hot_file = wh.path.stat().st_size
        t0 = time.process_time()
        run_tiering(wh, TierPolicy(hot_days=-2, warm_days=100_000, cold_days=100_000))
        to_warm_cpu = time.process_time() - t0
        _, warm_rows, warm_bytes = wh.tier_stats().get("warm", (0, 0, 0))
        t0 = time.process_time()
        run_tiering(wh, TierPolicy(hot_days=-2, warm_days=-2, cold_days=100_000))
        to_cold_cpu = time.process_time() - t0
        _, cold_rows, cold_bytes = wh.tier_stats().get("cold", (0, 0, 0))
    finally:
        wh.close()
    sampled = sum(r.count for r in records)
    res = {
        "log_events": log_events, "log_bytes": log_bytes,
        "log_bytes_per_event": log_bytes / log_events,
        "sampled_events": sampled,
        "record_payload_bytes_per_event": payload / sampled,
        "record_json_bytes_per_event": json_bytes / sampled,
        "zstd_group_bytes_per_event": _compressed_groups(docs),
        "hot_rows": hot_rows, "hot_file_bytes_per_event": hot_file / hot_rows,
        "warm_rows": warm_rows, "warm_bytes_per_event": warm_bytes / warm_rows,
        "cold_rows": cold_rows, "cold_bytes_per_event": cold_bytes / cold_rows,
        "to_warm_cpu_us_per_event": to_warm_cpu / warm_rows * 1e6,
        "to_cold_cpu_us_per_event": to_cold_cpu / cold_rows * 1e6,
    }
    log(f"    log {res['log_bytes_per_event']:.1f} B/event, warm "
        f"{res['warm_bytes_per_event']:.1f}, cold {res['cold_bytes_per_event']:.1f}")
    return res


# -- 4: shared-state writes ----------------------------------------------------------------


def keystore(data: Path, subjects: int, url: str) -> dict[str, Any]:
    """``subjects`` new subjects handed to the keystore ``KEYSTORE_BATCH`` at a time."""
    from aap.privacy.keystore import Keystore

    ks = Keystore(data, url=url)
    rng = random.Random(7)
    try:
        ks.remember({rng.getrandbits(62): "warm-up"})
        batches = [{rng.getrandbits(62): f"user-{rng.getrandbits(40):012d}"
                    for _ in range(KEYSTORE_BATCH)} for _ in range(subjects // KEYSTORE_BATCH)]
        c0, w0 = time.process_time(), time.perf_counter()
        for b in batches:
            ks.remember(b)
        c1, w1 = time.process_time(), time.perf_counter()
    finally:
        ks.close()
    n = len(batches) * KEYSTORE_BATCH
    return {"engine": "postgresql" if url else "sqlite", "subjects": n,
            "requests": len(batches), "transactions": 2 * len(batches),
            "wall_us_per_subject": (w1 - w0) / n * 1e6,
            "cpu_us_per_subject": (c1 - c0) / n * 1e6,
            "transactions_per_s": 2 * len(batches) / (w1 - w0)}


def ledger_and_audit(data: Path, n: int) -> dict[str, Any]:
    from aap.privacy.audit import AuditLog
    from aap.privacy.consent import ConsentLedger, Statement

    ledger = ConsentLedger(data)
    rng = random.Random(3)
    try:
        w0 = time.perf_counter()
        for i in range(n):
            ledger.record([Statement(i, "src", rng.getrandbits(62), {"analytics": True},
                                     "v1", "api")])
        w1 = time.perf_counter()
    finally:
        ledger.close()
    audit = AuditLog(data)
    a0 = time.perf_counter()
    for _ in range(n):
        audit.append("source:src", "consent.recorded", {"statements": 1})
    a1 = time.perf_counter()
    return {"statements": n, "ledger_commits_per_s": n / (w1 - w0),
            "audit_appends": n, "audit_appends_per_s": n / (a1 - a0)}


LEDGER_WRITERS = (1, 4)


def ledger_pg(data: Path, n: int, url: str) -> dict[str, Any]:
    """``n`` statements, each its own transaction, recorded in the PostgreSQL ledger by 1
    then by 4 threads at once (one process, its pool of 4 connections). The ledger's
    writers take turns on its table from their lock to their commit
    (``ConsentLedger.record``): only the rest of a transaction (its ``BEGIN``, the
    client's work) overlaps, so the ratio shows how far more writers still go."""
    import threading

    from aap.privacy.consent import ConsentLedger, Statement

    ledger = ConsentLedger(data, url=url)
    out: dict[str, Any] = {"statements": n}
    try:
        ledger.record([Statement(0, "src", 1, {"analytics": True}, "v1", "api")])  # warm-up
        for writers in LEDGER_WRITERS:
            per = n // writers

            def write(w: int, per: int = per) -> None:
                rng = random.Random(w)
                for i in range(per):
                    ledger.record([Statement(i, "src", rng.getrandbits(62),
                                             {"analytics": True}, "v1", "api")])

            threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
            w0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            out[f"commits_per_s_{writers}"] = per * writers / (time.perf_counter() - w0)
    finally:
        ledger.close()
    return out


@contextmanager
def _temporary_postgres() -> Iterator[str]:
    """Debian's PostgreSQL in a temporary directory, as the tests start it."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "tests" / "pg.py").is_file():
        raise click.ClickException("--pg needs the tests/ of a source checkout")
    import sys

    sys.path.insert(0, str(root))
    from tests.pg import postgres_server

    with postgres_server() as url:
        yield url


# -- the run ---------------------------------------------------------------------------------


def run(events: int = 1_000_000, clients: int = 2, subjects: int = 20_000,
        statements: int = 200, pg: bool = False, meta_url: str = "") -> dict[str, Any]:
    from rich.console import Console

    console = Console()
    info = machine()
    console.print(f"[bold]aap scale figures[/bold]: backlog of {events:,} events through HTTP "
                  f"({clients} generator processes), {subjects:,} new subjects to the keystore "
                  f"in requests of {KEYSTORE_BATCH}, {statements} consent statements and audit "
                  "appends")
    check_idle(console, info)

    def log(msg: str) -> None:
        console.print(msg, style="dim", highlight=False)

    result: dict[str, Any] = {"machine": info}
    base = Path(tempfile.mkdtemp(prefix="aap-bench-scale-"))
    try:
        log("  collector and processor CPU ...")
        c = result["cpu"] = cpu(base, events, clients, log)
        log("  bytes per event ...")
        result["storage"] = storage(c.pop("data_dir"), log)
        log("  shared-state writes ...")
        result["keystore"] = [keystore(base / "ks-sqlite", subjects, "")]
        with _temporary_postgres() if pg else nullcontext(meta_url) as url:
            if url:
                result["keystore"].append(keystore(base / "ks-pg", subjects, url))
                result["ledger_pg"] = ledger_pg(base / "ledger-pg", statements, url)
        result["ledger"] = ledger_and_audit(base / "ledger", statements)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    _print(console, result)
    return result


def _print(console: Any, r: dict[str, Any]) -> None:
    from rich.table import Table

    info = r["machine"]
    console.print(f"machine: {info['cpu_count']} CPUs ({info['cpu_model']}), {info['platform']}, "
                  f"{info['python']}; busy before start {info['busy_before']:.0%}")
    c, s = r["cpu"], r["storage"]
    t = Table(title="per event")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_column("measured as")
    t.add_row("collector CPU", f"{c['collector_cpu_us_per_event']:.1f} µs",
              f"{c['ingest_events']:,} events in {c['ingest_seconds']:.0f} s, "
              f"{c['ingest_events_per_s']:,.0f}/s, {c['collector_cpu_cores']:.2f} cores")
    t.add_row("processor CPU (core + prepare)", f"{c['processor_cpu_us_per_event']:.1f} µs",
              f"{c['drained_after_startup']:,} events in {c['drain_seconds']:.1f} s, "
              f"{c['drain_events_per_s']:,.0f}/s, {c['processor_cpu_cores']:.2f} cores, "
              f"{c['processor_processes']} processes")
    t.add_row("whole server CPU while draining", f"{c['server_cpu_us_per_event_draining']:.1f} µs",
              "every process of the group (idle collectors too)")
    t.add_row("log file", f"{s['log_bytes_per_event']:.1f} B",
              f"{s['log_events']:,} events, after a WAL checkpoint")
    t.add_row("log record payload (zstd 1)", f"{s['record_payload_bytes_per_event']:.1f} B",
              f"{s['sampled_events']:,} events of {SAMPLE_RECORDS} records")
    t.add_row("log record JSON, uncompressed", f"{s['record_json_bytes_per_event']:.1f} B", "")
    for n, v in s["zstd_group_bytes_per_event"].items():
        t.add_row(f"JSON, zstd 1 in groups of {n:,}", f"{v:.1f} B", "")
    t.add_row("hot DuckDB file", f"{s['hot_file_bytes_per_event']:.1f} B",
              f"{s['hot_rows']:,} rows, after CHECKPOINT")
    t.add_row("warm tier (Parquet)", f"{s['warm_bytes_per_event']:.1f} B",
              f"{s['warm_rows']:,} rows; hot → warm {s['to_warm_cpu_us_per_event']:.2f} µs CPU")
    t.add_row("cold tier", f"{s['cold_bytes_per_event']:.1f} B",
              f"{s['cold_rows']:,} rows; warm → cold {s['to_cold_cpu_us_per_event']:.2f} µs CPU")
    console.print(t)
    k = Table(title=f"keystore: new subjects, {KEYSTORE_BATCH} a request (2 transactions)")
    for col in ("engine", "subjects", "wall µs/subject", "CPU µs/subject", "transactions/s"):
        k.add_column(col, justify="left" if col == "engine" else "right")
    for row in r["keystore"]:
        k.add_row(row["engine"], f"{row['subjects']:,}", f"{row['wall_us_per_subject']:.1f}",
                  f"{row['cpu_us_per_subject']:.1f}", f"{row['transactions_per_s']:,.0f}")
    console.print(k)
    led = r["ledger"]
    console.print(f"consent ledger (SQLite, one statement a transaction): "
                  f"{led['ledger_commits_per_s']:,.0f} commits/s; audit log (flock + fsync "
                  f"each): {led['audit_appends_per_s']:,.0f} appends/s")
    if "ledger_pg" in r:
        lp = r["ledger_pg"]
        one, many = (lp[f"commits_per_s_{w}"] for w in LEDGER_WRITERS)
        console.print(f"consent ledger (PostgreSQL, one statement a transaction, writers "
                      f"taking turns): {one:,.0f} commits/s with 1 writer, {many:,.0f} with "
                      f"{LEDGER_WRITERS[-1]} ({many / one:.2f}x)")


@click.command("scale")
@click.option("--events", type=int, default=1_000_000, show_default=True,
              help="Events in the backlog (collector, processor and bytes per event).")
@click.option("--clients", type=int, default=2, show_default=True,
              help="Load-generator processes.")
@click.option("--subjects", type=int, default=20_000, show_default=True,
              help="New subjects handed to the keystore.")
@click.option("--statements", type=int, default=200, show_default=True,
              help="Consent statements and audit appends written.")
@click.option("--pg", is_flag=True,
              help="Also measure the keystore and the consent ledger on a temporary "
                   "PostgreSQL (Debian's, as the tests start it).")
@click.option("--meta-url", default="",
              help="Also measure the keystore and the consent ledger on this PostgreSQL.")
def main(events: int, clients: int, subjects: int, statements: int, pg: bool,
         meta_url: str) -> None:
    """The per-event constants of docs/scale.md: CPU, bytes, shared-state writes."""
    run(events=events, clients=clients, subjects=subjects, statements=statements, pg=pg,
        meta_url=meta_url)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="python -m benchmarks.scale")
