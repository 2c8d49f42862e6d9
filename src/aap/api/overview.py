"""The overview page's answers (Plausible-like traffic figures, top lists, current
visitors) and the consent aggregates (``GET /consent/stats``).

Everything here is an aggregate: counts of pseudonymous person keys, sessions and events,
and counts of consent statements. No id leaves. Traffic reads the ``events`` analysts
see (:mod:`aap.query.snapshot`), under the query deadline; consent reads the ledger
(:mod:`aap.privacy.consent`) read-only.

SQL shape: the range's events are read once into a temporary table (only the columns
needed, event filters applied), sessions are built from it once, and each group of
panels (figures, series, event breakdowns, session breakdowns) is one statement over
those two; the breakdowns use ``GROUPING SETS`` so that all top lists of a kind are one
pass. A request may name the ``panels`` it wants (the page asks for each in parallel):
then only those are computed, and without a filter on sessions each is read on its own,
leanly (:mod:`aap.api.overview_panels`), with the same numbers.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec

from aap import errors
from aap.api.overview_panels import Lean, first, last
from aap.datadir import DataDir
from aap.privacy.consent import ConsentLedger
from aap.privacy.purposes import Registry
from aap.query.runner import Deadline
from aap.query.snapshot import Views, open_snapshot, plain_snapshot
from aap.sources import Sources
from aap.store.meta import meta_url
from aap.store.warehouse import Warehouse

MAX_DAYS = 3660
"""Longest range taken (days)."""
MAX_VALUE = 1000
"""Longest filter value (characters)."""
PAGE_TYPES = "type IN ('page', 'screen')"

EVENT_FIELDS = {"page": "path", "country": "country", "region": "region",
                "device": "device_type", "browser": "browser", "os": "os", "source": "source"}
"""Filters on each event (field → column of ``events``)."""
SESSION_FIELDS = {"entry_page": "entry", "exit_page": "exit", "referrer": "ref",
                  "utm_source": "utm_source", "utm_medium": "utm_medium",
                  "utm_campaign": "utm_campaign"}
"""Filters on the session an event belongs to (field → column of the sessions built)."""
FIELDS = (*EVENT_FIELDS, *SESSION_FIELDS)

EVENT_BREAKDOWNS = {"pages": "path", "countries": "country", "regions": "region",
                    "devices": "device_type", "browsers": "browser", "os": "os"}
SESSION_BREAKDOWNS = {"entry_pages": "entry", "exit_pages": "exit", "referrers": "ref",
                      "utm_campaigns": "campaign"}
BREAKDOWNS = (*EVENT_BREAKDOWNS, *SESSION_BREAKDOWNS)
PANELS = ("figures", "series", *BREAKDOWNS, "consent")
"""What ``panels`` may name: the figures, the daily series, each top list, consent."""


class Filter(msgspec.Struct, forbid_unknown_fields=True):
    field: str
    value: str


class OverviewRequest(msgspec.Struct, forbid_unknown_fields=True, rename={"from_": "from"}):
    from_: str | None = None
    to: str | None = None
    compare: bool = False
    filters: list[Filter] = []
    limit: int = 10
    panels: list[str] | None = None


class Range(msgspec.Struct, frozen=True):
    first: date
    last: date
    """Inclusive."""

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, datetime.min.time())

    @property
    def end(self) -> datetime:
        return datetime.combine(self.last + timedelta(days=1), datetime.min.time())

    def previous(self) -> Range:
        return Range(self.first - timedelta(days=self.days), self.first - timedelta(days=1))

    def labels(self) -> list[str]:
        return [(self.first + timedelta(days=i)).isoformat() for i in range(self.days)]


def _day(value: str | None, name: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value[:10]) if len(value) == 10 else _bad_day(value, name)
    except ValueError:
        return _bad_day(value, name)


def _bad_day(value: str, name: str) -> date:
    raise errors.BadRequest(f"{name!r} must be an ISO date (YYYY-MM-DD)",
                            {"parameter": name, "value": value[:40]}, code="invalid_date")


def parse_range(first: str | None, last: str | None, today: date | None = None) -> Range:
    """The inclusive day range of ``from`` and ``to`` (default: the last 30 days)."""
    today = today or datetime.now(UTC).date()
    end = _day(last, "to") or today
    start = _day(first, "from") or end - timedelta(days=29)
    if start > end:
        raise errors.BadRequest("'from' is after 'to'", code="invalid_range")
    if (end - start).days >= MAX_DAYS:
        raise errors.BadRequest(f"the range is longer than {MAX_DAYS} days", code="invalid_range")
    return Range(start, end)


class Overview:
    """What the overview and consent routes answer, on a warehouse and a data dir."""

    def __init__(self, data_dir: Path, warehouse: Warehouse, *, use_cache: bool,
                 timeout_s: float) -> None:
        self.paths = DataDir(data_dir)
        self.sources = Sources(data_dir)
        self.data_dir = data_dir
        self.warehouse = warehouse
        self.use_cache = use_cache
        self.timeout_s = timeout_s
        self._cached_names: dict[str, str] = {}
        self._names_at = -10.0
        self._consent: ConsentLedger | None = None

    # -- shared --

    def _source_id(self, name: str | None) -> str | None:
        if name is None or name == "":
            return None
        src = self.sources.by_name(name[:200])
        if src is None:
            raise errors.BadRequest("no source of that name", {"source": name[:64]},
                                    code="unknown_source")
        return src.id

    def _names(self) -> dict[str, str]:
        return {s.id: s.name for s in self.sources.list()}

    def source_names(self, ids: Collection[str] = ()) -> dict[str, str]:
        """Source id → name (for the live feed): read again every 5 s, and at once when
        one of ``ids`` is not known yet (a source made since, sending already)."""
        now = time.monotonic()
        if now - self._names_at > 5 or any(i not in self._cached_names for i in ids):
            self._cached_names, self._names_at = self._names(), now
        return self._cached_names

    @contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._snapshot() as (cur, _):
            yield cur

    @contextmanager
    def _snapshot(self) -> Iterator[tuple[duckdb.DuckDBPyConnection, Views]]:
        """A cursor with ``events``, and which of the cache's views are there too."""
        if self.use_cache:
            with open_snapshot(self.warehouse) as (cur, views):
                yield cur, views
        else:
            with plain_snapshot(self.warehouse) as cur:
                yield cur, Views()

    @contextmanager
    def _deadline(self, cur: duckdb.DuckDBPyConnection) -> Iterator[None]:
        with Deadline(self.timeout_s, cur) as deadline:
            try:
                yield
            except duckdb.InterruptException:
                if deadline.passed:
                    raise errors.BadRequest(
                        f"the overview ran over the time limit of {self.timeout_s:g} s",
                        code="timeout") from None
                raise errors.BadRequest("the overview was interrupted",
                                        code="interrupted") from None

    # -- traffic --

    def overview(self, body: bytes) -> dict[str, Any]:
        """All panels (``panels`` absent) or those named; without a filter on sessions,
        named panels are each read on their own, leanly (:mod:`aap.api.overview_panels`)."""
        req = parse_overview(body)
        panels = set(PANELS if req.panels is None else req.panels)
        rng = parse_range(req.from_, req.to)
        ids = {s.name: s.id for s in self.sources.list()}
        filters = [(f.field, ids.get(f.value, "\0" + f.value) if f.field == "source"
                    else f.value) for f in req.filters]
        source = next((v for f, v in filters if f == "source"), None)
        out: dict[str, Any] = {"from": rng.first.isoformat(), "to": rng.last.isoformat()}
        with self._snapshot() as (cur, views), self._deadline(cur):
            traffic = Traffic(cur, filters)
            prev: dict[str, Any] = {}
            # the previous period: its figures and series only
            ranges = [(out, rng, panels)] + ([(prev, rng.previous(), panels - {*BREAKDOWNS})]
                                              if req.compare else [])
            ranges = [(into, r, p & {"figures", "series", *BREAKDOWNS}) for into, r, p in ranges]
            if req.panels is None or traffic.session_filters:
                try:
                    for into, r, asked in ranges:
                        if asked:
                            traffic.load(r)
                            traffic.answer(into, r, asked, req.limit)
                finally:
                    traffic.drop()
            else:
                lean = Lean(cur, traffic.event_filters, daily=views.daily,
                            sessions=views.sessions)
                for into, r, asked in ranges:
                    _lean_answer(lean, into, r, asked, req.limit)
            for k in ("figures", "series"):
                if k in prev:
                    out[k]["previous"] = prev[k]
            if "consent" in panels:
                shares, _ = self._consent_shares(cur, rng, source)
        if "consent" in panels:
            out["consent"] = self._purposes(rng, source, shares)
        return out

    def current(self) -> dict[str, Any]:
        since = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
        with self._cursor() as cur, self._deadline(cur):
            row = cur.execute("SELECT count(DISTINCT person_id) FROM events"
                              " WHERE timestamp >= ?", [since]).fetchone()
        return {"visitors": row[0] if row else 0}

    # -- consent --

    def consent_stats(self, args: dict[str, str]) -> dict[str, Any]:
        rng = parse_range(args.get("from"), args.get("to"))
        source = self._source_id(args.get("source"))
        with self._cursor() as cur, self._deadline(cur):
            shares, gpc = self._consent_shares(cur, rng, source)
        return {"from": rng.first.isoformat(), "to": rng.last.isoformat(),
                "purposes": self._purposes(rng, source, shares),
                "by_day": self._ledger_by_day(rng, source), "gpc_share": gpc}

    def _purposes(self, rng: Range, source: str | None,
                  shares: dict[str, tuple[float, float]]) -> list[dict[str, Any]]:
        totals: dict[str, list[int]] = {}
        for row in self._ledger_by_day(rng, source):
            t = totals.setdefault(row["purpose"], [0, 0, 0])
            t[0] += row["granted"]
            t[1] += row["refused"]
            t[2] += row["withdrawn"]
        purposes = list(Registry.for_data_dir(self.data_dir).purposes)
        purposes += sorted(p for p in totals if p not in purposes)
        return [{"purpose": p, "granted": totals.get(p, [0, 0, 0])[0],
                 "refused": totals.get(p, [0, 0, 0])[1],
                 "withdrawn": totals.get(p, [0, 0, 0])[2],
                 "visitors_with_consent_share": shares.get(p, (0.0, 0.0))[0],
                 "events_with_consent_share": shares.get(p, (0.0, 0.0))[1]}
                for p in purposes]

    def _consent_shares(self, cur: duckdb.DuckDBPyConnection, rng: Range, source: str | None
                        ) -> tuple[dict[str, tuple[float, float]], float]:
        """Purpose → (share of visitors with an event that may be used for it, share of
        events), and the share of events sent with GPC, over the range's events."""
        purposes = list(Registry.for_data_dir(self.data_dir).purposes)
        # one pass grouped by person (cheaper than a distinct count per purpose)
        per_person = "".join(
            f", count(*) FILTER (WHERE list_contains(purposes, ${i + 4})) AS p{i}"
            for i in range(len(purposes)))
        totals = "".join(f", count(*) FILTER (WHERE p{i} > 0), sum(p{i})"
                         for i in range(len(purposes)))
        where = "timestamp >= $1 AND timestamp < $2 AND ($3::VARCHAR IS NULL OR source = $3)"
        row = cur.execute(
            f"SELECT count(*), sum(n), sum(g){totals} FROM ("
            f"SELECT person_id, count(*) AS n, count(*) FILTER (WHERE gpc) AS g{per_person}"
            f" FROM events WHERE {where} GROUP BY person_id)",
            [rng.start, rng.end, source, *purposes]).fetchone()
        assert row is not None
        persons, events = row[0] or 0, int(row[1] or 0)
        out = {p: (_share(row[3 + 2 * i], persons), _share(row[4 + 2 * i], events))
               for i, p in enumerate(purposes)}
        return out, _share(row[2], events)

    def _ledger_by_day(self, rng: Range, source: str | None) -> list[dict[str, Any]]:
        """Statements per day, purpose and source: grants, refusals (a "no" with no grant
        before it in its scope) and withdrawals (a "no" after a grant)."""
        ledger = self._ledger()
        if ledger is None:
            return []
        rows = ledger.by_day(int(rng.start.replace(tzinfo=UTC).timestamp() * 1000),
                             int(rng.end.replace(tzinfo=UTC).timestamp() * 1000), source)
        names = self._names()
        return [{"day": r[0], "purpose": r[1], "source": names.get(r[2], r[2]),
                 "granted": r[3], "refused": r[4], "withdrawn": r[5]} for r in rows]

    def _ledger(self) -> ConsentLedger | None:
        """The consent ledger (:mod:`aap.store.meta`: the file under the data dir, or
        PostgreSQL); ``None`` while there is no ledger file (nothing was recorded, and
        reading makes none)."""
        if self._consent is None:
            if not meta_url() and not self.paths.consent_db.exists():
                return None
            self._consent = ConsentLedger(self.data_dir)
        return self._consent


def _share(part: int | None, whole: int) -> float:
    return round((part or 0) / whole, 6) if whole else 0.0


_EVENTS_SQL = f"""
CREATE OR REPLACE TEMP TABLE ov_ev AS
SELECT person_id, session_id, timestamp, {PAGE_TYPES} AS is_page, path, referrer_domain,
       utm_source, utm_medium, utm_campaign, country, region, device_type, browser, os
FROM events WHERE timestamp >= ? AND timestamp < ?"""

_SESSIONS_SQL = f"""
CREATE OR REPLACE TEMP TABLE ov_s AS
SELECT session_id, min(person_id) AS person_id, min(timestamp) AS t0,
       max(timestamp) AS t1, count(*) FILTER (WHERE is_page) AS views,
       {first('path')} FILTER (WHERE is_page) AS entry,
       {last('path')} FILTER (WHERE is_page) AS exit,
       {first('referrer_domain')} AS ref,
       {first('utm_source')} AS utm_source,
       {first('utm_medium')} AS utm_medium,
       {first('utm_campaign')} AS utm_campaign
FROM ov_ev GROUP BY session_id"""

_FIGURES_SQL = """
SELECT (SELECT count(DISTINCT person_id) FROM ov_ev),
       (SELECT count(*) FROM ov_ev WHERE is_page),
       count(*), avg((views <= 1)::INTEGER), avg(epoch_us(t1) - epoch_us(t0)) / 1e6
FROM ov_s"""

_SERIES_SQL = """
SELECT d, count(*), sum(pv) FROM (
    SELECT timestamp::DATE AS d, person_id, count(*) FILTER (WHERE is_page) AS pv
    FROM ov_ev GROUP BY ALL) GROUP BY d"""

_CAMPAIGN = ("concat_ws(' / ', coalesce(utm_source, ''), coalesce(utm_medium, ''),"
             " coalesce(utm_campaign, ''))")


def _top(kind: str, value: str, views: str, table: str, where: str) -> str:
    """One top list: (kind, value, visitors, page views), grouped by value and person
    first (cheaper than a distinct count per value)."""
    return (f"SELECT '{kind}' AS k, v, count(*) AS visitors, sum(pv) AS pageviews, NULL AS s,"
            f" NULL AS m, NULL AS c FROM (SELECT {value} AS v, person_id, {views} AS pv"
            f" FROM {table} WHERE {where} GROUP BY ALL) GROUP BY v")


def _breakdowns_sql(kinds: frozenset[str]) -> str:
    """The top lists ``kinds`` in one statement."""
    parts = [_top("pages", "path", "count(*)", "ov_ev",
                  "is_page AND path IS NOT NULL AND path <> ''")] if "pages" in kinds else []
    parts += [_top(k, c, "count(*) FILTER (WHERE is_page)", "ov_ev",
                   f"{c} IS NOT NULL AND {c} <> ''")
              for k, c in EVENT_BREAKDOWNS.items() if k != "pages" and k in kinds]
    parts += [_top(k, c, "sum(views)", "ov_s", f"{c} IS NOT NULL AND {c} <> ''")
              for k, c in SESSION_BREAKDOWNS.items() if k != "utm_campaigns" and k in kinds]
    parts += [f"SELECT 'utm_campaigns' AS k, {_CAMPAIGN} AS v, count(DISTINCT person_id)"
              " AS visitors, sum(views) AS pageviews, any_value(utm_source),"
              " any_value(utm_medium), any_value(utm_campaign)"
              " FROM ov_s WHERE coalesce(utm_source, utm_medium, utm_campaign) IS NOT NULL"
              f" GROUP BY {_CAMPAIGN}"] if "utm_campaigns" in kinds else []
    return ("SELECT * FROM (" + " UNION ALL ".join(parts) + ") QUALIFY row_number() OVER"
            " (PARTITION BY k ORDER BY visitors DESC, pageviews DESC, v) <= ?"
            " ORDER BY k, visitors DESC, pageviews DESC, v")


_breakdowns_sql_cached = functools.cache(_breakdowns_sql)


def parse_overview(body: bytes) -> OverviewRequest:
    try:
        req = msgspec.json.decode(body or b"{}", type=OverviewRequest)
    except msgspec.ValidationError as exc:
        raise errors.BadRequest(f"invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise errors.BadRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not 1 <= req.limit <= 100:
        raise errors.BadRequest("'limit' must be between 1 and 100", code="invalid_limit")
    if len(req.filters) > 20:
        raise errors.BadRequest("at most 20 filters", code="too_many_filters")
    for p in req.panels or ():
        if p not in PANELS:
            raise errors.BadRequest(f"unknown panel; known: {', '.join(PANELS)}",
                                    {"panel": p[:64]}, code="invalid_panel")
    if req.panels is not None and not req.panels:
        raise errors.BadRequest("'panels' is empty (leave it out for all of them)",
                                code="invalid_panel")
    for f in req.filters:
        if f.field not in FIELDS:
            raise errors.BadRequest(f"unknown filter field; known: {', '.join(FIELDS)}",
                                    {"field": f.field[:64]}, code="invalid_filter")
        if len(f.value) > MAX_VALUE:
            raise errors.BadRequest(f"a filter value is longer than {MAX_VALUE} characters",
                                    {"field": f.field}, code="invalid_filter")
    return req


def _num(v: Any, digits: int = 6) -> float:
    return round(float(v), digits) if v is not None else 0.0


class Traffic:
    """One range's traffic on a cursor (temporary tables ``ov_ev`` and ``ov_s``)."""

    def __init__(self, cur: duckdb.DuckDBPyConnection, filters: list[tuple[str, str]]) -> None:
        self.cur = cur
        self.event_filters = [(EVENT_FIELDS[f], v) for f, v in filters if f in EVENT_FIELDS]
        self.session_filters = [(SESSION_FIELDS[f], v) for f, v in filters
                                if f in SESSION_FIELDS]

    def load(self, rng: Range) -> None:
        where = "".join(f" AND {c} = ?" for c, _ in self.event_filters)
        self.cur.execute(_EVENTS_SQL + where,
                         [rng.start, rng.end, *(v for _, v in self.event_filters)])
        self.cur.execute(_SESSIONS_SQL)
        if self.session_filters:
            cond = " AND ".join(f"{c} IS NOT DISTINCT FROM ?" for c, _ in self.session_filters)
            self.cur.execute(f"DELETE FROM ov_s WHERE NOT ({cond})",
                             [v for _, v in self.session_filters])
            self.cur.execute("DELETE FROM ov_ev WHERE session_id NOT IN"
                             " (SELECT session_id FROM ov_s)")

    def figures(self) -> dict[str, Any]:
        row = self.cur.execute(_FIGURES_SQL).fetchone()
        assert row is not None
        return {"visitors": row[0], "pageviews": row[1], "sessions": row[2],
                "bounce_rate": _num(row[3]), "visit_duration_s": _num(row[4], 3)}

    def series(self, rng: Range) -> dict[str, list[Any]]:
        got = {d.isoformat(): (v, p) for d, v, p in self.cur.execute(_SERIES_SQL).fetchall()}
        labels = rng.labels()
        return {"labels": labels, "visitors": [got.get(d, (0, 0))[0] for d in labels],
                "pageviews": [got.get(d, (0, 0))[1] for d in labels]}

    def answer(self, into: dict[str, Any], rng: Range, panels: set[str], limit: int) -> None:
        """The ``panels`` of the range loaded last, into ``into``."""
        if "figures" in panels:
            into["figures"] = self.figures()
        if "series" in panels:
            into["series"] = self.series(rng)
        kinds = [k for k in BREAKDOWNS if k in panels]
        if kinds:
            into["breakdowns"] = self.breakdowns(limit, kinds)

    def breakdowns(self, limit: int, kinds: list[str]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        sql = _breakdowns_sql_cached(frozenset(kinds))
        for k, v, visitors, views, s, m, c in self.cur.execute(sql, [limit]).fetchall():
            row: dict[str, Any] = {"value": v, "visitors": visitors, "pageviews": int(views or 0)}
            if k == "utm_campaigns":
                row.update(utm_source=s, utm_medium=m, utm_campaign=c)
            out[k].append(row)
        return out

    def drop(self) -> None:
        with contextlib.suppress(duckdb.Error):  # (an aborted transaction: rolled back)
            self.cur.execute("DROP TABLE IF EXISTS ov_ev; DROP TABLE IF EXISTS ov_s")


def _lean_answer(lean: Lean, into: dict[str, Any], rng: Range, panels: set[str],
                 limit: int) -> None:
    """The ``panels`` of the range, each on its own (no filter on sessions)."""
    if "figures" in panels:
        into["figures"] = lean.figures(rng)
    if "series" in panels:
        into["series"] = lean.series(rng)
    for k in BREAKDOWNS:
        if k not in panels:
            continue
        b = into.setdefault("breakdowns", {})
        b[k] = (lean.top(k, EVENT_BREAKDOWNS[k], rng, limit) if k in EVENT_BREAKDOWNS
                else lean.session_top(k, rng, limit))
