"""Saved insights and dashboards in Chromium: an analyst creates a dashboard in the UI;
a viewer reads it (each tile's data-series equal to the API's run of that saved insight)
with no create or delete; refresh re-runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, expect

from tests.e2e.web.helpers import assert_fits
from tests.e2e.web.insight_series import (
    TIMEOUT,
    api_get,
    api_post,
    expected,
    wait_series,
)

SignedIn = Callable[..., Page]
DOCS = [
    {"kind": "trends", "series": [{"event": "$page"}], "date_from": "-7d"},
    {"kind": "funnel", "steps": [{"event": "$page"}, {"event": "Signed Up"}], "window": "7d",
     "date_from": "-7d"},
    {"kind": "retention", "start_event": "$page", "return_event": "$page", "period": "day",
     "periods": 4},
]


def saved_insights(page: Page, tag: str) -> list[dict[str, Any]]:
    return [api_post(page, "/insights", {"name": f"{tag} {d['kind']}", "query": d})
            for d in DOCS]


def tile(page: Page, insight_id: int) -> str:
    return f"article.tile[data-insight='{insight_id}'] .insight-view [data-series]"


def test_an_analyst_creates_a_dashboard_a_viewer_reads_it(signed_in: SignedIn) -> None:
    analyst = signed_in("analyst", "/dashboards")
    tag = f"dash {time.time_ns()}"
    made = saved_insights(analyst, tag)
    analyst.reload()
    analyst.wait_for_load_state("networkidle")  # the page's own fetches re-render the form
    name = f'"><script>alert(1)</script> {tag}'
    analyst.fill("#dashboard-name", name)
    for m in made:
        # click, then wait for the box to be checked: on a busy machine a re-render of the
        # page (its lists arriving) can land between Playwright's click and its own check
        # of the state (`check()` then fails with "did not change its state") before the
        # change handler's state update shows
        box = analyst.get_by_role("checkbox", name=m["name"], exact=True)
        box.click()
        expect(box).to_be_checked(timeout=TIMEOUT)
    analyst.get_by_role("button", name="Create dashboard").click()
    expect(analyst.get_by_role("heading", level=1)).to_have_text(name, timeout=TIMEOUT)
    board_id = int(analyst.url.split("id=")[1])
    assert api_get(analyst, f"/dashboards/{board_id}")["insights"] == [
        {"id": m["id"], "name": m["name"]} for m in made]

    viewer = signed_in("viewer", f"/dashboards?id={board_id}")
    expect(viewer.get_by_role("heading", level=1)).to_have_text(name, timeout=TIMEOUT)
    expect(viewer.locator("article.tile")).to_have_count(len(made), timeout=TIMEOUT)
    for m in made:
        run = api_get(viewer, f"/insights/{m['id']}")
        wait_series(viewer, tile(viewer, m["id"]), expected(run["result"]))
        expect(viewer.get_by_role("heading", name=m["name"])).to_be_visible(timeout=TIMEOUT)
    # read-only: no create or delete, no builder links
    expect(viewer.get_by_role("button", name="Create dashboard")).to_have_count(0)
    expect(viewer.get_by_role("button", name="Delete dashboard", exact=False)).to_have_count(0)
    expect(viewer.get_by_role("link", name="Open in the builder")).to_have_count(0)
    assert viewer.locator("script:text('alert(1)')").count() == 0
    # and the server says no, whatever the page shows
    api_post(viewer, "/dashboards", {"name": "x", "insights": []}, status=403)


def test_refresh_reruns_every_tile(signed_in: SignedIn) -> None:
    page = signed_in("analyst", "/dashboards")
    made = saved_insights(page, f"refresh {time.time_ns()}")
    board = api_post(page, "/dashboards", {"name": "refresh", "insights": [made[0]["id"]]})
    page.goto(page.url.split("?")[0] + f"?id={board['id']}")
    sel = tile(page, made[0]["id"])
    wait_series(page, sel, expected(api_get(page, f"/insights/{made[0]['id']}")["result"]))
    path = f"/api/v1/insights/{made[0]['id']}"
    with page.expect_response(lambda r: r.url.endswith(path), timeout=TIMEOUT) as rerun:
        page.get_by_role("button", name="Refresh", exact=True).click()
    assert rerun.value.status == 200
    wait_series(page, sel, expected(api_get(page, f"/insights/{made[0]['id']}")["result"]))


def test_delete_a_dashboard(signed_in: SignedIn) -> None:
    page = signed_in("analyst", "/dashboards")
    name = f"to delete {time.time_ns()}"
    board = api_post(page, "/dashboards", {"name": name, "insights": []})
    page.reload()
    page.get_by_role("button", name=f"Delete dashboard {name}").click()
    expect(page.get_by_role("link", name=name)).to_have_count(0, timeout=TIMEOUT)
    api_get(page, f"/dashboards/{board['id']}", status=404)


def test_axe_and_both_widths(signed_in: SignedIn, axe_check: Callable[..., Any],
                             screenshot: Callable[..., Any]) -> None:
    # a name of one long word (a careless or a hostile one) wraps at 375 px: in the list
    # of dashboards and in the new dashboard's list of saved insights
    long = '"><script>window.__pwned=1</script>' + "w" * 60 + str(time.time_ns())
    analyst = signed_in("analyst", "/dashboards")
    made = api_post(analyst, "/insights", {"name": long, "query": DOCS[0]})
    api_post(analyst, "/dashboards", {"name": long, "insights": [made["id"]]})
    for role in ("viewer", "analyst"):
        for width in (1280, 375):
            page = signed_in(role, "/dashboards", width=width)
            expect(page.get_by_role("heading", name="Saved insights")).to_be_visible(
                timeout=TIMEOUT)
            expect(page.locator(".loading")).to_have_count(0, timeout=TIMEOUT)
            axe_check(page)
            assert_fits(page, width, context=role)
            if width == 1280 and role == "viewer":
                screenshot(page, "dashboards")
