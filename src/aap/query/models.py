"""Insights as data: one msgspec struct per kind, decoded from JSON with clear errors.

A document is ``{"kind": "trends" | "funnel" | "retention" | "paths" | "stickiness" |
"lifecycle" | "sql", ...}``; fields common to every kind but ``sql`` are ``date_from``,
``date_to``, ``timezone``, ``filters`` and ``cohort``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from aap.errors import BadRequest

Operator = Literal["eq", "neq", "in", "not_in", "contains", "not_contains", "regex", "gt", "gte",
                   "lt", "lte", "is_set", "is_not_set"]
Interval = Literal["hour", "day", "week", "month"]
Math = Literal["total", "persons", "sessions", "unique", "sum", "avg", "min", "max", "median",
               "p90", "p99"]
PROPERTY_MATH = ("sum", "avg", "min", "max", "median", "p90", "p99")
"""The maths of a numeric property."""
Name = Annotated[str, Meta(min_length=1, max_length=200)]
Id = Annotated[int, Meta(ge=1, le=2**53)]
"""A saved cohort's or insight's id (the stores' integer keys; any JSON number up to
2^53 is exact)."""


class Filter(Struct, forbid_unknown_fields=True, kw_only=True):
    property: Name
    operator: Operator = "eq"
    value: Any = None
    type: Literal["event", "person"] = "event"
    """``event``: a column of the event or a key of its ``properties``; ``person``: a key of
    the person's ``traits``."""


class BehaviouralCohort(Struct, forbid_unknown_fields=True, kw_only=True):
    """Persons who did ``event`` at least ``min_count`` times in the last ``days`` days
    (and/or who match ``person_filters``)."""

    event: Name | None = None
    min_count: Annotated[int, Meta(ge=1, le=1_000_000_000)] = 1
    days: Annotated[int, Meta(ge=1, le=3650)] = 30
    person_filters: list[Filter] = []


class StaticCohort(Struct, forbid_unknown_fields=True, kw_only=True):
    """A fixed list of distinct ids (userId or anonymousId values), stored hashed."""

    ids: Annotated[list[Annotated[str, Meta(min_length=1, max_length=500)]],
                   Meta(max_length=1_000_000)]


class CohortSpec(Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    static: StaticCohort | None = None
    behavioural: BehaviouralCohort | None = None


class Common(Struct, forbid_unknown_fields=True, kw_only=True):
    date_from: str | None = None
    date_to: str | None = None
    timezone: Annotated[str, Meta(max_length=64)] = "UTC"
    filters: list[Filter] = []
    cohort: Id | None = None
    """Only persons of this saved cohort (its id)."""


class Series(Struct, forbid_unknown_fields=True, kw_only=True):
    event: Name | None = None
    """Event name (``$page`` for page views); ``null`` for any event."""
    math: Math = "total"
    property: Name | None = None
    filters: list[Filter] = []
    label: str | None = None


class Trends(Common, tag="trends", tag_field="kind"):
    series: Annotated[list[Series], Meta(min_length=1, max_length=26)]
    interval: Interval = "day"
    breakdown: Name | None = None
    breakdown_type: Literal["event", "person", "cohort"] = "event"
    breakdown_limit: Annotated[int, Meta(ge=1, le=1000)] = 25
    breakdown_cohorts: Annotated[list[Id], Meta(max_length=100)] = []
    formula: Annotated[str, Meta(max_length=500)] | None = None
    compare: bool = False


class Step(Struct, forbid_unknown_fields=True, kw_only=True):
    event: Name | None = None
    filters: list[Filter] = []
    label: str | None = None


class Exclusion(Struct, forbid_unknown_fields=True, kw_only=True):
    event: Name
    from_step: Annotated[int, Meta(ge=0, le=19)] = 0
    to_step: Annotated[int, Meta(ge=1, le=19)] | None = None
    """Index of the later step (0-based); default the last step."""
    filters: list[Filter] = []


class Funnel(Common, tag="funnel", tag_field="kind"):
    steps: Annotated[list[Step], Meta(min_length=2, max_length=20)]
    window: str = "14d"
    order: Literal["ordered", "strict", "any"] = "ordered"
    exclusions: list[Exclusion] = []
    breakdown: Name | None = None
    breakdown_type: Literal["event", "person"] = "event"
    breakdown_limit: Annotated[int, Meta(ge=1, le=1000)] = 25
    aggregate_by: Literal["person", "session"] = "person"


class Retention(Common, tag="retention", tag_field="kind"):
    start_event: Name | None = None
    return_event: Name | None = None
    period: Interval = "week"
    periods: Annotated[int, Meta(ge=1, le=120)] = 8
    mode: Literal["first_time", "recurring"] = "first_time"


class Paths(Common, tag="paths", tag_field="kind"):
    start_event: Name | None = None
    end_event: Name | None = None
    depth: Annotated[int, Meta(ge=2, le=10)] = 3
    limit: Annotated[int, Meta(ge=1, le=1000)] = 20
    path_type: Literal["event", "page"] = "event"
    """``event``: steps are event names; ``page``: only page/screen views, named by path."""
    exclude_events: list[Name] = msgspec.field(default_factory=lambda: ["$identify", "$group", "$alias"])


class Stickiness(Common, tag="stickiness", tag_field="kind"):
    series: Annotated[list[Series], Meta(min_length=1, max_length=26)]
    interval: Interval = "day"


class Lifecycle(Common, tag="lifecycle", tag_field="kind"):
    event: Name | None = None
    interval: Interval = "day"


class SQL(Struct, tag="sql", tag_field="kind", forbid_unknown_fields=True, kw_only=True):
    query: Annotated[str, Meta(min_length=1, max_length=100_000)]
    limit: Annotated[int, Meta(ge=1, le=100_000)] = 10_000
    timeout_s: Annotated[float, Meta(gt=0, le=300)] = 30.0


Insight = Trends | Funnel | Retention | Paths | Stickiness | Lifecycle | SQL
KINDS = ("trends", "funnel", "retention", "paths", "stickiness", "lifecycle", "sql")

_decoder = msgspec.json.Decoder(Insight)


def parse_insight(doc: bytes | str | dict[str, Any]) -> Insight:
    """Decode and validate an insight document; a ``BadRequest`` says what is wrong."""
    try:
        if isinstance(doc, dict):
            return msgspec.convert(doc, Insight)
        return _decoder.decode(doc)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        if "Expected `object`, got" in msg or "Missing required field `kind`" in msg or \
                ("Invalid value" in msg and "`$.kind`" in msg):
            msg += f" (kind is one of {', '.join(KINDS)})"
        raise BadRequest(f"invalid insight: {msg}", code="invalid_insight") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the insight is not valid JSON: {exc}", code="invalid_json") from None


def parse_cohort(doc: bytes | dict[str, Any]) -> CohortSpec:
    try:
        spec = (msgspec.convert(doc, CohortSpec) if isinstance(doc, dict)
                else msgspec.json.decode(doc, type=CohortSpec))
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid cohort: {exc}", code="invalid_cohort") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the cohort is not valid JSON: {exc}", code="invalid_json") from None
    if (spec.static is None) == (spec.behavioural is None):
        raise BadRequest("a cohort is either `static` (a list of ids) or `behavioural`",
                         code="invalid_cohort")
    return spec
