"""The overview asked one panel at a time (``panels``: lean statements, the daily rollup
where it is exact) answers exactly the numbers of the all-panels answer, on the query
benchmark's generated traffic: warm days in the query cache (with its rollup and session
summary), hot days, merged anonymous sessions, sessions across midnight (so across cached
files, and across the cache and the hot days), events tied in time (whole seconds)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

from aap import errors
from aap.api import overview_panels
from aap.api.overview import PANELS, Overview
from aap.datadir import DataDir
from aap.query.cache import QueryCache
from aap.store.schema import EVENT_ARROW_SCHEMA
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse
from aap.testing.query_data import Dataset, generate, load

DOCS: list[dict[str, Any]] = [
    {"from": "2026-08-03", "to": "2026-08-16"},
    {"from": "2026-08-10", "to": "2026-08-16", "compare": True, "limit": 5},
    {"from": "2026-08-05", "to": "2026-08-09", "filters": [{"field": "country", "value": "US"}]},
    {"from": "2026-08-03", "to": "2026-08-16", "compare": True,
     "filters": [{"field": "browser", "value": "Chrome"}, {"field": "device", "value": "Mobile"}]},
    {"from": "2026-08-08", "to": "2026-08-14", "filters": [{"field": "page", "value": "/"}]},
    {"from": "2026-08-03", "to": "2026-08-16", "compare": True,
     "filters": [{"field": "entry_page", "value": "/"}]},
    {"from": "2026-08-12", "to": "2026-08-12", "limit": 3},
    # custom ranges cutting sessions at midnight, across the cached and hot days
    {"from": "2026-08-07", "to": "2026-08-14", "compare": True},
    {"from": "2026-08-12", "to": "2026-08-13", "limit": 20},
    {"from": "2026-08-13", "to": "2026-08-16", "compare": True, "limit": 1},
    {"from": "2026-08-01", "to": "2026-08-20"},
    {"from": "2026-08-03", "to": "2026-08-16", "filters": [{"field": "device", "value": "Desktop"}]},
    {"from": "2026-08-06", "to": "2026-08-11", "compare": True,
     "filters": [{"field": "browser", "value": "Firefox"}, {"field": "exit_page", "value": "/"}]},
]


@pytest.fixture(scope="module")
def overview(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overview]:
    data_dir = tmp_path_factory.mktemp("overview-fast")
    # 14 days: 4 stay hot, 10 go warm (cached, rolled up), none cold
    data = _with_midnight_sessions(generate(40_000, 1_500, 14, 11))
    load(data_dir, data, hot_days=4, cold_days=1000)
    paths = DataDir(data_dir)
    wh = Warehouse(paths.warehouse, tiers=TierStore(TierConfig(str(paths.tiers))))
    assert QueryCache(wh).sync()["copied"] == 10
    yield Overview(data_dir, wh, use_cache=True, timeout_s=60)
    wh.close()


def _with_midnight_sessions(data: Dataset) -> Dataset:
    """Many sessions across every midnight (so across cached files, and from the last
    cached day into the first hot one), whose pages differ before and after it and tie
    in time at both ends, half their events under an anonymous id merged into their
    person: merged wrongly, their entry and exit pages, durations and bounces would
    differ from grouping their events."""
    days = list(data.days)
    rows: dict[int, list[tuple[datetime, str, str, int]]] = {}
    overrides = dict(data.overrides)
    for d in range(1, len(days)):
        midnight = days[d][0]
        for i in range(60):
            sid, pid = f"mid-{d}-{i}", 9_000_000 + (d * 100 + i) * 2
            overrides[pid + 1] = pid
            paths = [(-3, f"/in/{i % 3}"), (-2, "/tie/a"), (-2, "/tie/b"), (0, "/on/0"),
                     (5 + i, f"/on/{i % 4}"), (5 + i, "/tie/c")]
            for k, (sec, path) in enumerate(paths[: 3 + i % 4]):
                at = midnight + timedelta(seconds=sec)
                # every other event under an anonymous id merged into the person
                rows.setdefault(d - (sec < 0), []).append((at, path, sid, pid + k % 2))
    for d, extra in rows.items():
        n = len(extra)
        cols = {"message_id": pa.array([f"x{d}-{j}" for j in range(n)]),
                "source": pa.array(["src_bench"] * n), "type": pa.array(["page"] * n),
                "event": pa.array(["$page"] * n),
                "timestamp": pa.array([r[0] for r in extra], pa.timestamp("us")),
                "path": pa.array([r[1] for r in extra]), "name": pa.array([r[1] for r in extra]),
                "session_id": pa.array([r[2] for r in extra]),
                "person_id": pa.array([r[3] for r in extra], pa.int64()),
                "country": pa.array(["US"] * n), "browser": pa.array(["Chrome"] * n),
                "device_type": pa.array(["Desktop"] * n)}
        for c in ("sent_at", "received_at"):
            cols[c] = cols["timestamp"]
        table = pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)).cast(f.type)
                          for f in EVENT_ARROW_SCHEMA}, schema=EVENT_ARROW_SCHEMA)
        days[d] = (days[d][0], pa.concat_tables([days[d][1], table]))
    return Dataset(days, data.persons, overrides, data.total_events)


def _ask(ov: Overview, doc: dict[str, Any]) -> dict[str, Any]:
    return ov.overview(json.dumps(doc).encode())


def _union(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if k == "breakdowns":
                assert not set(v) & set(out.get(k, {})), "a top list answered twice"
                out.setdefault(k, {}).update(v)
            else:
                assert k in ("from", "to") or k not in out, f"{k} answered twice"
                out[k] = v
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: json.dumps(d, sort_keys=True)[:70])
def test_the_panels_one_by_one_equal_the_all_in_one_answer(
        overview: Overview, doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _ask(overview, doc)
    assert whole["figures"]["visitors"] > 0 and len(whole["breakdowns"]) == 10
    assert whole["breakdowns"]["pages"] and whole["breakdowns"]["entry_pages"]
    assert ("previous" in whole["figures"]) == doc.get("compare", False)
    rollup: list[bool] = []
    summary: list[bool] = []
    real = overview_panels.Lean.__init__

    def spy(self: overview_panels.Lean, *args: Any, **kw: Any) -> None:
        real(self, *args, **kw)
        rollup.append(self.rollup)
        summary.append(self.summary)

    monkeypatch.setattr(overview_panels.Lean, "__init__", spy)
    parts = [_ask(overview, {**doc, "panels": [p]}) for p in PANELS]
    for p, part in zip(PANELS, parts, strict=True):
        assert set(part) - {"from", "to"} == ({"breakdowns"} if p not in
                                              ("figures", "series", "consent") else {p})
    assert _union(parts) == whole
    fields = {f["field"] for f in doc.get("filters", [])}
    session_filter = bool(fields & {"entry_page", "exit_page"})
    # lean statements unless a filter is on sessions; the rollup unless on pages or
    # sources; the session summary only without any filter
    assert bool(rollup) != session_filter
    assert all(rollup) == (not fields & {"page", "source"})
    assert len(summary) == len(rollup) and all(s == (not fields) for s in summary)
    # and a group of panels in one request is the same too
    two = _ask(overview, {**doc, "panels": ["series", "countries", "exit_pages"]})
    assert two["series"] == whole["series"]
    assert two["breakdowns"] == {k: whole["breakdowns"][k] for k in ("countries", "exit_pages")}


def test_a_range_without_events_is_the_same_too(overview: Overview) -> None:
    doc = {"from": "2026-07-01", "to": "2026-07-05", "compare": True}
    whole = _ask(overview, doc)
    assert whole["figures"]["sessions"] == 0
    parts = _union([_ask(overview, {**doc, "panels": [p]}) for p in PANELS])
    assert parts == whole


@pytest.mark.parametrize("panels,code", [(["pages", "nope"], "invalid_panel"),
                                         ([], "invalid_panel"), ("figures", None)])
def test_an_unknown_panel_is_refused_naming_it(overview: Overview, panels: Any,
                                               code: str | None) -> None:
    with pytest.raises(errors.BadRequest) as exc:
        _ask(overview, {"panels": panels})
    if code is not None:
        assert exc.value.code == code
        if panels:
            assert exc.value.detail == {"panel": "nope"}


def test_consent_alone_reads_no_traffic(overview: Overview) -> None:
    out = _ask(overview, {"from": "2026-08-03", "to": "2026-08-16", "panels": ["consent"]})
    assert set(out) == {"from", "to", "consent"}
    assert out["consent"] == _ask(overview, {"from": "2026-08-03", "to": "2026-08-16"})["consent"]


def test_the_rollup_is_there(overview: Overview) -> None:
    """(The equality above would prove nothing if the rollup were empty.)"""
    with overview._snapshot() as (cur, views):
        assert views.daily
        row = cur.execute("SELECT count(*), sum(n) FROM events_daily").fetchone()
        assert row is not None and 0 < row[0] < row[1]


def test_the_session_summary_is_there_with_sessions_in_parts(overview: Overview) -> None:
    """(Nor if the summary were empty, or had no session to merge: sessions split
    across cached days, across the cache and the hot days, and ties in time.)"""
    with overview._snapshot() as (cur, views):
        assert views.sessions
        row = cur.execute(
            "SELECT count(*), count(DISTINCT session_id), (SELECT count(*) FROM events"
            " WHERE timestamp < '2026-08-13'), count(*) FILTER (WHERE session_id IN"
            " (SELECT session_id FROM events_live)) FROM events_sessions").fetchone()
        assert row is not None and 0 < row[1] < row[0] < row[2] and row[3] > 0
        # a session is "alone" (read as it is) only if it is the summary's only row
        alone = overview.warehouse.con.execute(
            "SELECT count(*) FILTER (WHERE alone), count(*) FILTER (WHERE alone AND"
            " session_id IN (SELECT session_id FROM query_cache_sessions GROUP BY"
            " session_id HAVING count(*) > 1)) FROM query_cache_sessions").fetchone()
        assert alone is not None and 0 < alone[0] < row[0] and alone[1] == 0
        ties = cur.execute(
            "SELECT count(*) FROM (SELECT session_id, timestamp FROM events WHERE type ="
            " 'page' GROUP BY ALL HAVING count(DISTINCT path) > 1)").fetchone()
        assert ties is not None and ties[0] > 0
        pages = cur.execute("SELECT count(*), sum(n) FROM events_pages").fetchone()
        assert pages is not None and 0 < pages[0] < pages[1]


def test_a_summary_hashed_by_another_duckdb_is_made_again(overview: Overview) -> None:
    """(DuckDB does not promise the same hashes across versions: stored ones that differ
    from today's would route sessions wrongly.)"""
    wh = overview.warehouse
    wh.con.execute("UPDATE query_cache_sessions SET session_hash = session_hash // 2 + 1")
    cache = QueryCache(wh)
    assert not wh.con.execute("SELECT count(*) FROM duckdb_tables()"
                              " WHERE table_name = 'query_cache_sessions'").fetchall()[0][0]
    cache.sync()
    row = wh.con.execute("SELECT count(*), count(*) FILTER (WHERE session_hash ="
                         " hash(session_id)) FROM query_cache_sessions").fetchone()
    assert row is not None and row[0] == row[1] > 0


def test_a_merge_not_folded_yet_and_a_restricted_person_give_the_same_numbers(
        overview: Overview) -> None:
    """The summary's persons are resolved through merges recorded after the copy, and
    restricted persons are left out, as for the events (last: it changes the store)."""
    doc = {"from": "2026-08-03", "to": "2026-08-16"}
    wh = overview.warehouse
    a, b, c = (int(r[0]) for r in wh.con.execute(
        "SELECT person_id FROM query_cache_sessions GROUP BY person_id"
        " ORDER BY count(*) DESC LIMIT 3").fetchall())
    wh.con.execute("INSERT INTO person_overrides VALUES (?, ?)", [a, b])
    wh.con.execute("INSERT INTO person_flags VALUES (?, 'restricted', now())", [c])
    whole = _ask(overview, doc)
    parts = _union([_ask(overview, {**doc, "panels": [p]})
                    for p in ("figures", "pages", "entry_pages", "exit_pages")])
    assert parts["figures"] == whole["figures"]
    assert parts["breakdowns"] == {k: whole["breakdowns"][k] for k in (
        "pages", "entry_pages", "exit_pages")}


def test_the_openapi_schema_names_the_same_panels() -> None:
    from aap.api import overview_doc

    assert overview_doc.PANELS == list(PANELS)
    assert overview_doc.OVERVIEW_REQUEST["properties"]["panels"]["items"]["enum"] == list(PANELS)
