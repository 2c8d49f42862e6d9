"""The cell count that ``AAP_MAX_INSIGHT_CELLS`` is checked against, read from the document
before an insight runs, bounds the numbers of its real answer (random documents on random
event sets), and a document above the limit is refused before it runs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aap.errors import BadRequest
from aap.query import cells
from aap.query.models import parse_insight
from aap.store.warehouse import Warehouse
from tests.query.test_reference import NAMES, NOW, SETTINGS, ZONES, dates, event_sets, load, run
from tests.query.test_reference import warehouse as warehouse  # the fixture

pytestmark = pytest.mark.slow  # many insights over a warehouse: ~5 s


def numbers(answer: dict[str, Any]) -> int:
    """How many numbers an answer holds (the cells)."""
    kind = answer["kind"]
    if kind in ("trends", "stickiness"):
        return sum(len(s["values"]) for s in answer["series"])
    if kind == "lifecycle":
        return 4 * len(answer["dates"])
    if kind == "retention":
        return sum(len(c["values"]) for c in answer["cohorts"])
    if kind == "funnel":
        return len(answer["steps"]) + sum(len(b["steps"]) for b in answer.get("breakdown", []))
    assert kind == "paths"
    return sum(len(p["steps"]) for p in answer["paths"])


series = st.lists(st.fixed_dictionaries({"event": st.sampled_from(NAMES),
                                         "math": st.sampled_from(["total", "persons"])}),
                  min_size=1, max_size=3)
interval = st.sampled_from(["hour", "day", "week", "month"])
documents = st.one_of(
    st.fixed_dictionaries({
        "kind": st.just("trends"), "series": series, "interval": interval,
        "breakdown": st.sampled_from([None, "country", "plan"]),
        "breakdown_limit": st.integers(1, 3), "compare": st.booleans(),
        "formula": st.sampled_from([None, "A*2"])}),
    st.fixed_dictionaries({"kind": st.just("stickiness"), "series": series,
                           "interval": interval}),
    st.fixed_dictionaries({"kind": st.just("lifecycle"), "event": st.sampled_from(NAMES),
                           "interval": interval}),
    st.fixed_dictionaries({"kind": st.just("retention"), "period": st.sampled_from(
        ["day", "week"]), "periods": st.integers(1, 6)}),
    st.fixed_dictionaries({
        "kind": st.just("funnel"),
        "steps": st.lists(st.fixed_dictionaries({"event": st.sampled_from(NAMES)}),
                          min_size=2, max_size=4),
        "breakdown": st.sampled_from([None, "country"]), "breakdown_limit": st.integers(1, 3)}),
    st.fixed_dictionaries({"kind": st.just("paths"), "depth": st.integers(2, 4),
                           "limit": st.integers(1, 5)}),
)


@SETTINGS
@given(data=event_sets(), doc=documents, tz=st.sampled_from(ZONES), rng=dates)
def test_the_cell_count_bounds_the_real_answer(warehouse: Warehouse, data: Any,
                                               doc: dict[str, Any], tz: str, rng: Any) -> None:
    evs, raw_ids, tier = data
    load(warehouse, evs, raw_ids, tier)
    doc = {k: v for k, v in doc.items() if v is not None}
    doc.update({"timezone": tz, "date_from": rng[0], "date_to": rng[1]})
    bound = cells.count(parse_insight(doc), NOW)
    assert numbers(run(warehouse, doc)) <= bound
    with pytest.raises(BadRequest) as err:
        cells.check(parse_insight(doc), NOW, bound - 1)
    assert err.value.code == "too_many_cells"
    cells.check(parse_insight(doc), NOW, bound)  # at the limit: allowed
