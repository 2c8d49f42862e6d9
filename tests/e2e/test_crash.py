"""kill -9 of the whole server under load, ten times: no acknowledged event is lost,
and the log stays readable."""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path

import httpx

from aap.datadir import DataDir
from aap.events import decode_events
from aap.log.sqlite import SQLiteLog
from aap.runner import ServerProcess, create_source, free_port

CYCLES = 10
CLIENTS = 4
BATCH = 25


def _load(url: str, key: str, cycle: int, worker: int, stop: threading.Event,
          acked: list[str], attempted: list[str]) -> None:
    n = 0
    with httpx.Client(base_url=url, auth=(key, ""), timeout=60) as client:
        while not stop.is_set():
            ids = [f"c{cycle}-w{worker}-r{n}-e{i}" for i in range(BATCH)]
            n += 1
            attempted.extend(ids)
            batch = [{"type": "track", "event": "Crash Test", "userId": f"u{worker}",
                      "messageId": mid, "properties": {"i": i}} for i, mid in enumerate(ids)]
            try:
                r = client.post("/v1/batch", json={"batch": batch})
            except httpx.HTTPError:
                return  # the server died under us; this batch was never acknowledged
            if r.status_code == 200:
                assert r.json()["accepted"] == BATCH
                acked.extend(ids)


def test_kill_9_under_load_loses_no_acknowledged_event(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = create_source(data, "crash", "--basis", "legitimate_interest")
    rng = random.Random(1234)
    acked: list[str] = []
    attempted: list[str] = []
    port = free_port()
    for cycle in range(CYCLES):
        server = ServerProcess(data, port=port, workers=2).start()
        stop = threading.Event()
        threads = [threading.Thread(target=_load, args=(server.url, key, cycle, w, stop, acked,
                                                        attempted)) for w in range(CLIENTS)]
        for t in threads:
            t.start()
        stop.wait(rng.uniform(0.3, 1.5))
        server.kill()  # SIGKILL to master and workers at once, mid-request
        stop.set()
        for t in threads:
            t.join(30)
    assert len(acked) > CYCLES * BATCH * 10  # the load was real

    con = sqlite3.connect(DataDir(data).log_db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    stored: list[str] = []
    log = SQLiteLog(DataDir(data).log)
    after = 0
    while recs := log.read(after, 1000):
        for rec in recs:
            events = decode_events(rec.payload)
            assert rec.count == len(events) == BATCH
            ids = [e.message_id for e in events]
            # one record is one request, in the order it was sent
            prefix = ids[0].rsplit("-e", 1)[0]
            assert ids == [f"{prefix}-e{i}" for i in range(BATCH)]
            stored.extend(ids)
        after = recs[-1].offset
    log.close()
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged events lost"
    assert set(stored) <= set(attempted)
    assert len(stored) == len(set(stored))
