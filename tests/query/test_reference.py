"""Every insight against its plain-Python reference (tests/query/reference.py) on random
event sets: few persons and few distinct timestamps (so ties in time are common), person
merges (events stored under an old person id that ``person_overrides`` maps on), time
zones around their DST changes, events exactly at a funnel's window boundary, and part of
the data moved to the warm tier and into the query cache before the merges are known."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aap.query import paths as paths_module
from aap.query.cache import QueryCache
from aap.query.runner import run_insight
from aap.store import tiering
from aap.store.schema import EVENT_ARROW_SCHEMA
from aap.store.warehouse import Chunk, Warehouse
from tests.conftest import examples
from tests.query import reference as ref
from tests.query.reference import Ev

pytestmark = pytest.mark.slow  # each example writes and queries a warehouse: ~10 s a test

# The EU leaves summer time on 2026-10-25, the US on 2026-11-01; Lord Howe moves by 30 min.
ANCHOR = datetime(2026, 10, 20)
NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
NAMES = ["A", "B", "C", "D"]
MERGED = {101: 1, 102: 2, 103: 1}  # old person → surviving person

# each example: a warehouse written and queried
SETTINGS = settings(max_examples=examples(40),
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    wh = Warehouse(tmp_path_factory.mktemp("wh"), threads=1, memory_limit="512MB")
    yield wh
    wh.close()


@st.composite
def event_sets(draw: st.DrawFn, max_events: int = 40) -> tuple[list[Ev], list[int], str]:
    """Events (with resolved persons) and the raw person ids they are stored under."""
    # a small pool of instants so that ties in time are frequent; minutes apart and
    # days apart, across both DST changes
    minutes = st.one_of(st.integers(4 * 1440, 7 * 1440), st.integers(11 * 1440, 14 * 1440),
                        st.integers(0, 16 * 1440))
    pool = draw(st.lists(minutes, min_size=3, max_size=14, unique=True))
    instants = [ANCHOR + timedelta(minutes=m) for m in pool]
    n = draw(st.integers(1, max_events))
    evs, raw_ids = [], []
    for i in range(n):
        raw = draw(st.sampled_from([1, 2, 3, 4, 101, 102, 103]))
        person = MERGED.get(raw, raw)
        ts = draw(st.sampled_from(instants))
        if draw(st.booleans()):  # sometimes a second later: boundaries and near-ties
            ts += timedelta(seconds=draw(st.sampled_from([1, 59, 3600])))
        props: dict[str, Any] = {}
        if draw(st.booleans()):
            props["v"] = draw(st.sampled_from([0, 1, 2.5, 10, -3, "x"]))
        props["plan"] = draw(st.sampled_from(["free", "pro"]))
        evs.append(Ev(message_id=f"m{i:03d}", event=draw(st.sampled_from(NAMES)), ts=ts,
                      person=person, session=f"{person}-{draw(st.integers(0, 2))}", props=props,
                      country=draw(st.sampled_from(["DE", "US", "FR", None]))))
        raw_ids.append(raw)
    warm = draw(st.sampled_from(["hot", "warm", "cached"]))
    return evs, raw_ids, warm


def load(wh: Warehouse, evs: list[Ev], raw_ids: list[int], tier: str) -> None:
    """Store the events; ``tier``: all hot, the first day moved to the warm tier, or that
    and the query cache filled before the merges arrive (so they are applied late)."""
    QueryCache(wh)
    with wh.transaction() as cur:
        for t in ("events_raw", "persons", "person_overrides", "person_ids", "tier_files",
                  "query_cache", "query_cache_files", "query_cache_overrides"):
            cur.execute(f"DELETE FROM {t}")
    n = len(evs)
    cols: dict[str, Any] = {f.name: [None] * n for f in EVENT_ARROW_SCHEMA}
    cols.update({
        "message_id": [e.message_id for e in evs], "source": ["src"] * n,
        "type": [e.type for e in evs], "event": [e.event for e in evs],
        "timestamp": [e.ts for e in evs], "person_id": raw_ids,
        "session_id": [e.session for e in evs], "country": [e.country for e in evs],
        "properties": [json.dumps(e.props) for e in evs],
    })
    table = pa.table({f.name: pa.array(cols[f.name], f.type) for f in EVENT_ARROW_SCHEMA},
                     schema=EVENT_ARROW_SCHEMA)
    persons = [(p, ANCHOR, ANCHOR, True, json.dumps({"plan": "pro" if p % 2 else "free"}))
               for p in {*raw_ids}]
    wh.write(Chunk(events=table, position=1, next_person=1000, persons=persons))
    if tier != "hot" and evs:
        tiering.move_day_to_warm(wh, min(e.ts for e in evs).date())
    if tier == "cached":
        QueryCache(wh).sync()
    wh.write(Chunk(events=EVENT_ARROW_SCHEMA.empty_table(), position=2, next_person=1000,
                   overrides={o: p for o, p in MERGED.items() if o in raw_ids}))


def run(wh: Warehouse, q: dict[str, Any]) -> dict[str, Any]:
    return run_insight(wh, q, now=NOW)


dates = st.sampled_from([("2026-10-20", "2026-11-05"), ("2026-10-24", "2026-10-26"),
                         ("2026-10-31", "2026-11-02"), ("2026-10-21", "2026-10-21")])
filters = st.sampled_from([
    [], [{"property": "plan", "value": "pro"}],
    [{"property": "country", "operator": "in", "value": ["DE", "FR"]}],
    [{"property": "v", "operator": "gt", "value": 0}],
    [{"property": "plan", "operator": "neq", "value": "pro"}],
    [{"property": "country", "operator": "contains", "value": "e"}],
    [{"property": "country", "operator": "regex", "value": "^(D|F)"}],
    [{"property": "v", "operator": "lt", "value": 2}],
    [{"property": "v", "operator": "is_set"}],
    [{"property": "country", "operator": "is_not_set"}, {"property": "plan", "value": "free"}],
])


@SETTINGS
@given(data=event_sets(), tz=st.sampled_from(ZONES), rng=dates, f=filters,
       interval=st.sampled_from(["hour", "day", "week", "month"]),
       math=st.sampled_from(["total", "persons", "sessions", "unique", "sum", "avg", "median",
                             "p90", "max"]),
       breakdown=st.sampled_from([None, "country", "plan"]), limit=st.integers(1, 3))
def test_trends_match_reference(warehouse: Warehouse, data: Any, tz: str, rng: Any, f: Any,
                                interval: str, math: str, breakdown: str | None,
                                limit: int) -> None:
    evs, raw, warm = data
    load(warehouse, evs, raw, warm)
    if interval == "hour" and rng[0] == "2026-10-20":
        rng = ("2026-10-24", "2026-10-26")
    s: dict[str, Any] = {"event": "A", "math": math}
    if math == "unique":
        s["property"] = "plan"  # distinct values of a text property
    elif math not in ("total", "persons", "sessions"):
        s["property"] = "v"
    q = {"kind": "trends", "series": [s], "interval": interval, "timezone": tz,
         "date_from": rng[0], "date_to": rng[1], "filters": f}
    if breakdown:
        q.update(breakdown=breakdown, breakdown_limit=limit)
    got = run(warehouse, q)
    expected = ref.trends(evs, q)
    got_map = {x["breakdown_value"]: x["values"] for x in got["series"]}
    exp_map = {x["breakdown_value"]: x["values"] for x in expected}
    assert got_map.keys() == exp_map.keys()
    for k, values in exp_map.items():
        assert got_map[k] == pytest.approx(values), k


@SETTINGS
@given(data=event_sets(), tz=st.sampled_from(ZONES), rng=dates,
       order=st.sampled_from(["ordered", "strict", "any"]),
       steps=st.lists(st.sampled_from(NAMES), min_size=2, max_size=4),
       window=st.sampled_from(["60s", "1h", "1d", "3d", "14d"]),
       by=st.sampled_from(["person", "session"]), excl=st.sampled_from([None, "D"]),
       f=filters)
def test_funnel_matches_reference(warehouse: Warehouse, data: Any, tz: str, rng: Any,
                                  order: str, steps: list[str], window: str, by: str,
                                  excl: str | None, f: Any) -> None:
    evs, raw, warm = data
    load(warehouse, evs, raw, warm)
    q: dict[str, Any] = {"kind": "funnel", "steps": [{"event": s} for s in steps],
                         "window": window, "order": order, "aggregate_by": by,
                         "timezone": tz, "date_from": rng[0], "date_to": rng[1], "filters": f}
    if excl and order != "any":
        q["exclusions"] = [{"event": excl, "from_step": 0, "to_step": len(steps) - 1}]
    got = run(warehouse, q)
    expected = ref.funnel(evs, q)
    assert [s["count"] for s in got["steps"]] == expected["counts"]
    assert [s["median_seconds_to_convert"] for s in got["steps"]] == \
        pytest.approx(expected["medians"])


def test_funnel_window_boundary_is_inclusive(warehouse: Warehouse) -> None:
    t = datetime(2026, 10, 21, 10, 0)
    evs = [Ev("m1", "A", t, 1, "s"), Ev("m2", "B", t + timedelta(days=1), 1, "s"),
           Ev("m3", "A", t, 2, "s2"), Ev("m4", "B", t + timedelta(days=1, microseconds=1), 2, "s2"),
           Ev("m5", "A", t, 3, "s3"), Ev("m6", "B", t, 3, "s3")]  # a tie is not "later"
    load(warehouse, evs, [1, 1, 2, 2, 3, 3], "hot")
    got = run(warehouse, {"kind": "funnel", "steps": [{"event": "A"}, {"event": "B"}],
                          "window": "1d", "date_from": "2026-10-20", "date_to": "2026-10-25"})
    assert [s["count"] for s in got["steps"]] == [3, 1]
    assert got["steps"][1]["median_seconds_to_convert"] == 86400.0


@SETTINGS
@given(data=event_sets(), tz=st.sampled_from(ZONES), rng=dates, f=filters,
       period=st.sampled_from(["day", "week", "month", "hour"]), periods=st.integers(1, 6),
       mode=st.sampled_from(["first_time", "recurring"]),
       pair=st.sampled_from([("A", "B"), ("A", "A"), ("B", "C")]))
def test_retention_matches_reference(warehouse: Warehouse, data: Any, tz: str, rng: Any,
                                     f: Any, period: str, periods: int, mode: str,
                                     pair: tuple[str, str]) -> None:
    evs, raw, warm = data
    load(warehouse, evs, raw, warm)
    if period == "hour":
        rng = ("2026-10-25", "2026-10-25")
    q = {"kind": "retention", "start_event": pair[0], "return_event": pair[1],
         "period": period, "periods": periods, "mode": mode, "timezone": tz,
         "date_from": rng[0], "date_to": rng[1], "filters": f}
    got = run(warehouse, q)
    assert got["cohorts"] == ref.retention(evs, q, NOW)


@SETTINGS
@given(data=event_sets(), rng=dates, tz=st.sampled_from(ZONES),
       anchor=st.sampled_from([None, ("start_event", "A"), ("end_event", "B")]),
       depth=st.integers(2, 5), limit=st.integers(1, 5), coded=st.booleans())
def test_paths_match_reference(warehouse: Warehouse, data: Any, rng: Any, tz: str,
                               anchor: Any, depth: int, limit: int, coded: bool) -> None:
    """``coded``: steps numbered (the fast way) or compared as text (many distinct steps)."""
    evs, raw, warm = data
    paths_module.MAX_CODED = 1024 if coded else 0
    load(warehouse, evs, raw, warm)
    q: dict[str, Any] = {"kind": "paths", "depth": depth, "limit": limit, "timezone": tz,
                         "date_from": rng[0], "date_to": rng[1],
                         "exclude_events": ["D"]}
    if anchor:
        q[anchor[0]] = anchor[1]
    try:
        got = run(warehouse, q)
    finally:
        paths_module.MAX_CODED = 1024
    assert [(tuple(p["steps"]), p["count"]) for p in got["paths"]] == ref.paths(evs, q)


@SETTINGS
@given(data=event_sets(), rng=dates, tz=st.sampled_from(ZONES), f=filters,
       interval=st.sampled_from(["day", "week", "hour"]))
def test_stickiness_matches_reference(warehouse: Warehouse, data: Any, rng: Any, tz: str,
                                      f: Any, interval: str) -> None:
    evs, raw, warm = data
    load(warehouse, evs, raw, warm)
    if interval == "hour":
        rng = ("2026-10-25", "2026-10-25")
    q = {"kind": "stickiness", "series": [{"event": "A"}], "interval": interval,
         "timezone": tz, "date_from": rng[0], "date_to": rng[1], "filters": f}
    got = run(warehouse, q)
    assert got["series"][0]["values"] == ref.stickiness(evs, q)


@SETTINGS
@given(data=event_sets(), rng=dates, tz=st.sampled_from(ZONES), f=filters,
       interval=st.sampled_from(["day", "week", "month", "hour"]))
def test_lifecycle_matches_reference(warehouse: Warehouse, data: Any, rng: Any, tz: str,
                                     f: Any, interval: str) -> None:
    evs, raw, warm = data
    load(warehouse, evs, raw, warm)
    if interval == "hour":
        rng = ("2026-10-25", "2026-10-25")
    q = {"kind": "lifecycle", "event": "A", "interval": interval, "timezone": tz,
         "date_from": rng[0], "date_to": rng[1], "filters": f}
    got = run(warehouse, q)
    expected = ref.lifecycle(evs, q)
    assert {k: got[k] for k in expected} == expected


def test_merged_person_counts_once(warehouse: Warehouse) -> None:
    t = datetime(2026, 10, 21, 10, 0)
    # person 101 (anonymous) was merged into person 1: one person, two stored ids
    evs = [Ev("m1", "A", t, 1, "s1"), Ev("m2", "A", t + timedelta(hours=1), 1, "s2")]
    load(warehouse, evs, [101, 1], "cached")
    got = run(warehouse, {"kind": "trends", "series": [{"event": "A", "math": "persons"}],
                          "date_from": "2026-10-21", "date_to": "2026-10-21"})
    assert got["series"][0]["values"] == [1]


def test_reference_module_is_plain_python() -> None:
    src = Path(ref.__file__).read_text()
    assert "duckdb" not in src and "aap." not in src
