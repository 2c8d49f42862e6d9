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
from aap.query import funnel, guard, lifecycle, paths, retention, sql, stickiness, trends
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

    Below role privacy, an insight that reads a personal field is refused (403
    ``personal_data``, :mod:`aap.query.guard`). ``on_personal_read`` is called (for the
    audit log) after a query at role privacy or admin that read personal data: for the
    ``sql`` kind with the columns its plan read, the rows returned and the query's
    SHA-256 (its text may name a person, so it is not recorded); for other kinds with the
    personal fields it named (never the filter values)."""
    q = doc if isinstance(doc, (Trends, Funnel, Retention, Paths, Stickiness, Lifecycle, SQL)) \
        else parse_insight(doc)
    fields = guard.check(q, role, cohort)
    snap = (lambda: snapshot(warehouse)) if use_cache else (lambda: plain_snapshot(warehouse))
    with (open_snapshot(warehouse) if use_cache else _plain(warehouse)) as (cur, views):
        ctx = Context(cur=cur, now=now or datetime.now(UTC), cohort=cohort, role=role,
                      snapshot=snap, daily=views.daily, cached_files=views.cached_files)
        if isinstance(q, SQL):
            result = sql.run(ctx, q, max_rows=sql_max_rows, max_seconds=timeout_s)
            columns = result.pop("personal_columns", [])
            if columns and on_personal_read is not None:
                on_personal_read({"kind": "sql", "role": role, "columns": columns,
                                  "rows": len(result["rows"]),
                                  "query_sha256": hashlib.sha256(q.query.encode()).hexdigest()})
            return result
        timer = threading.Timer(timeout_s, cur.interrupt)
        timer.start()
        try:
            out = RUNNERS[type(q)](ctx, q)
            nested = guard.result_fields(out)
            guard.refuse(role, nested)
            fields = fields + nested
            if fields and on_personal_read is not None:
                on_personal_read({"kind": out.get("kind", ""), "role": role, "fields": fields})
            return out
        except duckdb.InterruptException:
            raise BadRequest(f"the insight ran over the time limit of {timeout_s:g} s",
                             code="timeout") from None
        finally:
            timer.cancel()
