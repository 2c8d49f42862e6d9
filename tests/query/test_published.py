"""What a query node refuses (:mod:`aap.query.published`): insights that need the
persons' ids (a cohort of listed persons), which are not published to it; everything
over events, persons, orders and products passes. And a query node's configuration is
refused with the reason when publishing or the shared state is missing
(:func:`aap.core.reader.query_role_problem`)."""

from __future__ import annotations

import pytest

from aap import errors
from aap.core.reader import query_role_problem
from aap.query.common import CohortDef
from aap.query.models import Filter, parse_insight
from aap.query.published import check
from aap.settings import Settings

SPAN = {"date_from": "2026-01-01", "date_to": "2026-01-31"}
COHORTS = {
    1: CohortDef(id=1, name="behaviour", event="$page", min_count=2),
    2: CohortDef(id=2, name="listed", id_keys=[5, 6]),
    3: CohortDef(id=3, name="traits", person_filters=[Filter(property="plan", value="pro",
                                                             type="person")]),
}


def _check(doc: dict[str, object]) -> None:
    check(parse_insight({**doc, **({} if doc["kind"] == "sql" else SPAN)}), COHORTS.__getitem__)


@pytest.mark.parametrize("doc", [
    {"kind": "trends", "series": [{"event": "$page", "math": "persons"}], "breakdown": "$browser"},
    {"kind": "trends", "series": [{"event": "$page"}], "cohort": 1},
    {"kind": "funnel", "steps": [{"event": "$page"}, {"event": "Signed Up"}]},
    {"kind": "retention", "start_event": "$page", "return_event": "$page"},
    {"kind": "paths", "start_event": "$page"},
    {"kind": "sql", "query": "SELECT event, count(*) FROM events JOIN sessions USING"
                             " (session_id) GROUP BY event"},
    {"kind": "trends", "series": [{"event": "$page", "filters": [
        {"property": "plan", "value": "pro", "type": "person"}]}]},
    {"kind": "trends", "series": [{"event": "$page"}], "breakdown": "plan",
     "breakdown_type": "person"},
    {"kind": "trends", "series": [{"event": "$page"}], "breakdown_type": "cohort",
     "breakdown_cohorts": [1, 3]},
    {"kind": "sql", "query": "SELECT count(*) FROM orders"},
    {"kind": "sql", "query": "WITH p AS (SELECT * FROM persons) SELECT count(*) FROM p"
                             " JOIN products ON true"},
])
def test_insights_over_published_tables_are_answered(doc: dict[str, object]) -> None:
    _check(doc)


@pytest.mark.parametrize(("doc", "named"), [
    ({"kind": "trends", "series": [{"event": "$page"}], "cohort": 2}, "cohort 2"),
    ({"kind": "trends", "series": [{"event": "$page"}], "breakdown_type": "cohort",
      "breakdown_cohorts": [1, 2]}, "cohort 2"),
])
def test_what_needs_the_persons_ids_is_refused_naming_it(doc: dict[str, object],
                                                            named: str) -> None:
    with pytest.raises(errors.Conflict) as caught:
        _check(doc)
    assert caught.value.code == "not_on_query_node" and named in caught.value.message


def test_a_query_node_needs_publishing_and_the_shared_state(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AAP_META_URL", raising=False)
    monkeypatch.delenv("AAP_PUBLISH_SECONDS", raising=False)
    both = query_role_problem(Settings())
    assert both and "AAP_PUBLISH_SECONDS > 0" in both and "AAP_META_URL" in both
    monkeypatch.setenv("AAP_PUBLISH_SECONDS", "2")
    meta = query_role_problem(Settings())
    assert meta and "AAP_PUBLISH_SECONDS" not in meta and "AAP_META_URL" in meta
    monkeypatch.setenv("AAP_META_URL", "postgresql://aap@127.0.0.1:1/aap")
    assert query_role_problem(Settings()) is None
