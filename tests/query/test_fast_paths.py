"""The fast ways (the query cache's rollup, funnels and paths over arrays) answer exactly
like the plain SQL over every tier, on the query benchmark's generated traffic: skewed
persons, merged anonymous sessions, sessions across midnight and into the hot tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aap.datadir import DataDir
from aap.privacy import removal, subjects
from aap.query import funnel_arrays, paths_arrays, rollup
from aap.query.cache import QueryCache
from aap.query.runner import run_insight
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse
from aap.testing.query_data import generate, load

START, END = "2026-08-03", "2026-08-16"
DOCS: list[dict[str, Any]] = [
    {"kind": "trends", "series": [{"event": "$page", "math": "total"}], "interval": "day",
     "breakdown": "country", "breakdown_limit": 5},
    {"kind": "trends", "series": [{"event": "$page", "math": "persons"}], "interval": "week",
     "breakdown": "country", "breakdown_limit": 3},
    {"kind": "trends", "series": [{"event": None, "math": "persons"}], "interval": "month",
     "filters": [{"property": "browser", "value": "Chrome"}]},
    {"kind": "funnel", "steps": [{"event": "Product Viewed"}, {"event": "Product Added"},
                                 {"event": "Checkout Started"}, {"event": "Order Completed"}],
     "window": "1d"},
    {"kind": "funnel", "steps": [{"event": "$page"}, {"event": "Signed Up"}], "window": "2h"},
    {"kind": "retention", "start_event": "Signed Up", "return_event": "$page",
     "period": "day", "periods": 5, "date_to": "2026-08-12"},
    {"kind": "paths", "depth": 3, "limit": 10},
    {"kind": "paths", "depth": 5, "limit": 5, "exclude_events": ["$page"]},
    {"kind": "stickiness", "series": [{"event": "$page"}], "interval": "day"},
    {"kind": "lifecycle", "event": "$page", "interval": "week"},
    {"kind": "lifecycle", "event": "Search", "interval": "day"},
]


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    data_dir = tmp_path_factory.mktemp("fast")
    # 14 days: 4 stay hot, 10 go warm (cached), none cold
    load(data_dir, generate(40_000, 1_500, 14, 7), hot_days=4, cold_days=1000)
    wh = Warehouse(DataDir(data_dir).warehouse, tiers=TierStore(TierConfig(str(DataDir(data_dir).tiers))))
    assert QueryCache(wh).sync()["copied"] == 10
    yield wh
    wh.close()


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d["kind"])
def test_fast_ways_match_plain_sql(warehouse: Warehouse, doc: dict[str, Any],
                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    doc = {"date_from": START, "date_to": END, **doc}
    used: list[str] = []
    for module, name in ((funnel_arrays, "counts_and_medians"), (paths_arrays, "paths"),
                         (rollup, "usable")):
        real = getattr(module, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            out = _real(*args, **kw)
            if out:
                used.append(_name)
            return out

        monkeypatch.setattr(module, name, spy)
    fast = run_insight(warehouse, doc)
    monkeypatch.undo()
    assert used, "no fast way was taken"
    plain = run_insight(warehouse, doc, use_cache=False)
    monkeypatch.setattr(funnel_arrays, "applies", lambda q: False)
    monkeypatch.setattr(paths_arrays, "applies", lambda q: False)
    sql = run_insight(warehouse, doc)
    assert fast == plain == sql
    if doc["kind"] == "paths":
        assert fast["paths"] and fast["paths"][0]["count"] > 1


def _busiest(wh: Warehouse) -> int:
    return int(wh.con.execute("SELECT person_id FROM query_cache_rollup WHERE event = '$page'"
                              " GROUP BY ALL ORDER BY sum(n) DESC LIMIT 1").fetchall()[0][0])


@pytest.mark.slow
def test_a_restricted_person_leaves_the_fast_ways(warehouse: Warehouse) -> None:
    docs = [{"date_from": START, "date_to": END, **d} for d in DOCS]
    before = [run_insight(warehouse, d) for d in docs]
    subjects.flag_persons(warehouse, {_busiest(warehouse)}, "restricted")
    try:
        after = [run_insight(warehouse, d) for d in docs]
        assert after == [run_insight(warehouse, d, use_cache=False) for d in docs]
        assert after[1] != before[1]  # one person fewer
    finally:
        warehouse.con.execute("DELETE FROM person_flags")


@pytest.mark.slow
def test_erasure_takes_the_rollup_rows_in_its_own_commit(tmp_path: Path) -> None:
    load(tmp_path, generate(5_000, 200, 6, 3), hot_days=2, cold_days=1000)
    wh = Warehouse(tmp_path / "warehouse", tiers=TierStore(TierConfig(str(tmp_path / "tiers"))))
    try:
        QueryCache(wh).sync()
        person = _busiest(wh)
        rows = f"SELECT count(*) FROM query_cache_rollup WHERE person_id = {person}"
        assert wh.con.execute(rows).fetchall()[0][0] > 0
        removal.erase_persons(wh, {person})
        assert wh.con.execute(rows).fetchall()[0][0] == 0  # no sync needed
        for d in DOCS:
            doc = {"date_from": START, "date_to": "2026-08-08", **d}
            assert run_insight(wh, doc) == run_insight(wh, doc, use_cache=False)
    finally:
        wh.close()
