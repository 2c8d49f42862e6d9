"""What a query node cannot answer: insights that need the persons' ids.

A query node's warehouse (:mod:`aap.core.reader`) holds the published events, persons,
orders, order items and products (the batch files of the shared list, read as views:
:mod:`aap.store.published`) and a mirror of the merges and the flags; the processors'
``person_ids`` (which keyed ids a person has) are not published, so an insight that needs
them is refused (409 ``not_on_query_node``, naming what it needs) instead of being
answered wrong: a saved cohort of listed persons (``id_keys``), used as ``cohort`` or in
``breakdown_cohorts``. (The privacy center's person and consent lookups, which need them
too, are refused by :mod:`aap.core.reader`.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aap import errors
from aap.query.common import CohortDef

ASK = "ask a processor's own API (aap serve --role all or processor) for it"


def refuse(what: str) -> errors.Conflict:
    return errors.Conflict(f"{what} is not answered on a query node: the persons' ids are"
                           " not published to it; " + ASK, code="not_on_query_node")


def check(q: Any, cohort: Callable[[int], CohortDef] | None) -> None:
    """Raises :func:`refuse`'s error when insight ``q`` needs the persons' ids."""
    ids = [getattr(q, "cohort", None), *getattr(q, "breakdown_cohorts", [])]
    for cid in (i for i in ids if i is not None):
        if cohort is None:
            continue
        if cohort(cid).id_keys is not None:
            raise refuse(f"cohort {cid} (listed persons)")
