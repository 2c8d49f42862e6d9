"""The query cache gives the same answers as the tiers, while files move, retire and
merges arrive."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from aap.datadir import DataDir
from aap.privacy import removal
from aap.query.cache import QueryCache
from aap.query.runner import run_insight
from aap.store import tiering
from aap.store.schema import EVENT_ARROW_SCHEMA
from aap.store.warehouse import Chunk, Warehouse

START = datetime(2026, 9, 28, 12, 0)


def events(n_days: int, per_day: int) -> pa.Table:
    rows = [(f"m{d}-{i}", START + timedelta(days=d, minutes=i), 1 + i % 5 + (100 if d == 0 else 0))
            for d in range(n_days) for i in range(per_day)]
    cols = {f.name: pa.nulls(len(rows), f.type) for f in EVENT_ARROW_SCHEMA}
    cols.update({"message_id": pa.array([r[0] for r in rows]),
                 "source": pa.array(["s"] * len(rows)),
                 "event": pa.array(["A"] * len(rows)),
                 "timestamp": pa.array([r[1] for r in rows], pa.timestamp("us")),
                 "person_id": pa.array([r[2] for r in rows], pa.int64()),
                 "session_id": pa.array([f"s{r[2]}" for r in rows])})
    return pa.table(cols, schema=EVENT_ARROW_SCHEMA)


DOC = {"kind": "trends", "series": [{"event": "A", "math": "persons"}], "interval": "month",
       "date_from": "2026-09-01", "date_to": "2026-10-31"}


def persons(wh: Warehouse) -> list[int]:
    return next(s["values"] for s in run_insight(wh, DOC)["series"])


def test_cache_follows_moves_retirements_and_merges(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh")
    cache = QueryCache(wh)
    wh.write(Chunk(events=events(6, 10), position=1, next_person=1000))
    for d in range(4):
        tiering.move_day_to_warm(wh, (START + timedelta(days=d)).date())
    plain = persons(wh)
    assert plain == [10, 5]  # September: persons 1-5 and 101-105; October: 1-5
    assert cache.sync()["copied"] == 4
    assert persons(wh) == plain
    # September's warm days become one cold archive: the cached warm files retire
    tiering.compact_to_cold(wh, "2026-09", datetime(2026, 10, 1).date(), timedelta(0))
    assert persons(wh) == plain  # cold file read from Parquet, retired rows ignored
    done = cache.sync()
    assert done == {"merges": 0, "dropped": 3, "copied": 1, "rows": 30}
    assert persons(wh) == plain
    # persons 101-105 were anonymous: merged into 1-5 after they were cached
    wh.write(Chunk(events=EVENT_ARROW_SCHEMA.empty_table(), position=2, next_person=1000,
                   overrides={100 + p: p for p in range(1, 6)}))
    assert persons(wh) == [5, 5]
    assert cache.sync()["merges"] == 5
    assert persons(wh) == [5, 5]
    (cached,) = wh.con.execute("SELECT count(*) FROM query_cache WHERE person_id > 100").fetchall()
    assert cached == (0,)
    wh.close()


@pytest.mark.slow
def test_aap_query_opens_the_warehouse_when_no_server_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    wh = Warehouse(DataDir(data).warehouse)
    wh.write(Chunk(events=events(2, 3), position=1, next_person=1000))
    wh.close()
    doc = tmp_path / "q.json"
    doc.write_text(json.dumps({**DOC, "interval": "day", "date_from": "2026-09-28",
                               "date_to": "2026-09-29"}))
    out = subprocess.run([sys.executable, "-m", "aap", "query", str(doc), "--json",
                          "--data-dir", str(data)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["series"][0]["values"] == [3, 3]


def test_cache_is_rebuilt_when_the_events_schema_changes(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh")
    wh.write(Chunk(events=events(3, 4), position=1, next_person=1000))
    tiering.move_day_to_warm(wh, START.date())
    QueryCache(wh).sync()
    expected = persons(wh)
    # a cache made by an older version, without the newest column
    wh.con.execute("ALTER TABLE query_cache DROP COLUMN purposes")
    assert persons(wh) == expected  # read without the cache meanwhile
    cache = QueryCache(wh)
    assert cache.sync()["copied"] == 1
    assert persons(wh) == expected
    wh.close()


def test_erasure_removes_the_cached_copies_in_its_own_commit(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh")
    wh.write(Chunk(events=events(3, 5), position=1, next_person=1000))
    for d in range(2):
        tiering.move_day_to_warm(wh, (START + timedelta(days=d)).date())
    QueryCache(wh).sync()
    cached = "SELECT count(*) FROM query_cache WHERE person_id IN (1, 101)"
    assert wh.con.execute(cached).fetchall() == [(2,)]
    removal.erase_persons(wh, {1, 101})
    assert wh.con.execute(cached).fetchall() == [(0,)]  # no sync needed
    assert persons(wh) == [8, 0]  # September: 2-5 and 102-105
    wh.close()


def test_a_cursor_keeps_its_views_while_the_state_they_were_made_for_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Queries on the same state reuse the views a pooled cursor made for it; a file
    moved, a person restricted or the state changing between the two reads of a query
    makes the views again, and every answer is that of the state the query read."""
    from aap.query import snapshot

    made: list[str] = []
    apply = snapshot.Plan.apply

    def counted(self: snapshot.Plan, cur: object, warehouse: Warehouse, suffix: str = "") -> None:
        made.append(suffix)
        apply(self, cur, warehouse, suffix)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshot.Plan, "apply", counted)
    wh = Warehouse(tmp_path / "wh")
    cache = QueryCache(wh)
    wh.write(Chunk(events=events(6, 10), position=1, next_person=1000))
    tiering.move_day_to_warm(wh, START.date())
    cache.sync()
    assert persons(wh) == [10, 5]
    assert made == [""]  # made once, outside the query's transaction: kept
    assert persons(wh) == [10, 5] and persons(wh) == [10, 5]
    assert made == [""]  # the same state: the same views
    tiering.move_day_to_warm(wh, (START + timedelta(days=1)).date())  # a file not cached yet
    assert persons(wh) == [10, 5]
    assert made == ["", ""]
    wh.con.execute("INSERT INTO person_flags VALUES (101, 'restricted', now())")
    assert persons(wh) == [9, 5]  # hidden from the next query on
    assert made == ["", "", ""]
    assert persons(wh) == [9, 5]
    assert made == ["", "", ""]

    # the state changes between the query's two reads (the views were made again outside
    # the transaction for the first): the transaction makes its own (under names of its
    # own), and the cursor keeps those made for the first read
    plan_views = snapshot.plan_views
    calls = 0

    def changing(cur: object, warehouse: Warehouse, **kw: bool) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:
            wh.con.execute("INSERT INTO person_flags VALUES (102, 'restricted', now())")
        return plan_views(cur, warehouse, **kw)  # type: ignore[arg-type]

    wh.con.execute("DELETE FROM person_flags WHERE person_id = 101")
    monkeypatch.setattr(snapshot, "plan_views", changing)
    assert persons(wh) == [9, 5]  # 102 restricted as the transaction read it
    assert made == ["", "", "", "", snapshot.ONCE]
    monkeypatch.setattr(snapshot, "plan_views", plan_views)
    assert persons(wh) == [9, 5]
    assert made == ["", "", "", "", snapshot.ONCE, ""]  # kept: those of the first read
    assert persons(wh) == [9, 5]
    assert len(made) == 6
    wh.con.execute("DELETE FROM person_flags WHERE person_id = 102")
    assert persons(wh) == [10, 5]
    assert made[-1] == "" and len(made) == 7
    wh.close()
