"""Rows a background job cannot handle are quarantined, counted and reported, and never
stop the job for the other rows: bad rows planted straight into a real warehouse (as an
older version, or a hand, could have written them: times of year 1 BC, year 1, year
9999, none; a file that is not Parquet at all), then the tiering job, retention and the
query cache refresh run and finish their work on everything else."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import REGISTRY

from aap.events import Event, encode_events
from aap.log.base import Append
from aap.log.sqlite import SQLiteLog
from aap.privacy import removal
from aap.privacy.ids import IdHasher
from aap.privacy.purposes import Purpose, Registry, Retention
from aap.privacy.retention import RetentionJob
from aap.process.processor import Processor
from aap.query.cache import QueryCache
from aap.store import tiering
from aap.store.schema import EVENT_ARROW_SCHEMA
from aap.store.tiering import TierPolicy, run_tiering
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse

TODAY = date(2026, 6, 30)
NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
DAYS, PER_DAY = 40, 5
POLICY = TierPolicy(hot_days=7, warm_days=20, cold_days=10_000, grace=timedelta(0))
BAD_HOT = ["-0043-03-15", "0001-01-01", "9999-12-31T23:59:59", None]
"""Times of the planted hot rows (ISO, astronomical years: -0043 is 44 BC)."""


def micros(iso: str | None) -> int | None:
    return None if iso is None else int(np.datetime64(iso, "us").astype("int64"))
SECRET_ID = "anon-canary-7f3a"
"""The id of the person whose rows are planted: it must never appear in a log line."""


def quarantined(job: str, reason: str) -> float:
    return REGISTRY.get_sample_value("aap_jobs_quarantined_total",
                                     {"job": job, "reason": reason}) or 0.0


def build(tmp: Path, end: date = TODAY) -> Warehouse:
    """``PER_DAY`` events on each of the ``DAYS`` days before ``end``."""
    events = []
    for d in range(DAYS):
        day = datetime(end.year, end.month, end.day, tzinfo=UTC) - timedelta(days=d + 1)
        for i in range(PER_DAY):
            t = day + timedelta(hours=i)
            events.append(Event(type="track", event="E", message_id=f"good-{d}-{i}",
                                anonymous_id=SECRET_ID if i == 0 else f"anon-{i}",
                                timestamp=t, received_at=t, source="src_t",
                                purposes={"analytics": "consent"}))
    log = SQLiteLog(tmp / "log")
    log.append([Append("src_t", len(events), encode_events(events))])
    wh = Warehouse(tmp / "wh", tiers=TierStore(TierConfig(str(tmp / "tiers"))))
    proc = Processor(log, wh, IdHasher(b"k" * 32), historical_sources=frozenset({"src_t"}))
    while proc.run_once():
        pass
    proc.close()
    log.close()
    return wh


def plant_hot(wh: Warehouse) -> int:
    """Bad rows straight into the hot table, copies of a good row of the canary person."""
    (person,) = wh.con.execute("SELECT person_id FROM events_raw WHERE message_id = 'good-0-0'"
                               ).fetchone()  # type: ignore[misc]
    for n, ts in enumerate(BAD_HOT):
        wh.con.execute("INSERT INTO events_raw SELECT * REPLACE (? AS message_id,"
                       " make_timestamp(?) AS timestamp) FROM events_raw"
                       " WHERE message_id = 'good-0-0'", [f"bad-hot-{n}", micros(ts)])
    return int(person)


def plant_file(wh: Warehouse, part: str, bad_ts: str, name: str) -> str:
    """A warm file of ``part`` holding a good row and one dated ``bad_ts``."""
    table = wh.con.sql(
        "SELECT * EXCLUDE (publish_batch) REPLACE ('file-good-' || ? AS message_id)"
        " FROM events_raw WHERE message_id = 'good-0-0' UNION ALL"
        " SELECT * EXCLUDE (publish_batch) REPLACE (? AS message_id, make_timestamp(?)"
        " AS timestamp) FROM events_raw"
        " WHERE message_id = 'good-0-0'", params=[name, name, micros(bad_ts)]).to_arrow_table()
    path, size = wh.tiers.write(table.cast(EVENT_ARROW_SCHEMA), f"day={part}")
    wh.con.execute("INSERT INTO tier_files VALUES (?, 'warm', ?, 2, ?, now())",
                   [path, part, size])
    return path


def plant_corrupt(wh: Warehouse, tmp: Path, part: str) -> str:
    """A listed warm file that is not Parquet at all."""
    path = tmp / "tiers" / "warm" / "events" / f"day={part}" / f"part-{uuid.uuid4().hex}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not parquet")
    wh.con.execute("INSERT INTO tier_files VALUES (?, 'warm', ?, 1, 19, now())",
                   [str(path), part])
    return str(path)


def rows_of(wh: Warehouse) -> dict[str, str]:
    """message id → tier, over the hot table and every live, readable file."""
    out = {m: "hot" for (m,) in wh.con.execute("SELECT message_id FROM events_raw").fetchall()}
    for path, tier in wh.con.execute("SELECT path, tier FROM tier_files").fetchall():
        try:
            ids = wh.tiers.read([path], ["message_id"]).column("message_id").to_pylist()
        except (OSError, pa.ArrowException):
            continue
        out.update(dict.fromkeys(ids, tier))
    return out


@pytest.mark.slow
def test_each_job_sets_bad_rows_aside_and_finishes_the_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    wh = build(tmp_path)
    person = plant_hot(wh)
    # warm files with a row of year 1 BC each: one of May (goes cold), one of April; and a
    # listed file of April that is not Parquet at all (so April stays warm)
    recent = plant_file(wh, "2026-04-03", "0000-06-01", "bad-recent")
    plant_file(wh, "2026-05-10", "-0001-01-01", "bad-old")
    corrupt = plant_corrupt(wh, tmp_path, "2026-04-02")
    tiering_rows, tiering_units = (quarantined("tiering", "timestamp_out_of_range"),
                                   quarantined("tiering", "failed"))

    moved = run_tiering(wh, POLICY, today=TODAY)

    # every good hot row older than a week left the hot table
    where = rows_of(wh)
    goods = {f"good-{d}-{i}": d for d in range(DAYS) for i in range(PER_DAY)}
    assert all(where[m] == "hot" for m, d in goods.items() if d < 6)
    assert all(where[m] in ("warm", "cold") for m, d in goods.items() if d >= 8)
    assert moved["to_warm"] == sum(1 for d in goods.values() if d >= 7)
    # the months around the corrupt file: May went cold, April (with it) stayed warm
    assert all(where[m] == "cold" for m, d in goods.items()
               if (TODAY - timedelta(days=d + 1)).isoformat()[:7] == "2026-05")
    assert moved["skipped"] == 1
    # the bad rows: in quarantine, with their job and reason, counted
    q = dict(wh.con.execute("SELECT message_id, job || '/' || reason FROM quarantined_events"
                            ).fetchall())
    assert q == {**{f"bad-hot-{n}": "tiering/timestamp_out_of_range" for n in range(4)},
                 "bad-old": "tiering/timestamp_out_of_range"}
    assert moved["quarantined"] == 4
    assert quarantined("tiering", "timestamp_out_of_range") - tiering_rows == 5
    assert quarantined("tiering", "failed") - tiering_units == 1
    assert "file-good-bad-old" in where and "bad-old" not in where

    # retention: reads the April file that can hold expired rows, sets its bad row aside
    # and keeps its good one (of yesterday); the corrupt file is skipped and reported
    retention = RetentionJob(wh, Registry((Purpose("analytics", "a",
                                                   retention=Retention(days=30)),)),
                             cold_days=400, interval_s=60)
    before = quarantined("retention", "failed")
    out = retention.run(NOW)
    where = rows_of(wh)
    assert out["quarantined"] == 1 and out["files_skipped"] == 1
    assert "file-good-bad-recent" in where and "bad-recent" not in where
    assert wh.con.execute("SELECT job FROM quarantined_events WHERE message_id = 'bad-recent'"
                          ).fetchall() == [("retention",)]
    # twice: its rewrite, and the check of which profiles are left with no event (none is
    # dropped while a file cannot be read)
    assert quarantined("retention", "failed") - before == 2
    # ... and did its work on every other row: events older than 30 days are gone
    assert all(m not in where for m, d in goods.items() if d >= 31)
    assert all(m in where for m, d in goods.items() if d < 29)
    assert not wh.tiers.exists(recent)  # replaced by its rewritten version

    # the query cache copies every readable file; the corrupt one is reported and left
    cache = QueryCache(wh, interval_s=3600)
    before = quarantined("query_cache", "failed")
    done = cache.sync()
    files = int(wh.con.execute("SELECT count(*) FROM tier_files").fetchone()[0])  # type: ignore[index]
    assert done["copied"] == files - 1
    assert quarantined("query_cache", "failed") - before == 1
    # it is tried again at the next sync once its wait is over (a file S3 could not give
    # is copied when S3 is back), and not reported again
    assert cache.sync()["copied"] == 0 and len(cache._skipped) == 1  # waits
    cache._skipped = {k: (n, 0.0) for k, (n, _) in cache._skipped.items()}  # wait over
    assert cache.sync()["copied"] == 0
    assert [n for n, _ in cache._skipped.values()] == [2]  # tried, failed again
    assert quarantined("query_cache", "failed") - before == 1

    # erasure reaches quarantined rows (the corrupt file taken off the list first: an
    # erasure fails whole rather than leave a file unread)
    wh.con.execute("DELETE FROM tier_files WHERE path = ?", [corrupt])
    assert wh.con.execute("SELECT count(*) FROM quarantined_events WHERE person_id = ?",
                          [person]).fetchone() == (6,)
    erased = removal.erase_persons(wh, {person})
    assert erased["quarantined_events"] == 6
    assert wh.con.execute("SELECT count(*) FROM quarantined_events").fetchone() == (0,)

    # the reports name the job, reason, count and partition, never a row's content
    lines = [r.getMessage() for r in caplog.records if r.name == "aap.quarantine"]
    assert any("tiering: 4 rows set aside (timestamp_out_of_range) in the hot table" in x
               for x in lines), lines
    assert any("retention: 1 unit set aside (failed) in warm 2026-04-02" in x for x in lines)
    assert all(SECRET_ID not in r.getMessage() and "bad-" not in r.getMessage()
               for r in caplog.records)
    wh.close()


def test_retention_expires_quarantined_rows(tmp_path: Path) -> None:
    """Set-aside rows are kept no longer than the shortest retention of any purpose,
    counted from when they were set aside."""
    now = datetime.now(UTC)
    wh = build(tmp_path, end=now.date())
    plant_hot(wh)
    assert tiering.quarantine_hot(wh, "tiering") == 4
    job = RetentionJob(wh, Registry((Purpose("analytics", "a", retention=Retention(days=400)),
                                     Purpose("ads", "m", retention=Retention(days=10)))),
                       cold_days=400, interval_s=60)
    assert job.run(now)["quarantined_expired"] == 0
    assert job.run(now + timedelta(days=9))["quarantined_expired"] == 0
    assert job.run(now + timedelta(days=11))["quarantined_expired"] == 4
    wh.close()
