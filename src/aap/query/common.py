"""What every insight compiler shares: the query context, date ranges and calendar
buckets in a time zone, bound parameters, filters and the base relation of events.

Timestamps are stored as naive UTC. A range is turned into UTC bounds in Python (so the
engine filters the stored column directly and can skip row groups), and buckets are
computed on the local wall-clock time ``timezone(tz, timezone('UTC', timestamp))``:
calendar hours, days, ISO weeks (Monday) and months of the query's time zone.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import duckdb

from aap.errors import BadRequest, ServiceUnavailable
from aap.query.models import Common, Filter
from aap.store.schema import EVENT_COLUMNS
from aap.store.tiers import tier_read_failed

MAX_BUCKETS = 5000
MIN_YEAR, MAX_YEAR = 1970, 9000
"""The years a date range may reach."""
EVENT_COLUMN_TYPES = {n: t for n, t, _ in EVENT_COLUMNS if n != "properties"}


@dataclass
class CohortDef:
    """A saved cohort, as the compiler needs it."""

    id: int
    name: str
    id_keys: list[int] | None = None
    event: str | None = None
    min_count: int = 1
    days: int = 30
    person_filters: list[Filter] = field(default_factory=list)


@dataclass
class Context:
    cur: duckdb.DuckDBPyConnection
    """A cursor inside a snapshot of the warehouse (``Warehouse.snapshot()``)."""
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    cohort: Callable[[int], CohortDef] | None = None
    role: str = "analyst"
    sandbox_threads: int = 2
    snapshot: Callable[[], Any] | None = None
    """Opens further snapshots (the ``sql`` kind streams each view from its own)."""
    daily: bool = False
    """``events_daily`` (the query cache's rollup, :mod:`aap.query.rollup`) is there."""
    cached_files: list[int] | None = None
    """See :class:`aap.query.snapshot.Views`."""


# -- time --

@functools.cache
def known_zones() -> frozenset[str]:
    """Time zones both Python (bucket bounds) and DuckDB's ICU (bucketing) know: the IANA
    names, without the files of the zone database that are not zones (``posixrules``,
    ``localtime``, ``right/…``, ``posix/…``)."""
    con = duckdb.connect()
    try:
        icu = {r[0] for r in con.execute("SELECT name FROM pg_timezone_names()").fetchall()}
    finally:
        con.close()
    return frozenset(available_timezones() & icu)


def zone(name: str) -> ZoneInfo | None:
    """None for UTC."""
    if name in ("UTC", "Etc/UTC", "utc"):
        return None
    if not re.fullmatch(r"[A-Za-z0-9_+\-/]{1,64}", name) or name not in known_zones():
        raise BadRequest(f"unknown time zone {name[:64]!r} (use an IANA name such as "
                         "Europe/Berlin)", code="invalid_timezone")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(f"unknown time zone {name!r} (use an IANA name such as "
                         "Europe/Berlin)", code="invalid_timezone") from None


def to_utc(local: datetime, tz: ZoneInfo | None) -> datetime:
    if tz is None:
        return local
    return local.replace(tzinfo=tz).astimezone(UTC).replace(tzinfo=None)


def to_local(utc: datetime, tz: ZoneInfo | None) -> datetime:
    """Naive UTC (or aware) → naive local wall-clock time."""
    if utc.tzinfo is None:
        utc = utc.replace(tzinfo=UTC)
    if tz is None:
        return utc.astimezone(UTC).replace(tzinfo=None)
    return utc.astimezone(tz).replace(tzinfo=None)


_RELATIVE = re.compile(r"^-(\d{1,5})([hdwmy])$")


def _add_months(d: date, n: int) -> date:
    m = d.year * 12 + d.month - 1 + n
    return date(m // 12, m % 12 + 1, 1)


def parse_point(value: str, now_local: datetime, *, end: bool) -> datetime:
    """A range bound as a naive local datetime. Dates are whole days: a ``date_to`` date
    includes that day. Out of the calendar (``-99999y``, ``9999-12-31`` as an end) → 400."""
    try:
        return _parse_point(value, now_local, end=end)
    except (OverflowError, ValueError):
        raise BadRequest(f"{value[:40]!r} is out of range: dates must be between 1970 and 9000",
                         code="invalid_date") from None


def _parse_point(value: str, now_local: datetime, *, end: bool) -> datetime:
    v = value.strip()
    today = now_local.date()
    day: date | None = None
    if v in ("today", "now") and not end:
        day = today
    elif v == "now":
        return now_local
    elif v == "today":
        day = today
    elif v == "yesterday":
        day = today - timedelta(days=1)
    elif m := _RELATIVE.match(v):
        n, unit = int(m.group(1)), m.group(2)
        if unit == "h":
            return now_local.replace(minute=0, second=0, microsecond=0) - timedelta(hours=n)
        if unit == "d":
            day = today - timedelta(days=n)
        elif unit == "w":
            day = today - timedelta(weeks=n)
        elif unit == "m":
            day = _add_months(today, -n).replace(day=min(today.day, 28))
        else:
            day = today.replace(year=today.year - n, day=min(today.day, 28))
    else:
        try:
            if len(v) == 10:
                day = date.fromisoformat(v)
            else:
                dt = datetime.fromisoformat(v)
                if dt.tzinfo is not None:
                    raise BadRequest(f"{value!r}: give a local time without an offset; the "
                                     "query's `timezone` says where it is", code="invalid_date")
                return dt
        except ValueError:
            raise BadRequest(f"{value!r} is not a date: use YYYY-MM-DD, an ISO datetime, "
                             "today, yesterday or a relative -30d / -12h / -4w / -3m / -1y",
                             code="invalid_date") from None
    assert day is not None
    start = datetime(day.year, day.month, day.day)
    return start + timedelta(days=1) if end else start


@dataclass
class Range:
    tz: ZoneInfo | None
    tzname: str
    start: datetime
    end: datetime
    """Local wall-clock bounds, ``end`` exclusive."""

    @property
    def start_utc(self) -> datetime:
        return to_utc(self.start, self.tz)

    @property
    def end_utc(self) -> datetime:
        return to_utc(self.end, self.tz)

    def shifted_back(self) -> Range:
        """The previous period of the same length (for ``compare``)."""
        span = self.end - self.start
        try:
            start = self.start - span
        except OverflowError:
            start = datetime.min
        if start.year < 1970:
            raise BadRequest("the previous period of this range starts before 1970: compare "
                             "a shorter range", code="invalid_date")
        return Range(self.tz, self.tzname, start, self.start)


def date_range(q: Common, now: datetime, *, default_from: str = "-7d") -> Range:
    tz = zone(q.timezone)
    now_local = to_local(now, tz)
    start = parse_point(q.date_from or default_from, now_local, end=False)
    end = parse_point(q.date_to or "today", now_local, end=True)
    if end <= start:
        raise BadRequest(f"date_to ({q.date_to}) is not after date_from ({q.date_from})",
                         code="invalid_date")
    in_calendar(start, end)
    return Range(tz, "UTC" if tz is None else q.timezone, start, end)


def in_calendar(start: datetime, end: datetime) -> None:
    """A 400 unless a range's bounds fall between ``MIN_YEAR`` and ``MAX_YEAR`` (so that
    stepping buckets, periods or a comparison from them stays inside the calendar)."""
    if start.year < MIN_YEAR or end.year > MAX_YEAR:
        raise BadRequest(f"dates must be between {MIN_YEAR} and {MAX_YEAR}", code="invalid_date")


def trunc(dt: datetime, interval: str) -> datetime:
    if interval == "hour":
        return dt.replace(minute=0, second=0, microsecond=0)
    d = datetime(dt.year, dt.month, dt.day)
    if interval == "day":
        return d
    if interval == "week":
        return d - timedelta(days=d.weekday())
    return d.replace(day=1)


def step(dt: datetime, interval: str, n: int = 1) -> datetime:
    if interval == "hour":
        return dt + timedelta(hours=n)
    if interval == "day":
        return dt + timedelta(days=n)
    if interval == "week":
        return dt + timedelta(weeks=n)
    m = _add_months(dt.date(), n)
    return datetime(m.year, m.month, 1)


def buckets(rng: Range, interval: str) -> list[datetime]:
    out = []
    b = trunc(rng.start, interval)
    while b < rng.end:
        out.append(b)
        if len(out) > MAX_BUCKETS:
            raise BadRequest(f"more than {MAX_BUCKETS} {interval}s in the range: use a longer "
                             "interval or a shorter range", code="too_many_buckets")
        b = step(b, interval)
    return out


def label(b: datetime, interval: str) -> str:
    return b.isoformat() if interval == "hour" else b.date().isoformat()


def periods_between(a: datetime, b: datetime, interval: str) -> int:
    if interval == "hour":
        return int((b - a).total_seconds() // 3600)
    if interval == "day":
        return (b - a).days
    if interval == "week":
        return (b - a).days // 7
    return (b.year - a.year) * 12 + b.month - a.month


def local_ts(rng: Range, col: str = "e.timestamp") -> str:
    if rng.tz is None:
        return col
    return f"timezone('{rng.tzname}', timezone('UTC', {col}))"


def bucket_sql(rng: Range, interval: str, col: str = "e.timestamp") -> str:
    return f"date_trunc('{interval}', {local_ts(rng, col)})"


# -- SQL with named parameters --

class SQLBuilder:
    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def p(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return "$" + name

    def run(self, ctx: Context, sql: str) -> list[tuple[Any, ...]]:
        return self._run(ctx, sql, lambda res: res.fetchall())

    def run_numpy(self, ctx: Context, sql: str) -> dict[str, Any]:
        """The result as numpy arrays, one per column (through Arrow, the fastest way out
        of DuckDB; no nulls expected: timestamps come as int64 microseconds)."""
        def fetch(rel: Any) -> dict[str, Any]:
            table = rel.to_arrow_table()
            return {name: table.column(name).to_numpy() for name in table.column_names}

        return self._run(ctx, sql, fetch, relation=True)

    def _run(self, ctx: Context, sql: str, fetch: Callable[[Any], Any], *,
             relation: bool = False) -> Any:
        # only the parameters this statement uses (DuckDB rejects others)
        params = {k: self.params[k] for k in set(_PARAM.findall(sql)) if k in self.params}
        try:
            if relation:
                return fetch(ctx.cur.sql(sql, params=params))
            return fetch(ctx.cur.execute(sql, params))
        except duckdb.InvalidInputException as exc:
            if tier_read_failed(exc):  # the files, not the query: answered as such
                raise
            raise BadRequest(f"the query cannot run on this data: {_first_line(exc)}",
                             code="bad_query") from None
        except duckdb.ConversionException as exc:
            raise BadRequest(f"a value does not convert: {_first_line(exc)}",
                             code="bad_query") from None
        except duckdb.OutOfMemoryException:
            raise ServiceUnavailable("the query needs more memory than the warehouse may use"
                                     " (AAP_WAREHOUSE_MEMORY)", code="out_of_memory") from None


_PARAM = re.compile(r"\$(p\d+)\b")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def json_path(name: str) -> str:
    if any(c in name for c in '"\\\x00\n\r'):
        raise BadRequest(f"property name {name!r} may not contain quotes, backslashes or "
                         "control characters", code="invalid_property")
    return "'$.\"" + name.replace("'", "''") + "\"'"


def property_sql(name: str, kind: str = "event", *, alias: str = "e") -> str:
    """A property as SQL text (VARCHAR): an event column, a key of ``properties``, or a key
    of the person's ``traits`` (``kind="person"``, needs ``persons p``)."""
    if kind == "person":
        return f"json_extract_string(p.traits, {json_path(name)})"
    if name in EVENT_COLUMN_TYPES:
        col = f'{alias}."{name}"'
        return col if EVENT_COLUMN_TYPES[name] == "VARCHAR" else f"CAST({col} AS VARCHAR)"
    return f"json_extract_string({alias}.properties, {json_path(name)})"


def numeric_property_sql(name: str, alias: str = "e") -> str:
    if name in EVENT_COLUMN_TYPES:
        return f'TRY_CAST({alias}."{name}" AS DOUBLE)'
    return f"TRY_CAST(json_extract_string({alias}.properties, {json_path(name)}) AS DOUBLE)"


MAX_FILTER_NUMBER = 1e300
"""Numbers in filters: finite, and at most this in size (a 400-digit integer is no
property value; neither is 1e400, which JSON decoders read as infinity)."""


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)) and not abs(v) <= MAX_FILTER_NUMBER:
        raise BadRequest(f"filter value {str(v)[:40]}…: numbers must be finite and at most "
                         f"{MAX_FILTER_NUMBER:g} in size", code="invalid_filter")
    if isinstance(v, (str, int, float)):
        return str(v)
    raise BadRequest(f"filter value {str(v)[:80]!r} must be a string, number or boolean",
                     code="invalid_filter")


def _number(f: Filter) -> float:
    try:
        if isinstance(f.value, (bool, list, dict)):
            raise TypeError
        v = float(f.value)
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"filter {f.property} {f.operator}: value must be a number",
                         code="invalid_filter") from None
    if not abs(v) <= MAX_FILTER_NUMBER:
        raise BadRequest(f"filter {f.property} {f.operator}: numbers must be finite and at "
                         f"most {MAX_FILTER_NUMBER:g} in size", code="invalid_filter")
    return v


def filter_sql(b: SQLBuilder, f: Filter, alias: str = "e") -> str:
    expr = property_sql(f.property, f.type, alias=alias)
    op = f.operator
    if op == "is_set":
        return f"({expr} IS NOT NULL)"
    if op == "is_not_set":
        return f"({expr} IS NULL)"
    if op in ("gt", "gte", "lt", "lte"):
        sym = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
        num = (numeric_property_sql(f.property, alias) if f.type == "event"
               else f"TRY_CAST({expr} AS DOUBLE)")
        return f"({num} {sym} {b.p(_number(f))})"
    if op in ("in", "not_in") or (op in ("eq", "neq") and isinstance(f.value, list)):
        values = f.value if isinstance(f.value, list) else [f.value]
        if not values:
            raise BadRequest(f"filter {f.property} {op}: give at least one value",
                             code="invalid_filter")
        lst = b.p([_text(v) for v in values])
        if op in ("in", "eq"):
            return f"list_contains({lst}, {expr})"
        return f"({expr} IS NULL OR NOT list_contains({lst}, {expr}))"
    if f.value is None:
        if op in ("eq", "neq"):
            return f"({expr} IS {'NOT ' if op == 'neq' else ''}NULL)"
        raise BadRequest(f"filter {f.property} {op} needs a value", code="invalid_filter")
    v = b.p(_text(f.value))
    if op == "eq":
        return f"({expr} = {v})"
    if op == "neq":
        return f"({expr} IS DISTINCT FROM {v})"
    if op == "contains":
        return f"contains(lower({expr}), lower({v}))"
    if op == "not_contains":
        return f"({expr} IS NULL OR NOT contains(lower({expr}), lower({v})))"
    if op == "regex":
        return f"regexp_matches({expr}, {v})"
    raise BadRequest(f"unknown operator {op}", code="invalid_filter")  # pragma: no cover


def needs_persons(filters: Sequence[Filter]) -> bool:
    return any(f.type == "person" for f in filters)


def event_match_sql(b: SQLBuilder, event: str | None, filters: Sequence[Filter] = ()) -> str:
    parts = [] if event is None else [f"e.event = {b.p(event)}"]
    parts += [filter_sql(b, f) for f in filters]
    return " AND ".join(parts) or "true"


def cohort_sql(b: SQLBuilder, ctx: Context, cohort_id: int) -> str:
    """A subquery of the person ids (merges resolved) in a saved cohort."""
    if ctx.cohort is None:
        raise BadRequest("cohorts are not available here", code="no_cohorts")
    c = ctx.cohort(cohort_id)
    if c.id_keys is not None:
        return ("(SELECT DISTINCT coalesce(o.person_id, i.person_id) AS person_id"
                " FROM person_ids i LEFT JOIN person_overrides o ON o.old_person_id = i.person_id"
                f" WHERE list_contains({b.p(c.id_keys)}::BIGINT[], i.id_key))")
    parts = []
    if c.event is not None or not c.person_filters:
        since = ctx.now.astimezone(UTC).replace(tzinfo=None) - timedelta(days=c.days)
        ev = "" if c.event is None else f" AND e.event = {b.p(c.event)}"
        parts.append(f"SELECT e.person_id FROM events e WHERE e.timestamp >= {b.p(since)}{ev}"
                     f" GROUP BY e.person_id HAVING count(*) >= {b.p(c.min_count)}")
    if c.person_filters:
        where = " AND ".join(filter_sql(b, f) for f in c.person_filters)
        parts.append(f"SELECT p.person_id FROM persons p WHERE {where}")
    # a behavioural cohort is profiling: persons who objected (Art. 21) are never in it
    return (f"(SELECT person_id FROM ({' INTERSECT '.join(parts)})"
            f" WHERE person_id NOT IN ({OBJECTED}))")


OBJECTED = "SELECT person_id FROM person_flags WHERE flag = 'objected'"
"""Persons who objected to profiling (Art. 21). Every profiling feature (behavioural
cohorts today; segments and predictions when they come) must leave them out."""


def base_where(b: SQLBuilder, ctx: Context, q: Common, rng: Range | None,
               extra_filters: Sequence[Filter] = ()) -> str:
    """Conditions every event of an insight meets: in the range, the insight's filters,
    its cohort."""
    parts = []
    if rng is not None:
        parts.append(f"e.timestamp >= {b.p(rng.start_utc)} AND e.timestamp < {b.p(rng.end_utc)}")
    parts += [filter_sql(b, f) for f in (*q.filters, *extra_filters)]
    if q.cohort is not None:
        parts.append(f"e.person_id IN {cohort_sql(b, ctx, q.cohort)}")
    return " AND ".join(parts) or "true"


def from_events(q: Common, *extra: Sequence[Filter], breakdown_type: str = "event",
                table: str = "events") -> str:
    """``events e`` (or ``events_daily e``), joined to the person when a filter or the
    breakdown needs traits."""
    person = needs_persons(q.filters) or any(needs_persons(x) for x in extra) or \
        breakdown_type == "person"
    return (f"{table} e LEFT JOIN persons p ON p.person_id = e.person_id" if person
            else f"{table} e")
