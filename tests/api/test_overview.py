"""The overview, consent aggregates and live events APIs against a real server with the
demo's traffic: every number equals an independent computation over the warehouse's
rows (``ServerProcess.sql``) or the consent ledger's."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from aap.demo import send_all, simulate
from aap.privacy.consent import ConsentLedger
from aap.runner import ServerProcess, create_source
from tests.api.test_query_api import new_key
from tests.conftest import slow_fixture

ANALYTICS = ("(purposes IS NULL OR list_has_any(purposes, ['analytics', 'audience_measurement',"
             " 'device_diagnostics']))")
COLUMNS = ("person_id", "session_id", "epoch_us(timestamp)", "type", "path", "country",
           "browser", "referrer_domain", "utm_source", "utm_medium", "utm_campaign",
           "device_type", "region", "os", "source", "purposes", "gpc")


class Site:
    def __init__(self, server: ServerProcess, keys: dict[str, str], write_key: str) -> None:
        self.server = server
        self.keys = keys
        self.write_key = write_key

    def call(self, method: str, path: str, role: str = "analyst", **kw: Any) -> httpx.Response:
        return httpx.request(method, self.server.url + "/api/v1" + path, timeout=60,
                             headers={"Authorization": f"Bearer {self.keys[role]}"}, **kw)

    def overview(self, body: dict[str, Any]) -> dict[str, Any]:
        r = self.call("POST", "/overview", json=body)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def rows(self, first: date, last: date) -> list[dict[str, Any]]:
        start = datetime.combine(first, datetime.min.time())
        end = datetime.combine(last + timedelta(days=1), datetime.min.time())
        got = self.server.sql(
            f"SELECT {', '.join(COLUMNS)} FROM events WHERE {ANALYTICS}"
            " AND timestamp >= ?::TIMESTAMP AND timestamp < ?::TIMESTAMP",
            [start.isoformat(), end.isoformat()])
        names = [c.split("(")[-1].rstrip(")") for c in COLUMNS]
        return [dict(zip(names, r, strict=True)) for r in got]


@slow_fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data = tmp_path_factory.mktemp("overview") / "data"
    write_key = create_source(data, "demo-site")
    keys = {role: new_key(data, role) for role in ("viewer", "analyst")}
    server = ServerProcess(data, workers=1).start()
    try:
        events = list(simulate(150, 7, returning=0.4))
        send_all(server.url, write_key, events, Console(quiet=True))
        server.wait_processed()
        yield Site(server, keys, write_key)
    finally:
        server.stop()


# -- the independent computation --

def _sessions(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["timestamp"]):
        out[r["session_id"]].append(r)
    return out


def _is_page(r: dict[str, Any]) -> bool:
    return r["type"] in ("page", "screen")


def expected(rows: list[dict[str, Any]]) -> dict[str, Any]:
    sessions = _sessions(rows)
    views = {s: sum(map(_is_page, evs)) for s, evs in sessions.items()}
    return {
        "visitors": len({r["person_id"] for r in rows}),
        "pageviews": sum(map(_is_page, rows)),
        "sessions": len(sessions),
        "bounce_rate": (sum(v <= 1 for v in views.values()) / len(sessions)) if sessions else 0,
        "visit_duration_s": (sum((evs[-1]["timestamp"] - evs[0]["timestamp"]) / 1e6
                                 for evs in sessions.values()) / len(sessions)
                             if sessions else 0)}


def expected_breakdown(rows: list[dict[str, Any]], column: str, pages_only: bool
                       ) -> dict[str, tuple[int, int]]:
    persons: dict[str, set[int]] = defaultdict(set)
    views: dict[str, int] = defaultdict(int)
    for r in rows:
        v = r[column]
        if v is None or v == "" or (pages_only and not _is_page(r)):
            continue
        persons[v].add(r["person_id"])
        views[v] += _is_page(r)
    return {v: (len(p), views[v]) for v, p in persons.items()}


def expected_entry(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    persons: dict[str, set[int]] = defaultdict(set)
    views: dict[str, int] = defaultdict(int)
    for evs in _sessions(rows).values():
        pages = [e for e in evs if _is_page(e)]
        if pages and pages[0]["path"]:
            persons[pages[0]["path"]].add(pages[0]["person_id"])
            views[pages[0]["path"]] += len(pages)
    return {v: (len(p), views[v]) for v, p in persons.items()}


def _top(answer: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    return {r["value"]: (r["visitors"], r["pageviews"]) for r in answer}


def _check_top(answer: list[dict[str, Any]], want: dict[str, tuple[int, int]], limit: int
               ) -> None:
    ranked = sorted(want.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))[:limit]
    assert _top(answer) == dict(ranked)
    assert [r["value"] for r in answer] == [v for v, _ in ranked]


def _range(days: int = 30) -> tuple[date, date]:
    today = datetime.now(UTC).date()
    return today - timedelta(days=days - 1), today


# -- the overview --

def test_figures_series_and_top_lists_equal_an_independent_computation(site: Site) -> None:
    first, last = _range(7)
    out = site.overview({"from": first.isoformat(), "to": last.isoformat(), "limit": 5})
    rows = site.rows(first, last)
    assert len(rows) > 500
    want = expected(rows)
    figures = out["figures"]
    for k in ("visitors", "pageviews", "sessions"):
        assert figures[k] == want[k], k
    assert figures["bounce_rate"] == pytest.approx(want["bounce_rate"], abs=1e-5)
    assert figures["visit_duration_s"] == pytest.approx(want["visit_duration_s"], abs=1e-2)
    days = [(first + timedelta(days=i)).isoformat() for i in range(7)]
    assert out["series"]["labels"] == days
    by_day: dict[str, set[int]] = defaultdict(set)
    for r in rows:
        by_day[datetime.fromtimestamp(r["timestamp"] / 1e6, UTC).date().isoformat()].add(
            r["person_id"])
    assert out["series"]["visitors"] == [len(by_day[d]) for d in days]
    assert sum(out["series"]["pageviews"]) == want["pageviews"]
    b = out["breakdowns"]
    _check_top(b["pages"], expected_breakdown(rows, "path", True), 5)
    _check_top(b["countries"], expected_breakdown(rows, "country", False), 5)
    _check_top(b["browsers"], expected_breakdown(rows, "browser", False), 5)
    _check_top(b["devices"], expected_breakdown(rows, "device_type", False), 5)
    _check_top(b["entry_pages"], expected_entry(rows), 5)
    assert b["utm_campaigns"], "the demo's visitors come from campaigns"
    assert "previous" not in figures


def test_a_filter_narrows_to_the_independent_filtered_numbers(site: Site) -> None:
    first, last = _range(7)
    rows = site.rows(first, last)
    page = max(expected_breakdown(rows, "path", True).items(), key=lambda kv: kv[1])[0]
    country = max(expected_breakdown(rows, "country", False).items(), key=lambda kv: kv[1])[0]
    base = {"from": first.isoformat(), "to": last.isoformat()}
    everyone = site.overview(base)["figures"]
    for field, column, value in (("page", "path", page), ("country", "country", country)):
        got = site.overview({**base, "filters": [{"field": field, "value": value}]})
        want = expected([r for r in rows if r[column] == value])
        assert got["figures"]["visitors"] == want["visitors"] < everyone["visitors"]
        assert got["figures"]["pageviews"] == want["pageviews"]
    # a session filter: the sessions that entered on that page
    entered = {s for s, evs in _sessions(rows).items()
               if next((e["path"] for e in evs if _is_page(e)), None) == page}
    got = site.overview({**base, "filters": [{"field": "entry_page", "value": page}]})
    assert got["figures"]["sessions"] == len(entered)
    assert got["figures"]["visitors"] == len({r["person_id"] for r in rows
                                              if r["session_id"] in entered})


def test_compare_answers_the_previous_period_of_the_same_length(site: Site) -> None:
    first, last = _range(3)
    out = site.overview({"from": first.isoformat(), "to": last.isoformat(), "compare": True})
    prev_first, prev_last = first - timedelta(days=3), first - timedelta(days=1)
    want = expected(site.rows(prev_first, prev_last))
    assert out["figures"]["previous"]["visitors"] == want["visitors"]
    assert out["figures"]["previous"]["pageviews"] == want["pageviews"]
    assert out["series"]["previous"]["labels"] == [
        (prev_first + timedelta(days=i)).isoformat() for i in range(3)]
    assert want["visitors"] > 0


@pytest.mark.parametrize("value", ['<img src=x onerror=alert(1)>', '"><script>alert(1)</script>',
                                   "' OR 1=1 --", "x" * 1000])
def test_hostile_filter_values_are_inert(site: Site, value: str) -> None:
    out = site.overview({"filters": [{"field": "page", "value": value},
                                     {"field": "source", "value": value}]})
    assert out["figures"]["visitors"] == 0
    assert all(not rows for rows in out["breakdowns"].values())


@pytest.mark.parametrize("body,code", [
    ({"filters": [{"field": "page", "value": "x" * 1001}]}, "invalid_filter"),
    ({"filters": [{"field": "person_id", "value": "1"}]}, "invalid_filter"),
    ({"filters": [{"field": "page", "value": {"a": 1}}]}, "bad_request"),
    ({"from": "yesterday"}, "invalid_date"),
    ({"from": "2026-05-02", "to": "2026-05-01"}, "invalid_range"),
    ({"limit": 0}, "invalid_limit"),
    ({"limits": 3}, "bad_request"),
])
def test_bad_overview_bodies_are_refused_with_400(site: Site, body: dict[str, Any], code: str
                                                  ) -> None:
    r = site.call("POST", "/overview", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == code


def test_deep_and_huge_bodies_are_refused(site: Site) -> None:
    deep = '{"filters": [' + '[' * 5000 + ']' * 5000 + ']}'
    r = site.call("POST", "/overview", content=deep)
    assert r.status_code == 400 and set(r.json()) == {"code", "message", "detail"}
    many = {"filters": [{"field": "page", "value": "/"}] * 21}
    r = site.call("POST", "/overview", json=many)
    assert r.status_code == 400 and r.json()["code"] == "too_many_filters"


def test_the_overview_needs_role_analyst(site: Site) -> None:
    for method, path in (("POST", "/overview"), ("GET", "/overview/current"),
                         ("GET", "/consent/stats"), ("GET", "/live")):
        r = site.call(method, path, role="viewer", json={} if method == "POST" else None)
        assert r.status_code == 403 and r.json()["code"] == "role_too_low", path


def test_current_visitors_counts_persons_of_the_last_five_minutes(site: Site) -> None:
    anon = str(uuid.uuid4())
    r = httpx.post(site.server.url + "/v1/batch", auth=(site.write_key, ""), json={"batch": [
        {"type": "page", "anonymousId": anon, "properties": {"path": "/now"},
         "context": {"consent": {"categoryPreferences": {"analytics": True}}}}]})
    assert r.status_code == 200
    site.server.wait_processed()
    count = ("SELECT count(DISTINCT person_id) FROM events WHERE " + ANALYTICS +
             " AND timestamp >= ?::TIMESTAMP")
    before = (datetime.now(UTC) - timedelta(minutes=5, seconds=5)).replace(tzinfo=None)
    upper = site.server.sql(count, [before.isoformat()])[0][0]
    got = site.call("GET", "/overview/current").json()["visitors"]
    after = (datetime.now(UTC) - timedelta(minutes=5)).replace(tzinfo=None)
    lower = site.server.sql(count, [after.isoformat()])[0][0]
    assert lower <= got <= upper and got >= 1


# -- consent aggregates --

def _ledger(data: Path, first: date, last: date) -> dict[str, list[int]]:
    """Purpose → [granted, refused, withdrawn] in the range, walking the ledger in order."""
    rows = [(st.at_ms, st.where, st.subject, st.purposes)
            for _, st in ConsentLedger(data).since(0)]
    state: dict[tuple[str, int, str], bool] = {}
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    lo = datetime.combine(first, datetime.min.time(), UTC).timestamp() * 1000
    hi = datetime.combine(last + timedelta(days=1), datetime.min.time(), UTC).timestamp() * 1000
    for at_ms, scope, subject, purposes in rows:
        for p, granted in purposes.items():
            had = state.get((scope, subject, p))
            state[(scope, subject, p)] = granted
            if lo <= at_ms < hi:
                out[p][0 if granted else (2 if had else 1)] += 1
    return out


def test_consent_stats_equal_the_ledger_and_the_warehouse(site: Site) -> None:
    first, last = _range(7)
    r = site.call("GET", f"/consent/stats?from={first}&to={last}&source=demo-site")
    assert r.status_code == 200, r.text
    out = r.json()
    want = _ledger(site.server.data_dir, first, last)
    got = {p["purpose"]: [p["granted"], p["refused"], p["withdrawn"]] for p in out["purposes"]}
    assert {p: v for p, v in got.items() if any(v)} == dict(want)
    assert want["analytics"][0] > 0 and want["marketing"][1] > 0
    by_day: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in out["by_day"]:
        assert row["source"] == "demo-site"
        for i, k in enumerate(("granted", "refused", "withdrawn")):
            by_day[row["purpose"]][i] += row[k]
    assert dict(by_day) == dict(want)
    rows = site.rows(first, last)
    persons = {r["person_id"] for r in rows}
    marketing = [r for r in rows if r["purposes"] and "marketing" in r["purposes"]]
    shares = {p["purpose"]: p for p in out["purposes"]}
    assert shares["marketing"]["events_with_consent_share"] == pytest.approx(
        len(marketing) / len(rows), abs=1e-6)
    assert shares["marketing"]["visitors_with_consent_share"] == pytest.approx(
        len({r["person_id"] for r in marketing}) / len(persons), abs=1e-6)
    assert out["gpc_share"] == pytest.approx(sum(bool(r["gpc"]) for r in rows) / len(rows))
    # the overview's consent panel is the same numbers for its range
    ov = site.overview({"from": first.isoformat(), "to": last.isoformat()})
    assert ov["consent"] == out["purposes"]


@pytest.mark.parametrize("query,code", [
    ("?person=1", "unknown_parameter"), ("?from=x", "invalid_date"),
    ("?source=nope", "unknown_source"), ("?from=2026-01-01&from=2026-01-02", "bad_query_string"),
    ("?" + "a" * 3000, "bad_query_string"),
])
def test_consent_stats_refuses_bad_parameters(site: Site, query: str, code: str) -> None:
    r = site.call("GET", "/consent/stats" + query)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == code


def test_a_route_without_parameters_refuses_a_query_string(site: Site) -> None:
    r = site.call("GET", "/overview/current?x=1")
    assert r.status_code == 400 and r.json()["code"] == "unknown_parameter"


# -- live events --

def _send(site: Site, user_id: str, event: str) -> None:
    r = httpx.post(site.server.url + "/v1/batch", auth=(site.write_key, ""), json={"batch": [
        {"type": "track", "userId": user_id, "event": event, "properties": {"path": "/live"},
         "context": {"consent": {"categoryPreferences": {"analytics": True}}}}]})
    assert r.status_code == 200, r.text


def test_live_long_poll_answers_a_processed_event_with_pseudonymous_ids(site: Site) -> None:
    first = site.call("GET", "/live").json()
    canary = "canary-" + uuid.uuid4().hex
    _send(site, canary, "Live Test")
    cursor, t0 = first["cursor"], time.monotonic()
    seen: list[dict[str, Any]] = []
    while not seen and time.monotonic() - t0 < 60:
        r = site.call("GET", f"/live?after={cursor}&event=Live+Test")
        assert r.status_code == 200, r.text
        assert canary not in r.text
        cursor = r.json()["cursor"]
        seen = r.json()["events"]
    assert [e["event"] for e in seen] == ["Live Test"]
    assert seen[0]["source"] == "demo-site" and seen[0]["person"].isdigit()
    # the filter: another event name is not answered for this one
    r = site.call("GET", f"/live?after={first['cursor']}&event=Other")
    assert all(e["event"] == "Other" for e in r.json()["events"])
    r = site.call("GET", f"/live?after={first['cursor']}&source=elsewhere")
    assert r.json()["events"] == []


def test_live_refuses_a_bad_cursor(site: Site) -> None:
    r = site.call("GET", "/live?after=-1")
    assert r.status_code == 400 and r.json()["code"] == "invalid_cursor"
