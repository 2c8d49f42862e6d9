"""kill -9 of the server (collector and processor) under load, ten times: after the
restarts the warehouse holds every acknowledged event exactly once."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import httpx

from aap.runner import ServerProcess, create_source, free_port

CYCLES = 10
BATCH = 20


def _load(url: str, key: str, tag: str, stop: threading.Event, acked: set[str],
          rng: random.Random) -> None:
    n = 0
    last: list[dict[str, object]] | None = None
    with httpx.Client(base_url=url, auth=(key, ""), timeout=60) as client:
        while not stop.is_set():
            if last is not None and rng.random() < 0.3:
                batch = last  # a client retry: the same messages again
            else:
                batch = [{"type": "track", "event": "Crash", "anonymousId": f"{tag}-a{n % 7}",
                          "messageId": f"{tag}-r{n}-e{i}"} for i in range(BATCH)]
                n += 1
            try:
                r = client.post("/v1/batch", json={"batch": batch})
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                acked.update(str(m["messageId"]) for m in batch)
                last = batch


def test_processor_killed_under_load_writes_every_event_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = create_source(data, "crash", "--basis", "legitimate_interest")
    rng = random.Random(99)
    acked: set[str] = set()
    port = free_port()
    for cycle in range(CYCLES):
        server = ServerProcess(data, port=port, workers=2).start()
        stop = threading.Event()
        threads = [threading.Thread(target=_load, args=(
            server.url, key, f"c{cycle}w{w}", stop, acked, random.Random(cycle * 10 + w)))
            for w in range(3)]
        for t in threads:
            t.start()
        stop.wait(rng.uniform(0.5, 2.0))
        server.kill()
        stop.set()
        for t in threads:
            t.join(30)
    server = ServerProcess(data, port=port, workers=2).start()
    try:
        server.wait_processed(timeout=60)
        total, distinct = server.sql("SELECT count(*), count(DISTINCT message_id) FROM events")[0]
        assert total == distinct  # nothing doubled
        stored = {r[0] for r in server.sql("SELECT message_id FROM events")}
        assert acked <= stored, f"{len(acked - stored)} acknowledged events missing"
        assert len(acked) > CYCLES * BATCH * 5
    finally:
        server.stop()


def _core_pids(server: ServerProcess) -> list[int]:
    assert server.proc is not None
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            pgid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
        except (OSError, IndexError, ValueError):
            continue
        if pgid == server.proc.pid and b"process" in cmd and b"aap" in cmd:
            pids.append(int(proc.name))
    return pids


def test_a_killed_core_is_restarted_and_catches_up(tmp_path: Path) -> None:
    import os
    import signal
    import time

    data = tmp_path / "data"
    key = create_source(data, "core", "--basis", "legitimate_interest")
    with ServerProcess(data, workers=2) as server:
        (pid,) = _core_pids(server)
        assert oct(server.core_socket.stat().st_mode & 0o777) == "0o600"
        os.kill(pid, signal.SIGKILL)
        batch = [{"type": "track", "event": "While Down", "userId": "u", "messageId": f"down-{i}"}
                 for i in range(50)]
        r = httpx.post(server.url + "/v1/batch", json={"batch": batch}, auth=(key, ""))
        assert r.status_code == 200  # the collector does not need the core
        deadline = time.monotonic() + 180
        while True:
            pids = _core_pids(server)
            if pids and pids != [pid] and server._core_up():
                break
            assert time.monotonic() < deadline, "core was not restarted"
            time.sleep(0.1)
        server.wait_processed()
        assert server.sql("SELECT count(*) FROM events WHERE event = 'While Down'") == [[50]]
