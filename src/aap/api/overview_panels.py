"""The overview's panels one at a time (``panels`` of ``POST /overview``), each read as
leanly as it can be, with exactly the numbers of the all-panels answer
(:class:`aap.api.overview.Traffic`).

Used when no filter is on sessions (those need every session built first: the
all-panels way does that). Each panel is one statement straight over ``events`` with only
the columns it needs and the range pruned; panels that only count events and persons per
UTC day — the figures' visitors and page views, the daily series, and the top lists of
place and device (``countries``, ``regions``, ``devices``, ``browsers``, ``os``) — read
the query cache's daily rollup ``events_daily`` instead (:mod:`aap.query.rollup`; a range
is whole UTC days), when it is there and every filter is on one of its columns. Panels
that need sessions (sessions, bounce rate, duration, entry and exit pages, referrers,
campaigns) group the range's events by session, reading only what they need; without any
filter, the figures' sessions, bounce rate and duration and the entry and exit pages
read the query cache's session summary instead (:mod:`aap.query.sessions`: a row per
session and day rather than every event), when it is there.
"""

from __future__ import annotations

from typing import Any

import duckdb

from aap.query import sessions as summary
from aap.query.rollup import DIMS
from aap.query.sessions import PAGE
from aap.query.sessions import order as _order


def first(column: str) -> str:
    """A session's first non-NULL value of ``column``."""
    return f"arg_min({column}, {_order(column)})"


def last(column: str) -> str:
    return f"arg_max({column}, {_order(column)})"


SESSION_COLUMNS = {"entry_pages": (f"{first('path')} FILTER (WHERE {PAGE}) AS v",),
                   "exit_pages": (f"{last('path')} FILTER (WHERE {PAGE}) AS v",),
                   "referrers": (f"{first('referrer_domain')} AS v",),
                   "utm_campaigns": (f"{first('utm_source')} AS utm_source",
                                     f"{first('utm_medium')} AS utm_medium",
                                     f"{first('utm_campaign')} AS utm_campaign")}
"""What each session top list keeps of a session (besides its person and page views)."""

CAMPAIGN = ("concat_ws(' / ', coalesce(utm_source, ''), coalesce(utm_medium, ''),"
            " coalesce(utm_campaign, ''))")
ORDER = " ORDER BY visitors DESC, pageviews DESC, v LIMIT ?"


class Lean:
    """The panels of one range on a snapshot's cursor, filters on events only
    (``(column of events, value)``)."""

    def __init__(self, cur: duckdb.DuckDBPyConnection, event_filters: list[tuple[str, str]],
                 *, daily: bool, sessions: bool = False) -> None:
        self.cur = cur
        self.filters = event_filters
        self.rollup = daily and all(c in DIMS for c, _ in event_filters)
        self.summary = sessions and not event_filters
        """Sessions from the cache's summary (exact: no filter, whole UTC days)."""

    def _sessions(self, rng: Any, columns: list[str]) -> tuple[str, list[Any]]:
        """The range's sessions with ``columns`` (:data:`aap.query.sessions.MERGED`)."""
        if self.summary:
            return summary.merged(columns), [rng.start.date(), rng.end.date(), rng.start,
                                             rng.end]
        where, args = self._where(rng)
        cols = {"person_id": "min(person_id) AS person_id", "t0": "min(timestamp) AS t0",
                "t1": "max(timestamp) AS t1", "views": f"count(*) FILTER (WHERE {PAGE}) AS views",
                "entry": SESSION_COLUMNS["entry_pages"][0].replace(" AS v", " AS entry"),
                "exit": SESSION_COLUMNS["exit_pages"][0].replace(" AS v", " AS exit")}
        return (f"SELECT {', '.join(cols[c] for c in columns)} FROM events WHERE {where}"
                " GROUP BY session_id"), args

    def _where(self, rng: Any) -> tuple[str, list[Any]]:
        sql = "timestamp >= ? AND timestamp < ?" + "".join(
            f" AND {c} = ?" for c, _ in self.filters)
        return sql, [rng.start, rng.end, *(v for _, v in self.filters)]

    def _daily(self) -> tuple[str, str]:
        """(the table, the page views of a group of its rows)."""
        if self.rollup:
            return "events_daily", f"coalesce(sum(n) FILTER (WHERE {PAGE}), 0)"
        return "events", f"count(*) FILTER (WHERE {PAGE})"

    def figures(self, rng: Any) -> dict[str, Any]:
        if self.summary:  # all in one statement (the hot events summarized once)
            row = self.cur.execute(summary.FIGURES, [rng.start.date(), rng.end.date(),
                                                     rng.start, rng.end]).fetchone()
            assert row is not None
            return {"visitors": row[0], "pageviews": int(row[1]), "sessions": row[2],
                    "bounce_rate": _num(row[3]), "visit_duration_s": _num(row[4], 3)}
        where, args = self._where(rng)
        table, views = self._daily()
        persons = self.cur.execute(f"SELECT count(DISTINCT person_id), {views} FROM {table}"
                                   f" WHERE {where}", args).fetchone()
        sql, s_args = self._sessions(rng, ["t0", "t1", "views"])
        sessions = self.cur.execute(
            "SELECT count(*), avg((views <= 1)::INTEGER), avg(epoch_us(t1) - epoch_us(t0))"
            f" / 1e6 FROM ({sql})", s_args).fetchone()
        assert persons is not None and sessions is not None
        return {"visitors": persons[0], "pageviews": int(persons[1]), "sessions": sessions[0],
                "bounce_rate": _num(sessions[1]), "visit_duration_s": _num(sessions[2], 3)}

    def series(self, rng: Any) -> dict[str, list[Any]]:
        where, args = self._where(rng)
        table, views = self._daily()
        got = {d.isoformat(): (v, int(p)) for d, v, p in self.cur.execute(
            f"SELECT timestamp::DATE AS d, count(DISTINCT person_id), {views} FROM {table}"
            f" WHERE {where} GROUP BY d", args).fetchall()}
        labels = rng.labels()
        return {"labels": labels, "visitors": [got.get(d, (0, 0))[0] for d in labels],
                "pageviews": [got.get(d, (0, 0))[1] for d in labels]}

    def top(self, kind: str, column: str, rng: Any, limit: int) -> list[dict[str, Any]]:
        """A top list of an event column (``pages`` counts page views only); one
        ``count(DISTINCT)`` pass (about twice as fast here as grouping by person first)."""
        if kind == "pages" and self.summary:
            return _rows(self.cur.execute(summary.PAGES, [
                rng.start.date(), rng.end.date(), rng.start, rng.end, limit]).fetchall())
        where, args = self._where(rng)
        if kind == "pages":
            table, views, where = "events", "count(*)", f"{where} AND {PAGE}"
        elif column in DIMS:
            table, views = self._daily()
        else:
            table, views = "events", f"count(*) FILTER (WHERE {PAGE})"
        return _rows(self.cur.execute(
            f"SELECT {column} AS v, count(DISTINCT person_id) AS visitors, {views} AS pageviews"
            f" FROM {table} WHERE {where} AND {column} IS NOT NULL AND {column} <> ''"
            f" GROUP BY v{ORDER}", [*args, limit]).fetchall())

    def session_top(self, kind: str, rng: Any, limit: int) -> list[dict[str, Any]]:
        """A top list of a session's first or last page, referrer or campaign."""
        if kind in ("entry_pages", "exit_pages"):
            end = "entry" if kind == "entry_pages" else "exit"
            sql, args = self._sessions(rng, ["person_id", "views", end])
            return _rows(self.cur.execute(
                f"SELECT {end} AS v, count(DISTINCT person_id) AS visitors, sum(views) AS"
                f" pageviews FROM ({sql}) WHERE v IS NOT NULL AND v <> '' GROUP BY v"
                + (ORDER.replace("?", "$5") if self.summary else ORDER),
                [*args, limit]).fetchall())
        where, args = self._where(rng)
        keep = ", ".join(SESSION_COLUMNS[kind])
        sessions = (f"SELECT min(person_id) AS person_id, count(*) FILTER (WHERE {PAGE})"
                    f" AS views, {keep} FROM events WHERE {where} GROUP BY session_id")
        if kind == "utm_campaigns":
            rows = self.cur.execute(
                f"SELECT {CAMPAIGN} AS v, count(DISTINCT person_id) AS visitors, sum(views)"
                " AS pageviews, any_value(utm_source), any_value(utm_medium),"
                f" any_value(utm_campaign) FROM ({sessions}) WHERE coalesce(utm_source,"
                f" utm_medium, utm_campaign) IS NOT NULL GROUP BY v{ORDER}",
                [*args, limit]).fetchall()
            return [{"value": v, "visitors": n, "pageviews": int(p or 0), "utm_source": s,
                     "utm_medium": m, "utm_campaign": c} for v, n, p, s, m, c in rows]
        return _rows(self.cur.execute(
            "SELECT v, count(DISTINCT person_id) AS visitors, sum(views) AS pageviews"
            f" FROM ({sessions}) WHERE v IS NOT NULL AND v <> '' GROUP BY v{ORDER}",
            [*args, limit]).fetchall())


def _rows(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [{"value": v, "visitors": n, "pageviews": int(p or 0)} for v, n, p in rows]


def _num(v: Any, digits: int = 6) -> float:
    return round(float(v), digits) if v is not None else 0.0
