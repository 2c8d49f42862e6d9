"""Publishing hot rows as batch files listed on the shared store (aap.store.publish and
aap.store.filelist): exactly once across a stop at every step, compaction into the daily
files with queries reading every row once meanwhile, the same answers as without
publishing, and erasure reaching batch files (local disk and a moto S3 server)."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aap.privacy import removal
from aap.query.cache import QueryCache
from aap.query.runner import run_insight
from aap.query.snapshot import snapshot
from aap.store import tiering
from aap.store.filelist import Moved, TierFile
from aap.store.meta import open_meta
from aap.store.migrations import duckdb_version
from aap.store.publish import Publisher, refuse_unshared
from aap.store.schema import EVENT_COLUMNS
from aap.store.tiering import TierPolicy, run_tiering
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import SCHEMA as WAREHOUSE_SCHEMA
from aap.store.warehouse import Chunk, Warehouse
from aap.testing.query_data import generate
from aap.testing.query_data import load as load_default
from tests.conftest import examples
from tests.store import publish_workers
from tests.store.publish_workers import DAY0, events, open_wh
from tests.store.test_tiers import s3  # noqa: F401 (a fixture: moto's S3 server)

STEPS = ("marked", "file", "written", "listed", "done")
MARKED_ROWS = "SELECT count(*) FROM events_raw WHERE publish_batch IS NOT NULL"
"""Hot rows marked for a batch and not forgotten yet."""


def write(wh: Warehouse, table: pa.Table, position: int) -> None:
    wh.write(Chunk(events=table, position=position, next_person=1000))


def listed_ids(wh: Warehouse) -> Counter[str]:
    """Message ids of the hot rows not marked for a batch and of every listed file (each
    file read alone)."""
    out = Counter(r[0] for r in wh.con.execute(
        "SELECT message_id FROM events_raw WHERE publish_batch IS NULL").fetchall())
    for f in wh.files.files():
        out.update(wh.tiers.read([f.path], ["message_id"]).column("message_id").to_pylist())
    return out


def queried_ids(wh: Warehouse) -> Counter[str]:
    """Message ids as a query sees them (one snapshot)."""
    return Counter(r[0] for r in wh.query("SELECT message_id FROM events_all")[1])


def files_on_disk(tiers: TierStore) -> list[str]:
    infos = tiers.fs.get_file_info(pafs.FileSelector(tiers.root, recursive=True,
                                                      allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File
                  and i.path.endswith(".parquet"))


class Crash(Exception):
    """A stop injected between two steps of a batch."""


def stop_at(point: str | None) -> Callable[[str], None]:
    """A publisher's ``step`` hook that stops the batch (:class:`Crash`) at ``point``;
    ``None``: it never stops."""
    def step(name: str) -> None:
        if name == point:
            raise Crash(name)
    return step


# -- the seam --

def test_the_shared_list_swaps_atomically_and_publishes_once(tmp_path: Path,
                                                             meta_url: str) -> None:
    wh = open_wh(tmp_path, meta_url)
    try:
        files = wh.files
        a, b, c = (TierFile(f"/x/{n}.parquet", "warm", "2026-03-01", 1, 10) for n in "abc")
        cur = wh.con.cursor()
        files.swap(cur, [], [a, b], None)
        assert [f.path for f in files.files()] == [a.path, b.path]
        with pytest.raises(Moved):  # c is not live: nothing changes
            files.swap(cur, [a.path, c.path], [TierFile("/x/d.parquet", "warm", "d", 2, 20)],
                       timedelta(0))
        assert [f.path for f in files.files()] == [a.path, b.path]
        files.swap(cur, [a.path, b.path], [c], timedelta(minutes=10))
        assert [f.path for f in files.files()] == [c.path]
        assert sorted(files.trash()) == [a.path, b.path] and files.due() == []
        assert wh.tier_stats()["warm"] == (1, 1, 10)
        # a batch is listed once, however often its registration runs
        assert files.publish(1, [a]) is True
        assert files.publish(1, [a]) is False
        files.swap(cur, [a.path], [], None)  # compacted away meanwhile
        assert files.publish(1, [a]) is False  # a stop after listing: not listed again
        assert [f.path for f in files.files()] == [c.path]
        assert files.published() == 1
    finally:
        wh.close()


def test_the_default_list_stays_in_duckdb_and_cannot_be_left_unshared(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh", tiers=TierStore(TierConfig(str(tmp_path / "tiers"))))
    write(wh, events(30, "m"), 1)
    tiering.move_day_to_warm(wh, DAY0.date())
    assert not wh.files.shared
    assert wh.con.execute("SELECT count(*) FROM tier_files").fetchall() == [(1,)]
    wh.close()
    assert not (tmp_path / "tiers.db").exists()
    wh = open_wh(tmp_path)  # publishing on: the list moves to the shared store
    assert wh.con.execute("SELECT count(*) FROM tier_files").fetchall() == [(0,)]
    assert len(wh.files.files()) == 1 and sum(queried_ids(wh).values()) == 30
    wh.close()
    wh = Warehouse(tmp_path / "wh", tiers=TierStore(TierConfig(str(tmp_path / "tiers"))))
    try:
        with pytest.raises(ValueError, match="AAP_PUBLISH_SECONDS"):
            refuse_unshared(wh)
    finally:
        wh.close()


# -- exactly once across a stop --

@pytest.mark.parametrize("point", STEPS)
def test_a_stop_at_any_step_loses_and_doubles_nothing(tmp_path: Path, meta_url: str,
                                                      point: str) -> None:
    wh = open_wh(tmp_path, meta_url)
    first, second = events(90, "a"), events(40, "b", DAY0 + timedelta(days=1))
    everything = Counter(first.column("message_id").to_pylist()
                         + second.column("message_id").to_pylist())
    crashed: list[str] = []

    def step(name: str) -> None:
        if name == point and not crashed:
            crashed.append(name)
            raise Crash(name)

    write(wh, first, 1)
    pub = Publisher(wh, 1, step=step)
    with pytest.raises(Crash):
        pub.publish_once()
    write(wh, second, 2)  # the processor goes on meanwhile
    # stopped there: a query reads each row once
    assert queried_ids(wh) == everything
    wh.close()

    wh = open_wh(tmp_path, meta_url)  # the restart
    try:
        assert queried_ids(wh) == everything
        pub = Publisher(wh, 1)
        pub.recover()
        assert wh.con.execute(MARKED_ROWS).fetchall() == [(0,)]
        assert listed_ids(wh) == everything
        assert queried_ids(wh) == everything
        # the first batch's files are listed (3 days), and no file is on disk unlisted
        assert len(wh.files.files()) == 3
        assert files_on_disk(wh.tiers) == sorted(f.path for f in wh.files.files())
        out = pub.publish_once()  # the rows written meanwhile go as the next batch
        assert out["rows"] == 40 and wh.files.published() == 2
        assert listed_ids(wh) == everything and queried_ids(wh) == everything
        assert wh.con.execute("SELECT count(*) FROM events_raw").fetchall() == [(0,)]
    finally:
        wh.close()


KILLS = 10


@pytest.mark.slow  # processes killed with SIGKILL
def test_kill_9_while_publishing_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """A real process writes chunks and publishes each; it is killed -9 ten times at
    random moments, restarted each time: every chunk it committed is there once, whole."""
    ctx = multiprocessing.get_context("spawn")
    rng = random.Random(16)
    committed: set[int] = set()
    for kill in range(KILLS):
        out = ctx.Queue()
        proc = ctx.Process(target=publish_workers.write_and_publish,
                           args=(str(tmp_path), "", kill * 1000 + 1, out))
        proc.start()
        try:
            for _ in range(2 + rng.randrange(3)):  # a few chunks in, then at any moment
                committed.add(out.get(timeout=120))
            threading.Event().wait(rng.uniform(0, 0.3))
        finally:
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(timeout=60)
        while not out.empty():
            committed.add(out.get(timeout=10))
        wh = open_wh(tmp_path)
        try:
            before = queried_ids(wh)  # as the kill left it, a batch maybe half published
            Publisher(wh, 1).recover()
            ids = listed_ids(wh)
            assert ids == before == queried_ids(wh)
            assert max(ids.values()) == 1, "a row is doubled"
            rounds = Counter(m.split("-")[0] for m in ids)
            assert set(rounds.values()) == {40}, "a chunk is partly there"
            assert {f"r{r}" for r in committed} <= set(rounds), "a committed chunk is lost"
            assert files_on_disk(wh.tiers) == sorted(f.path for f in wh.files.files())
        finally:
            wh.close()
    assert len(committed) >= 2 * KILLS


def test_a_failing_store_leaves_the_batch_pending_and_visible(tmp_path: Path) -> None:
    wh = open_wh(tmp_path)
    try:
        write(wh, events(50, "a"), 1)
        pub = Publisher(wh, 1)
        real = wh.tiers.write
        wh.tiers.write = lambda *a, **kw: (_ for _ in ()).throw(OSError("store down"))  # type: ignore[method-assign]
        with pytest.raises(OSError):
            pub.publish_once()
        assert sum(queried_ids(wh).values()) == 50
        # an erasure meanwhile finishes the batch first (its rows are then in files)
        wh.tiers.write = real  # type: ignore[method-assign]
        got = removal.erase_persons(wh, {1})
        assert got["warm_rows"] == len([i for i in range(50) if i % 7 == 0])
        assert wh.con.execute(MARKED_ROWS).fetchall() == [(0,)]
        assert sum(listed_ids(wh).values()) == 50 - got["warm_rows"]
    finally:
        wh.close()


def test_queries_while_batches_are_published_see_each_row_once(tmp_path: Path) -> None:
    wh = open_wh(tmp_path)
    pub = Publisher(wh, 1)
    cache = QueryCache(wh)
    chunks = [events(30, f"c{k}") for k in range(12)]
    prefixes = [Counter[str]()]
    for c in chunks:
        prefixes.append(prefixes[-1] + Counter(c.column("message_id").to_pylist()))
    seen: list[Counter[str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def through_the_cache() -> Counter[str]:
        with snapshot(wh) as cur:
            return Counter(r[0] for r in cur.execute("SELECT message_id FROM events").fetchall())

    def reader(read: Any) -> None:
        try:
            while not stop.is_set():
                seen.append(read())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(r,))
               for r in (lambda: queried_ids(wh), through_the_cache)]
    for t in threads:
        t.start()
    try:
        for k, c in enumerate(chunks):
            write(wh, c, k + 1)
            pub.publish_once()
            if k % 4 == 3:
                cache.sync()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert len(seen) > 5 and all(s in prefixes for s in seen)
    assert queried_ids(wh) == prefixes[-1] == through_the_cache()
    wh.close()


def test_a_batch_a_stop_left_in_the_old_hot_publishing_table_is_marked_and_finished(
        tmp_path: Path) -> None:
    """Before 2026-12-06 a batch's rows moved to a table ``hot_publishing``; a warehouse a
    stop left so (schema version 2) opens with those rows back in the hot table, marked
    with their batch, and its publisher finishes the batch as one it marked itself."""
    wh = open_wh(tmp_path)
    batch, hot = events(60, "old"), events(25, "new", DAY0 + timedelta(days=1))
    everything = Counter(batch.column("message_id").to_pylist()
                         + hot.column("message_id").to_pylist())
    write(wh, batch, 1)
    with pytest.raises(Crash):
        Publisher(wh, 1, step=stop_at("marked")).publish_once()
    write(wh, hot, 2)
    # the same state in the old shape: the marked rows in hot_publishing, no column
    cols = ", ".join(f'"{n}" {t}' for n, t, _ in EVENT_COLUMNS)
    con = wh.con
    con.execute(f"CREATE TABLE hot_publishing (seq BIGINT NOT NULL, {cols})")
    con.execute("INSERT INTO hot_publishing SELECT publish_batch, * EXCLUDE (publish_batch)"
                " FROM events_raw WHERE publish_batch IS NOT NULL")
    con.execute("DELETE FROM events_raw WHERE publish_batch IS NOT NULL")
    con.execute("ALTER TABLE events_raw DROP COLUMN publish_batch")
    con.execute("UPDATE schema_version SET version = 2")
    wh.close()

    wh = open_wh(tmp_path)
    try:
        assert duckdb_version(wh.con) == WAREHOUSE_SCHEMA.latest
        tables = {r[0] for r in wh.con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        assert "hot_publishing" not in tables
        assert dict(wh.con.execute("SELECT publish_batch, count(*) FROM events_raw"
                                   " GROUP BY ALL").fetchall()) == {1: 60, None: 25}
        assert queried_ids(wh) == everything  # the marked rows are read, once
        pub = Publisher(wh, 1)
        assert pub.recover() == 1  # batch 1, from its files on
        assert wh.con.execute(MARKED_ROWS).fetchall() == [(0,)]
        assert sum(listed_ids(wh).values()) == 85 and queried_ids(wh) == everything
        assert pub.publish_once()["rows"] == 25
        assert listed_ids(wh) == everything and queried_ids(wh) == everything
        assert wh.con.execute("SELECT count(*) FROM events_raw").fetchall() == [(0,)]
    finally:
        wh.close()


# -- compaction --

def test_compaction_folds_batches_while_queries_read_each_row_once(tmp_path: Path) -> None:
    wh = open_wh(tmp_path)
    pub = Publisher(wh, 1)
    total = Counter[str]()
    for k in range(6):
        t = events(60, f"b{k}")
        total.update(t.column("message_id").to_pylist())
        write(wh, t, k + 1)
        pub.publish_once()
    assert len(wh.files.files()) == 18 and all(tiering.is_batch(f.path) for f in wh.files.files())
    seen: list[Counter[str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                seen.append(queried_ids(wh))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        # a grace period: the readers may still read a folded file
        policy = TierPolicy(hot_days=7, warm_days=90, cold_days=700,
                            grace=timedelta(minutes=10))
        moved = run_tiering(wh, policy, today=date(2026, 3, 10))
        # a late batch for a folded day, folded again; and another chunk while reading
        late = events(10, "late", days=1)
        total.update(late.column("message_id").to_pylist())
        write(wh, late, 7)
        pub.publish_once()
        again = run_tiering(wh, policy, today=date(2026, 3, 10))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    before_late = total - Counter(late.column("message_id").to_pylist())
    assert len(seen) > 3 and all(s in (total, before_late) for s in seen)
    assert moved["compacted"] == 360 and again["compacted"] == 130
    live = wh.files.files()
    assert sorted(f.part for f in live) == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert not any(tiering.is_batch(f.path) for f in live)
    assert listed_ids(wh) == total
    # the folded files went to the trash, and leave the disk once their time is due
    assert len(wh.files.trash()) == 18 + 2 and tiering.empty_trash(wh) == 0
    wh.files.db.execute("UPDATE tier_trash SET delete_after_ms = 0")  # type: ignore[attr-defined]
    assert tiering.empty_trash(wh) == 20
    assert files_on_disk(wh.tiers) == sorted(f.path for f in live)
    # the month goes cold as before
    cold = run_tiering(wh, TierPolicy(hot_days=7, warm_days=5, cold_days=700,
                                      grace=timedelta(0)), today=date(2026, 4, 20))
    assert cold["to_cold"] == sum(total.values())
    assert [f.tier for f in wh.files.files()] == ["cold"] and listed_ids(wh) == total
    wh.close()


def test_which_days_are_folded() -> None:
    today = date(2026, 3, 10)
    batches = [f"/t/warm/events/day=x/batch-ab-{i}.parquet" for i in range(40)]
    daily = ["/t/warm/events/day=x/part-1.parquet"]
    folds = [f"/t/warm/events/day=x/fold{n}-{i:02x}.parquet" for n in (1, 2) for i in range(8)]
    assert tiering._due("2026-03-09", batches[:1] + daily, today)  # a past day: at once
    assert tiering._due("2026-03-09", batches[:2], today)
    assert tiering._due("2026-03-09", folds[:1] + daily, today)  # today's levels, then
    assert not tiering._due("2026-03-09", batches[:1], today)  # one file: nothing to fold
    assert not tiering._due("2026-03-09", daily + daily, today)
    assert not tiering._due("2026-03-10", batches[:31] + daily, today)  # today: 32 batches
    assert tiering._due("2026-03-10", batches[:32], today)
    assert tiering._due("2026-03-11", batches[:32], today)  # a day ahead: as today
    # today's files of a level are folded once there are 8, the lowest level first; a
    # file not named for a level (the day's file so far, a rewrite's) is not folded today
    assert [tiering.level(p) for p in (batches[0], folds[0], folds[8], daily[0])] == [
        0, 1, 2, tiering.TOP_LEVEL]
    assert tiering.next_fold(batches[:31] + folds[:7] + folds[8:15] + daily) == []
    assert tiering.next_fold(batches[:31] + folds[:7] + folds[8:] + daily) == folds[8:]
    assert tiering.next_fold(folds + batches[:32]) == sorted(batches[:32])
    assert tiering.next_fold(folds) == folds[:8]
    assert tiering.level("/t/warm/events/day=x/folder-1.parquet") == tiering.TOP_LEVEL


def test_today_is_folded_by_levels_and_each_event_is_written_a_few_times(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run folds today's batch files into a file of level 1, and the files of a
    level that has enough into one of the next, at once: the rows a run writes grow with
    the levels, not with the day so far (a day's file was rewritten at every run before).
    The day folds whole once it has ended. Queries see each row once throughout."""
    monkeypatch.setattr(tiering, "COMPACT_BATCHES", 2)
    monkeypatch.setattr(tiering, "FOLD_FILES", 3)
    wh = open_wh(tmp_path)
    pub = Publisher(wh, 1)
    total = Counter[str]()
    today = DAY0.date()
    policy = TierPolicy(hot_days=7, warm_days=90, cold_days=700, grace=timedelta(0))
    written = []
    try:
        for run in range(9):
            for k in range(2):  # two batches of 10 events of today between two runs
                t = events(10, f"r{run}b{k}", days=1)
                total.update(t.column("message_id").to_pylist())
                write(wh, t, 2 * run + k + 1)
                pub.publish_once()
            written.append(run_tiering(wh, policy, today=today)["compacted"])
            assert listed_ids(wh) == total and queried_ids(wh) == total
        levels = Counter(tiering.level(f.path) for f in wh.files.files())
        # 9 runs: 9 files of level 1 made, 3 of level 2 (runs 3, 6, 9), one of level 3
        assert written == [20, 20, 80, 20, 20, 80, 20, 20, 260]
        assert levels == {3: 1}
        assert all(f.part == today.isoformat() for f in wh.files.files())
        # the day has ended: one file, every row once
        ended = run_tiering(wh, policy, today=today + timedelta(days=1))
        assert ended["compacted"] == 0  # one file: nothing to fold
        t = events(10, "late", days=1)
        total.update(t.column("message_id").to_pylist())
        write(wh, t, 100)
        pub.publish_once()
        ended = run_tiering(wh, policy, today=today + timedelta(days=1))
        assert ended["compacted"] == 190
        assert [tiering.level(f.path) for f in wh.files.files()] == [tiering.TOP_LEVEL]
        assert listed_ids(wh) == total and queried_ids(wh) == total
    finally:
        wh.close()


# -- the same answers --

DOCS: list[Any] = [
    {"kind": "trends", "series": [{"event": "$page", "math": "total"}], "interval": "day",
     "breakdown": "country", "breakdown_limit": 5},
    {"kind": "trends", "series": [{"event": None, "math": "persons"}], "interval": "week"},
    {"kind": "funnel", "steps": [{"event": "Product Viewed"}, {"event": "Product Added"},
                                 {"event": "Checkout Started"}, {"event": "Order Completed"}],
     "window": "1d"},
    {"kind": "retention", "start_event": "Signed Up", "return_event": "$page",
     "period": "day", "periods": 5, "date_to": "2026-08-10"},
    pytest.param({"kind": "sql", "query": "SELECT event, country, count(*) AS n FROM events"
                  " GROUP BY ALL ORDER BY ALL"},
                 marks=pytest.mark.slow, id="sql"),  # the sandbox's process
]


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Warehouse, Warehouse]]:
    data = generate(12_000, 600, 9, 11)
    plain_dir = tmp_path_factory.mktemp("plain")
    load_default(plain_dir, data, hot_days=3, cold_days=1000)
    plain = Warehouse(plain_dir / "warehouse",
                      tiers=TierStore(TierConfig(str(plain_dir / "tiers"))))
    pub_dir = tmp_path_factory.mktemp("published")
    published = open_wh(pub_dir)
    pub = Publisher(published, 1)
    ov = pa.table({"old": list(data.overrides), "new": list(data.overrides.values())})
    with published.transaction() as cur:  # as load_default writes them
        cur.register("ov", ov)
        cur.execute("INSERT INTO person_overrides SELECT old, new FROM ov")
    position = 0
    for i, (_, table) in enumerate(data.days):
        half = table.num_rows // 2
        for part in (table.slice(0, half), table.slice(half)):
            position += 1
            chunk = Chunk(events=part, position=position, next_person=20_000_000)
            if position == 1:
                chunk.persons = data.persons
            published.write(chunk)
            if i < len(data.days) - 1:  # the last day's rows stay hot
                pub.publish_once()
    moved = run_tiering(published, TierPolicy(grace=timedelta(0)), today=date(2026, 8, 9))
    assert moved["compacted"] > 0  # the days before 08-09 are folded; the others are not
    yield plain, published
    plain.close()
    published.close()


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d["kind"]))
def test_queries_answer_alike_with_publishing_on(both: tuple[Warehouse, Warehouse],
                                                 doc: dict[str, Any]) -> None:
    plain, published = both
    if doc["kind"] != "sql":
        doc = {"date_from": "2026-08-03", "date_to": "2026-08-12", **doc}
    assert published.files.files() and published.tier_stats()["hot"][1] > 0
    want = run_insight(plain, doc, use_cache=False, sql_idle_workers=0)
    assert run_insight(published, doc, use_cache=False, sql_idle_workers=0) == want
    for wh in both:
        QueryCache(wh).sync()
    assert run_insight(published, doc, sql_idle_workers=0) == want
    assert run_insight(plain, doc, sql_idle_workers=0) == want


# -- erasure reaches batch files --

CANARY = "canary-of-ana-7f3e"
KEPT = "kept-of-bo-51aa"


def every_file_text(tiers: TierStore) -> str:
    """Every row of every Parquet file in the tier store (listed, in the trash or not)."""
    return "\n".join(repr(pq.read_table(p, filesystem=tiers.fs).to_pylist())
                     for p in files_on_disk(tiers))


def check_erasure(tmp: Path, tiers: TierStore) -> None:
    wh = open_wh(tmp, tiers=tiers)
    try:
        pub = Publisher(wh, 1)
        for k in range(3):
            write(wh, events(20, f"ana{k}", person=41, note=CANARY), 2 * k + 1)
            write(wh, events(20, f"bo{k}", person=42, note=KEPT), 2 * k + 2)
            pub.publish_once()
        # one day folded (its batch files to the trash, grace 10 min); some rows hot
        tiering.compact_batches(wh, "2026-03-01", timedelta(minutes=10))
        write(wh, events(5, "ana-hot", person=41, note=CANARY), 7)
        assert wh.files.trash() and CANARY in every_file_text(tiers)
        got = removal.erase_persons(wh, {41})
        assert got["warm_rows"] == 60 and got["hot_events"] == 5
        text = every_file_text(tiers)
        assert CANARY not in text and KEPT in text
        assert wh.query("SELECT count(*) FROM events_all WHERE person_id = 41")[1] == [(0,)]
        assert wh.query("SELECT count(*) FROM events_all")[1] == [(60,)]
    finally:
        wh.close()


def test_erasure_reaches_batch_files_on_disk(tmp_path: Path) -> None:
    check_erasure(tmp_path, TierStore(TierConfig(str(tmp_path / "tiers"))))


@pytest.mark.slow
def test_erasure_reaches_batch_files_on_s3(tmp_path: Path, s3: TierConfig) -> None:  # noqa: F811
    check_erasure(tmp_path, TierStore(s3))
    assert not list(tmp_path.rglob("*.parquet"))  # nothing went to local disk



# -- interleavings --

OPS = st.lists(st.tuples(st.sampled_from(["write", "publish", "stop", "fold", "erase",
                                          "inside"]),
                         st.integers(0, 4)), min_size=1, max_size=12)


def chunk_inside(wh: Warehouse, table: pa.Table, position: int, at: str
                 ) -> Callable[[str], None]:
    """A publisher's ``step`` hook that writes a chunk from another thread at step ``at``
    of the batch (``file``, ``written``: while its files are written and listed, when
    the write lock lets chunks in), once, and waits until it is written."""
    done: list[threading.Thread] = []

    def step(name: str) -> None:
        if name == at and not done:
            done.append(t := threading.Thread(target=write, args=(wh, table, position),
                                              daemon=True))
            t.start()
            t.join(60)
            assert not t.is_alive(), f"a chunk waited for the publisher at step {at!r}"
    return step


@settings(max_examples=examples(15), deadline=None)  # a warehouse on disk per example
@given(ops=OPS)
@example(ops=[("write", 0), ("inside", 0), ("inside", 1), ("stop", 3), ("inside", 1),
              ("erase", 0), ("publish", 0)])
def test_any_interleaving_keeps_each_row_once(ops: list[tuple[str, int]]) -> None:
    """Chunks written (some while a batch is written and listed), batches published (some
    stopped at a step and finished by a restart), days folded and persons erased, in any
    order: after each operation a query reads every row written and not erased exactly
    once, and so do the hot table and the listed files once no batch is left half
    published."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        wh = open_wh(tmp)
        want: Counter[str] = Counter()
        person: dict[str, int] = {}

        def rows(n: int, tag: str, days: int) -> pa.Table:
            """New events, expected from now on."""
            t = events(n, tag, days=days)
            ids = t.column("message_id").to_pylist()
            want.update(ids)
            person.update(zip(ids, t.column("person_id").to_pylist(), strict=True))
            return t

        try:
            for k, (op, arg) in enumerate(ops):
                if op == "write":
                    write(wh, rows(7 + arg, f"w{k}", 1 + arg % 3), k + 1)
                elif op in ("publish", "stop"):
                    step = stop_at(STEPS[arg] if op == "stop" else None)
                    try:
                        Publisher(wh, 1, step=step).publish_once()
                    except Crash:
                        assert queried_ids(wh) == want
                        wh.close()
                        wh = open_wh(tmp)
                        Publisher(wh, 1).recover()
                        assert listed_ids(wh) == want
                elif op == "inside":  # a chunk written while a batch is listed
                    t = rows(5 + arg, f"i{k}", 1 + arg % 3)
                    step = chunk_inside(wh, t, k + 1, ("file", "written")[arg % 2])
                    if not Publisher(wh, 1, step=step).publish_once()["rows"]:
                        write(wh, t, k + 1)  # no batch, no step: written after it
                elif op == "fold":
                    tiering.compact_batches(wh, (DAY0 + timedelta(days=arg % 3)).date()
                                            .isoformat(), timedelta(0))
                else:
                    Publisher(wh, 1)  # the warehouse settles a half published batch
                    removal.erase_persons(wh, {1 + arg})
                    want = Counter({m: n for m, n in want.items() if person[m] != 1 + arg})
                assert queried_ids(wh) == want
            Publisher(wh, 1).recover()
            assert listed_ids(wh) == want
        finally:
            wh.close()


def test_an_erasure_meets_files_another_processor_rewrote_meanwhile(tmp_path: Path) -> None:
    """Two processors rewrite the published files (an erasure, a consent withdrawal each
    ran: the equivalence test's two processors both apply the withdrawals of the shared
    ledger): B's rewrite commits and deletes files A has just listed. A's rewrite starts
    again from the list as it is now (:class:`Moved`), instead of failing on the file
    gone (FileNotFoundError, seen in the equivalence test's cluster log)."""
    import sys

    a = open_wh(tmp_path)
    b = Warehouse(tmp_path / "wh-b", tiers=a.tiers,
                  shared_list=open_meta(tmp_path / "tiers.db", ""))
    try:
        write(a, events(50, "a"), 1)
        Publisher(a, 1).publish_once()
        real, meanwhile = a.files.files, []

        def listing() -> list[TierFile]:
            got = real()
            if sys._getframe(1).f_code.co_name == "_rewrite" and not meanwhile:
                meanwhile.append(removal.erase_persons(b, {1}))  # between list and read
            return got

        a.files.files = listing  # type: ignore[method-assign]
        got = removal.erase_persons(a, {2})
        a.files.files = real  # type: ignore[method-assign]
        assert meanwhile and meanwhile[0]["warm_rows"] == len(range(0, 50, 7))
        assert got["warm_rows"] == len(range(1, 50, 7))
        assert sum(listed_ids(a).values()) == 50 - len(range(0, 50, 7)) - len(range(1, 50, 7))
    finally:
        b.close()
        a.close()
