"""The SQL page in Chromium: CodeMirror (its own lazy chunk), the views listed as the API
lists them, results equal to the API's answer, CSV equal to the table, and the API's
limits and errors (row limit, forbidden statement, personal column) shown as given."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, expect

from tests.e2e.web.helpers import assert_fits
from tests.e2e.web.insight_series import (
    TIMEOUT,
    api_get,
    api_post,
    download_text,
    parse_csv,
    table_rows,
)

SignedIn = Callable[..., Page]


def sql_page(signed_in: SignedIn, role: str = "analyst", width: int = 1280) -> Page:
    page = signed_in(role, "/sql", width=width)
    expect(page.locator(".cm-content")).to_be_visible(timeout=TIMEOUT)
    return page


def run(page: Page, query: str, limit: int | None = None) -> None:
    page.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(query)
    if limit is not None:
        page.fill("#sql-limit", str(limit))
    page.get_by_role("button", name="Run", exact=True).click()


def editor_text(page: Page) -> str:
    text: str = page.evaluate(
        "() => [...document.querySelectorAll('.cm-line')].map(l => l.textContent).join('\\n')")
    return text


def test_views_are_listed_as_the_api_lists_them(signed_in: SignedIn) -> None:
    page = sql_page(signed_in)
    views = api_get(page, "/sql/views")["views"]
    for v in views:
        box = page.locator(".sql-views details").filter(
            has=page.locator(f"summary code:text-is('{v['name']}')"))
        expect(box).to_have_count(1)
        shown = box.locator("li code").all_text_contents()
        assert shown == [c["name"] for c in v["columns"]], v["name"]
        if v["hidden"]:
            expect(box.locator("p")).to_contain_text(", ".join(v["hidden"]))
    assert "person_id" not in page.locator(".sql-views li").all_text_contents()


def test_a_query_runs_and_its_table_and_csv_equal_the_answer(signed_in: SignedIn) -> None:
    page = sql_page(signed_in)
    query = ("SELECT event, count(*) AS n FROM events WHERE event IS NOT NULL"
             " GROUP BY event ORDER BY n DESC, event")
    run(page, query)
    assert editor_text(page) == query
    answer = api_post(page, "/query", {"kind": "sql", "query": query, "limit": 10000})
    result = page.locator(".sql-result")
    expect(result).to_have_attribute("data-rows", str(len(answer["rows"])), timeout=TIMEOUT)
    head, rows = table_rows(page, ".sql-result")
    assert head == answer["columns"] == ["event", "n"]
    assert rows == [[str(c) for c in r] for r in answer["rows"]]
    name, data = download_text(page, result.get_by_role("button", name="Download CSV"))
    assert name == "sql.csv"
    assert parse_csv(data) == [head, *rows]


def test_the_row_limit_is_shown_as_truncated(signed_in: SignedIn) -> None:
    page = sql_page(signed_in)
    query = "SELECT message_id FROM events ORDER BY message_id"
    run(page, query, limit=7)
    answer = api_post(page, "/query", {"kind": "sql", "query": query, "limit": 7})
    assert answer["truncated"] is True and len(answer["rows"]) == 7
    expect(page.locator(".sql-result")).to_have_attribute("data-rows", "7", timeout=TIMEOUT)
    expect(page.locator(".sql-result .notice")).to_contain_text("truncated")


def test_errors_are_shown_as_the_api_gives_them(signed_in: SignedIn) -> None:
    page = sql_page(signed_in)
    for query, status in (("DELETE FROM events", 400), ("SELECT * FROM secrets", 400),
                          ("SELECT person_id FROM events", 403), ("SELECT nope FROM events", 400),
                          ("SELEC nope", 400)):
        refused = api_post(page, "/query", {"kind": "sql", "query": query, "limit": 10000},
                           status=status)
        run(page, query)
        box = page.locator(".sql-main .error")
        expect(box).to_have_attribute("data-code", refused["code"], timeout=TIMEOUT)
        expect(box).to_contain_text(refused["message"])
        expect(page.locator(".sql-result")).to_have_count(0)


def test_the_time_limit_is_shown_as_the_api_gives_it(signed_in: SignedIn) -> None:
    page = sql_page(signed_in)
    query = "SELECT count(*) AS n FROM events a, events b, events c, events d"
    page.fill("#sql-timeout", "0.5")
    run(page, query)
    box = page.locator(".sql-main .error")
    expect(box).to_have_attribute("data-code", "timeout", timeout=TIMEOUT)
    refused = api_post(page, "/query", {"kind": "sql", "query": query, "timeout_s": 0.5},
                       status=400)
    assert refused["code"] == "timeout"
    expect(box).to_contain_text(refused["message"])


def test_codemirror_is_a_lazy_chunk(signed_in: SignedIn) -> None:
    page = signed_in("analyst", "/dashboards")
    scripts: list[str] = []
    page.on("request", lambda r: scripts.append(r.url) if r.url.endswith(".js") else None)
    page.reload()
    expect(page.get_by_role("heading", level=1, name="Dashboards")).to_be_visible()
    assert scripts and not [s for s in scripts if "/editor-" in s]
    page.get_by_role("link", name="SQL").click()
    expect(page.locator(".cm-content")).to_be_visible(timeout=TIMEOUT)
    assert [s for s in scripts if "/editor-" in s]


def test_a_viewer_sees_the_servers_403(signed_in: SignedIn) -> None:
    page = signed_in("viewer", "/sql")
    refused = api_get(page, "/sql/views", status=403)
    box = page.locator(".sql-views .error")
    expect(box).to_contain_text(refused["message"], timeout=TIMEOUT)
    expect(box).to_contain_text("you are signed in as viewer")


def test_axe_and_both_widths(signed_in: SignedIn, axe_check: Callable[..., Any],
                             screenshot: Callable[..., Any]) -> None:
    for width in (1280, 375):
        page = sql_page(signed_in, width=width)
        run(page, "SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type")
        expect(page.locator(".sql-result")).to_be_visible(timeout=TIMEOUT)
        axe_check(page)
        assert_fits(page, width)
        if width == 1280:
            screenshot(page, "sql")
