"""Hot, warm and cold tiers: one logical table, exact counts while partitions move,
local disk and a real S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aap.events import Event, encode_events
from aap.log.base import Append
from aap.log.sqlite import SQLiteLog
from aap.privacy.ids import IdHasher
from aap.process.processor import Processor
from aap.runner import free_port
from aap.store import tiering
from aap.store.tiering import TierPolicy, run_tiering
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse
from tests.conftest import slow_fixture

pytestmark = pytest.mark.slow  # tiers moved on disk and on a local S3 server: ~10 s a test

TODAY = date(2026, 6, 30)
DAYS = 150  # events on each of the 150 days before TODAY (2026-01-31 .. 2026-06-29)
PER_DAY = 30


def make_events() -> list[Event]:
    out = []
    for d in range(DAYS):
        day = datetime(2026, 6, 30, tzinfo=UTC) - timedelta(days=d + 1)
        for i in range(PER_DAY):
            t = day + timedelta(minutes=i * 7)
            out.append(Event(type="track", event=f"E{i % 3}", message_id=str(uuid.uuid4()),
                             anonymous_id=f"anon-{(d * PER_DAY + i) % 97}", timestamp=t,
                             received_at=t, source="src_t", properties={"d": d}))
    return out


def load(tmp: Path, tiers: TierStore) -> tuple[Warehouse, Processor]:
    log = SQLiteLog(tmp / "log")
    events = make_events()
    for i in range(0, len(events), 500):
        log.append([Append("src_t", len(events[i:i + 500]), encode_events(events[i:i + 500]))])
    wh = Warehouse(tmp / "wh", tiers=tiers)
    proc = Processor(log, wh, IdHasher(b"k" * 32), historical_sources=frozenset({"src_t"}))
    while proc.run_once():
        pass
    return wh, proc


def count(wh: Warehouse) -> int:
    return int(wh.query("SELECT count(*) FROM events")[1][0][0])


def check_tiering(wh: Warehouse, proc: Processor) -> None:
    total = DAYS * PER_DAY
    assert count(wh) == total
    policy = TierPolicy(hot_days=7, warm_days=60, cold_days=100, grace=timedelta(0))
    days = [TODAY - timedelta(days=d + 1) for d in range(DAYS)]
    hot_limit, warm_limit = TODAY - timedelta(days=7), TODAY - timedelta(days=60)
    cold_month_limit = (TODAY - timedelta(days=100)).isoformat()[:7]  # "2026-03"
    dropped = [d for d in days if d.isoformat()[:7] < cold_month_limit and d < warm_limit]
    cold = [d for d in days if d < warm_limit and d not in dropped]
    warm = [d for d in days if warm_limit <= d < hot_limit]
    hot = [d for d in days if d >= hot_limit]
    assert len(dropped) == 29 and len(hot) == 7 and cold and warm

    moved = run_tiering(wh, policy, today=TODAY)
    assert moved["to_warm"] == (DAYS - 7) * PER_DAY
    assert moved["to_cold"] == (len(cold) + len(dropped)) * PER_DAY
    assert moved["dropped"] == len(dropped) * PER_DAY
    stats = wh.tier_stats()
    assert stats["hot"][1] == len(hot) * PER_DAY
    assert stats["warm"][1] == len(warm) * PER_DAY
    assert stats["cold"][1] == len(cold) * PER_DAY
    assert count(wh) == total - len(dropped) * PER_DAY
    by_day = dict(wh.query("SELECT CAST(timestamp AS DATE), count(*) FROM events GROUP BY 1")[1])
    assert by_day == {d: PER_DAY for d in hot + warm + cold}
    # the dedup index of a (re)started processor covers every tier
    assert len(wh.load_dedup_keys()) == count(wh)
    # a warm day written after a merge carries the resolved person: same persons as before
    assert wh.query("SELECT count(DISTINCT person_id) FROM events")[1][0][0] <= 97


def test_local_tiers(tmp_path: Path) -> None:
    wh, proc = load(tmp_path, TierStore(TierConfig(str(tmp_path / "tiers"))))
    check_tiering(wh, proc)
    warm = list((tmp_path / "tiers" / "warm").rglob("*.parquet"))
    cold = list((tmp_path / "tiers" / "cold").rglob("*.parquet"))
    assert warm and cold
    assert len(cold) == len(wh.query("SELECT part FROM tier_files WHERE tier='cold'")[1])


def test_counts_stay_exact_while_partitions_move(tmp_path: Path) -> None:
    wh, _ = load(tmp_path, TierStore(TierConfig(str(tmp_path / "tiers"))))
    total = DAYS * PER_DAY
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                seen.append(count(wh))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for day in tiering.hot_days(wh)[:-7]:
        tiering.move_day_to_warm(wh, day)
    for month, _ in tiering.warm_months(wh)[:-1]:
        tiering.compact_to_cold(wh, month, TODAY, timedelta(0))
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) > 20
    assert set(seen) == {total}
    assert wh.tier_stats()["cold"][1] > 0


def moto_with(bucket: str) -> tuple[Any, str]:
    """A moto server started on 127.0.0.1 with ``bucket``, and its endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                 aws_secret_access_key="test", region_name="us-east-1").create_bucket(
        Bucket=bucket)
    return server, endpoint


@slow_fixture
def s3() -> Iterator[TierConfig]:
    server, endpoint = moto_with("aap-warm")
    yield TierConfig("s3://aap-warm/events-store", s3_endpoint=endpoint, s3_access_key="test",
                     s3_secret_key="test")
    server.stop()


def test_s3_tiers(tmp_path: Path, s3: TierConfig) -> None:
    import boto3

    wh, proc = load(tmp_path, TierStore(s3))
    check_tiering(wh, proc)
    client = boto3.client("s3", endpoint_url=s3.s3_endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="aap-warm")["Contents"]]
    assert any(k.startswith("events-store/warm/events/day=") for k in keys)
    assert any(k.startswith("events-store/cold/events/month=") for k in keys)
    assert not list(tmp_path.rglob("*.parquet"))  # nothing went to local disk


def test_an_s3_outage_is_told_from_a_callers_fault(tmp_path: Path) -> None:
    """``TierStore.away``: a failure that met S3 down is the store's outage (also once S3
    answers again: Arrow's client named the failed connection), a missing file while S3
    answers is not; loops that retry (``transient``) treat the outage alone as such."""
    import boto3
    import pyarrow as pa
    from moto.server import ThreadedMotoServer

    from aap.store.meta import transient

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                     aws_secret_access_key="test", region_name="us-east-1").create_bucket(
            Bucket="aap-away")
        store = TierStore(TierConfig("s3://aap-away/t", s3_endpoint=endpoint,
                                     s3_access_key="test", s3_secret_key="test"))
        path, _ = store.write_table(pa.table({"x": [1, 2]}), "events", "one")
        with pytest.raises(OSError) as missing:
            store.read_table([path.replace("one", "none")])
        assert not store.away(missing.value) and not transient(missing.value, store)
        server.stop()
        with pytest.raises(OSError) as down:
            store.read_table([path])
        assert store.away(down.value) and transient(down.value, store)
        assert not transient(down.value)  # without the store, only the shared state counts
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        server.start()
        assert store.read_table([path]).num_rows == 2  # S3 answers again
        assert store.away(down.value)  # the failure was still the outage
        assert not store.away(ValueError("a bug"))
    finally:
        server.stop()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_query_reads_again_when_an_erasure_replaced_a_file_meanwhile(
        tmp_path: Path, where: str, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An erasure deletes the files it rewrote at once (not after a grace period), so a
    query that read the list of live files just before meets a file that is gone (the
    CI run of 0b8fe32: ``Path does not exist`` on S3). The query is made again on the
    list as it is now, and answers as after the erasure; a file still listed and gone
    fails the query after ``READ_ATTEMPTS``, not forever."""
    import duckdb

    from aap.core.operator_sql import sql_answer
    from aap.privacy import removal
    from aap.store.tiers import READ_ATTEMPTS

    cfg = (TierConfig(str(tmp_path / "tiers")) if where == "local"
           else request.getfixturevalue("s3"))
    store = TierStore(cfg)
    wh, _ = load(tmp_path, store)
    for day in tiering.hot_days(wh)[:3]:
        tiering.move_day_to_warm(wh, day)
    files = [f.path for f in wh.files.files()]
    assert len(files) == 3
    person = int(store.read(files[:1], ["person_id"]).column(0)[0].as_py())
    total = count(wh)
    theirs = int(wh.query("SELECT count(*) FROM events WHERE person_id = ?", [person])[1][0][0])
    assert 0 < theirs < total

    original = wh.register_tiers
    calls: list[list[str]] = []

    def register_then_erase(cur: Any) -> None:
        calls.append([f.path for f in wh.files.files()])  # what original(cur) lists
        original(cur)
        if len(calls) == 1:  # the query has its list: the erasure rewrites a file now
            removal.erase_persons(wh, {person})

    monkeypatch.setattr(wh, "register_tiers", register_then_erase)
    caplog.set_level("INFO", logger="aap.store.tiers")
    assert count(wh) == total - theirs
    assert len(calls) >= 2  # the erasure ran between the first list and its reads
    gone = [p for p in calls[0] if not store.exists(p)]
    assert gone and not set(gone) & set(calls[-1])
    assert "reading the list again" in caplog.text

    # a file still listed and gone: the query fails, after READ_ATTEMPTS reads
    calls.clear()
    store.delete(lost := wh.files.files()[0].path)
    with pytest.raises((duckdb.Error, FileNotFoundError),  # (Arrow looks at local files
                       match=lost.rsplit("/", 1)[1]):  # first; S3's are read)
        count(wh)
    assert len(calls) == READ_ATTEMPTS and all(lost in c for c in calls)
    # the operator's SQL says so too: a fault (500), not the store away (503, try later)
    with pytest.raises((duckdb.Error, FileNotFoundError), match=lost.rsplit("/", 1)[1]):
        sql_answer(wh, b'{"sql": "SELECT count(*) FROM events"}', None)
