"""Run an insight document: decode, compile to SQL, execute on a warehouse snapshot."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import duckdb

from aap.errors import BadRequest
from aap.query import funnel, lifecycle, paths, retention, sql, stickiness, trends
from aap.query.common import CohortDef, Context
from aap.query.models import (
    SQL,
    Funnel,
    Insight,
    Lifecycle,
    Paths,
    Retention,
    Stickiness,
    Trends,
    parse_insight,
)
from aap.query.snapshot import Views, open_snapshot, plain_snapshot, snapshot
from aap.store.warehouse import Warehouse

RUNNERS: dict[type, Callable[[Context, Any], dict[str, Any]]] = {
    Trends: trends.run, Funnel: funnel.run, Retention: retention.run, Paths: paths.run,
    Stickiness: stickiness.run, Lifecycle: lifecycle.run,
}


@contextmanager
def _plain(warehouse: Warehouse) -> Iterator[tuple[duckdb.DuckDBPyConnection, Views]]:
    with plain_snapshot(warehouse) as cur:
        yield cur, Views()


def run_insight(warehouse: Warehouse, doc: bytes | str | dict[str, Any] | Insight, *,
                role: str = "analyst", cohort: Callable[[int], CohortDef] | None = None,
                now: datetime | None = None, timeout_s: float = 60.0,
                sql_max_rows: int = 100_000, use_cache: bool = True,
                on_personal_read: Callable[[dict[str, Any]], object] | None = None
                ) -> dict[str, Any]:
    """The Python API: run one insight on a warehouse (the process that owns it).

    ``on_personal_read`` is called (for the audit log) after a ``sql`` query that read
    personal columns, with the columns, the rows returned and the query's SHA-256 (its
    text may name a person, so it is not recorded)."""
    q = doc if isinstance(doc, (Trends, Funnel, Retention, Paths, Stickiness, Lifecycle, SQL)) \
        else parse_insight(doc)
    snap = (lambda: snapshot(warehouse)) if use_cache else (lambda: plain_snapshot(warehouse))
    with (open_snapshot(warehouse) if use_cache else _plain(warehouse)) as (cur, views):
        ctx = Context(cur=cur, now=now or datetime.now(UTC), cohort=cohort, role=role,
                      snapshot=snap, daily=views.daily, cached_files=views.cached_files)
        if isinstance(q, SQL):
            result = sql.run(ctx, q, max_rows=sql_max_rows, max_seconds=timeout_s)
            columns = sql.personal_columns(q.query, role)
            if columns and on_personal_read is not None:
                on_personal_read({"kind": "sql", "role": role, "columns": columns,
                                  "rows": len(result["rows"]),
                                  "query_sha256": hashlib.sha256(q.query.encode()).hexdigest()})
            return result
        timer = threading.Timer(timeout_s, cur.interrupt)
        timer.start()
        try:
            return RUNNERS[type(q)](ctx, q)
        except duckdb.InterruptException:
            raise BadRequest(f"the insight ran over the time limit of {timeout_s:g} s",
                             code="timeout") from None
        except (duckdb.InvalidInputException, duckdb.ConversionException,
                duckdb.OutOfRangeException) as exc:
            # a value of the document the engine refuses (a regex that does not compile,
            # a number out of range): the client's error. Its text may quote stored
            # values, so only its kind is returned.
            raise BadRequest(f"the insight has a value the engine cannot use"
                             f" ({type(exc).__name__}): check its filters", code="invalid_value"
                             ) from None
        finally:
            timer.cancel()
