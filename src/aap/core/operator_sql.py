"""``aap sql``'s call on a core's socket (``POST /internal/sql``): the operator's SQL on
the raw warehouse, as a processor's core and a query node's answer it."""

from __future__ import annotations

from typing import Any

import duckdb
import msgspec

from aap import errors
from aap.store.tiers import tier_read_failed, unreadable
from aap.store.warehouse import Warehouse


class SQLRequest(msgspec.Struct):
    sql: str
    params: list[Any] = []


def jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    return str(v)


def sql_answer(warehouse: Warehouse, body: bytes, position: Any) -> dict[str, Any]:
    """The columns and rows of the request's SQL (400 ``bad_request`` for a body that
    does not decode, 400 ``bad_query`` for SQL the engine refuses), and ``position``."""
    try:
        req = msgspec.json.decode(body, type=SQLRequest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise errors.BadRequest(str(exc), code="bad_request") from None
    try:
        cols, result = warehouse.query(req.sql, req.params)
    except duckdb.Error as exc:
        if tier_read_failed(exc):  # the files, not the SQL: the store away is a 503,
            if warehouse.tiers.away(exc):  # a listed file it lacks is a fault (500)
                raise unreadable() from exc
            raise
        raise errors.BadRequest(str(exc), code="bad_query") from None
    rows = [[jsonable(v) for v in r] for r in result]
    return {"columns": cols, "rows": rows, "position": position}
