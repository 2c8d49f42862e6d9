"""The insight builder in Chromium against the demo's data: every kind built in the UI,
each chart's data-series equal to the API's answer to the document the page shows; JSON
edits re-render; CSV equals the table, PNG is a PNG; cohorts; save; a viewer's 403."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, expect

from tests.e2e.web.helpers import assert_fits
from tests.e2e.web.insight_series import (
    PNG,
    TIMEOUT,
    api_get,
    api_post,
    download_text,
    expected,
    parse_csv,
    path_links,
    read_series,
    step_name,
    table_rows,
    value_text,
    wait_series,
)

MAIN = ".result .insight-view [data-series]"
SignedIn = Callable[..., Page]


def builder(signed_in: SignedIn, role: str = "analyst", width: int = 1280) -> Page:
    page = signed_in(role, "/insights", width=width)
    expect(page.locator("#insight-kind")).to_be_visible(timeout=TIMEOUT)
    return page


def set_text(page: Page, field: str, value: str) -> None:
    page.fill(f"#{field}", value)
    page.press(f"#{field}", "Tab")  # the change event: the document is edited, and runs


def doc_of(page: Page) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(page.input_value("#insight-json"))
    return out


def check_chart(page: Page, selector: str = MAIN) -> dict[str, Any]:
    """The chart shows the API's answer to the document shown: returns that answer."""
    answer: dict[str, Any] = api_post(page, "/query", doc_of(page))
    wait_series(page, selector, expected(answer))
    rendered = page.locator(selector).first.get_attribute("data-render-ms")
    assert rendered is not None and float(rendered) >= 0
    return answer


def test_trends_series_math_formula_and_chart_type(signed_in: SignedIn) -> None:
    page = builder(signed_in)
    set_text(page, "series-0-event", "$page")
    page.get_by_role("button", name="Add series").click()
    set_text(page, "series-1-event", "Signed Up")
    page.select_option("#series-1-math", "persons")
    assert doc_of(page)["series"] == [{"event": "$page", "math": "total"},
                                      {"event": "Signed Up", "math": "persons"}]
    answer = check_chart(page)
    assert len(answer["series"]) == 2 and answer["series"][0]["label"] == "$page"
    assert sum(answer["series"][0]["values"]) > 0
    set_text(page, "trends-formula", "A/B")
    answer = check_chart(page)
    assert [s["label"] for s in answer["series"]] == ["A/B"]
    expect(page.locator(".result figure.chart").first).to_have_attribute("data-kind", "line")
    page.select_option("#trends-chart", "bar")
    expect(page.locator(".result figure.chart").first).to_have_attribute("data-kind", "bar")
    wait_series(page, MAIN, expected(answer))


def test_trends_breakdown_and_compare(signed_in: SignedIn) -> None:
    page = builder(signed_in)
    set_text(page, "date-from", "-3d")  # the previous period (of the demo's 7 days) has data
    set_text(page, "trends-breakdown", "browser")
    page.check("#trends-compare")
    doc = doc_of(page)
    assert doc["breakdown"] == "browser" and doc["compare"] is True
    answer = check_chart(page)
    assert {s.get("compare") for s in answer["series"]} == {"current", "previous"}
    assert any("breakdown_value" in s for s in answer["series"])
    legend = page.locator(".result .chart-legend li").all_inner_texts()
    assert [t.strip() for t in legend] == [s["name"] for s in expected(answer)["series"]]


def test_funnel_conversion_drop_off_time_and_breakdown(signed_in: SignedIn) -> None:
    page = builder(signed_in)
    page.select_option("#insight-kind", "funnel")
    set_text(page, "step-0-event", "$page")
    set_text(page, "step-1-event", "Signed Up")
    page.get_by_role("button", name="Add step").click()
    set_text(page, "step-2-event", "Order Completed")
    set_text(page, "funnel-window", "7d")
    set_text(page, "funnel-breakdown", "browser")
    answer = check_chart(page)
    steps = answer["steps"]
    assert [s["event"] for s in steps] == ["$page", "Signed Up", "Order Completed"]
    assert steps[0]["count"] > 0
    wait_series(page, ".result .funnel-steps", {
        "labels": [step_name(s, i) for i, s in enumerate(steps)],
        "series": [{"name": k, "values": [s[k] for s in steps]} for k in
                   ("conversion", "conversion_from_previous", "median_seconds_to_convert")]})
    items = page.locator(".result .funnel-steps li").all_inner_texts()
    assert f"{steps[0]['count'] - steps[1]['count']} dropped off" in items[1]
    assert f"{100 * steps[1]['conversion']:.1f}% overall" in items[1]
    breakdown = {"labels": [step_name(s, i) for i, s in enumerate(steps)],
                 "series": [{"name": value_text(b["breakdown_value"]),
                             "values": [s["count"] for s in b["steps"]]}
                            for b in answer["breakdown"]]}
    assert breakdown["series"]
    wait_series(page, ".result figure.chart:nth-of-type(2)", breakdown)


def test_retention_heat_table(signed_in: SignedIn) -> None:
    page = builder(signed_in)
    page.select_option("#insight-kind", "retention")
    page.select_option("#ret-period", "day")
    page.fill("#ret-periods", "5")
    page.press("#ret-periods", "Tab")
    assert doc_of(page)["periods"] == 5
    answer = check_chart(page, ".result .heat")
    assert answer["cohorts"] and answer["cohorts"][0]["size"] == answer["cohorts"][0]["values"][0]
    rows = page.locator(".result .heat tbody tr")
    expect(rows).to_have_count(len(answer["cohorts"]))
    first = answer["cohorts"][0]
    cells = [c.strip() for c in rows.first.locator("td").all_inner_texts()]
    assert cells[:1 + len(first["values"])] == [str(first["size"])] + [
        str(v) for v in first["values"]]
    shade = rows.first.locator("td.heat-cell").first.evaluate("e => e.style.background")
    assert "rgba" in shade


def test_paths_sankey(signed_in: SignedIn) -> None:
    page = builder(signed_in)
    page.select_option("#insight-kind", "paths")
    page.fill("#paths-depth", "3")
    page.press("#paths-depth", "Tab")
    answer = check_chart(page, ".result .sankey")
    assert answer["paths"]
    links = path_links(answer)
    wait_series(page, ".result .sankey", links, attr="data-links")
    expect(page.locator(".result .sankey svg > g:first-child > path")).to_have_count(len(links))
    names = set(page.locator(".result .sankey svg text").all_text_contents())
    assert names == {s for p in answer["paths"] for s in p["steps"] if len(p["steps"]) > 1}


def test_stickiness_and_lifecycle(signed_in: SignedIn) -> None:
    page = builder(signed_in)
    page.select_option("#insight-kind", "stickiness")
    set_text(page, "series-0-event", "$page")
    answer = check_chart(page)
    assert sum(answer["series"][0]["values"]) > 0
    expect(page.locator(".result figure.chart").first).to_have_attribute("data-kind", "bar")
    page.select_option("#insight-kind", "lifecycle")
    set_text(page, "life-event", "$page")
    page.select_option("#life-interval", "day")
    answer = check_chart(page)
    assert sum(answer["new"]) > 0
    expect(page.locator(".result figure.chart").first).to_have_attribute("data-kind", "stacked")


def test_a_cohort_is_created_and_used_as_the_filter(signed_in: SignedIn) -> None:
    page = builder(signed_in)
    name = f"twice-{time.time_ns()}"
    page.fill("#cohort-name", name)
    page.fill("#cohort-event", "$page")
    page.fill("#cohort-min", "2")
    page.get_by_role("button", name="Create cohort").click()
    expect(page.get_by_role("status").filter(has_text=name)).to_be_visible(timeout=TIMEOUT)
    listed = {c["name"]: c["id"] for c in api_get(page, "/cohorts")["cohorts"]}
    assert doc_of(page)["cohort"] == listed[name]
    expect(page.locator("#doc-cohort")).to_have_value(str(listed[name]))
    with_cohort = check_chart(page)
    everyone = api_post(page, "/query", {k: v for k, v in doc_of(page).items() if k != "cohort"})
    assert sum(with_cohort["series"][0]["values"]) <= sum(everyone["series"][0]["values"])


def test_json_edits_rerender_and_errors_are_shown(signed_in: SignedIn) -> None:
    page = builder(signed_in)
    check_chart(page)
    doc = {"kind": "trends", "series": [{"event": "Signed Up", "math": "persons"}],
           "interval": "hour", "date_from": "-2d"}
    page.fill("#insight-json", json.dumps(doc))
    page.get_by_role("button", name="Apply JSON and run").click()
    answer = check_chart(page)
    assert doc_of(page) == doc and len(answer["series"][0]["dates"]) > 24
    expect(page.locator("#series-0-event")).to_have_value("Signed Up")
    page.fill("#insight-json", "{nope")
    page.get_by_role("button", name="Apply JSON and run").click()
    expect(page.locator(".json .error")).to_contain_text("Invalid JSON")
    bad = {"kind": "trends", "series": []}
    refused = api_post(page, "/query", bad, status=400)
    page.fill("#insight-json", json.dumps(bad))
    page.get_by_role("button", name="Apply JSON and run").click()
    box = page.locator(".result .error")
    expect(box).to_contain_text(refused["message"])
    expect(box).to_have_attribute("data-code", refused["code"])


def test_csv_equals_the_table_and_png_is_a_png(signed_in: SignedIn) -> None:
    page = builder(signed_in)
    answer = check_chart(page)
    name, data = download_text(page, page.locator(".result").get_by_role(
        "button", name="Download CSV"))
    assert name.endswith(".csv")
    head, rows = table_rows(page, ".result")
    assert parse_csv(data) == [head, *rows]
    assert [r[0] for r in rows] == answer["series"][0]["dates"]
    assert [r[1] for r in rows] == [str(v) for v in answer["series"][0]["values"]]
    for kind, selector in (("trends", MAIN), ("retention", ".result .heat"),
                           ("paths", ".result .sankey")):
        page.select_option("#insight-kind", kind)
        check_chart(page, selector)
        name, data = download_text(page, page.get_by_role("button", name="Download PNG"))
        assert name.endswith(".png") and data.startswith(PNG) and len(data) > 1000, kind


def test_save_lists_it_in_dashboards_and_id_opens_it(signed_in: SignedIn) -> None:
    page = builder(signed_in)
    page.select_option("#insight-kind", "lifecycle")
    check_chart(page)
    name = f'<img src=x onerror=alert(1)> lifecycle {time.time_ns()}'
    page.fill("#insight-name", name)
    page.get_by_role("button", name="Save insight").click()
    expect(page.get_by_role("status").filter(has_text="Saved as")).to_be_visible(timeout=TIMEOUT)
    saved = [i for i in api_get(page, "/insights")["insights"] if i["name"] == name]
    assert len(saved) == 1 and saved[0]["query"] == doc_of(page)
    expect(page).to_have_url(f"{page.url.split('?')[0]}?id={saved[0]['id']}")
    other = signed_in("analyst", f"/insights?id={saved[0]['id']}")
    run = api_get(other, f"/insights/{saved[0]['id']}")
    wait_series(other, MAIN, expected(run["result"]))
    assert doc_of(other) == run["query"]
    expect(other.locator("#insight-name")).to_have_value(name)
    other.goto(other.url.split("/insights")[0] + "/dashboards")
    expect(other.get_by_role("heading", name=name)).to_be_visible(timeout=TIMEOUT)
    assert other.locator("img[src=x]").count() == 0


def test_a_viewer_sees_the_servers_403(signed_in: SignedIn) -> None:
    page = signed_in("viewer", "/insights")
    refused = api_post(page, "/query", {"kind": "trends", "series": [{"event": "$page"}]},
                       status=403)
    box = page.locator(".result .error")
    expect(box).to_contain_text(refused["message"], timeout=TIMEOUT)
    expect(box).to_contain_text("This needs role analyst; you are signed in as viewer")
    expect(page.locator(MAIN)).to_have_count(0)


def test_axe_and_both_widths(signed_in: SignedIn, axe_check: Callable[..., Any],
                             screenshot: Callable[..., Any]) -> None:
    for width in (1280, 375):
        page = builder(signed_in, width=width)
        check_chart(page)
        axe_check(page)
        assert_fits(page, width)
        page.select_option("#insight-kind", "funnel")
        check_chart(page)
        axe_check(page)
        if width == 1280:
            screenshot(page, "insights")
    page.select_option("#insight-kind", "retention")
    check_chart(page, ".result .heat")
    axe_check(page)
    page.select_option("#insight-kind", "paths")
    check_chart(page, ".result .sankey")
    axe_check(page)
    assert read_series(page, ".result .sankey")["series"]
