"""The overview page in Chromium against the real server with the demo's traffic: every
tile's, chart's and list's data-series equals the API's answer for the same body (asked
with the page's own session cookie), a click on a row adds a filter and the numbers
become the API's filtered answer, compare shows the previous period; 1280 and 375 px,
no console errors, axe passes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from playwright.sync_api import expect

from tests.e2e.web.helpers import TIMEOUT_MS, Web, assert_fits, csrf

FIGURES = ("visitors", "pageviews", "sessions", "bounce_rate", "visit_duration_s")
LISTS = ("pages", "entry_pages", "exit_pages", "referrers", "utm_campaigns", "countries",
         "regions", "devices", "browsers", "os")


def _days(n: int) -> tuple[str, str]:
    today = datetime.now(UTC).date()
    return (today - timedelta(days=n - 1)).isoformat(), today.isoformat()


def overview(page: Any, web: Web, body: dict[str, Any]) -> dict[str, Any]:
    r = page.request.post(web.url + "/api/v1/overview", data=body,
                          headers={"X-CSRF-Token": csrf(page, web.url)})
    assert r.ok, r.text()
    out: dict[str, Any] = r.json()
    return out


def series_of(page: Any, selector: str) -> dict[str, Any]:
    loc = page.locator(selector)
    expect(loc).to_have_count(1, timeout=TIMEOUT_MS)
    got: dict[str, Any] = json.loads(loc.get_attribute("data-series"))
    return got


def wait_for(page: Any, figure: str, value: int) -> None:
    """The tile shows the answer of the body at hand (the page re-asks on a change)."""
    want = json.dumps({"labels": [figure], "series": [{"name": "current", "values": [value]}]},
                      separators=(",", ":"))
    expect(page.locator(f'[data-figure="{figure}"]')).to_have_attribute(
        "data-series", want, timeout=TIMEOUT_MS)


def check_page(page: Any, answer: dict[str, Any], compare: bool = False) -> None:
    figures = answer["figures"]
    if not compare:
        wait_for(page, "visitors", figures["visitors"])
    for f in FIGURES:
        got = series_of(page, f'[data-figure="{f}"]')
        want = [{"name": "current", "values": [figures[f]]}]
        if compare:
            want.append({"name": "previous", "values": [figures["previous"][f]]})
        assert got == {"labels": [f], "series": want}, f
    chart = series_of(page, "#ov-chart-title + .chart")
    s = answer["series"]
    want_series = [{"name": "visitors", "values": s["visitors"]},
                   {"name": "pageviews", "values": s["pageviews"]}]
    if compare:
        want_series += [{"name": "previous visitors", "values": s["previous"]["visitors"]},
                        {"name": "previous pageviews", "values": s["previous"]["pageviews"]}]
    assert chart == {"labels": s["labels"], "series": want_series}
    for name in LISTS:
        rows = answer["breakdowns"][name]
        got = series_of(page, f'[data-breakdown="{name}"]')
        assert got == {"labels": [r["value"] for r in rows], "series": [
            {"name": "visitors", "values": [r["visitors"] for r in rows]},
            {"name": "pageviews", "values": [r["pageviews"] for r in rows]}]}, name
    shares = series_of(page, '[data-consent="shares"]')
    c = answer["consent"]
    assert shares == {"labels": [p["purpose"] for p in c], "series": [
        {"name": "visitors_with_consent_share",
         "values": [p["visitors_with_consent_share"] for p in c]},
        {"name": "events_with_consent_share",
         "values": [p["events_with_consent_share"] for p in c]}]}


def test_every_tile_chart_and_list_carries_the_api_answer(web: Web, signed_in: Any,
                                                           axe_check: Any, screenshot: Any
                                                           ) -> None:
    page = signed_in("analyst", "/")
    first, last = _days(30)
    answer = overview(page, web, {"from": first, "to": last, "compare": False, "filters": [],
                                  "limit": 10})
    assert answer["figures"]["visitors"] > 0
    check_page(page, answer)
    # current visitors: the API's answer of the last 5 minutes, a whole number
    cur = series_of(page, '[data-figure="current_visitors"]')
    assert isinstance(cur["series"][0]["values"][0], int)
    # refusals and withdrawals per day: the ledger's counts of the range, per purpose
    q = f"?from={first}&to={last}"
    stats = page.request.get(web.url + "/api/v1/consent/stats" + q).json()
    chart = series_of(page, "#ov-consent-title ~ .chart")
    assert chart["labels"] == answer["series"]["labels"]
    for s in chart["series"]:
        purpose, what = s["name"].split(" ")
        assert s["values"] == [sum(r[what] for r in stats["by_day"]
                                   if r["day"] == d and r["purpose"] == purpose)
                               for d in chart["labels"]]
    assert any(sum(s["values"]) for s in chart["series"])
    axe_check(page)
    screenshot(page, "overview")


def test_clicking_a_row_adds_a_filter_and_shows_the_filtered_answer(web: Web, signed_in: Any
                                                                     ) -> None:
    page = signed_in("analyst", "/?range=7d")
    first, last = _days(7)
    base = {"from": first, "to": last, "compare": False, "filters": [], "limit": 10}
    everyone = overview(page, web, base)
    wait_for(page, "visitors", everyone["figures"]["visitors"])
    row = everyone["breakdowns"]["browsers"][0]
    page.locator('[data-breakdown="browsers"] button.ov-bar').first.click()
    expect(page.locator('.ov-chips [data-filter="browser"]')).to_have_count(1,
                                                                           timeout=TIMEOUT_MS)
    assert "filters=" in page.url
    filtered = overview(page, web, {**base, "filters": [{"field": "browser",
                                                         "value": row["value"]}]})
    assert filtered["figures"]["visitors"] <= everyone["figures"]["visitors"]
    check_page(page, filtered)
    # a second filter from another list narrows further
    page.locator('[data-breakdown="pages"] button.ov-bar').first.click()
    expect(page.locator(".ov-chips li")).to_have_count(2, timeout=TIMEOUT_MS)
    page_row = filtered["breakdowns"]["pages"][0]
    both = overview(page, web, {**base, "filters": [
        {"field": "browser", "value": row["value"]}, {"field": "page", "value": page_row["value"]}]})
    check_page(page, both)
    # removing the chips brings the whole range back
    page.locator('.ov-chips [data-filter="page"]').click()
    page.locator('.ov-chips [data-filter="browser"]').click()
    expect(page.locator(".ov-chips li")).to_have_count(0, timeout=TIMEOUT_MS)
    check_page(page, everyone)


def test_compare_shows_the_previous_period_and_works_at_375_px(web: Web, signed_in: Any,
                                                                axe_check: Any) -> None:
    page = signed_in("analyst", "/", width=375)
    page.select_option("#ov-range", "7d")
    page.check("#ov-compare")
    first, last = _days(7)
    answer = overview(page, web, {"from": first, "to": last, "compare": True, "filters": [],
                                  "limit": 10})
    prev = answer["figures"]["previous"]
    want = json.dumps({"labels": ["visitors"], "series": [
        {"name": "current", "values": [answer["figures"]["visitors"]]},
        {"name": "previous", "values": [prev["visitors"]]}]}, separators=(",", ":"))
    expect(page.locator('[data-figure="visitors"]')).to_have_attribute(
        "data-series", want, timeout=TIMEOUT_MS)
    check_page(page, answer, compare=True)
    assert "compare=1" in page.url and "range=7d" in page.url
    # nothing wider than the screen
    assert_fits(page, page.viewport_size["width"])
    axe_check(page)


def test_a_custom_range_is_asked_as_given(web: Web, signed_in: Any) -> None:
    first, last = _days(3)
    page = signed_in("analyst", f"/?range=custom&from={first}&to={last}")
    answer = overview(page, web, {"from": first, "to": last, "compare": False, "filters": [],
                                  "limit": 10})
    wait_for(page, "visitors", answer["figures"]["visitors"])
    check_page(page, answer)
    assert page.locator("#ov-from").input_value() == first
