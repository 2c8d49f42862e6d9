"""Dates at the edges of the calendar — the first and last days Python knows, the years just
outside AAP's 1970 to 9000, relative spans reaching back past year 1 — give every insight kind
an answer or a 400 naming the date, never an overflow (a retention with only ``date_to``
"0001-01-01" once stepped its cohorts back past year 1: a 500)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aap.errors import BadRequest
from aap.query.runner import run_insight
from aap.store.warehouse import Warehouse
from tests.query.test_reference import NOW

EDGES = ["0001-01-01", "0001-01-08", "1969-12-31", "1970-01-01", "1970-03-01", "8999-12-31",
         "9000-12-31", "9999-12-31", "9999-12-31T23:59:59", "0001-01-01T00:00:00",
         "-99999y", "-99999w", "-9999y", "-7000y", "today", "now"]
KINDS: dict[str, dict[str, Any]] = {
    "trends": {"series": [{"event": "A"}]},
    "stickiness": {"series": [{"event": "A"}]},
    "lifecycle": {"event": "A"},
    "retention": {},
    "funnel": {"steps": [{"event": "A"}, {"event": "B"}]},
    "paths": {},
}
UNITS = {"trends": "interval", "stickiness": "interval", "lifecycle": "interval",
         "retention": "period"}


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    wh = Warehouse(tmp_path_factory.mktemp("wh"), threads=1, memory_limit="256MB")
    yield wh
    wh.close()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(KINDS)), date_from=st.none() | st.sampled_from(EDGES),
       date_to=st.none() | st.sampled_from(EDGES),
       unit=st.sampled_from(["hour", "day", "week", "month"]),
       periods=st.sampled_from([1, 8, 120]), compare=st.booleans(),
       tz=st.sampled_from(["UTC", "Etc/GMT+12", "Pacific/Kiritimati"]))
def test_calendar_edges_answer_or_400(warehouse: Warehouse, kind: str, date_from: str | None,
                                      date_to: str | None, unit: str, periods: int,
                                      compare: bool, tz: str) -> None:
    doc: dict[str, Any] = {"kind": kind, **KINDS[kind], "timezone": tz}
    if date_from is not None:
        doc["date_from"] = date_from
    if date_to is not None:
        doc["date_to"] = date_to
    if kind in UNITS:
        doc[UNITS[kind]] = unit
    if kind == "retention":
        doc["periods"] = periods
    if kind == "trends":
        doc["compare"] = compare
    try:
        answer = run_insight(warehouse, doc, now=NOW, max_cells=10**9)
    except BadRequest as e:
        assert e.code in ("invalid_date", "too_many_buckets"), (doc, e.code, str(e))
        return
    assert answer["kind"] == kind


@pytest.mark.parametrize("date_to", ["0001-01-01", "1969-12-31", "1970-01-01"])
def test_retention_cohorts_stepping_back_before_1970_are_refused(warehouse: Warehouse,
                                                                  date_to: str) -> None:
    with pytest.raises(BadRequest) as e:
        run_insight(warehouse, {"kind": "retention", "date_to": date_to, "period": "week",
                                "periods": 8}, now=NOW)
    assert e.value.code == "invalid_date" and "1970" in str(e.value)
