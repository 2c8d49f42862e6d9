"""Stream benchmark: events/s and ack latency over WebSocket (``GET /v1/stream``) on one
and on 32 connections, against HTTP batches (``POST /v1/batch``) on as many keep-alive
connections, in the same run on the same server.

The real server (``aap serve``, 2 granian workers, durable SQLite log) is started once;
its core process is paused meanwhile, as in the ingest benchmark (the figures are the
collector's). The load comes from one generator process. Each message or request is one
of a few pre-built 100-event Segment batches (the ingest benchmark's events). Over
WebSocket each connection keeps up to ``window`` messages unacknowledged (the server's
``AAP_STREAM_MAX_UNACKED``, 16); over HTTP each connection waits for its answer (HTTP/1.1
has no pipelining the SDKs use). Latency is from sending a message to its ack (its 200),
so the ack latency includes the wait for durability (the group commit's fsync).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from aap.runner import ServerProcess, create_source
from benchmarks.common import check_idle, machine, percentile
from benchmarks.ingest import EVENTS_PER_REQUEST, Conn, build_requests, make_event

WARMUP_SECONDS = 1.0
DISTINCT = 16
PLAN = (("ws", 1), ("http", 1), ("ws", 32), ("http", 32))


def ws_messages(n: int = DISTINCT, seed: int = 1) -> list[bytes]:
    """The ``"batch":[...]}`` tails of ``n`` distinct 100-event messages (a message is
    ``{"seq":N,`` + a tail)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    return [json.dumps({"batch": [make_event(rng, now) for _ in range(EVENTS_PER_REQUEST)]},
                       separators=(",", ":")).encode()[1:] for _ in range(n)]


async def _ws_conn(url: str, key: str, tails: list[bytes], window: int, until: list[float],
                   lat: list[float], counted: list[int]) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, subprotocols=["aap.v1", "key." + key],  # type: ignore[list-item]
                       open_timeout=60, max_size=None) as ws:
        json.loads(await ws.recv())  # ready
        sent: dict[int, float] = {}
        slots = asyncio.Semaphore(window)
        stop = False

        async def send() -> None:
            seq = 0
            while not stop:
                await slots.acquire()
                seq += 1
                sent[seq] = time.perf_counter()
                await ws.send(b'{"seq":%d,' % seq + tails[seq % len(tails)], text=True)

        sender = asyncio.create_task(send())
        try:
            while time.perf_counter() < until[0]:
                answer = json.loads(await ws.recv())
                now = time.perf_counter()
                if "ack" not in answer:
                    raise RuntimeError(f"not an ack: {answer}")
                t0 = sent.pop(answer["ack"])
                slots.release()
                if until[1] <= t0:  # sent after the warm-up
                    lat.append((now - t0) * 1000)
                    counted[0] += answer["accepted"]
        finally:
            stop = True
            sender.cancel()


async def _http_conn(port: int, reqs: list[bytes], until: list[float], lat: list[float],
                     counted: list[int]) -> None:
    conn = Conn(port)
    i = 0
    try:
        while time.perf_counter() < until[0]:
            t0 = time.perf_counter()
            status = await conn.request(reqs[i % len(reqs)])
            i += 1
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
            if until[1] <= t0:
                lat.append((time.perf_counter() - t0) * 1000)
                counted[0] += EVENTS_PER_REQUEST
    finally:
        conn.close()


async def _measure(kind: str, conns: int, url: str, port: int, key: str, duration: float,
                   window: int) -> dict[str, Any]:
    start = time.perf_counter()
    until = [start + WARMUP_SECONDS + duration, start + WARMUP_SECONDS]
    lat: list[float] = []
    counted = [0]
    if kind == "ws":
        tails = ws_messages()
        jobs = [_ws_conn(url, key, tails, window, until, lat, counted) for _ in range(conns)]
    else:
        reqs = build_requests(key, port, n=DISTINCT)
        jobs = [_http_conn(port, reqs, until, lat, counted) for _ in range(conns)]
    await asyncio.gather(*jobs)
    lat.sort()
    return {"kind": kind, "connections": conns, "events_per_s": counted[0] / duration,
            "messages": len(lat), "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}


def _generator(args: tuple[Any, ...], out: Any) -> None:
    try:
        out.put(asyncio.run(_measure(*args)))
    except BaseException as exc:  # reported, not hidden
        out.put({"error": repr(exc)})


def run(duration: float = 5.0, window: int = 16) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    info = machine()
    console.print(f"[bold]aap stream benchmark[/bold]: {duration:g} s per measurement after "
                  f"{WARMUP_SECONDS:g} s warm-up, {EVENTS_PER_REQUEST} events per message or"
                  f" request, WebSocket window {window}")
    check_idle(console, info)
    base = Path(tempfile.mkdtemp(prefix="aap-bench-stream-"))
    runs: list[dict[str, Any]] = []
    try:
        data = base / "data"
        key = create_source(data, "bench", "--basis", "legitimate_interest")
        server = ServerProcess(data, workers=2,
                               env={"AAP_STREAM_MAX_UNACKED": str(window)}).start()
        core = server.core_pid()
        if core is not None:
            os.kill(core, signal.SIGSTOP)
        try:
            url = server.url.replace("http://", "ws://") + "/v1/stream"
            ctx = mp.get_context("spawn")
            for kind, conns in PLAN:
                console.print(f"  measuring {kind} x {conns} ...", style="dim")
                out = ctx.Queue()
                proc = ctx.Process(target=_generator, args=(
                    (kind, conns, url, server.port, key, duration, window), out))
                proc.start()
                result = out.get(timeout=duration + 120)
                proc.join(30)
                if "error" in result:
                    raise RuntimeError(f"{kind} x {conns}: {result['error']}")
                runs.append(result)
                time.sleep(0.5)
        finally:
            if core is not None:
                os.kill(core, signal.SIGCONT)
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    http = {r["connections"]: r["events_per_s"] for r in runs if r["kind"] == "http"}
    for r in runs:
        r["vs_http"] = r["events_per_s"] / http[r["connections"]] if http.get(
            r["connections"]) else float("nan")
    table = Table(title="events/s and ack latency (send → ack once durable)")
    for col in ("transport", "connections", "events/s", "vs HTTP, same connections",
                "p50 ms", "p99 ms"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row("WebSocket" if r["kind"] == "ws" else "HTTP batch", str(r["connections"]),
                      f"{r['events_per_s']:,.0f}", f"{r['vs_http']:.2f}x",
                      f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}")
    console.print(table)
    return {"machine": info, "duration": duration, "window": window, "runs": runs}


@click.command("stream")
@click.option("--duration", type=float, default=5.0, show_default=True,
              help="Seconds per measurement.")
@click.option("--window", type=int, default=16, show_default=True,
              help="Unacknowledged messages per WebSocket connection.")
def main(duration: float, window: int) -> None:
    """Events/s over 1 and 32 WebSocket connections vs HTTP batches, p99 ack latency."""
    run(duration=duration, window=window)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="python -m benchmarks.stream")
