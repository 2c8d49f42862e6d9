"""The ``sql`` kind: read-only SQL for analysts on the documented views.

1. The text must be exactly one SELECT (a set operation of SELECTs and CTEs included),
   checked with a real SQL parser (sqlglot, DuckDB dialect), reading only the views
   ``events``, ``persons``, ``sessions``, ``orders``, ``order_items`` and ``products``
   (and its own CTEs).
2. It runs in a separate in-memory DuckDB connection made for the query, with
   ``enable_external_access=false`` (no files, no extensions, no network) and
   ``lock_configuration=true``, with its own memory limit. The views are streamed into
   it as Arrow from a snapshot of the warehouse, holding only the columns the role may
   see: below role ``privacy`` the personal columns are left out.
3. A time limit (the connection is interrupted) and a row limit (``truncated`` says the
   answer was cut).
"""

from __future__ import annotations

import datetime as dt
import decimal
import threading
import uuid
from contextlib import ExitStack
from typing import Any

import duckdb
import sqlglot
from sqlglot import exp

from aap.errors import BadRequest, Forbidden
from aap.query.common import Context
from aap.query.models import SQL
from aap.store.schema import EVENT_COLUMNS

ROLES = ("viewer", "analyst", "privacy", "admin")

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
    "events": frozenset({"person_id", "session_id", "properties", "city", "region"}),
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


def personal_columns(query: str, role: str) -> list[str]:
    """The personal columns (``view.column``) a query reads — named anywhere in it, or
    through ``*`` outside ``count(*)`` — for the audit log; none below role privacy, which
    does not see them."""
    if ROLES.index(role) < ROLES.index("privacy"):
        return []
    stmt, used = check(query)
    names = {c.name.lower() for c in stmt.find_all(exp.Column)}
    star = any(not isinstance(s.parent, exp.Count) for s in stmt.find_all(exp.Star))
    return sorted(f"{v}.{c}" for v in used for c in PERSONAL[v] if star or c in names)


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else None
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    return str(v)


def run(ctx: Context, q: SQL, *, max_rows: int = 100_000, max_seconds: float = 300.0
        ) -> dict[str, Any]:
    if ROLES.index(ctx.role) < ROLES.index("analyst"):
        raise Forbidden("the sql kind needs role analyst or above", code="role_too_low")
    _, used = check(q.query)
    limit = min(q.limit, max_rows)
    sandbox = duckdb.connect(":memory:", config={
        "enable_external_access": False, "threads": ctx.sandbox_threads,
        "memory_limit": ctx.sandbox_memory, "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    })
    timer: threading.Timer | None = None
    readers: list[Any] = []
    with ExitStack() as stack:
        try:
            for view, refs in used.items():
                real, _ = VIEWS[view]
                cols = ", ".join(f'"{c}"' for c in visible_columns(view, ctx.role))
                cur = stack.enter_context(ctx.snapshot()) if ctx.snapshot else ctx.cur
                rel = cur.sql(f"SELECT {cols} FROM {real}")
                if refs > 1 or ctx.snapshot is None:
                    data: Any = rel.to_arrow_table()
                else:
                    data = rel.to_arrow_reader(100_000)
                    readers.append(data)
                sandbox.register(view, data)
            sandbox.execute("SET lock_configuration = true")
            seconds = min(q.timeout_s, max_seconds)
            timer = threading.Timer(seconds, sandbox.interrupt)
            timer.start()
            res = sandbox.execute(q.query)
            columns = [d[0] for d in res.description or []]
            rows = res.fetchmany(limit + 1)
        except duckdb.InterruptException:
            raise BadRequest(f"the query ran over its time limit of {seconds:g} s",
                             code="timeout") from None
        except duckdb.BinderException as exc:
            msg = str(exc).splitlines()[0]
            hidden = sorted({c for v in used for c in PERSONAL[v]
                             if c not in visible_columns(v, ctx.role) and c in q.query})
            if hidden:
                msg += f" (personal columns {', '.join(hidden)} need role privacy)"
            raise BadRequest(msg, code="bad_query") from None
        except duckdb.Error as exc:
            raise BadRequest(str(exc).splitlines()[0], code="bad_query") from None
        finally:
            if timer is not None:
                timer.cancel()
            sandbox.close()
            for r in readers:
                r.close()
    truncated = len(rows) > limit
    return {"kind": "sql", "columns": columns,
            "rows": [[_jsonable(v) for v in r] for r in rows[:limit]],
            "truncated": truncated}
