"""Retention per purpose and tier: a real warehouse with hot rows, warm and cold files;
the job takes expired purposes off, erases events left with none in every tier, leaves
the rest alone; its schedule removes data at most an hour late; bad configurations are
refused with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.datadir import DataDir
from aap.events import Event, encode_events
from aap.log.base import Append
from aap.log.sqlite import SQLiteLog
from aap.privacy.ids import IdHasher
from aap.privacy.keystore import Keystore
from aap.privacy.purposes import Purpose, Registry, Retention
from aap.privacy.retention import RetentionJob, cutoffs
from aap.process.processor import Processor
from aap.runner import ServerProcess, create_source
from aap.store.tiering import TieringThread, TierPolicy, run_tiering
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse

NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
REGISTRY = Registry((
    Purpose("analytics", "a", retention=Retention(days=400)),
    Purpose("marketing", "m", retention=Retention(days=60, hot=5)),
    Purpose("personalization", "p"),
))
COLD_DAYS = 450
KINDS = {"A": ["analytics"], "M": ["marketing"], "AM": ["analytics", "marketing"], "L": []}
"""Purposes of each kind of event (L: stored before events carried purposes)."""


def build(tmp: Path, events: list[Event], hot_days: int = 7) -> tuple[Warehouse, Processor]:
    log = SQLiteLog(tmp / "log")
    for i in range(0, len(events), 200):
        part = events[i:i + 200]
        log.append([Append("src_t", len(part), encode_events(part))])
    wh = Warehouse(tmp / "wh", tiers=TierStore(TierConfig(str(tmp / "tiers"))))
    proc = Processor(log, wh, IdHasher(b"k" * 32), historical_sources=frozenset({"src_t"}))
    while proc.run_once():
        pass
    proc.close()
    run_tiering(wh, TierPolicy(hot_days=hot_days, warm_days=90, cold_days=100_000,
                               grace=timedelta(0)), today=NOW.date())
    return wh, proc


def event(kind: str, t: datetime, person: str, **kw: Any) -> Event:
    return Event(type="track", event=kw.pop("name", f"E-{kind}"), message_id=str(uuid.uuid4()),
                 anonymous_id=person, timestamp=t, received_at=t, source="src_t",
                 purposes=dict.fromkeys(KINDS[kind], "consent"), **kw)


def where(wh: Warehouse) -> dict[str, tuple[str, list[str] | None]]:
    """message id → (tier, purposes), read from the hot table and every live file."""
    out = {m: ("hot", p) for m, p in wh.con.cursor().execute(
        "SELECT message_id, purposes FROM events_raw").fetchall()}
    for path, tier in wh.con.cursor().execute("SELECT path, tier FROM tier_files").fetchall():
        t = wh.tiers.read([path], ["message_id", "purposes"])
        for m, p in zip(t.column("message_id").to_pylist(), t.column("purposes").to_pylist(),
                        strict=True):
            out[m] = (tier, p)
    return out


def expected(kind: str, tier: str, t: datetime) -> list[str] | None:
    """What the purposes should be after the job (None: the event is erased)."""
    age = NOW - t
    if age >= timedelta(days=COLD_DAYS):
        return None
    limits = {"analytics": 400, "marketing": 5 if tier == "hot" else 60}
    left = [p for p in KINDS[kind] if age < timedelta(days=limits[p])]
    return left if left or not KINDS[kind] else None


@pytest.mark.slow
def test_expired_purposes_leave_every_tier_and_the_rest_stays(tmp_path: Path) -> None:
    events, kinds = [], {}
    # every 3 days back to 500 days, at 07:30 (well away from the hour boundaries)
    for d in range(1, 500, 3):
        t = (NOW - timedelta(days=d)).replace(hour=7, minute=30)
        for kind in KINDS:
            e = event(kind, t, f"p-{kind}-{d % 4}")
            events.append(e)
            kinds[e.message_id] = (kind, t)
    # a person whose only events expire, with an order made from one of them
    gone_order = event("M", NOW - timedelta(days=70), "p-gone", name="Order Completed",
                       properties={"order_id": "o-old", "revenue": 5})
    kept_order = event("M", NOW - timedelta(days=10), "p-kept", name="Order Completed",
                       properties={"order_id": "o-new", "revenue": 7})
    for e in (gone_order, kept_order):
        events.append(e)
        kinds[e.message_id] = ("M", e.timestamp)
    wh, _ = build(tmp_path, events)
    before = where(wh)
    assert {t for t, _ in before.values()} == {"hot", "warm", "cold"}
    assert len(before) == len(events)
    files_before = dict(wh.con.cursor().execute("SELECT path, part FROM tier_files").fetchall())
    assert wh.query("SELECT count(*) FROM orders")[1] == [(2,)]
    persons_before = wh.query("SELECT count(*) FROM persons")[1][0][0]

    out = RetentionJob(wh, REGISTRY, COLD_DAYS, 300, clock=lambda: NOW).run_pending()
    assert out is not None

    after = where(wh)
    for m, (tier, _) in before.items():
        kind, t = kinds[m]
        want = expected(kind, tier, t)
        if want is None:
            assert m not in after, (kind, tier, NOW - t)
        else:
            assert m in after, (kind, tier, NOW - t)
            assert after[m] == (tier, want), (kind, tier, NOW - t)
    # each effect happened somewhere, in each tier where it can
    erased_tiers = {before[m][0] for m in before if m not in after}
    changed_tiers = {before[m][0] for m in after if after[m][1] != before[m][1]}
    assert erased_tiers == {"hot", "warm", "cold"} and changed_tiers >= {"hot", "warm", "cold"}
    assert out["hot_erased"] and out["warm_rows"] and out["cold_rows"] and out["hot_changed"]
    # files holding nothing expired were not rewritten
    cut = (NOW - timedelta(days=60)).date()
    untouched = {p for p, part in files_before.items()
                 if len(part) == 10 and date.fromisoformat(part) > cut}
    live = {r[0] for r in wh.con.cursor().execute("SELECT path FROM tier_files").fetchall()}
    assert untouched and untouched <= live
    # the old order went with its event, the recent one stays; so did the profile of the
    # person whose events all expired
    assert wh.query("SELECT order_id FROM orders")[1] == [("o-new",)]
    assert out["persons_erased"] >= 1
    assert wh.query("SELECT count(*) FROM persons")[1][0][0] == persons_before - out["persons_erased"]
    # one logical table: the views see exactly what the tiers hold
    assert wh.query("SELECT count(*) FROM events")[1][0][0] == len(after)
    # a second run finds nothing more to do and rewrites nothing
    files_now = live
    again = RetentionJob(wh, REGISTRY, COLD_DAYS, 300, clock=lambda: NOW).run()
    assert again["hot_erased"] == again["warm_rows"] == again["cold_rows"] == 0
    assert {r[0] for r in wh.con.cursor().execute("SELECT path FROM tier_files").fetchall()
            } == files_now


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


@pytest.mark.slow
def test_schedule_removes_data_at_most_an_hour_late(tmp_path: Path) -> None:
    """Events crossing their limit at many moments, in the hot tier and in warm files;
    the job called as the thread does (on its interval, on a fake clock) removes each
    no earlier than an hour before its limit and no later than one interval after."""
    start = datetime(2026, 6, 30, 9, 0, tzinfo=UTC)
    # limits between start+10 min and start+3h: events 30 days before those moments
    crossing = [start + timedelta(minutes=10 + 17 * i) for i in range(10)]
    events = [event("A", c - timedelta(days=30), f"p{i}") for i, c in enumerate(crossing)]
    hot_ones = [event("A", c - timedelta(days=30) + timedelta(days=25), f"h{i}")
                for i, c in enumerate(crossing)]
    reg_hot = Registry((Purpose("analytics", "a", retention=Retention(days=30, hot=5)),))
    wh, _ = build(tmp_path, events + hot_ones, hot_days=10)
    tiers = where(wh)
    assert {tiers[e.message_id][0] for e in events} == {"warm"}
    assert {tiers[e.message_id][0] for e in hot_ones} == {"hot"}
    interval = 300
    clock = Clock(start)
    job = RetentionJob(wh, reg_hot, 760, interval, clock=clock)
    limit = {e.message_id: c for e, c in zip(events + hot_ones, crossing + crossing, strict=True)}
    removed: dict[str, datetime] = {}
    runs = 0
    while clock.t < start + timedelta(hours=4):
        if job.run_pending() is not None:
            runs += 1
            present = set(where(wh))
            for m in limit:
                if m not in present and m not in removed:
                    removed[m] = clock.t
        clock.t += timedelta(seconds=60)  # the thread's tick is finer than the interval
    assert runs == 4 * 3600 // interval
    assert set(removed) == set(limit)
    for m, at in removed.items():
        assert limit[m] - timedelta(hours=1) <= at <= limit[m] + timedelta(seconds=interval), (
            limit[m], at)


def test_cutoffs_round_up_to_the_hour() -> None:
    by, everything = cutoffs(REGISTRY, COLD_DAYS, datetime(2026, 6, 30, 12, 5, tzinfo=UTC))
    assert by["marketing"]["hot"] == datetime(2026, 6, 25, 13, 0)
    assert by["marketing"]["warm"] == by["marketing"]["cold"] == datetime(2026, 5, 1, 13, 0)
    assert by["analytics"]["hot"] == datetime(2025, 5, 26, 13, 0)
    assert everything == datetime(2025, 4, 6, 13, 0)


def test_the_thread_runs_retention_on_its_own_interval() -> None:
    class Fake:
        interval = timedelta(seconds=0.05)
        calls = 0

        def run_pending(self) -> dict[str, Any] | None:
            Fake.calls += 1
            return None

    th = TieringThread(None, TierPolicy(), interval_s=3600, retention=Fake())  # type: ignore[arg-type]
    th.start()
    deadline = time.monotonic() + 60  # every 50 ms: poll, generously (a loaded machine)
    while Fake.calls < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    th.close()
    assert Fake.calls >= 5  # the hour-long tiering interval does not hold it back
    assert not any(t.name == "aap-tiering" for t in threading.enumerate())


def _register(data: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aap", "privacy", "register", "--data-dir",
                           str(data)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
@pytest.mark.parametrize(("retention", "message"), [
    ({"days": None}, "unlimited"),
    ({"days": 800}, "longer than 25 months"),
    ({"days": 30, "cold": 761}, "retention.cold = 761 days is longer than 25 months"),
    ({"days": -1}, "not a valid number of days"),
])
def test_unlimited_or_too_long_retention_is_refused(tmp_path: Path, retention: dict[str, Any],
                                                     message: str) -> None:
    DataDir(tmp_path).privacy.mkdir()
    DataDir(tmp_path).purposes.write_text(json.dumps(
        [{"id": "analytics", "description": "x", "retention": retention}]))
    r = _register(tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert message in r.stderr and "analytics" in r.stderr
    with pytest.raises(ValueError, match=message):
        Registry.for_data_dir(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("env", "message"), [
    ({"AAP_COLD_DAYS": "1000"}, "AAP_COLD_DAYS=1000"),
    ({"AAP_COLD_DAYS": "0"}, "cannot be unlimited"),
    ({"AAP_LOG_RETENTION_HOURS": "0"}, "0 (forever) is refused"),
    ({"AAP_LOG_RETENTION_HOURS": "20000"}, "AAP_LOG_RETENTION_HOURS=20000"),
    ({"AAP_RETENTION_INTERVAL_S": "7200"}, "at most an hour late"),
])
def test_settings_that_keep_data_too_long_are_refused(tmp_path: Path, env: dict[str, str],
                                                      message: str) -> None:
    r = _register(tmp_path, env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert message in r.stderr
    serve = subprocess.run([sys.executable, "-m", "aap", "serve", "--data-dir", str(tmp_path)],
                           capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert serve.returncode != 0 and message in serve.stderr and "Traceback" not in serve.stderr


@pytest.mark.slow
def test_register_shows_the_enforced_retention_per_purpose_and_tier(tmp_path: Path) -> None:
    DataDir(tmp_path).privacy.mkdir()
    DataDir(tmp_path).purposes.write_text(json.dumps([
        {"id": "analytics", "description": "x", "retention": {"days": 400}},
        {"id": "marketing", "description": "y", "retention": {"days": 60, "hot": 5}}]))
    r = _register(tmp_path, {"AAP_COLD_DAYS": "450", "AAP_LOG_RETENTION_HOURS": "48"})
    assert r.returncode == 0, r.stderr
    sections = {s.split("\n", 1)[0]: s for s in r.stdout.split("\n## ")[1:]}
    assert ("leaves events older than 400 days (hot tier 400 days, warm tier 400 days,"
            " cold tier 400 days)") in sections["analytics"]
    assert "hot tier 5 days, warm tier 60 days, cold tier 60 days" in sections["marketing"]
    assert "every event is erased after 450 days" in sections["marketing"]
    assert "raw log records after 48 hours" in sections["marketing"]


@pytest.mark.slow
def test_ids_of_persons_whose_events_all_expired_are_forgotten(tmp_path: Path,
                                                               meta_url: str) -> None:
    """On the real server: a person whose every event is past the 25-month cap loses their
    profile, their id mapping and what the keystore kept (data key, sealed raw id, sealed
    personal traits); the id is not suppressed: it comes back later as a new person, whose
    raw id is kept (sealed) again. Run with the keystore in SQLite, then in PostgreSQL
    (``AAP_META_URL``, which the server inherits)."""
    data = tmp_path / "data"
    key = create_source(data, "import", "--historical", "--basis", "legitimate_interest")
    user, other = "expiring-user-5c1e", "staying-user-77a0"
    old = (datetime.now(UTC) - timedelta(days=800)).isoformat()
    recent = (datetime.now(UTC) - timedelta(days=3)).isoformat()

    def send(server: ServerProcess, batch: list[dict[str, object]]) -> None:
        for ev in batch:
            ev.setdefault("messageId", str(uuid.uuid4()))
        r = httpx.post(server.url + "/v1/batch", auth=(key, ""), json={"batch": batch},
                       timeout=30)
        assert r.status_code == 200 and r.json()["accepted"] == len(batch), r.text

    hasher = IdHasher.for_data_dir(data)
    k_user, k_other = hasher.key(user), hasher.key(other)
    env = {"AAP_RETENTION_INTERVAL_S": "1", "AAP_TIERING_INTERVAL_S": "1"}
    with ServerProcess(data, workers=1, env=env) as server:
        send(server, [
            {"type": "identify", "userId": user, "traits": {"email": "exp@example.org",
                                                            "plan": "pro"}, "timestamp": old},
            {"type": "track", "userId": user, "event": "Old", "timestamp": old},
            {"type": "track", "userId": other, "event": "Old", "timestamp": old},
            {"type": "track", "userId": other, "event": "Recent", "timestamp": recent},
        ])
        server.wait_processed()
        ks = Keystore(data)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and ks.identifier(k_user) is not None:
            time.sleep(0.5)
        # the expired person: events, profile, ids, keystore entries gone
        assert ks.identifier(k_user) is None
        assert not Keystore(data).keys_for([k_user], create=False)  # not from ks's cache
        assert server.sql("SELECT count(*) FROM person_ids WHERE id_key = ?", [k_user]) == [[0]]
        assert server.sql("SELECT count(*) FROM events WHERE event = 'Old'") == [[0]]
        assert server.sql("SELECT count(*) FROM persons") == [[1]]
        # the other person keeps their recent event, id and sealed raw id
        assert ks.identifier(k_other) == other
        assert server.sql("SELECT count(*) FROM events WHERE event = 'Recent'") == [[1]]
        # not a suppression: the id comes back as a new person, its raw id kept again
        time.sleep(1.5)  # every process has noticed what was forgotten
        send(server, [{"type": "track", "userId": user, "event": "Back", "timestamp": recent}])
        server.wait_processed()
        back = server.sql("SELECT person_id FROM events WHERE event = 'Back'")
        assert len(back) == 1
        assert server.sql("SELECT count(*) FROM person_ids WHERE id_key = ?", [k_user]) == [[1]]
        assert Keystore(data).identifier(k_user) == user


def test_a_failed_retention_run_is_due_again_at_the_next_tick(tmp_path: Path) -> None:
    """A retention run that fails is tried again at the thread's next tick, not one whole
    interval later (it used to be moved forward before it ran)."""
    wh, _ = build(tmp_path, [event("M", NOW - timedelta(days=1), "p1")])
    calls: list[datetime] = []

    def flaky(now: datetime) -> int:
        calls.append(now)
        if len(calls) == 1:
            raise OSError("the shared state cannot be reached")
        return 0

    job = RetentionJob(wh, REGISTRY, COLD_DAYS, 86_400, clock=lambda: NOW, after=(flaky,))
    try:
        with pytest.raises(OSError):
            job.run_pending()
        assert job.run_pending() is not None  # the same instant: due again
        assert len(calls) == 2
        assert job.run_pending() is None  # succeeded: due one interval later
    finally:
        wh.close()
