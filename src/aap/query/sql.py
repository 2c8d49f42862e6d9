"""The ``sql`` kind: read-only SQL for analysts on the documented views.

1. The text must be exactly one SELECT (a set operation of SELECTs and CTEs included),
   checked with a real SQL parser (sqlglot, DuckDB dialect), reading only the views
   ``events``, ``persons``, ``sessions``, ``orders``, ``order_items`` and ``products``
   (and its own CTEs).
2. It runs in a worker process (:mod:`aap.query.sandbox`, with an OS memory limit), in
   an in-memory DuckDB connection made for the query, with
   ``enable_external_access=false`` (no files, no extensions, no network) and
   ``lock_configuration=true``. The views are streamed into it as Arrow from a snapshot
   of the warehouse, holding only the columns the role may see: below role ``privacy``
   the personal columns are left out (a query that names one is refused with 403
   ``personal_data``, :func:`refuse_hidden`). Each column arrives renamed
   ``view__column`` under a view that gives it its name back, so the plan DuckDB makes
   for the query says which columns of which view it reads (:func:`planned_columns`):
   at role privacy or above, the personal ones are audited.
3. A time limit (the worker interrupts itself, the core kills it a little later), a row
   limit (``truncated`` says the answer was cut) and a size limit of the answer.
"""

from __future__ import annotations

import json
import re
import threading
from contextlib import ExitStack
from typing import Any

import duckdb
import sqlglot
from sqlglot import exp

from aap.errors import BadRequest, Forbidden
from aap.query import guard, sandbox
from aap.query.common import Context
from aap.query.models import SQL
from aap.store.schema import EVENT_COLUMNS

ROLES = guard.ROLES

_NOT_RESTRICTED = ("person_id NOT IN (SELECT person_id FROM person_flags"
                   " WHERE flag = 'restricted')")
"""Persons restricted (Art. 18) leave every query; ``events`` and ``sessions`` do it
already."""

VIEWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "events": ("events", tuple(n for n, _, _ in EVENT_COLUMNS)),
    "persons": (f"persons WHERE {_NOT_RESTRICTED}",
                ("person_id", "first_seen", "last_seen", "identified", "traits")),
    "sessions": ("sessions", ("session_id", "person_id", "started_at", "ended_at", "events",
                              "views", "entry_path", "exit_path", "referrer_domain",
                              "utm_campaign")),
    "orders": (f"orders_resolved WHERE {_NOT_RESTRICTED}", ("order_id", "message_id", "source", "person_id",
                                   "session_id", "timestamp", "revenue", "currency", "items")),
    "order_items": ("order_items", ("order_id", "message_id", "product_id", "name", "category",
                                    "price", "quantity")),
    "products": ("products", ("product_id", "name", "category", "price", "first_seen",
                              "last_seen")),
}
PERSONAL: dict[str, frozenset[str]] = {
    "events": guard.PERSONAL_EVENT_COLUMNS | {"properties"},
    "persons": frozenset({"person_id", "traits"}),
    "sessions": frozenset({"session_id", "person_id"}),
    "orders": frozenset({"person_id", "session_id"}),
    "order_items": frozenset(),
    "products": frozenset(),
}
FORBIDDEN: tuple[type, ...] = tuple(
    getattr(exp, n) for n in ("Insert", "Update", "Delete", "Create", "Drop", "Alter", "Command",
                              "Pragma", "Set", "Copy", "Merge", "Use", "Attach", "Detach",
                              "Transaction", "Commit", "Rollback", "Into", "Describe", "Show")
    if hasattr(exp, n))


def visible_columns(view: str, role: str) -> tuple[str, ...]:
    cols = VIEWS[view][1]
    if ROLES.index(role) >= ROLES.index("privacy"):
        return cols
    return tuple(c for c in cols if c not in PERSONAL[view])


def check(query: str) -> tuple[exp.Expression, dict[str, int]]:
    """Parse and check; returns the statement and how often each view is read."""
    try:
        statements = [s for s in sqlglot.parse(query, read="duckdb") if s is not None]
    except sqlglot.errors.SqlglotError as exc:  # ParseError, and TokenError (`/* /* */`)
        raise BadRequest(f"the SQL does not parse: {(str(exc).splitlines() or [''])[0][:200]}",
                         code="invalid_sql") from None
    except RecursionError:
        raise BadRequest("the SQL is nested too deep to parse", code="invalid_sql") from None
    if len(statements) != 1:
        raise BadRequest(f"send exactly one SELECT statement (got {len(statements)})",
                         code="invalid_sql")
    (stmt,) = statements
    if not isinstance(stmt, (exp.Select, exp.SetOperation, exp.Subquery)) or \
            any(isinstance(n, FORBIDDEN) for n in stmt.walk()):
        raise BadRequest("only a read-only SELECT is allowed", code="not_a_select")
    ctes = {c.alias_or_name.lower() for c in stmt.find_all(exp.CTE)}
    used: dict[str, int] = {}
    for t in stmt.find_all(exp.Table):
        if not isinstance(t.this, exp.Identifier):
            raise BadRequest(f"table functions are not allowed ({t.this.sql('duckdb')[:60]})",
                             code="forbidden_table")
        name = t.name.lower()
        if t.args.get("db") or t.args.get("catalog"):
            raise BadRequest(f"read the views by their plain names, not {t.sql('duckdb')}",
                             code="forbidden_table")
        if name in ctes:
            continue
        if name not in VIEWS:
            raise BadRequest(f"unknown table {t.name!r}: the views are "
                             f"{', '.join(VIEWS)}", code="forbidden_table")
        used[name] = used.get(name, 0) + 1
    return stmt, used


_READ = re.compile(r'"?([a-z0-9_]+)__([a-z0-9_]*)"?')
"""A column of a view's data as the plan names it (``events__person_id``); ``events__``
is the view's row marker."""


def _sources(view: str, role: str) -> tuple[str, str]:
    """The SELECT list that streams a view's data into the sandbox (each column renamed
    ``view__column``, after a row marker ``view__`` that plans read for ``count(*)``),
    and the sandbox's view that gives the columns their names back."""
    cols = visible_columns(view, role)
    select = ", ".join([f'true AS "{view}__"', *(f'"{c}" AS "{view}__{c}"' for c in cols)])
    names = ", ".join(f'"{view}__{c}" AS "{c}"' for c in cols) or f'"{view}__"'
    return select, f'CREATE VIEW "{view}" AS SELECT {names} FROM "__aap_{view}"'


def plan_text(con: duckdb.DuckDBPyConnection, query: str) -> str:
    """DuckDB's optimized plan of ``query`` as JSON text; empty when it cannot be read."""
    try:
        text = "\n".join(str(r[-1]) for r in con.execute("EXPLAIN (FORMAT json) " + query)
                         .fetchall())
        json.loads(text)
    except duckdb.InterruptException:
        raise
    except (duckdb.Error, ValueError):
        text = ""
    return text


def personal_in_plan(text: str, used: dict[str, int]) -> list[str]:
    """The personal columns (``view.column``) a plan (:func:`plan_text`) reads: the
    columns of each view's data that the optimized plan scans (projected, filtered,
    packed into a struct, or selected by ``*`` or ``COLUMNS``), whatever the SQL's
    shape. When the plan cannot be read, every personal column of the views the query
    names (fail closed)."""
    read = {(v, c) for v, c in _READ.findall(text) if v in used}
    out = set()
    for view in used:
        if not text or "..." in text:  # unreadable or shortened: all of them
            out |= {f"{view}.{c}" for c in PERSONAL[view]}
        out |= {f"{view}.{c}" for v, c in read if v == view and c in PERSONAL[view]}
    return sorted(out)


def planned_columns(con: duckdb.DuckDBPyConnection, query: str, used: dict[str, int]
                    ) -> list[str]:
    """The personal columns the query reads, as DuckDB plans it on ``con``."""
    return personal_in_plan(plan_text(con, query), used)


def refuse_hidden(ctx: Context, query: str, used: dict[str, int], seconds: float) -> None:
    """Below role privacy, a query that failed to bind: plan it on empty views with every
    column, and when it binds there, refuse it (403 ``personal_data``) naming the
    personal columns that plan reads (all those of its views when the plan, on no data,
    shows none)."""
    con = duckdb.connect(":memory:", config={
        "enable_external_access": False, "threads": 1, "memory_limit": "64MB",
        "autoinstall_known_extensions": False, "autoload_known_extensions": False})
    timer = threading.Timer(seconds, con.interrupt)
    timer.start()
    try:
        for view in used:
            _, create = _sources(view, "admin")
            empty = ", ".join([f'NULL::BOOLEAN AS "{view}__"', *(
                f'NULL::{_TYPES.get((view, c), "VARCHAR")} AS "{view}__{c}"'
                for c in VIEWS[view][1])])
            con.execute(f'CREATE TABLE "__aap_{view}" AS SELECT {empty} WHERE false')
            con.execute(create)
        # on empty tables these would prune the scans whose columns are asked for
        con.execute("SET disabled_optimizers = 'empty_result_pullup,statistics_propagation'")
        con.execute("SET lock_configuration = true")
        try:
            con.execute("EXPLAIN " + query)
        except duckdb.Error:
            return
        columns = planned_columns(con, query, used) or sorted(
            f"{v}.{c}" for v in used for c in PERSONAL[v] - set(visible_columns(v, ctx.role)))
    except duckdb.InterruptException:
        return
    finally:
        timer.cancel()
        con.close()
    guard.refuse(ctx.role, columns, "this SQL")


_TYPES: dict[tuple[str, str], str] = {
    **{("events", n): t for n, t, _ in EVENT_COLUMNS},
    ("persons", "person_id"): "BIGINT", ("persons", "traits"): "JSON",
    ("persons", "first_seen"): "TIMESTAMP", ("persons", "last_seen"): "TIMESTAMP",
    ("persons", "identified"): "BOOLEAN",
    ("sessions", "person_id"): "BIGINT", ("sessions", "started_at"): "TIMESTAMP",
    ("sessions", "ended_at"): "TIMESTAMP", ("sessions", "events"): "BIGINT",
    ("sessions", "views"): "BIGINT",
    ("orders", "person_id"): "BIGINT", ("orders", "timestamp"): "TIMESTAMP",
    ("orders", "revenue"): "DOUBLE",
}
"""Column types for planning on empty views (VARCHAR where not listed: a plan's columns
do not depend on them)."""


def column_type(view: str, column: str) -> str | None:
    """A view's column's DuckDB type where it is listed above (``None`` where not)."""
    return _TYPES.get((view, column))


def run(ctx: Context, q: SQL, *, max_rows: int = 100_000, max_seconds: float = 300.0,
        limits: sandbox.Limits | None = None, idle_workers: int = 2) -> dict[str, Any]:
    """Run in a worker process (:mod:`aap.query.sandbox`): its own memory limit, killed
    at the deadline; the views it names are streamed to it from warehouse snapshots."""
    if ROLES.index(ctx.role) < ROLES.index("analyst"):
        raise Forbidden("the sql kind needs role analyst or above", code="role_too_low")
    _, used = check(q.query)
    limits = limits or sandbox.Limits(threads=ctx.sandbox_threads)
    seconds = min(q.timeout_s, max_seconds)
    plan = guard.may_read_personal(ctx.role)
    with ExitStack() as stack:
        views: list[tuple[str, Any, bool, str]] = []
        cursors: list[Any] = []
        for view, refs in used.items():
            real, _ = VIEWS[view]
            select, create = _sources(view, ctx.role)
            cur = stack.enter_context(ctx.snapshot()) if ctx.snapshot else ctx.cur
            rel = cur.sql(f"SELECT {select} FROM {real}")
            data: Any = (rel.to_arrow_table().to_reader() if ctx.snapshot is None
                         else rel.to_arrow_reader(100_000))
            views.append((f"__aap_{view}", data, refs > 1, create))
            cursors.append(cur)
        try:
            out = sandbox.run(q.query, views, limit=min(q.limit, max_rows),
                              timeout_s=seconds, limits=limits, idle=idle_workers,
                              interrupt=cursors if ctx.snapshot else (), plan=plan)
        except sandbox.SandboxFailed as exc:
            for _, data, _, _ in views:  # unread batches hold the snapshot's cursor open
                data.close()
            if exc.kind != "binder":
                raise sandbox.failed(exc, timeout_s=seconds, limits=limits) from None
            if not plan:
                refuse_hidden(ctx, q.query, used, seconds)
            raise BadRequest(exc.message, code="bad_query") from None
    text = out.pop("plan", None)
    out["personal_columns"] = personal_in_plan(text or "", used) if plan else []
    return out
