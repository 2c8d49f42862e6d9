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
from aap.query import (
    cells,
    funnel,
    guard,
    lifecycle,
    paths,
    published,
    retention,
    sandbox,
    sql,
    stickiness,
    trends,
)
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
from aap.store.tiers import tier_read_failed
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
                on_personal_read: Callable[[dict[str, Any]], object] | None = None,
                max_cells: int = 100_000, sql_limits: sandbox.Limits | None = None,
                sql_idle_workers: int = 2) -> dict[str, Any]:
    """The Python API: run one insight on a warehouse (the process that owns it).

    Below role privacy, an insight that reads a personal field is refused (403
    ``personal_data``, :mod:`aap.query.guard`). ``on_personal_read`` is called (for the
    audit log) after a query at role privacy or admin that read personal data: for the
    ``sql`` kind with the columns its plan read, the rows returned and the query's
    SHA-256 (its text may name a person, so it is not recorded); for other kinds with the
    personal fields it named (never the filter values).

    Limits: an insight whose answer could have more than ``max_cells`` cells is refused
    before it runs (:mod:`aap.query.cells`); ``timeout_s`` stops it (see :class:`Deadline`);
    ``sql`` runs in a worker process with ``sql_limits`` (:mod:`aap.query.sandbox`)."""
    q = doc if isinstance(doc, (Trends, Funnel, Retention, Paths, Stickiness, Lifecycle, SQL)) \
        else parse_insight(doc)
    now = now or datetime.now(UTC)
    fields = guard.check(q, role, cohort)
    if warehouse.published_only:  # a query node: persons, orders… are not published
        published.check(q, cohort)
    cells.check(q, now, max_cells)
    snap = (lambda: snapshot(warehouse)) if use_cache else (lambda: plain_snapshot(warehouse))
    with (open_snapshot(warehouse) if use_cache else _plain(warehouse)) as (cur, views):
        ctx = Context(cur=cur, now=now, cohort=cohort, role=role,
                      snapshot=snap, daily=views.daily, cached_files=views.cached_files)
        if isinstance(q, SQL):
            result = sql.run(ctx, q, max_rows=sql_max_rows, max_seconds=timeout_s,
                             limits=sql_limits, idle_workers=sql_idle_workers)
            _note_sql_read(q, role, result, on_personal_read)
            return result
        answer = _run_with_deadline(ctx, q, timeout_s)
        nested = guard.result_fields(answer)
        guard.refuse(role, nested)
        fields = fields + nested
        if fields and on_personal_read is not None:
            on_personal_read({"kind": answer.get("kind", ""), "role": role, "fields": fields})
        return answer


def _note_sql_read(q: SQL, role: str, result: dict[str, Any],
                   on_personal_read: Callable[[dict[str, Any]], object] | None) -> None:
    """Takes the personal columns out of an ``sql`` result and tells ``on_personal_read``."""
    columns = result.pop("personal_columns", [])
    if columns and on_personal_read is not None:
        on_personal_read({"kind": "sql", "role": role, "columns": columns,
                          "rows": len(result["rows"]),
                          "query_sha256": hashlib.sha256(q.query.encode()).hexdigest()})


def _run_with_deadline(ctx: Context, q: Any, timeout_s: float) -> dict[str, Any]:
    with Deadline(timeout_s, ctx.cur) as deadline:
        answer: dict[str, Any] | None = None
        try:
            answer = RUNNERS[type(q)](ctx, q)
        except duckdb.InterruptException:
            pass
        except (duckdb.InvalidInputException, duckdb.ConversionException,
                duckdb.OutOfRangeException) as exc:
            if tier_read_failed(exc):  # the files, not the insight: answered as such
                raise
            # a value of the document the engine refuses (a regex that does not
            # compile, a number out of range): the client's error. Its text may quote
            # stored values, so only its kind is returned.
            if not deadline.passed:
                raise BadRequest(f"the insight has a value the engine cannot use"
                                 f" ({type(exc).__name__}): check its filters",
                                 code="invalid_value") from None
        if deadline.passed:
            raise BadRequest(f"the insight ran over the time limit of {timeout_s:g} s",
                             code="timeout")
        if answer is None:  # interrupted from elsewhere (the core is stopping)
            raise BadRequest("the insight was interrupted", code="interrupted")
    return answer


class Deadline:
    """Interrupts a cursor at the deadline and then again every 50 ms until the insight
    stops. An insight runs several statements (and Python between them); DuckDB's
    interrupt only stops the statement running at that instant, so one interrupt
    could fall between two statements and the next would run to its end."""

    active: set[Deadline] = set()
    lock = threading.Lock()

    def __init__(self, seconds: float, cur: duckdb.DuckDBPyConnection) -> None:
        self.seconds = seconds
        self.cur = cur
        self.done = threading.Event()
        self.wake = threading.Event()
        self.passed = False
        self.thread = threading.Thread(target=self._watch, name="aap-query-deadline",
                                       daemon=True)

    @classmethod
    def expire_all(cls) -> None:
        """Bring every running insight's deadline to now (the server is stopping)."""
        with cls.lock:
            for d in cls.active:
                d.wake.set()

    def _watch(self) -> None:
        self.wake.wait(self.seconds)
        if self.done.is_set():
            return
        self.passed = True
        while True:
            self.cur.interrupt()
            if self.done.wait(0.05):
                return

    def __enter__(self) -> Deadline:
        with Deadline.lock:
            Deadline.active.add(self)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with Deadline.lock:
            Deadline.active.discard(self)
        self.done.set()
        self.wake.set()
        self.thread.join()
