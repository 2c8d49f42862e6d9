"""Who may read personal data through a query: one rule for every query kind.

Below role ``privacy``, an insight that names a personal field anywhere (a breakdown, a
filter of any kind, a series property, the person filters of a cohort it uses) is
refused with 403 ``personal_data``, naming the field and the role it needs; the ``sql``
kind follows the same rule through the columns its plan reads (:mod:`aap.query.sql`).
At role ``privacy`` or ``admin`` such an insight runs, and the read is audited
(``data.read``) by the caller of :func:`aap.query.runner.run_insight`.

A field is personal when:

- it is an event column that identifies a person or places them: ``person_id``,
  ``session_id``, ``city``, ``region`` (:data:`PERSONAL_EVENT_COLUMNS`; the ``sql`` kind
  hides the same columns);
- or, as a key of ``properties`` or ``traits``, the collector's sealing rule calls it
  personal (:func:`aap.privacy.personal.is_personal_name`, case- and
  separator-insensitive, any part of a dotted or bracketed path), or it names one of the
  identifiers the warehouse derives, or a city or region (:data:`QUERY_ONLY`).

``message_id`` (an event's id, chosen by the client) and ``source`` are not personal:
they name an event or a site, not a person, and the ``sql`` kind shows them too.

Names are checked exactly as the compiler will read them: an event column only when the
name is exactly the column's (``Person_ID`` is a key of ``properties``, and refused as
one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from aap.errors import Forbidden
from aap.privacy.personal import is_personal_name, is_personal_path
from aap.query.common import EVENT_COLUMN_TYPES, CohortDef
from aap.query.models import SQL, BehaviouralCohort, Filter, Insight, Series

ROLES = ("viewer", "analyst", "privacy", "admin")
NEEDED = "privacy"
MAX_NAMED = 10
"""Personal fields named in a refusal at most."""
"""The role that may read personal data."""

PERSONAL_EVENT_COLUMNS = frozenset({"person_id", "session_id", "city", "region"})
"""Event columns that are personal (the ``sql`` kind also hides ``properties``, whose
keys are checked one by one here)."""

QUERY_ONLY = frozenset({
    "personid", "sessionid", "city", "cityname", "region", "regionname", "geoipcityname",
    "geoipsubdivision1name", "geoipsubdivision1code", "geoipsubdivision2name",
    "geoipsubdivision2code", "geoippostalcode",
})
"""Normalized names (lower case, letters and digits) that are personal for queries on top
of the sealing rule: the warehouse's own identifiers and the location columns the ``sql``
kind hides, when a client repeats them in ``properties`` or ``traits``. (The collector
keeps them: sessions are built from ``$session_id``.)"""

_PARTS = re.compile(r"\.|\[|\]|/|->>?|::|:")


def _normalize(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def is_personal_key(name: str) -> bool:
    """Whether a key of ``properties`` or ``traits`` (or a path into them) is personal."""
    if is_personal_name(name) or is_personal_path(name):
        return True
    # parts of a path however it is written (a.b, a[b], a/b, a->>b), alone or in runs
    parts = [p for p in _PARTS.split(name) if p][:32]
    runs = (".".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1))
    return any(is_personal_name(r) or _normalize(r) in QUERY_ONLY for r in runs)


def is_personal_field(name: str, kind: str = "event") -> bool:
    """Whether a field as an insight names it is personal: ``kind`` ``event`` (an event
    column, else a key of ``properties``) or ``person`` (a key of ``traits``)."""
    if kind == "event" and name in EVENT_COLUMN_TYPES:
        return name in PERSONAL_EVENT_COLUMNS
    return is_personal_key(name)


def _where(path: str, kind: str) -> str:
    return f"{path} ({'person trait' if kind == 'person' else 'event property'})"


def _at(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def _filters(path: str, filters: list[Filter]) -> Iterator[tuple[str, str, str]]:
    for i, f in enumerate(filters):
        yield f"{path}[{i}]", f.property, f.type


def _refs(obj: Any, path: str, cohort: Callable[[int], CohortDef] | None
          ) -> Iterator[tuple[str, str, str]]:
    """Every (place, field, kind) an insight document reads, found by walking it: the
    filters and series wherever they sit, breakdowns, and the cohorts it uses."""
    if isinstance(obj, Filter):
        yield path, obj.property, obj.type
        return
    if isinstance(obj, list):
        for i, x in enumerate(obj):
            yield from _refs(x, f"{path}[{i}]", cohort)
        return
    if not isinstance(obj, msgspec.Struct):
        return
    if isinstance(obj, BehaviouralCohort):  # its filters are on traits (Cohorts.create)
        for i, f in enumerate(obj.person_filters):
            yield f"{path or 'behavioural'}.person_filters[{i}]", f.property, "person"
        return
    if isinstance(obj, Series) and obj.property is not None:
        yield _at(path, "property"), obj.property, "event"
    breakdown = getattr(obj, "breakdown", None)
    if isinstance(breakdown, str):
        yield _at(path, "breakdown"), breakdown, getattr(obj, "breakdown_type", "event")
    ids = [getattr(obj, "cohort", None), *getattr(obj, "breakdown_cohorts", [])]
    for cid in (c for c in ids if isinstance(c, int)):
        if cohort is not None:
            yield from _filters(f"cohort {cid} person_filters", cohort(cid).person_filters)
    for field in obj.__struct_fields__:
        value = getattr(obj, field)
        if isinstance(value, (list, msgspec.Struct)):
            yield from _refs(value, _at(path, field), cohort)


def personal_fields(q: Insight | BehaviouralCohort,
                    cohort: Callable[[int], CohortDef] | None = None) -> list[str]:
    """The personal fields an insight (or a cohort definition) reads, each as
    ``place: field (kind)``; empty for the ``sql`` kind (see :mod:`aap.query.sql`)."""
    if isinstance(q, SQL):
        return []
    out = []
    for place, name, kind in _refs(q, "", cohort):
        if is_personal_field(name, kind):
            item = f"{place or 'insight'}: {_where(name, kind)}"
            if item not in out:
                out.append(item)
    return out


def may_read_personal(role: str) -> bool:
    return role in ROLES and ROLES.index(role) >= ROLES.index(NEEDED)


def refuse(role: str, fields: list[str], what: str = "this query") -> None:
    """Raise 403 ``personal_data`` when ``fields`` is not empty and ``role`` is below
    privacy."""
    if fields and not may_read_personal(role):
        names = "; ".join(fields[:MAX_NAMED]) + ("; …" if len(fields) > MAX_NAMED else "")
        raise Forbidden(f"{what} reads personal data ({names}): that needs role {NEEDED}"
                        f" or above; this key has role {role}",
                        {"fields": fields, "role": role, "needed": NEEDED},
                        code="personal_data")


def check(q: Insight | BehaviouralCohort, role: str,
          cohort: Callable[[int], CohortDef] | None = None) -> list[str]:
    """The rule for one insight or cohort definition: refused below privacy when it reads
    a personal field; returns the fields it reads (for the audit log)."""
    fields = personal_fields(q, cohort)
    refuse(role, fields)
    return fields


HIDDEN = "(hidden: personal)"


def redact(doc: Any, role: str) -> Any:
    """A stored document (a saved insight, a cohort's definition) as a role below privacy
    may see it: the values of filters on personal fields replaced by :data:`HIDDEN` (a
    filter ``email eq …`` names a person)."""
    if may_read_personal(role):
        return doc
    if isinstance(doc, list):
        return [redact(x, role) for x in doc]
    if not isinstance(doc, dict):
        return doc
    out = {k: redact(v, role) for k, v in doc.items()}
    if doc.get("kind") == "sql" and isinstance(doc.get("query"), str):
        out["query"] = _redact_sql(doc["query"])
    prop, kind = doc.get("property"), doc.get("type", "event")
    if isinstance(prop, str) and "value" in doc and doc["value"] is not None and \
            is_personal_field(prop, kind if kind in ("event", "person") else "event"):
        out["value"] = HIDDEN
    return out


def _breakdown_values(result: Any) -> Iterator[Any]:
    if isinstance(result, dict):
        for k, v in result.items():
            if k == "breakdown_value":
                yield v
            else:
                yield from _breakdown_values(v)
    elif isinstance(result, list):
        for x in result:
            yield from _breakdown_values(x)


def _keys(doc: Any, path: str = "") -> Iterator[str]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield _at(path, str(k))
            yield from _keys(v, _at(path, str(k)))
    elif isinstance(doc, list):
        for x in doc:
            yield from _keys(x, path)


def result_fields(result: dict[str, Any]) -> list[str]:
    """Personal keys inside the values an insight's answer is keyed by: a breakdown on a
    key whose value is an object (``contact`` holding ``{"email": …}``) reads the
    personal keys nested in it, which no name in the document shows."""
    out: list[str] = []
    for v in _breakdown_values(result):
        if not isinstance(v, str) or v[:1] not in "{[":
            continue
        try:
            doc = json.loads(v)
        except ValueError:
            continue
        for key in _keys(doc):
            item = f"breakdown value: {key} (nested key)"
            if is_personal_key(key) and item not in out:
                out.append(item)
    return out


SQL_PERSONAL_COLUMNS = PERSONAL_EVENT_COLUMNS | {"properties", "traits"}
"""Every column that is personal in some view of the ``sql`` kind."""


def _redact_sql(query: str) -> str:
    """A saved SQL text as a lower role sees it: when it names a personal column, its
    string literals (``traits->>'email' = 'ann@example.org'``) are hidden; a text that
    does not parse is hidden whole."""
    import sqlglot
    from sqlglot import exp

    try:
        stmts = [x for x in sqlglot.parse(query, read="duckdb") if x is not None]
    except (sqlglot.errors.SqlglotError, RecursionError):
        return HIDDEN
    if not any(c.name.lower() in SQL_PERSONAL_COLUMNS
               for st in stmts for c in st.find_all(exp.Column)):
        return query

    def hide(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Literal) and node.is_string:
            return exp.Literal.string(HIDDEN)
        return node

    return "; ".join(st.transform(hide).sql("duckdb") for st in stmts)
