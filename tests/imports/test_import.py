"""``aap import`` end to end: a real server on 127.0.0.1 (its processor drains the log
into the warehouse) and the import as the CLI runs it, in its own process, against the
same data dir; S3 from a real S3-compatible server (moto), PostgreSQL from a real
server (tests/pg.py). Canaries planted in the inputs are nowhere on disk afterwards."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aap.datadir import DataDir
from aap.runner import ServerProcess, create_source, free_port
from aap.sources import Sources
from tests.conftest import slow_fixture
from tests.privacy import test_ip_canary as ipc
from tests.privacy.test_canary_e2e import found
from tests.privacy.test_personal_canary import forms

pytestmark = pytest.mark.slow

LI = ("--purpose", "analytics", "--basis", "legitimate_interest")
EMAIL = "canary.import.5e1f@example.net"
USER = "canary-import-user-7c2d"
NAME = "Adelheid Canaryworth"
IP = "203.0.113.219"
LAT, LON = "48.8583701", "2.2944813"
START = datetime(2025, 3, 1, tzinfo=UTC)


class Env:
    def __init__(self, data: Path, server: ServerProcess, tmp: Path) -> None:
        self.data, self.server, self.tmp = data, server, tmp
        self.log = server.log_file

    def source(self, name: str, *args: str) -> str:
        """A new source; returns its id."""
        key = create_source(self.data, name, *args)
        src = Sources(self.data).by_name(name)
        assert src is not None and key.startswith("wk_")
        return src.id

    def run(self, *args: str, ok: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "aap", "import", *args, "--data-dir",
                               str(self.data)], capture_output=True, text=True, timeout=600,
                              **kw)
        assert (done.returncode == 0) == ok, (done.returncode, done.stdout, done.stderr)
        return done

    def report(self, *args: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.run(*args, "--json").stdout.splitlines()[-1])
        return out

    def stored(self, source_id: str) -> int:
        self.server.wait_processed()
        rows = self.server.sql("SELECT count(*) FROM events WHERE source = ?", [source_id])
        return int(str(rows[0][0]))


@slow_fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("imports")
    data = tmp / "data"
    create_source(data, "live")
    server = ServerProcess(data, workers=1, log_file=tmp / "server.log").start()
    try:
        yield Env(data, server, tmp)
    finally:
        server.stop()


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def mapping(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


CSV_MAPPING = """\
timestamp = "time"
user_id = "user"
anonymous_id = "device"
event = "action"
properties = ["plan", "price", "latitude", "longitude", "contact"]

[traits]
email = "email"
name = "full_name"

[context]
ip = "ip"
"""


def canary_rows(n: int) -> list[dict[str, Any]]:
    return [{"time": (START + timedelta(minutes=i)).isoformat(), "user": f"{USER}-{i % 3}",
             "device": f"dev-{i % 5}", "action": "Ordered" if i % 2 else "Viewed",
             "plan": "pro", "price": str(i), "latitude": LAT, "longitude": LON,
             "contact": EMAIL, "email": EMAIL, "full_name": NAME, "ip": IP}
            for i in range(n)]


def test_a_csv_import_is_stored_once_and_leaves_no_canary(env: Env) -> None:
    sid = env.source("csv", "--historical", "--basis", "legitimate_interest")
    src = write_csv(env.tmp / "history.csv", canary_rows(500))
    m = mapping(env.tmp / "csv.toml", CSV_MAPPING)
    first = env.report(str(src), "--source", "csv", *LI, "--mapping", str(m),
                       "--batch-size", "120", "--workers", "2")  # the scan covers workers
    assert first["stored"] == 500 and first["refused"] == {} and first["skipped_duplicates"] == 0
    assert env.stored(sid) == 500
    again = env.report(str(src), "--source", "csv", *LI, "--mapping", str(m))
    assert (again["stored"], again["skipped_duplicates"]) == (0, 500)
    assert env.stored(sid) == 500
    times = env.server.sql("SELECT min(timestamp), max(timestamp) FROM events WHERE source = ?",
                           [sid])
    assert str(times[0][0]).startswith("2025-03-01 00:00:00")  # as sent: historical
    assert str(times[0][1]).startswith("2025-03-01 08:19:00")
    needles = sorted({f for c in (EMAIL, USER, NAME, LAT, LON) for f in forms(c)}
                     | set(ipc.forms(IP)))
    assert found(env.data, env.log, needles) == []
    assert src.read_text().count(EMAIL) == 1000  # the scan would have seen one


def test_without_a_declared_purpose_and_basis_the_import_refuses(env: Env) -> None:
    env.source("strict", "--historical", "--purpose", "analytics:consent")
    env.source("live-only", "--basis", "legitimate_interest")
    src = write_csv(env.tmp / "refused.csv", canary_rows(3))
    m = str(mapping(env.tmp / "refused.toml", CSV_MAPPING))
    for args, says in [
        ((), "needs a declared purpose and lawful basis"),
        (("--purpose", "analytics"), "needs a declared purpose and lawful basis"),
        (("--purpose", "marketing", "--basis", "consent"),
         "does not declare the purpose 'marketing'"),
        (("--purpose", "analytics", "--basis", "legitimate_interest"),
         "declares analytics on the basis 'consent', not 'legitimate_interest'"),
    ]:
        done = env.run(str(src), "--source", "strict", "--mapping", m, *args, ok=False)
        assert says in done.stderr, done.stderr
    done = env.run(str(src), "--source", "live-only", *LI, "--mapping", m, ok=False)
    assert "is not historical" in done.stderr
    done = env.run(str(src), "--source", "nope", *LI, "--mapping", m, ok=False)
    assert "no source named 'nope'" in done.stderr
    assert not DataDir(env.data).imports.exists() or not any(
        p.name.startswith("refused") for p in DataDir(env.data).imports.iterdir())


def test_bad_inputs_are_refused_clearly(env: Env) -> None:
    env.source("bad", "--historical", "--basis", "legitimate_interest")
    src = write_csv(env.tmp / "bad.csv", canary_rows(2))
    bad_toml = mapping(env.tmp / "bad.toml", 'timestamp = "time"\nuser_id = "user"\nevent = \n')
    done = env.run(str(src), "--source", "bad", *LI, "--mapping", str(bad_toml), ok=False)
    assert "bad.toml" in done.stderr and "line 3, column" in done.stderr
    wrong_col = mapping(env.tmp / "col.toml", 'timestamp = "when"\nuser_id = "user"\n'
                        'event = "action"\n')
    done = env.run(str(src), "--source", "bad", *LI, "--mapping", str(wrong_col), ok=False)
    assert "col.toml, line 1, column 1: the input has no column 'when'" in done.stderr
    for where, says in [(str(env.tmp / "missing.csv"), "does not exist"),
                        (str(env.tmp / "bad.toml"), "cannot tell its format"),
                        ("ftp://x/y.csv", "use a file path")]:
        done = env.run(where, "--source", "bad", *LI, "--preset", "mixpanel", ok=False)
        assert says in done.stderr, done.stderr
    done = env.run(str(src), "--source", "bad", *LI, ok=False)
    assert "give --mapping FILE or --preset NAME" in done.stderr
    ragged = env.tmp / "ragged.csv"
    ragged.write_text("time,user,action\n2025-03-01T00:00:00Z,u1,Viewed\n2025-03-01,u2\n")
    done = env.run(str(ragged), "--source", "bad", *LI, "--mapping", str(wrong_col), ok=False)
    assert "ragged.csv" in done.stderr and "Expected 3 columns, got 2" in done.stderr, done.stderr
    lines = env.tmp / "bad.jsonl"
    good = {"event": "Played", "properties": {"time": 1700000000, "distinct_id": "d1",
                                              "$insert_id": "i1"}}
    lines.write_text("\n".join([json.dumps(good), "{not json", "[1, 2]",
                                json.dumps({"event": "Played", "properties": {
                                    "distinct_id": "d2", "time": "someday"}}),
                                json.dumps({"event": "Played", "properties": {
                                    "time": 1700000000}}),
                                json.dumps({"event": "Played", "properties": {
                                    "time": 1700000000, "distinct_id": "d3",
                                    "blob": "x" * (1 << 20)}})]) + "\n")
    rep = env.report(str(lines), "--source", "bad", *LI, "--preset", "mixpanel")
    assert rep["stored"] == 1
    assert rep["refused"] == {"invalid_json": 1, "not_an_object": 1, "invalid_timestamp": 1,
                              "missing_identity": 1, "event_too_large": 1}


def test_the_consent_gate_refuses_whoever_did_not_consent(env: Env) -> None:
    key = create_source(env.data, "gated", "--historical", "--purpose", "analytics:consent")
    src_of = Sources(env.data).by_name("gated")
    assert src_of is not None
    for anon, given in (("anon-alice", True), ("anon-bob", False)):
        r = httpx.post(env.server.url + "/v1/consent", auth=(key, ""),
                       json={"anonymousId": anon, "purposes": {"analytics": given}})
        assert r.status_code == 200, r.text
    rows = [{"time": (START + timedelta(hours=i)).isoformat(), "device": who,
             "action": "Viewed"} for i, who in enumerate(
                 ["anon-alice", "anon-bob", "anon-carol"] * 4)]
    src = write_csv(env.tmp / "gated.csv", rows)
    m = mapping(env.tmp / "gated.toml", 'timestamp = "time"\nanonymous_id = "device"\n'
                'event = "action"\n')
    rep = env.report(str(src), "--source", "gated", "--purpose", "analytics", "--basis",
                     "consent", "--mapping", str(m))
    # alice consented; bob withdrew; carol never said: on the basis of consent, no
    assert rep["stored"] == 4 and rep["refused"] == {"no_lawful_basis": 8}, rep
    assert env.stored(src_of.id) == 4


def test_a_killed_import_resumes_to_the_same_contents(env: Env) -> None:
    sid = env.source("resume", "--historical", "--basis", "legitimate_interest")
    n = 120_000
    table = pa.table({
        "id": [f"ev-{i}" for i in range(n)],
        "at": pa.array([START + timedelta(seconds=i) for i in range(n)],
                       pa.timestamp("ms", "UTC")),
        "who": [f"p{i % 997}" for i in range(n)],
        "what": ["Viewed", "Ordered", "Added"] * (n // 3)})
    src = env.tmp / "big.parquet"
    pq.write_table(table, src, row_group_size=20_000)
    m = mapping(env.tmp / "resume.toml", 'timestamp = "at"\nuser_id = "who"\nevent = "what"\n'
                'message_id = "id"\n')
    args = [sys.executable, "-m", "aap", "import", str(src), "--source", "resume", *LI,
            "--mapping", str(m), "--batch-size", "2000", "--json", "--data-dir", str(env.data)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = DataDir(env.data).imports
    deadline = time.monotonic() + 120
    while _position(ledger) < 10_000:
        assert proc.poll() is None and time.monotonic() < deadline, "ended before the kill"
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert workers, "the import has worker processes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _position(ledger)
    assert 0 < killed_at < n
    deadline = time.monotonic() + 60  # its workers see it gone and exit: none is orphaned
    while any(Path(f"/proc/{p}").exists() for p in workers):
        assert time.monotonic() < deadline, f"workers outlived the killed import: {workers}"
        time.sleep(0.1)
    rep = env.report(str(src), "--source", "resume", *LI, "--mapping", str(m),
                     "--batch-size", "2000")
    assert rep["skipped_duplicates"] == killed_at
    assert rep["stored"] == n - killed_at and rep["rows"] == n - killed_at
    assert env.stored(sid) == n
    got = env.server.sql("SELECT count(DISTINCT message_id), min(message_id), max(timestamp)"
                         " FROM events WHERE source = ?", [sid])
    assert got[0][0] == n and str(got[0][2]).startswith(
        str((START + timedelta(seconds=n - 1)).replace(tzinfo=None)))


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _position(ledger: Path) -> int:
    best = 0
    for p in ledger.glob("*.json") if ledger.exists() else ():
        try:
            state = json.loads(p.read_text())
        except ValueError:
            continue
        if not state.get("done"):
            best = max(best, int(state["position"]))
    return best


# -- the exports of other tools --

def test_posthog_events_export_parquet(env: Env) -> None:
    """PostHog's S3 batch export, events model, as Parquet: ``uuid``, ``event``,
    ``distinct_id``, ``properties`` (a JSON-encoded string), ``timestamp``, ... —
    https://posthog.com/docs/data-pipelines/batch-exports/s3 ("Events model")."""
    sid = env.source("posthog", "--historical", "--basis", "legitimate_interest")
    rows = [
        {"uuid": "0190a1b2-0000-7000-8000-00000000000" + str(i), "event": ev,
         "distinct_id": USER if i else "anon-ph-1", "team_id": 1,
         "person_id": "0190a1b2-1111-7000-8000-000000000001",
         "properties": json.dumps({"$current_url": "https://shop.example/p", "$ip": IP,
                                   "$set": {"email": EMAIL}, "$browser": "Firefox",
                                   "$device_id": "anon-ph-1", "plan": "pro",
                                   **({"$anon_distinct_id": "anon-ph-1"} if i == 1 else {})}),
         "person_properties": json.dumps({"email": EMAIL}),
         "timestamp": START + timedelta(minutes=i), "created_at": START + timedelta(minutes=i),
         "elements_chain": ""}
        for i, ev in enumerate(["$pageview", "$identify", "Ordered", "$pageleave"])]
    src = env.tmp / "posthog-export.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    rep = env.report(str(src), "--source", "posthog", *LI, "--preset", "posthog")
    assert rep["stored"] == 4, rep
    assert env.stored(sid) == 4
    types = env.server.sql("SELECT type, count(*) FROM events WHERE source = ? GROUP BY 1"
                           " ORDER BY 1", [sid])
    assert types == [["identify", 1], ["page", 1], ["track", 2]]
    assert found(env.data, env.log, sorted(set(forms(EMAIL)) | set(ipc.forms(IP)))) == []


def test_mixpanel_raw_export(env: Env) -> None:
    """Mixpanel's raw export: JSON lines ``{"event", "properties": {"time" (s),
    "distinct_id", "$insert_id", ...}}`` — https://docs.mixpanel.com/reference/raw-event-export"""
    sid = env.source("mixpanel", "--historical", "--basis", "legitimate_interest")
    lines = [{"event": "Signed Up" if i % 2 else "Purchase", "properties": {
        "time": 1602611311 + i, "distinct_id": f"mp-user-{i % 4}",
        "$insert_id": f"hpuDqcvpltpCjBsebtx{i:04d}", "mp_processing_time_ms": 1602625711874,
        "ip": IP, "$email": EMAIL, "Amount": 5.0}} for i in range(40)]
    src = env.tmp / "mixpanel.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rep = env.report(str(src), "--source", "mixpanel", *LI, "--preset", "mixpanel")
    assert rep["stored"] == 40
    again = env.report(str(src), "--source", "mixpanel", *LI, "--preset", "mixpanel")
    assert again["skipped_duplicates"] == 40 and again["stored"] == 0
    with open(src, "a") as f:  # the export grew: what was added is imported
        f.write("".join(json.dumps({"event": "Later", "properties": {
            "time": 1602700000 + i, "distinct_id": "mp-user-9", "$insert_id": f"later-{i}"}})
            + "\n" for i in range(5)))
    grown = env.report(str(src), "--source", "mixpanel", *LI, "--preset", "mixpanel")
    assert (grown["stored"], grown["skipped_duplicates"]) == (5, 40)
    assert env.stored(sid) == 45
    assert found(env.data, env.log, sorted(set(forms(EMAIL)) | set(ipc.forms(IP)))) == []


@slow_fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    client.create_bucket(Bucket="archive")
    for k, v in {"AAP_S3_ENDPOINT_URL": endpoint, "AAP_S3_ACCESS_KEY": "test",
                 "AAP_S3_SECRET_KEY": "test"}.items():
        monkeypatch.setenv(k, v)
    try:
        yield client
    finally:
        server.stop()


def test_segment_s3_archive(env: Env, s3: Any) -> None:
    """Segment's S3 archive: gzipped JSON lines, each a message as Segment received it,
    under ``segment-logs/{source-id}/{received-day}/`` —
    https://segment.com/docs/connections/storage/catalog/amazon-s3/"""
    sid = env.source("segment", "--historical", "--basis", "legitimate_interest")
    day = int(START.timestamp() * 1000)
    for part in range(3):
        msgs = [{"type": "track", "event": "Order Completed", "userId": f"{USER}-{i}",
                 "anonymousId": f"seg-anon-{i}", "messageId": f"ajs-{part}-{i}",
                 "timestamp": (START + timedelta(minutes=part * 10 + i)).isoformat(),
                 "receivedAt": START.isoformat(), "sentAt": START.isoformat(),
                 "properties": {"revenue": 9.5, "email": EMAIL},
                 "context": {"ip": IP, "traits": {"email": EMAIL}}, "writeKey": "segkey",
                 "projectId": "abc", "version": 2} for i in range(10)]
        if part == 1:
            msgs.append({"type": "identify", "userId": USER, "messageId": "ajs-id",
                         "timestamp": START.isoformat(), "traits": {"email": EMAIL,
                                                                    "name": NAME}})
        body = gzip.compress("".join(json.dumps(m) + "\n" for m in msgs).encode())
        s3.put_object(Bucket="archive", Key=f"segment-logs/src1/{day}/part-{part}.gz", Body=body)
    rep = env.report("s3://archive/segment-logs/src1/", "--source", "segment", *LI,
                     "--preset", "segment", "--format", "jsonl")
    assert rep["stored"] == 31 and rep["refused"] == {}, rep
    assert env.stored(sid) == 31
    needles = sorted({f for c in (EMAIL, NAME) for f in forms(c)} | set(ipc.forms(IP)))
    assert found(env.data, env.log, needles) == []


# -- databases --

DB_MAPPING = 'timestamp = "ts"\nuser_id = "uid"\nevent = "ev"\nproperties = ["amount"]\n'


def test_sqlite_table_and_query(env: Env) -> None:
    import sqlite3

    sid = env.source("sqlite", "--historical", "--basis", "legitimate_interest")
    db = env.tmp / "legacy.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE events (ts TEXT, uid TEXT, ev TEXT, amount REAL)")
    con.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", [
        ((START + timedelta(hours=i)).isoformat(), f"sq-{i % 7}", "Paid", i * 1.5)
        for i in range(300)])
    con.commit()
    con.close()
    m = mapping(env.tmp / "db.toml", DB_MAPPING)
    # as a person runs it, in a terminal: the progress bar, then the report
    # three workers on six batches: the ledger and the report add up in input order
    done = env.run(f"sqlite:///{db}", "--table", "events", "--source", "sqlite", *LI,
                   "--mapping", str(m), "--batch-size", "50", "--workers", "3",
                   env={**os.environ, "TTY_COMPATIBLE": "1", "COLUMNS": "160"})
    assert "300/300" in done.stderr and "rows/s" in done.stderr and "ETA" in done.stderr
    assert ": 300 rows read, 300 stored, 0 skipped as duplicates" in done.stdout
    ledger = [json.loads(p.read_text()) for p in DataDir(env.data).imports.glob("*.json")]
    assert {"position": 300, "done": True, "stored": 300} in ledger
    rep = env.report(f"sqlite:///{db}", "--query", "SELECT * FROM events WHERE amount < 30"
                     " ORDER BY ts", "--source", "sqlite", *LI, "--mapping", str(m))
    assert rep["stored"] == 20  # the same rows again: the same ids, one copy kept
    assert env.stored(sid) == 300
    done = env.run(f"sqlite:///{db}", "--query", "SELECT * FROM nowhere", "--source", "sqlite",
                   *LI, "--mapping", str(m), ok=False)
    assert "the query fails: no such table: nowhere" in done.stderr


def test_postgresql_table(env: Env) -> None:
    import psycopg

    from tests.pg import postgres_server

    sid = env.source("postgres", "--historical", "--basis", "legitimate_interest")
    failed = env.source("pgfail", "--historical", "--basis", "legitimate_interest")
    with postgres_server() as url:
        with psycopg.connect(url) as con:
            con.execute("CREATE TABLE history (id serial PRIMARY KEY, ts timestamptz,"
                        " uid text, ev text, amount numeric)")
            with con.cursor() as cur:
                cur.executemany("INSERT INTO history (ts, uid, ev, amount) VALUES (%s, %s, %s, %s)",
                                [(START + timedelta(hours=i), f"pg-{i % 5}", "Paid", i)
                                 for i in range(250)])
        m = mapping(env.tmp / "pg.toml", DB_MAPPING)
        done = env.run(url, "--table", "history", "--source", "postgres", *LI, "--mapping",
                       str(m), ok=False)
        assert "--key COLUMN is needed" in done.stderr
        rep = env.report(url, "--table", "history", "--key", "id", "--source", "postgres", *LI,
                         "--mapping", str(m), "--batch-size", "100")
        assert rep["stored"] == 250
        assert "secret-pw" not in "".join(p.read_text() for p in
                                          DataDir(env.data).imports.glob("*.json"))
        bad = url.replace("secret-pw", "wrong-pw")
        done = env.run(bad, "--table", "history", "--key", "id", "--source", "postgres", *LI,
                       "--mapping", str(m), ok=False)
        assert "cannot connect" in done.stderr and "wrong-pw" not in done.stderr
        # a query that fails while its rows are read (row 150 divides by zero): a clear
        # message, no traceback, and the batch before it kept
        failing = ("SELECT id, ts, uid, ev, 100 / (150 - id) AS amount FROM history"
                   " ORDER BY id")
        done = env.run(url, "--query", failing, "--source", "pgfail", *LI, "--mapping",
                       str(m), "--batch-size", "100", ok=False)
        assert "reading from the database failed" in done.stderr, done.stderr
        assert "division by zero" in done.stderr and "Traceback" not in done.stderr
        assert "what was stored is kept" in done.stderr
    assert env.stored(sid) == 250
    assert env.stored(failed) == 100  # rows 1-100, the batch read before the failure
