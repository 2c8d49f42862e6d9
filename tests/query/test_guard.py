"""The guard's rule on names, without a server: which fields are personal, where an
insight names them, and what lower roles see of stored documents."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aap.errors import Forbidden
from aap.query import guard
from aap.query.common import EVENT_COLUMN_TYPES, CohortDef
from aap.query.models import parse_insight
from aap.query.sql import PERSONAL
from tests.api.test_personal_guard import PLAIN, personal_name


@given(name=personal_name(), kind=st.sampled_from(["event", "person"]))
def test_personal_names_in_any_casing_and_separator_are_personal(name: str, kind: str) -> None:
    assert guard.is_personal_field(name, kind), name


@pytest.mark.parametrize("name", PLAIN)
def test_plain_names_are_not(name: str) -> None:
    assert not guard.is_personal_field(name, "event")
    assert not guard.is_personal_field(name, "person")


def test_event_columns_follow_the_sql_kind() -> None:
    for col in EVENT_COLUMN_TYPES:
        assert guard.is_personal_field(col, "event") == (col in PERSONAL["events"]), col
    # the page's `name` column is not personal; a `name` key in properties or traits is
    assert not guard.is_personal_field("name", "event")
    assert guard.is_personal_field("name", "person")
    # not the column (case differs): a key of properties, refused as the id it repeats
    assert guard.is_personal_field("Person_ID", "event")


def test_every_place_of_an_insight_is_found_and_refused_below_privacy() -> None:
    cohort = CohortDef(id=7, name="c", person_filters=[
        parse_insight({"kind": "lifecycle", "filters": [
            {"property": "E-Mail", "type": "person"}]}).filters[0]])  # type: ignore[union-attr]
    doc = parse_insight({
        "kind": "trends", "breakdown": "Email", "breakdown_type": "person",
        "filters": [{"property": "plan"}, {"property": "$ip"}],
        "series": [{"event": "x", "math": "sum", "property": "phoneNumber",
                    "filters": [{"property": "contact.email"}]}],
        "cohort": 7})
    fields = guard.personal_fields(doc, lambda cid: cohort)
    joined = " ".join(fields)
    for name in ("Email", "$ip", "phoneNumber", "contact.email", "E-Mail"):
        assert name in joined, (name, fields)
    assert "plan" not in joined and len(fields) == 5
    with pytest.raises(Forbidden) as exc:
        guard.check(doc, "analyst", lambda cid: cohort)
    assert exc.value.code == "personal_data" and "privacy" in exc.value.message
    assert guard.check(doc, "privacy", lambda cid: cohort) == fields


def test_redact_hides_values_of_personal_filters_only() -> None:
    doc = {"kind": "trends", "filters": [{"property": "email", "value": "a@b.c"},
                                         {"property": "plan", "value": "pro"}]}
    out = guard.redact(doc, "viewer")
    assert out["filters"][0]["value"] == guard.HIDDEN and out["filters"][1]["value"] == "pro"
    assert guard.redact(doc, "privacy") == doc
