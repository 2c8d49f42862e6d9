"""Pipeline benchmark: freshness, processor throughput, memory and storage.

Everything runs against the real server (``aap serve`` with 2 granian workers and its
core process) on fresh temporary data dirs, with the load generator of
:mod:`benchmarks.ingest` in separate processes. Four figures:

1. **Freshness** — the time from the collector's 200 to the event being visible to a
   query. A steady background load is offered with the open-loop generator while a
   probe sends one uniquely identified event every ~100 ms in its own request, notes
   when the 200 arrives, and queries the warehouse (``events_raw``, over the core's
   Unix socket) every few milliseconds until the event is there. Measured at the
   offered ``rate`` and again at ``low_rate``; the processor's achieved rate
   (``events_raw`` rows per second over the window) is printed beside the offered one.
2. **Processor throughput** — a backlog is built through the HTTP API with the
   closed-loop generator while the core process is paused (SIGSTOP: the processor does
   not compete for the CPU and does not consume), which also gives the collector's
   durable ingest rate. The server is then stopped and started again, and the time the
   processor takes to drain the backlog gives its rate; the ratio drain / ingest says
   whether the processor keeps up with what the collector can accept.
3. **Memory** — peak RSS of the whole server (every process of its process group,
   summed) sampled every 0.2 s while draining.
4. **Storage** — bytes per event of the warm tier (daily Parquet) and the cold tier
   (monthly archives) for the demo traffic of :func:`aap.demo.simulate`, and of the
   log for comparison.

The generator of :mod:`benchmarks.ingest` repeats 32 pre-built bodies, whose message
ids the processor's dedup would drop after the first time. Here every request gets
fresh message ids (a random per-process salt and a per-process request counter written
over the template's ids, same length, so the ``Content-Length`` holds); the
generator's own loops, connections and accounting are reused unchanged.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import click
import httpx

from aap.datadir import DataDir
from aap.log.sqlite import SQLiteLog
from aap.runner import ServerProcess, create_source
from benchmarks.common import check_idle, cpu_seconds, machine, percentile, verdict
from benchmarks.ingest import (
    EVENTS_PER_REQUEST,
    WARMUP_SECONDS,
    build_requests,
    client_main,
    measure,
)  # fmt: skip

TARGET_FRESHNESS_P95_S = 1.0
TARGET_DRAIN_RATIO = 1.0
TARGET_PEAK_RSS = 2 * 1024**3
TARGET_WARM_BYTES_PER_EVENT = 40.0

PROBE_INTERVAL_S = 0.1
"""One probe event every this often, each in its own request."""
POLL_INTERVAL_S = 0.005
"""Pause between two visibility queries."""
PROBE_GIVE_UP_S = 30.0
"""A probe not visible this long after its 200 counts as not visible."""
SAMPLE_INTERVAL_S = 0.2
"""Memory and progress sampling while draining."""


# -- unique message ids for the generator of benchmarks/ingest.py -------------------------

_MESSAGE_ID = re.compile(rb'"messageId":"([0-9a-f-]{36})"')


class UniqueRequests:
    """A stand-in for the generator's list of pre-built requests: indexing it returns
    the template at that index with every message id replaced by a new one.

    An id is ``SSSSSSSS-JJJJ-4KKK-8000-CCCCCCCCCCCC``: a random salt of this generator
    process, the event's index in the batch, the template and the process's request
    counter — unique across processes and runs, and as long as the uuid it replaces.
    """

    def __init__(self, templates: list[bytes]) -> None:
        self.templates = [bytearray(t) for t in templates]
        self.slots = [[m.start(1) for m in _MESSAGE_ID.finditer(t)] for t in templates]
        self.salt = int.from_bytes(os.urandom(4), "big")
        self.counter = 0

    def __len__(self) -> int:
        return len(self.templates)

    def __getitem__(self, i: int) -> bytes:
        k = i % len(self.templates)
        buf = self.templates[k]
        self.counter += 1
        for j, at in enumerate(self.slots[k]):
            buf[at:at + 36] = b"%08x-%04x-4%03x-8000-%012x" % (self.salt, j, k, self.counter)
        return bytes(buf)


def unique_requests(write_key: str, port: int, seed: int) -> Sequence[bytes]:
    """The ingest benchmark's requests with fresh message ids in every one sent."""
    return cast(list[bytes], UniqueRequests(build_requests(write_key, port, seed=seed)))


def measure_unique(server: ServerProcess, key: str, mode: str, duration: float, clients: int,
                   rate: int = 0) -> dict[str, Any]:
    """:func:`benchmarks.ingest.measure` with generators that send unique message ids."""
    entry = functools.partial(client_main, requests=unique_requests)
    return measure(server, key, mode, duration, clients, rate, entry=entry)


# -- the server's processes --------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _thread_cpu(pid: int) -> list[tuple[str, float]]:
    """(thread name, CPU seconds) of every thread of ``pid``, busiest first."""
    out = []
    hz = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out.append((f"{name}[{tid}]", (int(fields[11]) + int(fields[12])) / hz))
    return sorted(out, key=lambda x: -x[1])


class MemorySampler:
    """Peak of the summed RSS of every process in the server's process group (and of
    the core process alone), sampled every ``interval`` seconds in a thread."""

    def __init__(self, server: ServerProcess, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.server = server
        self.interval = interval
        self.peak = 0
        self.peak_core = 0
        self.peak_procs = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aap-bench-rss", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = self.server.pids()
            if pids:
                rss = {pid: _rss_bytes(pid) for pid in pids}
                self.samples += 1
                self.peak = max(self.peak, sum(rss.values()))
                self.peak_procs = max(self.peak_procs, len(pids))
                core = self.server.core_pid()
                if core is not None:
                    self.peak_core = max(self.peak_core, rss.get(core, 0))
            self._stop.wait(self.interval)


def _events_upto(log_dir: Path, seq: int) -> int:
    """Events in the log's records up to and including offset ``seq``."""
    if seq <= 0:
        return 0
    con = sqlite3.connect(f"file:{log_dir / 'log.db'}?mode=ro", uri=True, timeout=30)
    try:
        row = con.execute("SELECT cum FROM records WHERE seq <= ? ORDER BY seq DESC LIMIT 1",
                          (seq,)).fetchone()
    finally:
        con.close()
    return int(row[0]) if row else 0


def _log_stats(log_dir: Path) -> tuple[int, int, int]:
    """(head offset, events, bytes on disk) of the log."""
    log = SQLiteLog(log_dir)
    try:
        st = log.stats()
    finally:
        log.close()
    return st.head_offset, st.total_events, st.size_bytes


# -- 1. freshness ----------------------------------------------------------------------


PROBE_EVENT = "Freshness Probe"


def _probe_body(mid: str) -> bytes:
    """One event whose message id and property ``marker`` are ``mid``."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"batch": [{
        "type": "track", "event": PROBE_EVENT, "messageId": mid,
        "anonymousId": "freshness-probe", "timestamp": now,
        "properties": {"probe": True, "marker": mid},
    }], "sentAt": now}).encode()


class Probe:
    """Sends one uniquely identified event every ``PROBE_INTERVAL_S`` (sender thread; to
    each of ``urls`` in turn, by default the server's) and polls the warehouse until each
    is visible (``poll()`` in the caller's thread). How it looks: :meth:`_reader` and
    :meth:`_visible` (here the core's socket; :mod:`benchmarks.cluster` asks the REST
    API instead)."""

    poll_interval = POLL_INTERVAL_S

    def __init__(self, server: ServerProcess, key: str, urls: Sequence[str] = ()) -> None:
        self.server = server
        self.key = key
        self.urls = list(urls) or [server.url]
        self.lock = threading.Lock()
        self.pending: dict[str, float] = {}
        """Probes acknowledged and not seen yet: message id → when the 200 came."""
        self.sent_at: dict[str, datetime] = {}
        """… and when (wall clock) the request went out: the event's receive time is
        later, which lets the visibility query skip all older rows."""
        self.freshness: list[float] = []
        self.not_visible = 0
        self.send_failed = 0
        self.sent = 0
        self.poll_ms: list[float] = []
        self.stop_sending = threading.Event()
        self.thread = threading.Thread(target=self._send, name="aap-bench-probe", daemon=True)

    def _send(self) -> None:
        clients = [httpx.Client(base_url=url, auth=(self.key, ""), timeout=10.0,
                                headers={"Content-Type": "application/json"})
                   for url in self.urls]
        try:
            self._send_with(clients)
        finally:
            for c in clients:
                c.close()

    def _send_with(self, clients: list[httpx.Client]) -> None:
        t0 = time.perf_counter()
        i = 0
        while not self.stop_sending.is_set():
            mid = f"probe-{uuid.uuid4()}"
            sent_at = datetime.now(UTC)
            try:
                r = clients[i % len(clients)].post("/v1/batch", content=_probe_body(mid))
                ok = r.status_code == 200 and r.json().get("accepted") == 1
            except (httpx.HTTPError, ValueError):
                ok = False
            acked = time.perf_counter()
            with self.lock:
                self.sent += 1
                if ok:
                    self.pending[mid] = acked
                    self.sent_at[mid] = sent_at
                else:
                    self.send_failed += 1
            i += 1
            self.stop_sending.wait(max(0.0, t0 + i * PROBE_INTERVAL_S - time.perf_counter()))

    def start(self) -> None:
        self.thread.start()

    def _reader(self) -> Any:
        """What :meth:`_visible` asks (a context manager)."""
        return self.server.core()

    def _visible(self, core: Any, mids: list[str], since: str) -> list[str]:
        """Which of ``mids`` a query finds now (rows received at ``since`` or later)."""
        marks = ", ".join("?" * len(mids))
        r = core.post("/internal/sql", json={
            "sql": f"SELECT message_id FROM events_raw WHERE received_at >= ?::TIMESTAMP"
                   f" AND message_id IN ({marks})",
            "params": [since, *mids]})
        if r.status_code != 200:
            raise RuntimeError(f"visibility query failed: {r.text}")
        return [row[0] for row in r.json()["rows"]]

    def poll_until(self, stop: Callable[[], bool]) -> None:
        """Poll until ``stop()`` (called once per round) is true and nothing is pending."""
        with self._reader() as core:
            while True:
                done = stop()
                with self.lock:
                    now = time.perf_counter()
                    for mid, acked in list(self.pending.items()):
                        if now - acked > PROBE_GIVE_UP_S:
                            del self.pending[mid]
                            del self.sent_at[mid]
                            self.not_visible += 1
                    mids = list(self.pending)
                    oldest = min((self.sent_at[m] for m in mids), default=None)
                if not mids:
                    if done:
                        return
                    time.sleep(self.poll_interval)
                    continue
                q0 = time.perf_counter()
                # only rows received since the oldest pending probe was sent (less a second
                # for clock steps): the engine skips older row groups, so the probe costs
                # the server little CPU however long the run
                assert oldest is not None
                since = (oldest - timedelta(seconds=1)).replace(tzinfo=None).isoformat()
                found = self._visible(core, mids, since)
                seen_at = time.perf_counter()  # the reply: an upper bound of the visible time
                self.poll_ms.append((seen_at - q0) * 1000.0)
                with self.lock:
                    for mid in found:
                        acked_at = self.pending.pop(mid, None)
                        self.sent_at.pop(mid, None)
                        if acked_at is not None:
                            self.freshness.append(seen_at - acked_at)
                time.sleep(self.poll_interval)


def _count_raw(server: ServerProcess) -> int:
    return int(cast(int, server.sql("SELECT count(*) FROM events_raw")[0][0]))


def freshness(base: Path, name: str, rate: int, duration: float, clients: int,
              log: Callable[[str], None]) -> dict[str, Any]:
    """Freshness under ``rate`` events/s of background load, on a fresh server."""
    data = base / name
    key = create_source(data, "bench", "--basis", "legitimate_interest")
    server = ServerProcess(data, workers=2).start()
    try:
        held: dict[str, Any] = {}

        def load() -> None:
            try:
                held["load"] = measure_unique(server, key, "open", duration, clients, rate)
            except BaseException as exc:
                held["error"] = f"{type(exc).__name__}: {exc}"

        loader = threading.Thread(target=load, name="aap-bench-load", daemon=True)
        loader.start()
        deadline = time.monotonic() + 90
        while _log_stats(DataDir(data).log)[1] == 0:  # the generators have been told to go
            if not loader.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"background load did not start: {held.get('error')}")
            time.sleep(0.02)
        time.sleep(WARMUP_SECONDS)  # the generators' warm-up: not measured
        t_a, n_a = time.perf_counter(), _count_raw(server)
        window_end = t_a + duration
        probe = Probe(server, key)
        probe.start()
        stats: dict[str, Any] = {}

        def window_over() -> bool:
            if time.perf_counter() < window_end:
                return False
            if not probe.stop_sending.is_set():
                probe.stop_sending.set()
                stats["t_b"], stats["n_b"] = time.perf_counter(), _count_raw(server)
                stats["log_events_b"] = _log_stats(DataDir(data).log)[1]
            return True

        probe.poll_until(window_over)
        probe.thread.join()
        loader.join(timeout=duration + 120)
        if "error" in held:
            raise RuntimeError(f"background load failed: {held['error']}")
        if "load" not in held:
            raise RuntimeError("background load did not finish")
        ld = held["load"]
        wall = stats["t_b"] - t_a
        processed_rate = (stats["n_b"] - n_a) / wall
        fresh_ms = sorted(f * 1000.0 for f in probe.freshness)
        poll_ms = sorted(probe.poll_ms)
        res = {
            "offered_events_per_s": rate,
            "acked_events_per_s": ld["events_per_s"],
            "load_non_200": ld["non_200"], "load_errors": ld["errors"],
            "load_p99_ms": ld["p99_ms"],
            "processed_events_per_s": processed_rate,
            "processed_ratio": processed_rate / rate if rate else float("nan"),
            "lag_at_end": max(0, stats["log_events_b"] - stats["n_b"]),
            "window_s": wall,
            "probes_sent": probe.sent, "probes_failed": probe.send_failed,
            "probes_visible": len(fresh_ms), "probes_not_visible": probe.not_visible,
            "p50_ms": percentile(fresh_ms, 50), "p95_ms": percentile(fresh_ms, 95),
            "max_ms": fresh_ms[-1] if fresh_ms else float("nan"),
            "poll_p50_ms": percentile(poll_ms, 50),
            "server_cpu_cores": ld["server_cpu_cores"],
            "client_cpu_cores": ld["client_cpu_cores"],
        }
        log(f"    {name}: offered {rate:,}/s, acked {res['acked_events_per_s']:,.0f}/s, "
            f"processed {processed_rate:,.0f}/s; freshness p50 {res['p50_ms']:.0f} ms, "
            f"p95 {res['p95_ms']:.0f} ms ({len(fresh_ms)} probes, "
            f"{probe.not_visible} not visible)")
        return res
    finally:
        server.stop()


# -- 2 and 3. backlog: ingest rate, drain rate, memory ----------------------------------


def backlog(base: Path, events: int, clients: int,
            log: Callable[[str], None]) -> dict[str, Any]:
    data = base / "backlog"
    key = create_source(data, "bench", "--basis", "legitimate_interest")
    server = ServerProcess(data, workers=2).start()
    segments: list[dict[str, Any]] = []
    try:
        core = server.core_pid()
        if core is None:
            raise RuntimeError("core process not found")
        os.kill(core, signal.SIGSTOP)  # the processor neither consumes nor takes CPU
        try:
            total = 0
            est = 0.0
            while total < events * 0.98:  # within 2%: another segment would overshoot more
                left = events - total
                # The warm-up second before each window also fills the log: leave room for it.
                seg = (max(1.0, min(5.0, left / 250_000)) if est == 0
                       else min(120.0, max(1.0, left / est - WARMUP_SECONDS)))
                r = measure_unique(server, key, "closed", seg, clients)
                r["duration"] = seg
                segments.append(r)
                if r["ok_events"] == 0:
                    raise RuntimeError("the collector acknowledged nothing")
                est = sum(s["ok_events"] for s in segments) / sum(s["duration"] for s in segments)
                total = _log_stats(DataDir(data).log)[1]
                log(f"    backlog: {total:,} of {events:,} events in the log "
                    f"(segment {seg:.1f} s at {r['events_per_s']:,.0f}/s)")
        finally:
            os.kill(core, signal.SIGCONT)
    finally:
        server.stop()
    ingest_s = sum(s["duration"] for s in segments)
    ingest_events = sum(s["ok_events"] for s in segments)
    ingest_rate = ingest_events / ingest_s
    head, total, log_bytes = _log_stats(DataDir(data).log)
    # The core ran for a moment after SIGCONT, before it stopped: start from where it is.
    start_events = _events_upto(DataDir(data).log, _warehouse_position(data))
    server = ServerProcess(data, workers=2)
    t0 = time.perf_counter()
    with MemorySampler(server) as mem:
        server.start(timeout=300)
        t_up = time.perf_counter()
        try:
            pos_up = server.processed_position()
            core = server.core_pid()
            deadline = t0 + max(600.0, total / 2_000)
            last_print = t0
            pos = pos_up
            while pos < head:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"backlog not drained in {deadline - t0:.0f} s "
                                       f"(at offset {pos} of {head})")
                time.sleep(SAMPLE_INTERVAL_S)
                pos = server.processed_position()
                if time.perf_counter() - last_print > 15:
                    last_print = time.perf_counter()
                    done = _events_upto(DataDir(data).log, pos) - start_events
                    log(f"    draining: {done:,} of {total - start_events:,} events after "
                        f"{last_print - t0:.0f} s (peak RSS {mem.peak / 2**20:,.0f} MiB)")
            t_end = time.perf_counter()
            core_cpu = cpu_seconds([core]) if core else float("nan")
            threads = _thread_cpu(core)[:4] if core else []
            rows = _count_raw(server)
            duck = int(cast(int, server.sql(
                "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()")[0][0]))
            core_rss_end = _rss_bytes(core) if core else 0
        finally:
            server.stop()
    drained = total - start_events
    up_events = _events_upto(DataDir(data).log, pos_up) - start_events
    drain_s = t_end - t0
    drain_rate = drained / drain_s
    steady = (drained - up_events) / (t_end - t_up) if t_end > t_up else float("nan")
    log(f"    drained {drained:,} events in {drain_s:.1f} s ({drain_rate:,.0f}/s); "
        f"peak RSS {mem.peak / 2**20:,.0f} MiB")
    return {
        "backlog_events": total, "backlog_records": head, "log_bytes": log_bytes,
        "ingest_events": ingest_events, "ingest_seconds": ingest_s,
        "ingest_events_per_s": ingest_rate,
        "ingest_p99_ms": max(s["p99_ms"] for s in segments),
        "ingest_non_200": sum(s["non_200"] for s in segments),
        "ingest_errors": sum(s["errors"] for s in segments),
        "ingest_server_cpu_cores": sum(s["server_cpu_cores"] * s["duration"] for s in segments)
        / ingest_s,
        "already_processed": start_events,
        "drained_events": drained, "drain_seconds": drain_s,
        "drain_events_per_s": drain_rate,
        "startup_seconds": t_up - t0, "drain_events_per_s_after_startup": steady,
        "drain_ingest_ratio": drain_rate / ingest_rate if ingest_rate else float("nan"),
        "rows_in_warehouse": rows,
        "core_cpu_cores": core_cpu / drain_s,
        "core_threads": threads,
        "peak_rss_bytes": mem.peak, "peak_core_rss_bytes": mem.peak_core,
        "duckdb_memory_bytes_end": duck, "core_rss_bytes_end": core_rss_end,
        "rss_samples": mem.samples, "server_processes": mem.peak_procs,
    }


def _warehouse_position(data: Path) -> int:
    """The log position the warehouse of a stopped server has committed."""
    import duckdb

    con = duckdb.connect(str(DataDir(data).hot_db), read_only=True)
    try:
        row = con.execute("SELECT value FROM processor_state WHERE name = 'log_position'"
                          ).fetchone()
    finally:
        con.close()
    return int(row[0]) if row else 0


# -- 4. storage --------------------------------------------------------------------------


def storage(base: Path, people: int, log: Callable[[str], None]) -> dict[str, Any]:
    from rich.console import Console

    from aap.demo import send_all, simulate
    from aap.store.tiering import TierPolicy, run_tiering
    from aap.store.tiers import TierConfig, TierStore
    from aap.store.warehouse import Warehouse

    data = base / "storage"
    key = create_source(data, "demo")
    events = list(simulate(people=people, seed=7))
    with ServerProcess(data, workers=2) as server:
        t0 = time.perf_counter()
        accepted = send_all(server.url, key, events, Console(stderr=True))
        send_s = time.perf_counter() - t0
        server.wait_processed(timeout=600)
    con = sqlite3.connect(DataDir(data).log_db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the log's bytes, not its WAL's
    finally:
        con.close()
    _, log_events, log_bytes = _log_stats(DataDir(data).log)
    wh = Warehouse(DataDir(data).warehouse, tiers=TierStore(TierConfig(str(DataDir(data).tiers))))
    try:
        wh.con.execute("CHECKPOINT")
        hot_rows = wh.tier_stats()["hot"][1]
        hot_file = wh.path.stat().st_size
        # hot_days=-2: every day before the day after tomorrow moves, i.e. all of them
        # (events may lie up to 5 minutes ahead of the clock: past midnight, tomorrow).
        moved = run_tiering(wh, TierPolicy(hot_days=-2, warm_days=100_000, cold_days=100_000))
        st = wh.tier_stats()
        warm_files, warm_rows, warm_bytes = st.get("warm", (0, 0, 0))
        hot_left = st["hot"][1]
        moved_cold = run_tiering(wh, TierPolicy(hot_days=-2, warm_days=-2, cold_days=100_000))
        cold_files, cold_rows, cold_bytes = wh.tier_stats().get("cold", (0, 0, 0))
    finally:
        wh.close()
    res = {
        "people": people, "events_sent": len(events), "accepted": accepted,
        "send_seconds": send_s,
        "hot_rows": hot_rows, "hot_file_bytes": hot_file, "hot_left_after_tiering": hot_left,
        "to_warm": moved["to_warm"], "to_cold": moved_cold["to_cold"],
        "warm_files": warm_files, "warm_rows": warm_rows, "warm_bytes": warm_bytes,
        "warm_bytes_per_event": warm_bytes / warm_rows if warm_rows else float("nan"),
        "cold_files": cold_files, "cold_rows": cold_rows, "cold_bytes": cold_bytes,
        "cold_bytes_per_event": cold_bytes / cold_rows if cold_rows else float("nan"),
        "log_events": log_events, "log_bytes": log_bytes,
        "log_bytes_per_event": log_bytes / log_events if log_events else float("nan"),
        "hot_file_bytes_per_event": hot_file / hot_rows if hot_rows else float("nan"),
    }
    log(f"    storage: {warm_rows:,} events, warm {res['warm_bytes_per_event']:.1f} B/event, "
        f"cold {res['cold_bytes_per_event']:.1f} B/event")
    return res


# -- the whole run -------------------------------------------------------------------------


PHASES = ("freshness", "backlog", "storage")


def run(duration: float = 20.0, rate: int = 50_000, low_rate: int = 10_000,
        backlog_events: int = 5_000_000, people: int = 20_000, clients: int = 2,
        phases: tuple[str, ...] = PHASES) -> dict[str, Any]:
    """Run the measurements, print them with the targets and return the figures.

    A phase that fails is reported (with its error) and counted as a miss; the others
    still run.
    """
    from rich.console import Console

    console = Console()
    if console.width < 110:
        console = Console(width=110)
    info = machine()
    info["memory_gib"] = _mem_total() / 2**30
    console.print(
        f"[bold]aap pipeline benchmark[/bold]: freshness at {rate:,} and {low_rate:,} "
        f"events/s offered for {duration:g} s each, backlog of {backlog_events:,} events, "
        f"storage of the demo traffic of {people:,} people; {clients} generator process(es), "
        f"{EVENTS_PER_REQUEST} events per request, unique message ids"
    )
    check_idle(console, info)

    def log(msg: str) -> None:
        console.print(msg, style="dim", highlight=False)

    result: dict[str, Any] = {
        "machine": info, "duration": duration, "rate": rate, "low_rate": low_rate,
        "backlog_events": backlog_events, "people": people, "clients": clients, "errors": {},
    }
    base = Path(tempfile.mkdtemp(prefix="aap-bench-pipeline-"))
    try:
        steps: list[tuple[str, str, Callable[[], dict[str, Any]]]] = []
        if "freshness" in phases:
            steps += [
                ("freshness", "freshness_high",
                 lambda: freshness(base, "fresh-high", rate, duration, clients, log)),
                ("freshness", "freshness_low",
                 lambda: freshness(base, "fresh-low", low_rate, duration, clients, log)),
            ]
        if "backlog" in phases:
            steps.append(("backlog", "backlog",
                          lambda: backlog(base, backlog_events, clients, log)))
        if "storage" in phases:
            steps.append(("storage", "storage", lambda: storage(base, people, log)))
        for _, label, fn in steps:
            log(f"  measuring {label} ...")
            try:
                result[label] = fn()
            except Exception as exc:
                result["errors"][label] = f"{type(exc).__name__}: {exc}"
                console.print(f"  [red]{label} failed[/red]: {exc}")
                console.print(traceback.format_exc(), style="dim", highlight=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result["targets"] = _targets(result)
    _print(console, result)
    return result


def _mem_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _targets(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    t: dict[str, dict[str, Any]] = {}
    for label in ("freshness_high", "freshness_low"):
        if label in r:
            f = r[label]
            t[label] = {"value": f["p95_ms"] / 1000.0, "target": TARGET_FRESHNESS_P95_S,
                        "pass": f["p95_ms"] / 1000.0 <= TARGET_FRESHNESS_P95_S
                        and f["probes_not_visible"] == 0 and f["probes_failed"] == 0
                        and f["probes_visible"] > 0}
    if "backlog" in r:
        b = r["backlog"]
        t["drain_ratio"] = {"value": b["drain_ingest_ratio"], "target": TARGET_DRAIN_RATIO,
                            "pass": b["drain_ingest_ratio"] >= TARGET_DRAIN_RATIO}
        t["peak_rss"] = {"value": b["peak_rss_bytes"], "target": TARGET_PEAK_RSS,
                         "pass": 0 < b["peak_rss_bytes"] <= TARGET_PEAK_RSS}
    if "storage" in r:
        s = r["storage"]
        t["warm_bytes"] = {"value": s["warm_bytes_per_event"],
                           "target": TARGET_WARM_BYTES_PER_EVENT,
                           "pass": s["warm_bytes_per_event"] <= TARGET_WARM_BYTES_PER_EVENT}
    return t


def _print(console: Any, r: dict[str, Any]) -> None:
    from rich.table import Table

    info = r["machine"]
    console.print(
        f"machine: {info['cpu_count']} CPUs ({info['cpu_model']}), {info['memory_gib']:.0f} GiB, "
        f"{info['platform']}, {info['python']}, granian {info['granian']}; server: 2 granian "
        f"workers + the core process; load generator and probe on the same cores"
    )
    fresh = [(lbl, r[lbl]) for lbl in ("freshness_high", "freshness_low") if lbl in r]
    if fresh:
        t = Table(title="Freshness: collector's 200 → visible in events_raw "
                        f"(probe every {PROBE_INTERVAL_S * 1000:.0f} ms)")
        t.add_column("measure")
        for _, f in fresh:
            t.add_column(f"offered {f['offered_events_per_s']:,}/s", justify="right")
        lines: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
            ("background load acknowledged", lambda f: f"{f['acked_events_per_s']:,.0f}/s"),
            ("  its p99 latency / non-200 / errors", lambda f: (
                f"{f['load_p99_ms']:.1f} ms / {f['load_non_200']} / {f['load_errors']}")),
            ("processed into events_raw", lambda f: f"{f['processed_events_per_s']:,.0f}/s"),
            ("  processed / offered", lambda f: f"{f['processed_ratio']:.2f}"),
            ("  unprocessed events at the end of the window", lambda f: f"{f['lag_at_end']:,}"),
            ("freshness p50", lambda f: _ms(f["p50_ms"])),
            ("freshness p95", lambda f: _ms(f["p95_ms"])),
            ("freshness max", lambda f: _ms(f["max_ms"])),
            ("probes visible / sent", lambda f: f"{f['probes_visible']} / {f['probes_sent']}"),
            ("probes not visible within 30 s / failed", lambda f: (
                f"{f['probes_not_visible']} / {f['probes_failed']}")),
            ("visibility query p50 (resolution)", lambda f: f"{f['poll_p50_ms']:.1f} ms"),
            ("CPU: server / generator (cores)", lambda f: (
                f"{f['server_cpu_cores']:.2f} / {f['client_cpu_cores']:.2f}")),
        ]
        for label, cell in lines:
            t.add_row(label, *(cell(f) for _, f in fresh))
        console.print(t)
        for _, f in fresh:
            if f["load_non_200"] or f["load_errors"]:
                console.print(f"  offered {f['offered_events_per_s']:,}/s: background load had "
                              f"{f['load_non_200']} non-200 answers and {f['load_errors']} errors")
    if "backlog" in r:
        b = r["backlog"]
        t = Table(title=f"Processor throughput and memory: backlog of {b['backlog_events']:,} "
                        f"events ({b['backlog_records']:,} log records, "
                        f"{b['log_bytes'] / 2**20:,.0f} MiB)")
        for col in ("measure", "value"):
            t.add_column(col, justify="left" if col == "measure" else "right")
        t.add_row("collector durable ingest, closed loop (processor paused)",
                  f"{b['ingest_events_per_s']:,.0f} events/s")
        t.add_row("  its p99 latency / non-200 / errors / server CPU",
                  f"{b['ingest_p99_ms']:.1f} ms / {b['ingest_non_200']} / "
                  f"{b['ingest_errors']} / {b['ingest_server_cpu_cores']:.2f} cores")
        t.add_row("processor drain (from server start)",
                  f"{b['drain_events_per_s']:,.0f} events/s")
        t.add_row("  events drained / time", f"{b['drained_events']:,} in "
                  f"{b['drain_seconds']:.1f} s")
        t.add_row("  of which server start-up",
                  f"{b['startup_seconds']:.1f} s")
        t.add_row("  rate after start-up", f"{b['drain_events_per_s_after_startup']:,.0f} events/s")
        t.add_row("  rows in events_raw after drain", f"{b['rows_in_warehouse']:,}")
        t.add_row("  core process CPU while draining", f"{b['core_cpu_cores']:.2f} cores")
        if b["core_threads"]:
            t.add_row("  busiest threads of the core (CPU s)",
                      ", ".join(f"{n} {s:.0f}" for n, s in b["core_threads"]))
        t.add_row("drain / ingest", f"{b['drain_ingest_ratio']:.2f}")
        t.add_row(f"peak RSS of the server ({b['server_processes']} processes, "
                  f"{b['rss_samples']} samples)", f"{b['peak_rss_bytes'] / 2**20:,.0f} MiB")
        t.add_row("  of which the core process (its own peak)",
                  f"{b['peak_core_rss_bytes'] / 2**20:,.0f} MiB")
        t.add_row("  core RSS / DuckDB's own memory, at the end of the drain",
                  f"{b['core_rss_bytes_end'] / 2**20:,.0f} / "
                  f"{b['duckdb_memory_bytes_end'] / 2**20:,.0f} MiB")
        console.print(t)
    if "storage" in r:
        s = r["storage"]
        t = Table(title=f"Storage: demo traffic, {s['people']:,} people, seed 7 "
                        f"({s['accepted']:,} of {s['events_sent']:,} events accepted)")
        for col in ("where", "events", "files", "bytes", "bytes/event"):
            t.add_column(col, justify="left" if col == "where" else "right")
        t.add_row("log (SQLite, JSON+zstd-1, after checkpoint)", f"{s['log_events']:,}", "1",
                  f"{s['log_bytes']:,}", f"{s['log_bytes_per_event']:.1f}")
        t.add_row("hot: DuckDB file (all tables)", f"{s['hot_rows']:,}", "1",
                  f"{s['hot_file_bytes']:,}", f"{s['hot_file_bytes_per_event']:.1f}")
        t.add_row("warm: daily Parquet (zstd-6)", f"{s['warm_rows']:,}", str(s["warm_files"]),
                  f"{s['warm_bytes']:,}", f"{s['warm_bytes_per_event']:.1f}")
        t.add_row("cold: monthly Parquet (zstd-19)", f"{s['cold_rows']:,}", str(s["cold_files"]),
                  f"{s['cold_bytes']:,}", f"{s['cold_bytes_per_event']:.1f}")
        console.print(t)
        if s["hot_left_after_tiering"]:
            console.print(f"  [yellow]{s['hot_left_after_tiering']:,} rows stayed hot[/yellow]")
    tg = r["targets"]
    t = Table(title="Targets")
    for col in ("target", "measured", "wanted", "result"):
        t.add_column(col)
    for label, title in (("freshness_high", f"freshness p95 at {r['rate']:,} events/s offered"),
                         ("freshness_low", f"freshness p95 at {r['low_rate']:,} events/s offered")):
        if label in tg:
            f = r[label]
            extra = (f", {f['probes_not_visible'] + f['probes_failed']} probes not visible"
                     if f["probes_not_visible"] + f["probes_failed"] else "")
            t.add_row(title, f"{tg[label]['value']:.3f} s{extra}",
                      f"<= {TARGET_FRESHNESS_P95_S:g} s, every probe visible",
                      verdict(tg[label]["pass"]))
    if "drain_ratio" in tg:
        b = r["backlog"]
        t.add_row("processor drain / collector ingest",
                  f"{b['drain_events_per_s']:,.0f} / {b['ingest_events_per_s']:,.0f} = "
                  f"{tg['drain_ratio']['value']:.2f}",
                  f">= {TARGET_DRAIN_RATIO:g}", verdict(tg["drain_ratio"]["pass"]))
        t.add_row("peak RSS of the server while draining",
                  f"{tg['peak_rss']['value'] / 2**20:,.0f} MiB",
                  f"<= {TARGET_PEAK_RSS / 2**30:g} GiB", verdict(tg["peak_rss"]["pass"]))
    if "warm_bytes" in tg:
        t.add_row("warm tier bytes/event (demo traffic)", f"{tg['warm_bytes']['value']:.1f} B",
                  f"<= {TARGET_WARM_BYTES_PER_EVENT:g} B", verdict(tg["warm_bytes"]["pass"]))
    for label, err in r["errors"].items():
        t.add_row(label, f"failed: {err}", "", verdict(False))
    console.print(t)
    console.print(
        "Freshness is measured from the 200 of the probe's own request to the reply of the "
        "first visibility query that found it (an upper bound; poll p50 is the resolution). "
        "processed/s counts rows added to events_raw over the measurement window; lag at end "
        "is what the log held beyond that. The backlog is built with the core process "
        "paused (SIGSTOP), and drained after a restart; drain time counts from the start of "
        "the server. CPU columns in cores.",
        style="dim",
    )


def _ms(v: float) -> str:
    return "n/a" if v != v else f"{v:,.0f} ms"


@click.command("pipeline")
@click.option("--rate", type=int, default=50_000, show_default=True,
              help="Offered background events/s for the freshness probe.")
@click.option("--low-rate", type=int, default=10_000, show_default=True,
              help="A second, lower offered rate for the freshness probe.")
@click.option("--duration", type=float, default=20.0, show_default=True,
              help="Seconds of background load per freshness measurement.")
@click.option("--backlog", type=int, default=5_000_000, show_default=True,
              help="Events in the backlog the processor drains.")
@click.option("--people", type=int, default=20_000, show_default=True,
              help="Simulated people of the demo traffic measured for storage.")
@click.option("--clients", type=int, default=2, show_default=True,
              help="Load-generator processes.")
@click.option("--only", type=click.Choice(PHASES), multiple=True,
              help="Run only this phase (repeatable).")
def main(rate: int, low_rate: int, duration: float, backlog: int, people: int,
         clients: int, only: tuple[str, ...]) -> None:
    """Freshness, processor throughput, memory and warm-tier bytes per event."""
    run(duration=duration, rate=rate, low_rate=low_rate, backlog_events=backlog,
        people=people, clients=clients, phases=only or PHASES)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="python -m benchmarks.pipeline")
