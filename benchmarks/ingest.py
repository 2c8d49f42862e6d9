"""Ingest benchmark: durable vs null-log throughput and latency on ``POST /v1/batch``.

The real server (``aap serve``, 2 granian workers) is started twice on fresh temporary
data dirs: once with the durable SQLite log and once with the null log. The load comes
from ``clients`` separate processes, each an asyncio program speaking HTTP/1.1
keep-alive over raw asyncio streams with the small response reader below (see there why
not a library). Each request is one of a few pre-built 100-event Segment batches (~300
bytes per event).

Three measurements:

- closed loop on the durable log: every connection sends back to back; the maximum
  throughput and the latency under that load;
- closed loop on the null log: the same, without durability (decode, validation and
  HTTP only), to see what the log costs;
- open loop on the durable log: requests leave on a fixed schedule at the offered rate
  and latency is taken from each request's *intended* send time, so a stalled server
  cannot hide its stall by slowing the generator down (no coordinated omission).

Only status 200 counts as acknowledged events (100 per request); any other status and
any connection error are counted and reported apart. During the durable measurements the
server's core process (the processor, which would compete for the same two cores while
it catches up) is paused: the figures are the collector's. The pipeline benchmark
measures the two together.
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import tempfile
import time
import uuid
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import click

from aap.runner import ServerProcess, create_source
from benchmarks.common import check_idle, cpu_seconds, machine, machine_busy, percentile, verdict

EVENTS_PER_REQUEST = 100
DISTINCT_REQUESTS = 32
WARMUP_SECONDS = 1.0
CLOSED_CONNECTIONS = 16
"""Concurrent connections per generator process in the closed loop."""
OPEN_POOL = 32
"""Connections each generator process opens before the open loop starts."""
OPEN_CAP = 256
"""Most connections one generator process may open in the open loop."""
OPEN_GRACE_SECONDS = 5.0
"""How long the open loop waits for answers once its schedule has ended."""

TARGET_EVENTS = 100_000
AIM_EVENTS = 250_000
TARGET_P99_MS = 50.0
TARGET_P99_RATE = 100_000
TARGET_RATIO = 0.5


# -- requests --------------------------------------------------------------------------

_PAGES = ("home", "pricing", "docs", "blog", "products", "cart", "checkout", "account")
_EVENTS = ("Product Viewed", "Product Added", "Checkout Started", "Order Completed",
           "Signed Up", "Search Performed", "Video Played", "Button Clicked")


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def make_event(rng: random.Random, now: datetime) -> dict[str, Any]:
    """One Segment track event of about 300 bytes as JSON."""
    page = rng.choice(_PAGES)
    item = rng.randrange(10_000)
    ev: dict[str, Any] = {
        "type": "track",
        "event": rng.choice(_EVENTS),
        "messageId": _uuid(rng),
        "timestamp": (now - timedelta(milliseconds=rng.randrange(5000)))
        .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "properties": {"sku": f"sku-{item:05d}", "price": round(rng.uniform(1, 500), 2),
                       "qty": rng.randint(1, 5)},
        "context": {"library": {"name": "analytics.js", "version": "2.4.0"},
                    "page": {"path": f"/{page}/{item}", "title": page.title()}},
    }
    if rng.random() < 0.5:
        ev["userId"] = f"user-{rng.randrange(1_000_000):07d}"
    else:
        ev["anonymousId"] = _uuid(rng)
    return ev


def build_requests(write_key: str, port: int, n: int = DISTINCT_REQUESTS,
                   seed: int = 1) -> list[bytes]:
    """``n`` distinct, complete HTTP/1.1 requests, each a 100-event ``/v1/batch``."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    auth = base64.b64encode(f"{write_key}:".encode()).decode()
    out = []
    for _ in range(n):
        batch = [make_event(rng, now) for _ in range(EVENTS_PER_REQUEST)]
        body = json.dumps({"batch": batch}, separators=(",", ":")).encode()
        head = (
            f"POST /v1/batch HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            f"Authorization: Basic {auth}\r\n"
            f"Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"\r\n"
        ).encode()
        out.append(head + body)
    return out


# -- HTTP/1.1 over asyncio streams -----------------------------------------------------
#
# Why not a library: the generator shares the server's two cores, so what it spends per
# request is taken from the figure it measures. Measured on 2026-12-04 (this benchmark,
# same machine, generator CPU per answered request): this reader ~70 µs, h11 (the parser
# httpx uses, over the same streams) ~170 µs, httpx.AsyncClient ~700 µs (in a loop
# against an in-process server). At the null log's ~2,900 requests/s h11 would take
# ~0.3 of the two cores from the server, httpx more than one. The reader handles what
# the server sends (Content-Length or chunked bodies, keep-alive, Connection: close).


class ProtocolError(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One response: (status, body, whether the server will close the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    close = parts[0] == b"HTTP/1.0"
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            v = value.strip().lower()
            close = v == b"close" or (close and v != b"keep-alive")
    if chunked:
        body = await _read_chunked(reader)
    elif length is not None:
        body = await reader.readexactly(length) if length else b""
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:
        body = await reader.read()
        close = True
    return status, body, close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


class Conn:
    """One keep-alive connection; reconnects after the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, raw: bytes) -> int:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(raw)
            await self.writer.drain()
            status, body, close = await read_response(self.reader)
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        if status == 200 and b'"accepted":100' not in body:
            return -200  # a 200 that did not take the whole batch
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# -- the generator process -------------------------------------------------------------


@dataclass
class Tally:
    """What one generator process saw in the measurement window."""

    ok_requests: int = 0
    """Requests answered 200 whose answer arrived inside the window: the throughput."""
    statuses: dict[int, int] = field(default_factory=dict)
    """Non-200 answers by status (-200: a 200 that did not accept the whole batch)."""
    errors: int = 0
    """Connection or protocol errors, and (open loop) requests never answered."""
    latencies: array[float] = field(default_factory=lambda: array("d"))
    """Milliseconds, one per answered request of the window (closed loop: sent in the
    window; open loop: *scheduled* in the window, answered whenever)."""

    def record(self, status: int, latency_s: float) -> None:
        if status != 200:
            self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(latency_s * 1000.0)


@dataclass
class Job:
    mode: str  # "closed" or "open"
    port: int
    write_key: str
    duration: float
    warmup: float
    connections: int
    rate_rps: float = 0.0
    cap: int = OPEN_CAP
    seed: int = 1
    ports: tuple[int, ...] = ()
    """Several servers (collectors) to spread the connections over, in turn; empty:
    ``port`` alone."""

    def port_at(self, k: int) -> int:
        """The port of the ``k``-th connection."""
        return self.ports[k % len(self.ports)] if self.ports else self.port


class _CpuWindow:
    """CPU seconds this process spends between ``start()`` and ``stop()``."""

    def __init__(self) -> None:
        self.t0 = self.t1 = os.times()

    def start(self) -> None:
        self.t0 = os.times()

    def stop(self) -> None:
        self.t1 = os.times()

    @property
    def seconds(self) -> float:
        return (self.t1.user - self.t0.user) + (self.t1.system - self.t0.system)


async def closed_loop(job: Job, reqs: list[bytes], go: Any) -> dict[str, Any]:
    conns = [Conn(job.port_at(k)) for k in range(job.connections)]
    await asyncio.gather(*(c.connect() for c in conns))
    await _wait_go(go)
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    start, end = t0 + job.warmup, t0 + job.warmup + job.duration
    cpu = _CpuWindow()
    loop.call_later(job.warmup, cpu.start)
    loop.call_later(job.warmup + job.duration, cpu.stop)
    tally = Tally()

    async def one(conn: Conn, k: int) -> None:
        i = k
        n = len(reqs)
        while True:
            ts = time.perf_counter()
            if ts >= end:
                return
            try:
                status = await conn.request(reqs[i % n])
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ProtocolError, ValueError):
                if ts >= start:
                    tally.errors += 1
                await asyncio.sleep(0.01)
                continue
            te = time.perf_counter()
            i += 7
            if ts >= start and te <= end:
                tally.record(status, te - ts)
                tally.ok_requests += status == 200

    await asyncio.gather(*(one(c, k) for k, c in enumerate(conns)))
    for c in conns:
        c.close()
    return _result(tally, job.duration, cpu, len(conns), 0.0)


async def open_loop(job: Job, reqs: list[bytes], go: Any) -> dict[str, Any]:
    """Requests leave at ``rate_rps`` on a fixed schedule, each on a free connection."""
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    tally = Tally()
    idle = 0
    workers: list[asyncio.Task[None]] = []
    growers: set[asyncio.Task[None]] = set()
    n = len(reqs)
    counter = 0
    window: list[float] = [0.0, 0.0]
    scheduled_in_window = 0
    answered_in_window = 0

    async def worker(conn: Conn) -> None:
        nonlocal idle, counter, answered_in_window
        while True:
            idle += 1
            intended = await queue.get()
            idle -= 1
            if intended is None:
                conn.close()
                return
            counter += 1
            raw = reqs[(counter * 7) % n]
            measured = window[0] <= intended < window[1]
            try:
                status = await conn.request(raw)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ProtocolError, ValueError):
                if measured:
                    tally.errors += 1
                    answered_in_window += 1
                continue
            done = time.perf_counter()
            if measured:
                answered_in_window += 1
                tally.record(status, done - intended)
            if status == 200 and window[0] <= done < window[1]:
                tally.ok_requests += 1

    made = 0

    async def add_worker() -> None:
        nonlocal made
        made += 1
        conn = Conn(job.port_at(made - 1))
        try:
            await conn.connect()
        except OSError:
            tally.errors += 1
            return
        workers.append(asyncio.create_task(worker(conn)))

    await asyncio.gather(*(add_worker() for _ in range(job.connections)))
    await asyncio.sleep(0)  # let the workers reach queue.get()
    await _wait_go(go)
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    window[:] = [t0 + job.warmup, t0 + job.warmup + job.duration]
    end = window[1]
    cpu = _CpuWindow()
    loop.call_later(job.warmup, cpu.start)
    loop.call_later(job.warmup + job.duration, cpu.stop)
    interval = 1.0 / job.rate_rps
    i = 0
    worst_lag = 0.0
    opening = 0
    while True:
        nxt = t0 + i * interval
        if nxt >= end:
            break
        now = time.perf_counter()
        while nxt <= now and nxt < end:
            queue.put_nowait(nxt)
            if window[0] <= nxt < window[1]:
                scheduled_in_window += 1
            i += 1
            nxt = t0 + i * interval
        worst_lag = max(worst_lag, now - (t0 + (i - 1) * interval))
        # No free connection for what is waiting: open more, up to the cap.
        missing = queue.qsize() - idle - opening
        if missing > 0 and len(workers) + opening < job.cap:
            k = min(missing, job.cap - len(workers) - opening)
            opening += k

            async def grow(k: int = k) -> None:
                nonlocal opening
                try:
                    await asyncio.gather(*(add_worker() for _ in range(k)))
                finally:
                    opening -= k

            task = asyncio.create_task(grow())
            growers.add(task)
            task.add_done_callback(growers.discard)
        await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
    while opening:
        await asyncio.sleep(0.01)
    for _ in workers:
        queue.put_nowait(None)
    _, pending = await asyncio.wait(workers, timeout=OPEN_GRACE_SECONDS)
    for t in pending:
        t.cancel()
    tally.errors += scheduled_in_window - answered_in_window  # never answered
    return _result(tally, job.duration, cpu, len(workers), worst_lag)


async def _wait_go(go: Any) -> None:
    await asyncio.get_running_loop().run_in_executor(None, go.wait)


def _result(tally: Tally, duration: float, cpu: _CpuWindow, conns: int,
            worst_lag: float) -> dict[str, Any]:
    return {
        "ok_requests": tally.ok_requests,
        "ok_events": tally.ok_requests * EVENTS_PER_REQUEST,
        "statuses": tally.statuses,
        "errors": tally.errors,
        "latencies": tally.latencies.tobytes(),
        "cpu_seconds": cpu.seconds,
        "duration": duration,
        "connections": conns,
        "schedule_lag_ms": worst_lag * 1000.0,
    }


Requests = Callable[[str, int, int], Sequence[bytes]]
"""(write key, port, seed) → the requests a generator sends, in turn."""


def same_requests(write_key: str, port: int, seed: int) -> Sequence[bytes]:
    return build_requests(write_key, port, seed=seed)


def client_main(job: Job, conn: Connection, go: Any, requests: Requests = same_requests
                ) -> None:
    """Entry point of one generator process: reports ``ready``, waits for ``go``, runs."""
    try:
        reqs = cast(list[bytes], requests(job.write_key, job.port, job.seed))
        conn.send(("ready", None))
        fn = closed_loop if job.mode == "closed" else open_loop
        result = asyncio.run(fn(job, reqs, go))
        conn.send(("result", result))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        conn.close()


# -- the parent ------------------------------------------------------------------------


Groups = Callable[[], dict[str, list[int]]]
"""→ the processes whose CPU is measured, by name (a role: collectors, processor …)."""


def measure(server: ServerProcess | None, write_key: str, mode: str, duration: float,
            clients: int, rate: int = 0,
            entry: Callable[[Job, Connection, Any], None] | None = None, *,
            ports: Sequence[int] = (), groups: Groups | None = None,
            probe: Callable[[], Any] | None = None) -> dict[str, Any]:
    """One measurement against a running server; returns the merged figures.

    ``entry`` is the generator processes' entry point (default :func:`client_main`); it
    must be a module-level function, since the processes are spawned. Several servers
    (``ports``: the generators spread their connections over them) and the processes to
    measure by name (``groups``: their CPU in ``cpu_cores``, their sum in
    ``server_cpu_cores``) may replace ``server``; ``probe`` is called as the window
    starts and as it ends (``probe_window``: the two answers)."""
    if server is None and not (ports and groups):
        raise ValueError("measure: a server, or ports and groups")
    if groups is None:
        assert server is not None
        groups = (lambda s: lambda: {"server": s.pids()})(server)
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = []
    pipes = []
    for k in range(clients):
        job = Job(
            mode=mode, port=ports[0] if ports else server.port,  # type: ignore[union-attr]
            write_key=write_key, duration=duration, ports=tuple(ports),
            warmup=WARMUP_SECONDS,
            connections=CLOSED_CONNECTIONS if mode == "closed" else OPEN_POOL,
            rate_rps=rate / EVENTS_PER_REQUEST / clients if mode == "open" else 0.0,
            seed=k + 1,
        )
        parent_end, child_end = ctx.Pipe(duplex=False)
        p = ctx.Process(target=entry or client_main, args=(job, child_end, go), daemon=True,
                        name=f"aap-bench-client-{k}")
        p.start()
        child_end.close()
        procs.append(p)
        pipes.append(parent_end)
    try:
        for pipe, p in zip(pipes, procs, strict=True):
            _expect(pipe, p, "ready", 60.0)
        pids = groups()
        go.set()
        time.sleep(WARMUP_SECONDS)
        p0 = probe() if probe else None
        s0 = {g: cpu_seconds(p) for g, p in pids.items()}
        m0, w0 = machine_busy(), time.perf_counter()
        time.sleep(duration)
        s1 = {g: cpu_seconds(p) for g, p in pids.items()}
        m1, w1 = machine_busy(), time.perf_counter()
        p1 = probe() if probe else None
        results = [_expect(pipe, p, "result", duration + OPEN_GRACE_SECONDS + 60.0)
                   for pipe, p in zip(pipes, procs, strict=True)]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        for pipe in pipes:
            pipe.close()
    lat: list[float] = []
    statuses: dict[int, int] = {}
    for r in results:
        a = array("d")
        a.frombytes(r["latencies"])
        lat.extend(a)
        for s, c in r["statuses"].items():
            statuses[s] = statuses.get(s, 0) + c
    lat.sort()
    ok_events = sum(r["ok_events"] for r in results)
    ok_requests = sum(r["ok_requests"] for r in results)
    wall = w1 - w0
    busy = (m1[0] - m0[0]) / (m1[1] - m0[1]) if m1[1] > m0[1] else float("nan")
    cores = {g: (s1[g] - s0[g]) / wall for g in pids}
    server_cpu = sum(cores.values())
    return {
        "mode": mode,
        "offered_events_per_s": rate if mode == "open" else None,
        "events_per_s": ok_events / duration,
        "requests_per_s": ok_requests / duration,
        "ok_events": ok_events,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else float("nan"),
        "answered": len(lat),
        "non_200": sum(statuses.values()),
        "statuses": statuses,
        "errors": sum(r["errors"] for r in results),
        "connections": sum(r["connections"] for r in results),
        "schedule_lag_ms": max(r["schedule_lag_ms"] for r in results),
        "server_cpu_cores": server_cpu,
        "cpu_cores": cores,
        "client_cpu_cores": sum(r["cpu_seconds"] for r in results) / duration,
        "machine_busy": busy,
        "other_cpu_cores": max(0.0, busy * (os.cpu_count() or 1) - server_cpu
                               - sum(r["cpu_seconds"] for r in results) / duration),
        "window_s": wall,
        "probe_window": (p0, p1),
    }


def _expect(pipe: Connection, proc: Any, kind: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not pipe.poll(0.2):
        if not proc.is_alive() and not pipe.poll(0):
            raise RuntimeError(f"{proc.name} exited with {proc.exitcode} before {kind!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name}: no {kind!r} after {timeout:.0f}s")
    try:
        got, payload = pipe.recv()
    except EOFError:
        proc.join(5)
        raise RuntimeError(f"{proc.name} exited with {proc.exitcode} before {kind!r}") from None
    if got == "error":
        raise RuntimeError(f"{proc.name} failed: {payload}")
    if got != kind:
        raise RuntimeError(f"{proc.name}: expected {kind!r}, got {got!r}")
    return payload


def _start(base: Path, name: str, env: dict[str, str] | None) -> tuple[ServerProcess, str]:
    data_dir = base / name
    key = create_source(data_dir, "bench", "--basis", "legitimate_interest")
    return ServerProcess(data_dir, workers=2, env=env).start(), key


def run(duration: float = 10.0, rate: int = 100_000, clients: int = 2) -> dict[str, Any]:
    """Run the three measurements, print them with the targets and return the figures."""
    from rich.console import Console

    console = Console()
    if console.width < 150:  # the table has many columns: let it wrap rather than squeeze
        console = Console(width=150)
    info = machine()
    sample = build_requests("k" * 32, 8000, n=1)[0]
    body_len = len(sample.split(b"\r\n\r\n", 1)[1])
    console.print(
        f"[bold]aap ingest benchmark[/bold]: {duration:g} s per measurement after "
        f"{WARMUP_SECONDS:g} s warm-up, {clients} generator process(es), "
        f"{EVENTS_PER_REQUEST} events per request (~{body_len // EVENTS_PER_REQUEST} B/event, "
        f"{body_len / 1024:.1f} KiB/request)"
    )
    check_idle(console, info)
    runs: dict[str, dict[str, Any]] = {}
    base = Path(tempfile.mkdtemp(prefix="aap-bench-ingest-"))
    try:
        for name, env, plan in (
            ("durable", None, (("closed", 0), ("open", rate))),
            ("null", {"AAP_LOG_BACKEND": "null"}, (("closed", 0),)),
        ):
            server, key = _start(base, name, env)
            core = server.core_pid() if name == "durable" else None
            if core is not None:
                # the collector's figure: the core (processor) is paused meanwhile, as
                # it would compete for the same two cores while it catches up
                os.kill(core, signal.SIGSTOP)
            try:
                for mode, offered in plan:
                    label = f"{name}/{mode}"
                    console.print(f"  measuring {label} ...", style="dim")
                    runs[label] = measure(server, key, mode, duration, clients, offered)
                    runs[label]["log"] = name
                    time.sleep(0.5)
            finally:
                if core is not None:
                    os.kill(core, signal.SIGCONT)
                server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result = _summarise(info, runs, rate, clients, duration)
    _print(console, result)
    return result


def _summarise(info: dict[str, Any], runs: dict[str, dict[str, Any]], rate: int,
               clients: int, duration: float) -> dict[str, Any]:
    durable = runs["durable/closed"]["events_per_s"]
    null = runs["null/closed"]["events_per_s"]
    ratio = durable / null if null else float("nan")
    p99 = runs["durable/open"]["p99_ms"]
    targets = {
        "durable_events_per_s": {"value": durable, "target": TARGET_EVENTS,
                                 "pass": durable >= TARGET_EVENTS},
        "durable_events_per_s_aim": {"value": durable, "target": AIM_EVENTS,
                                     "pass": durable >= AIM_EVENTS},
        "p99_ms_at_offered": {"value": p99, "target": TARGET_P99_MS, "offered": rate,
                              "pass": p99 <= TARGET_P99_MS and rate >= TARGET_P99_RATE
                              and runs["durable/open"]["errors"] == 0
                              and runs["durable/open"]["non_200"] == 0},
        "durable_null_ratio": {"value": ratio, "target": TARGET_RATIO,
                               "pass": ratio >= TARGET_RATIO},
    }
    return {"machine": info, "duration": duration, "clients": clients, "rate": rate,
            "runs": runs, "durable_null_ratio": ratio, "targets": targets}


def _print(console: Any, result: dict[str, Any]) -> None:
    from rich.table import Table

    info = result["machine"]
    console.print(
        f"machine: {info['cpu_count']} CPUs ({info['cpu_model']}), {info['platform']}, "
        f"{info['python']}, granian {info['granian']}; server: 2 granian workers, "
        f"load generator on the same cores"
    )
    t = Table(title="POST /v1/batch (100 events/request); CPU columns in cores")
    for col in ("run", "offered/s", "events/s", "req/s", "p50 ms", "p99 ms", "max ms",
                "non-200", "errors", "conns", "srv CPU", "gen CPU", "other CPU", "busy"):
        t.add_column(col, no_wrap=True, min_width=len(col),
                     justify="left" if col == "run" else "right")
    for r in result["runs"].values():
        offered = r["offered_events_per_s"]
        t.add_row(
            f"{r['log']}, {r['mode']} loop",
            f"{offered:,}" if offered else "max",
            f"{r['events_per_s']:,.0f}", f"{r['requests_per_s']:,.0f}",
            f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['max_ms']:.1f}",
            str(r["non_200"]), str(r["errors"]), str(r["connections"]),
            f"{r['server_cpu_cores']:.2f}", f"{r['client_cpu_cores']:.2f}",
            f"{r['other_cpu_cores']:.2f}", f"{r['machine_busy']:.0%}",
        )
    console.print(t)
    for r in result["runs"].values():
        if r["statuses"]:
            console.print(f"  {r['log']}, {r['mode']} loop: non-200 answers "
                          f"{_statuses(r['statuses'])}")
    tg = result["targets"]
    tt = Table(title="Targets")
    for col in ("target", "measured", "wanted", "result"):
        tt.add_column(col)
    ev = tg["durable_events_per_s"]
    tt.add_row("durable ingest, closed loop", f"{ev['value']:,.0f} events/s",
               f">= {TARGET_EVENTS:,} events/s", verdict(ev["pass"]))
    aim = tg["durable_events_per_s_aim"]
    tt.add_row("durable ingest (aim)", f"{aim['value']:,.0f} events/s",
               f">= {AIM_EVENTS:,} events/s", verdict(aim["pass"]))
    p = tg["p99_ms_at_offered"]
    note = "" if p["offered"] >= TARGET_P99_RATE else f" (offered only {p['offered']:,})"
    tt.add_row(f"p99 latency at offered {p['offered']:,} events/s{note}",
               f"{p['value']:.1f} ms",
               f"<= {TARGET_P99_MS:g} ms at {TARGET_P99_RATE:,} events/s, no errors",
               verdict(p["pass"]))
    r = tg["durable_null_ratio"]
    tt.add_row("durable / null events/s", f"{r['value']:.2f}", f">= {TARGET_RATIO:g}",
               verdict(r["pass"]))
    console.print(tt)
    console.print(
        "CPU in cores over the measurement window: srv = granian master and workers (all "
        "threads); gen = the load generator; other = everything else busy on the machine "
        "(kernel softirq and writeback, other processes); busy = all cores, from /proc/stat. "
        "Open loop: latency from each request's intended send time; events/s counts answers "
        "inside the window.",
        style="dim",
    )


def _statuses(statuses: dict[int, int]) -> str:
    if not statuses:
        return "0"
    inner = ", ".join(f"{'200 partial' if s == -200 else s}: {c}"
                      for s, c in sorted(statuses.items()))
    return f"{sum(statuses.values())} ({inner})"


@click.command("ingest")
@click.option("--duration", type=float, default=10.0, show_default=True,
              help="Seconds per measurement.")
@click.option("--rate", type=int, default=100_000, show_default=True,
              help="Offered events/s for the latency measurement.")
@click.option("--clients", type=int, default=2, show_default=True,
              help="Load-generator processes.")
def main(duration: float, rate: int, clients: int) -> None:
    """Durable vs null-log ingest throughput and latency on /v1/batch."""
    run(duration=duration, rate=rate, clients=clients)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="python -m benchmarks.ingest")
