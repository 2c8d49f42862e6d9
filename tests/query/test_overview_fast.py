"""The overview asked one panel at a time (``panels``: lean statements, the daily rollup
where it is exact) answers exactly the numbers of the all-panels answer, on the query
benchmark's generated traffic: warm days in the query cache (with its rollup), hot days,
merged anonymous sessions, sessions across midnight."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from aap import errors
from aap.api import overview_panels
from aap.api.overview import PANELS, Overview
from aap.datadir import DataDir
from aap.query.cache import QueryCache
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse
from aap.testing.query_data import generate, load

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
]


@pytest.fixture(scope="module")
def overview(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overview]:
    data_dir = tmp_path_factory.mktemp("overview-fast")
    # 14 days: 4 stay hot, 10 go warm (cached, rolled up), none cold
    load(data_dir, generate(40_000, 1_500, 14, 11), hot_days=4, cold_days=1000)
    paths = DataDir(data_dir)
    wh = Warehouse(paths.warehouse, tiers=TierStore(TierConfig(str(paths.tiers))))
    assert QueryCache(wh).sync()["copied"] == 10
    yield Overview(data_dir, wh, use_cache=True, timeout_s=60)
    wh.close()


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
    real = overview_panels.Lean.__init__

    def spy(self: overview_panels.Lean, *args: Any, **kw: Any) -> None:
        real(self, *args, **kw)
        rollup.append(self.rollup)

    monkeypatch.setattr(overview_panels.Lean, "__init__", spy)
    parts = [_ask(overview, {**doc, "panels": [p]}) for p in PANELS]
    for p, part in zip(PANELS, parts, strict=True):
        assert set(part) - {"from", "to"} == ({"breakdowns"} if p not in
                                              ("figures", "series", "consent") else {p})
    assert _union(parts) == whole
    session_filter = any(f["field"] == "entry_page" for f in doc.get("filters", []))
    page_filter = any(f["field"] == "page" for f in doc.get("filters", []))
    # lean statements unless a filter is on sessions; the rollup unless on pages
    assert bool(rollup) != session_filter
    assert all(rollup) == (not page_filter)
    # and a group of panels in one request is the same too
    two = _ask(overview, {**doc, "panels": ["series", "countries", "exit_pages"]})
    assert two["series"] == whole["series"]
    assert two["breakdowns"] == {k: whole["breakdowns"][k] for k in ("countries", "exit_pages")}


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
    with overview._snapshot() as (cur, daily):
        assert daily
        row = cur.execute("SELECT count(*), sum(n) FROM events_daily").fetchone()
        assert row is not None and 0 < row[0] < row[1]


def test_the_openapi_schema_names_the_same_panels() -> None:
    from aap.api import overview_doc

    assert overview_doc.PANELS == list(PANELS)
    assert overview_doc.OVERVIEW_REQUEST["properties"]["panels"]["items"]["enum"] == list(PANELS)
