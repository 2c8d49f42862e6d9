"""Cluster benchmark: collectors on Kafka as processes of their own, and freshness.

One librdkafka mock cluster (3 brokers, in a holder process: no Kafka broker installs
here) serves every run, each on a topic of its own. Two parts:

1. **Throughput of 1, 2 and 4 collector processes** — for each N, ``aap cluster up
   --collectors N`` (N collector processes of one granian worker each, and one
   processor, which consumes the topic meanwhile) on a fresh data dir with
   ``AAP_LOG_URL=kafka://…/<fresh topic>``. The load generator of
   :mod:`benchmarks.ingest` (separate processes, closed loop, unique message ids as in
   :mod:`benchmarks.pipeline`) spreads its connections over the N collectors. Printed:
   events/s acknowledged (200), the ratio to N = 1, and CPU per event of each role —
   the CPU seconds (``/proc``: every process of the role and its children, before and
   after the window) of all collectors per event acknowledged, of the processor per
   event it wrote to the warehouse in the window, of the mock brokers and of the load
   generators per event acknowledged. **On a 2-core machine this shows what more
   processes cost, not how the collectors scale out**: every process shares the same two
   cores with the processor, the brokers and the load generators.
2. **Freshness** — at a steady offered rate (``--rate``, 20,000 events/s by default, or
   what the 2-collector run sustained if that is less: printed), a probe sends one
   event with a unique ``marker`` property every 0.1 s, and notes when its 200 arrives;
   from then on it asks the REST API (``POST /api/v1/query``, a ``trends`` insight with
   an API key of role analyst) until the event is counted. On the cluster that API is a
   query node's (``aap cluster up --collectors 2 --query 1`` on Kafka, the processor
   publishing every :data:`PUBLISH_S` s, the shared state on a PostgreSQL of tests/pg.py):
   "200 → visible to a query node", the issue's measure. The embedded default (``aap
   serve``, 2 workers, the SQLite log, its own API) at the same rate is the baseline: the
   ratio is printed.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import click
import httpx

from aap.lifecycle import child_env
from aap.runner import ServerProcess
from benchmarks.common import all_proc_stats, check_idle, machine, percentile, verdict
from benchmarks.ingest import WARMUP_SECONDS, client_main, measure
from benchmarks.pipeline import PROBE_EVENT, Probe, unique_requests
from benchmarks.scale import tree

TARGET_FRESHNESS_P95_S = 5.0
TARGET_RATE = 20_000
SIZES = (1, 2, 4)
FRESHNESS_COLLECTORS = 2
API_POLL_S = 0.05
"""Pause between two visibility queries through the REST API."""
SUSTAIN_SHARE = 0.9
"""Freshness is measured at most at this share of what the 2-collector run sustained."""
PUBLISH_S = 1.0
"""``AAP_PUBLISH_SECONDS`` of the freshness cluster: how often the processor publishes."""
START_TIMEOUT_S = 300.0
"""How long a deployment may take to be healthy (a loaded machine starts slowly)."""

HOLDER = """
import sys, confluent_kafka as ck
p = ck.Producer({"test.mock.num.brokers": 3, "bootstrap.servers": "unused:1", "log_level": 0})
md = p.list_topics(timeout=30)
print(",".join(f"{b.host}:{b.port}" for b in md.brokers.values()), flush=True)
sys.stdin.read()
"""
"""librdkafka's mock cluster, held until stdin closes (as tests/log/test_kafka.py holds it)."""

UNIQUE = functools.partial(client_main, requests=unique_requests)


class MockKafka:
    """librdkafka's mock cluster (``test.mock.num.brokers``) in a holder process; its
    brokers are reachable on 127.0.0.1 as any cluster's. Topics auto-create."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        assert self.proc.stdout is not None
        self.servers = self.proc.stdout.readline().strip()
        if not self.servers:
            self.stop()
            raise RuntimeError("the mock Kafka cluster did not start")

    def url(self, topic: str) -> str:
        # a member that died unannounced holds the group up for the session timeout
        return f"kafka://{self.servers}/{topic}?consumer.session.timeout.ms=6000"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def free_ports(n: int) -> int:
    """A port p with p … p + n - 1 free (collectors, then the processor's /healthz)."""
    for _ in range(100):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            p = int(a.getsockname()[1])
        if all(_free(p + k) for k in range(n)):
            return p
    raise RuntimeError(f"no {n} consecutive free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _health(port: int) -> str:
    """``/healthz`` of a port: its status, else why there is none; with a 503's reason."""
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return str(r.status_code) if r.status_code == 200 else f"{r.status_code} {r.text[:200]}"


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _group(pgid: int) -> list[int]:
    """Every process of the process group ``pgid``."""
    return [pid for pid, fields in all_proc_stats().items() if int(fields[2]) == pgid]


@dataclass
class Target:
    """A running deployment under test: where to send, and its processes by role."""

    name: str
    data: Path
    ports: list[int]
    groups: Callable[[], dict[str, list[int]]]
    stop: Callable[[], None]
    log_file: Path
    api_port: int = 0
    """Where the REST API is asked (a query node's port; 0: the first collector's)."""
    published: bool = False
    """The processor publishes its hot rows (``AAP_PUBLISH_SECONDS``): they leave
    ``events_raw`` for the batch files, so :meth:`rows` counts both."""

    def rows(self) -> int:
        """Events in the warehouse (``events_raw``; with publishing, and the listed
        files), over the core's socket."""
        table = "events_all" if self.published else "events_raw"
        return int(cast(int, ServerProcess(self.data).sql(f"SELECT count(*) FROM {table}")[0][0]))


def start_cluster(data: Path, collectors: int, env: dict[str, str], kafka: MockKafka | None,
                  query: int = 0) -> Target:
    """``aap cluster up --collectors N --query Q`` in a session of its own, until every
    part is healthy."""
    base = free_ports(collectors + 1 + query)
    log_file = data.parent / f"{data.name}-cluster.log"
    out = open(log_file, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aap", "cluster", "up", "--data-dir", str(data),
         "--collectors", str(collectors), "--query", str(query), "--port", str(base)],
        stdout=out, stderr=subprocess.STDOUT, env=child_env({**os.environ, **env}),
        start_new_session=True)
    out.close()

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()

    # every collector's /healthz, the processor's (the port after them) and the query
    # nodes' (after it) answer 200
    deadline = time.monotonic() + START_TIMEOUT_S
    waiting = {p: "no answer" for p in range(base, base + collectors + 1 + query)}
    while waiting:
        for port in list(waiting):
            waiting[port] = _health(port)
            if waiting[port] == "200":
                del waiting[port]
        if waiting and (proc.poll() is not None or time.monotonic() > deadline):
            stop()
            tail = log_file.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"aap cluster up --collectors {collectors}: not healthy after "
                               f"{START_TIMEOUT_S:.0f} s (port: last answer {waiting});"
                               f" the end of its output:\n{tail}")
        time.sleep(0.2)

    def groups() -> dict[str, list[int]]:
        roles: dict[str, set[int]] = {"collectors": set(), "processor": set()}
        if query:
            roles["query nodes"] = set()
        names = {"collector": "collectors", "query": "query nodes"}
        for pid in _group(proc.pid):
            args = _cmdline(pid)
            if "--role" in args:  # a role and its children (a forked worker: once)
                role = args[args.index("--role") + 1]
                roles[names.get(role, "processor")].update(tree(pid))
        out = {name: sorted(pids) for name, pids in roles.items()}
        out["cluster up"] = [proc.pid]
        if kafka is not None:
            out["kafka (mock)"] = [kafka.proc.pid]
        return out

    nodes = f", {query} query node{'s' * (query > 1)}" if query else ""
    return Target(f"cluster, {collectors} collector{'s' * (collectors > 1)}{nodes}", data,
                  [base + i for i in range(collectors)], groups, stop, log_file,
                  base + collectors + 1 if query else 0,
                  float(env.get("AAP_PUBLISH_SECONDS", "0") or 0) > 0)


def start_embedded(data: Path) -> Target:
    """``aap serve`` (2 workers, the SQLite log): the embedded default."""
    server = ServerProcess(data, workers=2, env={"AAP_LOG_URL": "sqlite:"}).start()

    def groups() -> dict[str, list[int]]:
        core = server.core_pid()
        proc = tree(core) if core is not None else []
        return {"collectors": [p for p in server.pids() if p not in proc], "processor": proc}

    return Target("embedded (aap serve)", data, [server.port], groups, server.stop,
                  server.log_file)


def keys_for(data: Path, env: dict[str, str] | None = None, api_data: Path | None = None
             ) -> tuple[str, str]:
    """A source's write key and an API key of role analyst (of the node whose data dir is
    ``api_data``, by default ``data``'s), made with the CLI in the deployment's ``env``."""
    env = child_env({**os.environ, **(env or {})})
    out = subprocess.run([sys.executable, "-m", "aap", "sources", "create", "bench",
                          "--basis", "legitimate_interest", "--rate-limit", "0",
                          "--data-dir", str(data)], check=True, capture_output=True,
                         text=True, env=env).stdout
    key = out.strip().splitlines()[-1]
    if api_data is not None:  # a query node's: the processor's keys, as cluster up gives
        from aap.cluster import query_env
        from aap.settings import Settings

        env.update(query_env(Settings(data_dir=str(data))))
    out = subprocess.run([sys.executable, "-m", "aap", "keys", "create", "--role", "analyst",
                          "--data-dir", str(api_data or data)], check=True,
                         capture_output=True, text=True, env=env).stdout
    return key, out.strip().splitlines()[-1]


PRIME_TIMEOUT_S = 120.0
"""How long the first event may take to reach the warehouse (the processor joins its
consumer group and finds the new topic first)."""


def prime(target: Target, key: str) -> int:
    """Sends one event through each collector and waits until the warehouse holds them:
    the processor consumes, so the window measures the steady state. Returns the rows."""
    for port in target.ports:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/batch", auth=(key, ""), timeout=30,
                       json={"batch": [{"type": "track", "event": "Primed",
                                        "messageId": f"prime-{uuid.uuid4()}",
                                        "anonymousId": "bench-prime"}]})
        if r.status_code != 200:
            raise RuntimeError(f"collector :{port} answered {r.status_code}: {r.text[:200]}")
    deadline = time.monotonic() + PRIME_TIMEOUT_S
    while (rows := target.rows()) < len(target.ports):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the processor wrote nothing in {PRIME_TIMEOUT_S:.0f} s; see "
                               f"{target.log_file}")
        time.sleep(0.1)
    return rows


@contextmanager
def running(start: Callable[[], Target], key: str) -> Iterator[Target]:
    """The target started and primed (:func:`prime`), stopped at the end."""
    target = start()
    try:
        prime(target, key)
        yield target
    finally:
        target.stop()


# -- 1. throughput -------------------------------------------------------------------------


def throughput(target: Target, key: str, duration: float, clients: int) -> dict[str, Any]:
    r = measure(None, key, "closed", duration, clients, entry=UNIQUE, ports=target.ports,
                groups=target.groups, probe=target.rows)
    rows0, rows1 = r["probe_window"]
    wall, ok = r["window_s"], r["ok_events"]
    processed = rows1 - rows0

    def per_event(cores: float, events: int) -> float:
        return cores * wall / events * 1e6 if events else float("nan")

    cpu = r["cpu_cores"]
    return {
        "collectors": len(target.ports), "events_per_s": r["events_per_s"],
        "ok_events": ok, "non_200": r["non_200"], "errors": r["errors"],
        "p99_ms": r["p99_ms"], "processed_events": processed,
        "processed_per_s": processed / wall,
        "us_collectors": per_event(cpu["collectors"], ok),
        "us_processor": per_event(cpu["processor"], processed),
        "us_kafka": per_event(cpu.get("kafka (mock)", 0.0), ok),
        "us_generators": r["client_cpu_cores"] * duration / ok * 1e6 if ok else float("nan"),
        "cores": {**cpu, "generators": r["client_cpu_cores"]},
        "machine_busy": r["machine_busy"],
    }


# -- 2. freshness --------------------------------------------------------------------------


class APIProbe(Probe):
    """:class:`benchmarks.pipeline.Probe` that looks through the REST API: a ``trends``
    insight counting the probe events by their ``marker``, with an analyst's key."""

    poll_interval = API_POLL_S

    def __init__(self, target: Target, key: str, api_key: str) -> None:
        urls = [f"http://127.0.0.1:{p}" for p in target.ports]
        super().__init__(ServerProcess(target.data, target.ports[0]), key, urls)
        self.api_key = api_key
        self.api_port = target.api_port
        self.refused = 0

    def _reader(self) -> Any:
        api = f"http://127.0.0.1:{self.api_port}" if self.api_port else self.urls[0]
        return httpx.Client(base_url=api, timeout=30.0,
                            headers={"Authorization": f"Bearer {self.api_key}"})

    def _visible(self, client: Any, mids: list[str], since: str) -> list[str]:
        r = client.post("/api/v1/query", json={
            "kind": "trends", "series": [{"event": PROBE_EVENT}], "interval": "day",
            "date_from": "-1d", "breakdown": "marker", "breakdown_limit": 1000,
            "filters": [{"property": "marker", "operator": "in", "value": mids}]})
        if r.status_code in (429, 503):  # the query gate is full: ask again next round
            self.refused += 1
            return []
        if r.status_code != 200:
            raise RuntimeError(f"visibility query failed: {r.status_code} {r.text[:300]}")
        return [s["breakdown_value"] for s in r.json()["series"]
                if not s.get("is_other") and sum(v or 0 for v in s["values"]) > 0]


def freshness(target: Target, key: str, api_key: str, rate: int, duration: float,
              clients: int) -> dict[str, Any]:
    """Freshness through the API under ``rate`` events/s offered (open loop)."""
    held: dict[str, Any] = {}

    def load() -> None:
        try:
            held["load"] = measure(None, key, "open", duration, clients, rate, entry=UNIQUE,
                                   ports=target.ports, groups=target.groups)
        except BaseException as exc:
            held["error"] = f"{type(exc).__name__}: {exc}"

    loader = threading.Thread(target=load, name="aap-bench-load", daemon=True)
    before = target.rows()
    loader.start()
    deadline = time.monotonic() + 120
    while target.rows() == before:  # the generators have been told to go
        if not loader.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"background load did not start: {held.get('error')}")
        time.sleep(0.05)
    time.sleep(WARMUP_SECONDS)
    probe = APIProbe(target, key, api_key)
    t_a, n_a = time.perf_counter(), target.rows()
    window_end = t_a + duration
    stats: dict[str, float] = {}
    probe.start()

    def window_over() -> bool:
        if time.perf_counter() < window_end:
            return False
        if not probe.stop_sending.is_set():
            probe.stop_sending.set()
            stats["t_b"], stats["n_b"] = time.perf_counter(), target.rows()
        return True

    probe.poll_until(window_over)
    probe.thread.join()
    loader.join(timeout=duration + 120)
    if "error" in held or "load" not in held:
        raise RuntimeError(f"background load failed: {held.get('error', 'did not finish')}")
    ld = held["load"]
    fresh = sorted(f * 1000.0 for f in probe.freshness)
    polls = sorted(probe.poll_ms)
    processed = (stats["n_b"] - n_a) / (stats["t_b"] - t_a)
    cores = ld["cpu_cores"]
    return {
        "name": target.name, "offered": rate, "acked_per_s": ld["events_per_s"],
        "non_200": ld["non_200"], "errors": ld["errors"],
        "processed_per_s": processed,
        "us_collectors": cores["collectors"] / ld["events_per_s"] * 1e6
        if ld["events_per_s"] else float("nan"),
        "us_processor": cores["processor"] / processed * 1e6 if processed else float("nan"),
        "probes_sent": probe.sent, "probes_failed": probe.send_failed,
        "visible": len(fresh), "not_visible": probe.not_visible, "refused": probe.refused,
        "p50_ms": percentile(fresh, 50), "p95_ms": percentile(fresh, 95),
        "max_ms": fresh[-1] if fresh else float("nan"), "poll_p50_ms": percentile(polls, 50),
        "cores": cores,
    }


# -- the run ---------------------------------------------------------------------------------


def run(duration: float = 10.0, rate: int = TARGET_RATE, clients: int = 2,
        sizes: Sequence[int] = SIZES) -> dict[str, Any]:
    from rich.console import Console

    console = Console()
    if console.width < 160:  # the tables have many columns: let them wrap, not squeeze
        console = Console(width=160)
    info = machine()
    console.print(f"[bold]aap cluster benchmark[/bold]: {', '.join(map(str, sizes))} collector "
                  f"processes on one mock Kafka cluster, {duration:g} s each after "
                  f"{WARMUP_SECONDS:g} s warm-up, {clients} generator processes; freshness at "
                  f"{rate:,} events/s offered, cluster and embedded")
    check_idle(console, info)

    def log(msg: str) -> None:
        console.print(msg, style="dim", highlight=False)

    result: dict[str, Any] = {"machine": info, "duration": duration, "clients": clients,
                              "rate": rate, "runs": [], "freshness": []}
    base = Path(tempfile.mkdtemp(prefix="aap-bench-cluster-"))
    if len(str(base / "fc" / "run" / "core.sock")) > 100:
        raise click.ClickException(f"the temporary directory {base.parent} has too long a path"
                                   " for the core's Unix socket: set TMPDIR to a shorter one")
    kafka = MockKafka()
    try:
        for n in sizes:
            data = base / f"n{n}"
            key, _ = keys_for(data)
            env = {"AAP_LOG_URL": kafka.url(f"bench-n{n}-{uuid.uuid4().hex[:8]}")}
            log(f"  aap cluster up --collectors {n} ...")
            with running(lambda: start_cluster(data, n, env, kafka), key) as target:  # noqa: B023
                r = throughput(target, key, duration, clients)
            result["runs"].append(r)
            log(f"    {n} collector(s): {r['events_per_s']:,.0f} events/s acked, "
                f"{r['processed_per_s']:,.0f}/s "
                f"processed; µs/event: collectors {r['us_collectors']:.1f}, processor "
                f"{r['us_processor']:.1f}, kafka (mock) {r['us_kafka']:.1f}, generators "
                f"{r['us_generators']:.1f}")
        result["fresh_rate"] = _fresh_rate(result["runs"], rate)
        fr = result["fresh_rate"]["offered"]
        from tests.pg import postgres_server

        from aap.cluster import query_dir

        with postgres_server() as meta_url:
            shared = {"AAP_LOG_URL": kafka.url(f"bench-fresh-{uuid.uuid4().hex[:8]}"),
                      "AAP_META_URL": meta_url, "AAP_PUBLISH_SECONDS": f"{PUBLISH_S:g}"}
            for name, start, env in (
                ("cluster", lambda data: start_cluster(
                    data, FRESHNESS_COLLECTORS, shared, kafka, query=1), shared),
                ("embedded", start_embedded, {}),
            ):
                data = base / f"f{name[0]}"  # short: a core's socket path is at most 107 bytes
                key, api_key = keys_for(data, env, query_dir(data, 0) if env else None)
                log(f"  freshness, {name}, {fr:,} events/s offered ...")
                with running(lambda: start(data), key) as target:  # noqa: B023
                    f = freshness(target, key, api_key, fr, duration, clients)
                result["freshness"].append(f)
                log(f"    freshness, {name}: p50 {f['p50_ms']:.0f} ms, p95 {f['p95_ms']:.0f} ms,"
                    f" max {f['max_ms']:.0f}"
                    f" ms ({f['visible']} probes; processed {f['processed_per_s']:,.0f}/s)")
    finally:
        kafka.stop()
        shutil.rmtree(base, ignore_errors=True)
    _print(console, result)
    return result


def _fresh_rate(runs: list[dict[str, Any]], rate: int) -> dict[str, Any]:
    """The rate freshness is measured at: ``rate``, or less when the 2-collector run (else
    the nearest) sustained less — acknowledged and processed both."""
    ref = min(runs, key=lambda r: abs(r["collectors"] - FRESHNESS_COLLECTORS))
    sustained = min(ref["events_per_s"], ref["processed_per_s"])
    offered = rate
    if rate > sustained * SUSTAIN_SHARE:
        offered = max(1_000, int(sustained * SUSTAIN_SHARE) // 1_000 * 1_000)
    return {"asked": rate, "offered": offered, "sustained": sustained,
            "from_collectors": ref["collectors"]}


def _print(console: Any, r: dict[str, Any]) -> None:
    from rich.table import Table

    info = r["machine"]
    console.print(f"machine: {info['cpu_count']} CPUs ({info['cpu_model']}), {info['platform']}, "
                  f"{info['python']}, granian {info['granian']}; busy before start "
                  f"{info['busy_before']:.0%}; a round trip between two threads "
                  f"{info['speed']['threads_rtt_us']:.1f} µs, between two processes "
                  f"{info['speed']['processes_rtt_us']:.1f} µs; everything (collectors, "
                  "processor, mock brokers, load generators, probe) on the same cores")
    t = Table(title="Throughput: N collector processes (1 worker each) → one mock Kafka cluster"
                    " (3 brokers) → one processor; CPU per event in µs (kafka: the mock brokers)")
    for col in ("collectors", "acked/s", "ratio to 1", "processed/s", "collectors µs",
                "processor µs", "kafka µs", "generators µs", "p99 ms", "non-200", "errors",
                "busy"):
        t.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    one = r["runs"][0]["events_per_s"] if r["runs"] else float("nan")
    for x in r["runs"]:
        t.add_row(str(x["collectors"]), f"{x['events_per_s']:,.0f}",
                  f"{x['events_per_s'] / one:.2f}" if one else "-",
                  f"{x['processed_per_s']:,.0f}", f"{x['us_collectors']:.1f}",
                  f"{x['us_processor']:.1f}", f"{x['us_kafka']:.1f}",
                  f"{x['us_generators']:.1f}", f"{x['p99_ms']:.1f}", str(x["non_200"]),
                  str(x["errors"]), f"{x['machine_busy']:.0%}")
    console.print(t)
    console.print(
        f"On this machine's {info['cpu_count']} cores the ratio shows the overhead of more "
        "processes, not the scale-up: the collectors, the processor, the mock brokers and the "
        "load generators all share the same cores. CPU per event: collectors and the mock "
        "brokers per event acknowledged, the processor per event it wrote to the warehouse in "
        "the window (processed/s), the generators per event acknowledged.", style="dim")
    fr = r.get("fresh_rate")
    if not fr:
        return
    note = ""
    if fr["offered"] < TARGET_RATE:
        note = (f" — lower than {TARGET_RATE:,}: the {fr['from_collectors']}-collector run "
                f"sustained {fr['sustained']:,.0f} events/s (acknowledged and processed)")
    console.print(f"freshness measured at {fr['offered']:,} events/s offered{note}")
    ft = Table(title=f"Freshness: 200 → counted by a trends query through the REST API (the"
                     f" cluster's: a query node's), {fr['offered']:,} events/s offered")
    for col in ("deployment", "acked/s", "processed/s", "collectors µs", "processor µs",
                "probes", "p50 ms", "p95 ms", "max ms", "not visible", "poll p50 ms",
                "p95 ≤ 5 s"):
        ft.add_column(col, justify="left" if col == "deployment" else "right", no_wrap=True,
                      min_width=len(col))
    for f in r["freshness"]:
        ft.add_row(f["name"], f"{f['acked_per_s']:,.0f}", f"{f['processed_per_s']:,.0f}",
                   f"{f['us_collectors']:.1f}", f"{f['us_processor']:.1f}", str(f["visible"]),
                   f"{f['p50_ms']:.0f}", f"{f['p95_ms']:.0f}",
                   f"{f['max_ms']:.0f}", str(f["not_visible"]), f"{f['poll_p50_ms']:.0f}",
                   verdict(f["p95_ms"] <= TARGET_FRESHNESS_P95_S * 1000.0
                           and f["not_visible"] == 0))
    console.print(ft)
    fresh = {f["name"].split(",")[0].split(" ")[0]: f for f in r["freshness"]}
    if "cluster" in fresh and "embedded" in fresh and fresh["embedded"]["p95_ms"]:
        console.print(f"freshness p95, cluster / embedded: "
                      f"{fresh['cluster']['p95_ms'] / fresh['embedded']['p95_ms']:.2f}")
    console.print(
        "On the cluster the probe asks a query node: 200 → visible to a query node, which"
        f" reads the batch files the processor publishes every {PUBLISH_S:g} s"
        " (AAP_PUBLISH_SECONDS) and lists on PostgreSQL. Freshness is an upper bound: the"
        " reply of the first query that counted the probe (poll p50 is the query's own"
        " time). CPU per event at this steady rate: the collectors' per event acknowledged,"
        " the processor's per event written (over the load's window). Kafka is librdkafka's"
        " mock cluster, in memory: a real broker's network and disk are not in these figures.", style="dim")


def _sizes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter("a comma-separated list of collector counts, e.g. 1,2,4"
                                 ) from None
    if not sizes or any(not 1 <= n <= 16 for n in sizes):
        raise click.BadParameter("collector counts from 1 to 16, e.g. 1,2,4")
    return sizes


@click.command("cluster")
@click.option("--duration", type=float, default=10.0, show_default=True,
              help="Seconds per measurement.")
@click.option("--rate", type=int, default=TARGET_RATE, show_default=True,
              help="Offered events/s for freshness (less if the machine sustains less).")
@click.option("--clients", type=int, default=2, show_default=True,
              help="Load-generator processes.")
@click.option("--collectors", "sizes", default=",".join(map(str, SIZES)), show_default=True,
              callback=_sizes, help="Collector counts to measure throughput with.")
def main(duration: float, rate: int, clients: int, sizes: tuple[int, ...]) -> None:
    """Throughput of 1, 2, 4 collectors on one mock Kafka cluster; freshness vs embedded."""
    run(duration=duration, rate=rate, clients=clients, sizes=sizes)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="python -m benchmarks.cluster")
