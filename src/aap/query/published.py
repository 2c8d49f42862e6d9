"""What a query node cannot answer: insights that read tables which are not published.

A query node's warehouse (:mod:`aap.core.reader`) holds the published events (the batch
files of the shared list) and a mirror of the merges; the processors' ``persons`` (traits,
first/last seen), ``person_ids`` (which keyed ids a person has), ``orders``,
``order_items`` and ``products`` are not published, so those tables are empty there. An
insight that needs one of them is refused (409 ``not_on_query_node``, naming what it
needs) instead of being answered wrong:

- a filter or breakdown on a person's traits (``"type": "person"``,
  ``"breakdown_type": "person"``);
- a saved cohort of listed persons (``id_keys``) or with person filters, used as
  ``cohort`` or in ``breakdown_cohorts`` (a behavioural cohort, events only, is fine);
- ``sql`` reading ``persons``, ``orders``, ``order_items`` or ``products``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from aap import errors
from aap.query.common import CohortDef
from aap.query.models import SQL

UNPUBLISHED = frozenset({"persons", "orders", "order_items", "products"})
"""The SQL views over tables a query node does not hold."""
ASK = "ask a processor's own API (aap serve --role all or processor) for it"


def refuse(what: str) -> errors.Conflict:
    return errors.Conflict(f"{what} is not answered on a query node: persons, their ids,"
                           " orders and products are not published to it yet; " + ASK,
                           code="not_on_query_node")


def _structs(value: Any) -> Iterable[msgspec.Struct]:
    if isinstance(value, msgspec.Struct):
        yield value
        for name in value.__struct_fields__:
            yield from _structs(getattr(value, name))
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _structs(v)


def check(q: Any, cohort: Callable[[int], CohortDef] | None) -> None:
    """Raises :func:`refuse`'s error when insight ``q`` needs an unpublished table."""
    if isinstance(q, SQL):
        from aap.query.sql import check as parse

        needed = sorted(set(parse(q.query)[1]) & UNPUBLISHED)
        if needed:
            raise refuse(f"sql reading {', '.join(needed)}")
        return
    for s in _structs(q):
        if getattr(s, "type", None) == "person" and hasattr(s, "property"):
            raise refuse("a filter on a person's traits")
        if getattr(s, "breakdown_type", None) == "person":
            raise refuse("a breakdown by a person's traits")
    ids = [getattr(q, "cohort", None), *getattr(q, "breakdown_cohorts", [])]
    for cid in (i for i in ids if i is not None):
        if cohort is None:
            continue
        c = cohort(cid)
        if c.id_keys is not None or c.person_filters:
            raise refuse(f"cohort {cid} (listed persons or person filters)")
