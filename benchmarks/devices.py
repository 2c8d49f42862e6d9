"""Devices benchmark: readings/s over REST telemetry (``POST /v1/devices/telemetry``) and
over MQTT (mosquitto → the bridge), against Segment HTTP batches (``POST /v1/batch``), in
the same run on the same server.

The real server (``aap serve``, 2 granian workers, durable SQLite log, the MQTT bridge
started because ``AAP_MQTT_BROKER`` is set) and Debian's mosquitto are started once; the
core process is paused meanwhile, as in the ingest benchmark (the figures are ingestion's).
Every request or MQTT message carries ``batch`` readings or events. HTTP: ``conns``
keep-alive connections, each waiting for its answer (200 once durable). MQTT: one device
publishing at QoS 1 with up to 64 messages in flight; the figure is readings published
over the time until the last of them is durable in the log (the bridge acknowledges each
message to the broker only then).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import httpx

from aap.datadir import DataDir
from aap.log.sqlite import SQLiteLog
from aap.runner import ServerProcess, create_source
from benchmarks.common import check_idle, machine

WARMUP_SECONDS = 1.0


def readings(n: int, offset: int) -> list[dict[str, Any]]:
    t0 = datetime.now(UTC) - timedelta(hours=1)
    return [{"name": "temperature", "ts": (t0 + timedelta(milliseconds=offset + i)).timestamp(),
             "values": {"celsius": 20 + i % 7, "humidity": 40 + i % 11}} for i in range(n)]


def events(n: int, offset: int) -> list[dict[str, Any]]:
    t0 = datetime.now(UTC) - timedelta(hours=1)
    return [{"type": "track", "event": "temperature", "anonymousId": "dev_bench",
             "timestamp": (t0 + timedelta(milliseconds=offset + i)).isoformat(),
             "properties": {"celsius": 20 + i % 7, "humidity": 40 + i % 11}}
            for i in range(n)]


async def _http(url: str, headers: dict[str, str], bodies: list[bytes], conns: int,
                duration: float) -> float:
    """Items per second accepted (each body holds the same number)."""
    counted = [0]
    start = time.perf_counter()
    until = (start + WARMUP_SECONDS, start + WARMUP_SECONDS + duration)

    async def conn(i: int) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            j = i
            while time.perf_counter() < until[1]:
                t0 = time.perf_counter()
                r = await client.post(url, content=bodies[j % len(bodies)], headers=headers)
                j += conns
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                if t0 >= until[0]:
                    counted[0] += r.json()["accepted"]

    await asyncio.gather(*(conn(i) for i in range(conns)))
    return counted[0] / duration


def _mqtt(port: int, user: str, password: str, topic: str, batch: int, duration: float,
          log: Path) -> tuple[float, int]:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-device")
    client.username_pw_set(user, password)
    client.max_inflight_messages_set(64)
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(30)
    db = SQLiteLog(log)
    before = db.stats().total_events
    start = time.perf_counter()
    sent = 0
    infos = []
    while time.perf_counter() < start + duration:
        payload = json.dumps(readings(batch, 10_000_000 + sent)).encode()
        infos.append(client.publish(topic, payload, qos=1))
        sent += batch
        if len(infos) >= 64:
            infos.pop(0).wait_for_publish(60)
    for info in infos:
        info.wait_for_publish(60)
    deadline = time.monotonic() + 300
    while db.stats().total_events - before < sent and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    stored = db.stats().total_events - before
    db.close()
    client.disconnect()
    client.loop_stop()
    return stored / elapsed, stored


def _aap(data: Path, *args: str) -> list[str]:
    return subprocess.run([sys.executable, "-m", "aap", *args, "--data-dir", str(data)],
                          check=True, capture_output=True, text=True).stdout.strip().splitlines()


def run(duration: float = 5.0, conns: int = 8, batch: int = 50) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table
    from tests.mosquitto import Broker

    console = Console()
    info = machine()
    console.print(f"[bold]aap devices benchmark[/bold]: {duration:g} s per measurement,"
                  f" {batch} readings or events per request or message, {conns} HTTP"
                  " connections")
    check_idle(console, info)
    base = Path(tempfile.mkdtemp(prefix="aap-bench-devices-"))
    out: dict[str, float] = {}
    try:
        data = base / "data"
        key = create_source(data, "bench", "--purpose", "device_diagnostics:legitimate_interest")
        lines = _aap(data, "devices", "register", "--source", "bench", "--name", "meter-1")
        dev_id, dev_key = lines[-2].split("(")[1].split(")")[0], lines[-1]
        password = _aap(data, "devices", "bridge-password")[-1]
        broker = Broker(base, data).start()
        server = ServerProcess(data, workers=2, env={
            "AAP_MQTT_BROKER": f"mqtt://aap-bridge:{password}@127.0.0.1:{broker.port}"}).start()
        core = server.core_pid()
        if core is not None:
            os.kill(core, signal.SIGSTOP)
        try:
            seg = [json.dumps({"batch": events(batch, i * batch)}).encode() for i in range(64)]
            tel = [json.dumps(readings(batch, i * batch)).encode() for i in range(64)]
            import base64

            basic = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
            ctype = {"Content-Type": "application/json"}
            console.print("  measuring HTTP batch ...", style="dim")
            out["http_batch"] = asyncio.run(_http(server.url + "/v1/batch", {
                "Authorization": basic, **ctype}, seg, conns, duration))
            console.print("  measuring REST telemetry ...", style="dim")
            out["rest_telemetry"] = asyncio.run(_http(server.url + "/v1/devices/telemetry", {
                "Authorization": f"Bearer {dev_key}", **ctype}, tel, conns, duration))
            console.print("  measuring MQTT ...", style="dim")
            out["mqtt"], _ = _mqtt(broker.port, dev_id, dev_key, "aap/bench/meter-1/events",
                                   batch, duration, DataDir(data).log)
        finally:
            if core is not None:
                os.kill(core, signal.SIGCONT)
            server.stop()
            broker.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    table = Table(title="items/s stored durably (same server, same run)")
    for col in ("path", "items/s", "vs HTTP batch"):
        table.add_column(col, justify="right")
    for name, label in (("http_batch", "HTTP batch (/v1/batch), events"),
                        ("rest_telemetry", "REST telemetry, readings"),
                        ("mqtt", "MQTT QoS 1 via the bridge, readings")):
        table.add_row(label, f"{out[name]:,.0f}", f"{out[name] / out['http_batch']:.2f}x")
    console.print(table)
    return {"machine": info, "duration": duration, "batch": batch, "conns": conns, **out}


@click.command("devices")
@click.option("--duration", type=float, default=5.0, show_default=True,
              help="Seconds per measurement.")
@click.option("--conns", type=int, default=8, show_default=True,
              help="HTTP keep-alive connections.")
@click.option("--batch", type=int, default=50, show_default=True,
              help="Readings (or events) per request or MQTT message.")
def main(duration: float, conns: int, batch: int) -> None:
    """Readings/s over REST telemetry and MQTT vs events/s over HTTP batches."""
    run(duration=duration, conns=conns, batch=batch)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="python -m benchmarks.devices")
