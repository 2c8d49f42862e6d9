"""The privacy center (/privacy) in Chromium against the real server with demo data: an
erasure filed in the UI finishes and shows its receipt (and the person is gone per the
API); an access request's zip downloads; an analyst sees the server's 403; the consent
figures equal the API's answer; a person lookup writes an audit entry that the Audit tab
shows; the tabs work by keyboard; axe passes on every tab at 1280 and 375 px.

The people these tests erase or look up are their own, sent through the collector with
consent; the demo's people are left alone."""

from __future__ import annotations

import io
import json
import re
import uuid
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.e2e.web.helpers import TIMEOUT_MS, Web, assert_fits

TABS = ("requests", "consent", "record", "audit", "person")
SLOW_MS = 120_000
"""A request's worker or the first chart may take longer than one expect on a busy machine."""


def api(web: Web, method: str, path: str, role: str = "privacy", **kw: Any) -> httpx.Response:
    return httpx.request(method, web.url + "/api/v1" + path, timeout=120,
                         headers={"Authorization": f"Bearer {web.keys[role]}"}, **kw)


def new_person(web: Web, prefix: str) -> str:
    """A person of this test's own: consent to analytics, then an identify (with a
    personal trait), a page and a track through the collector; processed."""
    uid = f"{prefix}-{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC).isoformat()
    r = httpx.post(web.url + "/v1/consent", auth=(web.write_key, ""), timeout=60, json={
        "userId": uid, "purposes": {"analytics": True}, "channel": "test"})
    assert r.status_code == 200, r.text
    consent = {"consent": {"categoryPreferences": {"analytics": True}}}
    batch = [
        {"type": "identify", "userId": uid, "timestamp": now, "context": consent,
         "traits": {"email": f"{uid}@example.test", "plan": "pro"}},
        {"type": "page", "userId": uid, "name": "Home", "timestamp": now, "context": consent,
         "properties": {"path": "/"}},
        {"type": "track", "userId": uid, "event": "Signed Up", "timestamp": now,
         "context": consent},
    ]
    r = httpx.post(web.url + "/v1/batch", auth=(web.write_key, ""), timeout=60,
                   json={"batch": batch})
    assert r.status_code == 200, r.text
    web.server.wait_processed(timeout=180)
    r = api(web, "POST", "/privacy/persons/lookup", json={"userId": uid})
    assert r.status_code == 200, r.text
    assert r.json()["events"]["total"] == len(batch)
    return uid


def file_request(page: Any, kind: str, user_id: str) -> str:
    page.get_by_label("Request type").select_option(kind)
    form = page.locator("form", has=page.get_by_label("Request type"))
    form.get_by_label("Identifier kind").select_option("userId")
    form.get_by_label("Identifier", exact=True).fill(user_id)
    page.get_by_role("button", name="File the request").click()
    detail = page.locator(".request-detail")
    expect(detail).to_have_attribute("data-status", "done", timeout=SLOW_MS)
    rid: str = detail.get_attribute("data-request")
    return rid


def test_erasure_filed_in_the_ui_finishes_and_shows_its_receipt(web: Web, signed_in: Any) -> None:
    uid = new_person(web, "erase-me")
    person = api(web, "POST", "/privacy/persons/lookup", json={"userId": uid}).json()
    person_id = person["profile"][0]["person_id"]
    assert events_of(web, person_id) == 3
    page = signed_in("privacy", "/privacy")
    rid = file_request(page, "erasure", uid)
    answer = api(web, "GET", f"/privacy/requests/{rid}").json()
    assert answer["status"] == "done" and answer["type"] == "erasure"
    receipt = page.locator(".receipt")
    expect(receipt).to_be_visible()
    expect(receipt).to_contain_text(answer["result"]["digest"])
    expect(receipt).to_contain_text(answer["result"]["id"])
    assert answer["result"]["persons"] == 1
    # the queue lists it as done
    row = page.locator(f"#queue-table tr[data-request='{rid}']")
    expect(row).to_contain_text("done", timeout=TIMEOUT_MS)
    # the person's rows are gone, per the API
    r = api(web, "POST", "/privacy/persons/lookup", json={"userId": uid})
    assert r.status_code == 404 and r.json()["code"] == "person_erased", r.text
    assert events_of(web, person_id) == 0


def test_an_access_request_zip_downloads(web: Web, signed_in: Any) -> None:
    uid = new_person(web, "access-me")
    page = signed_in("privacy", "/privacy")
    rid = file_request(page, "access", uid)
    with page.expect_download(timeout=SLOW_MS) as dl:
        page.get_by_role("button", name="Download the export (zip)").click()
    data = Path(dl.value.path()).read_bytes()
    assert dl.value.suggested_filename == f"{rid}-export.zip"
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        identifiers = json.loads(z.read("identifiers.json"))
        events = json.loads(z.read("events.json"))
    assert uid in identifiers["userIds"]
    summary = api(web, "GET", f"/privacy/requests/{rid}").json()["result"]
    assert len(events) == summary["events"] == 3


def test_an_analyst_sees_the_servers_403(web: Web, signed_in: Any) -> None:
    page = signed_in("analyst", "/privacy")
    box = page.locator(".error[data-status='403']")
    expect(box).to_be_visible(timeout=TIMEOUT_MS)
    r = api(web, "GET", "/audit/verify", role="analyst")
    assert r.status_code == 403
    expect(box).to_contain_text(r.json()["message"])
    expect(box).to_contain_text("This needs role privacy; you are signed in as analyst.")
    expect(page.get_by_role("tablist")).to_have_count(0)


def _series(page: Any, selector: str) -> dict[str, Any]:
    """The numbers a chart element draws (after it has drawn them, for a chart)."""
    el = page.locator(selector)
    if "chart" in selector:
        expect(el).to_have_attribute("data-render-ms", re.compile(r"^\d"), timeout=SLOW_MS)
    else:
        expect(el).to_have_count(1, timeout=SLOW_MS)
    out: dict[str, Any] = json.loads(el.get_attribute("data-series"))
    return out


def events_of(web: Web, person_id: int) -> int:
    r = api(web, "POST", "/query", json={
        "kind": "sql", "query": f"SELECT count(*) AS n FROM events WHERE person_id = {person_id}"})
    assert r.status_code == 200, r.text
    return int(r.json()["rows"][0][0])


def test_consent_figures_equal_the_apis_answer(web: Web, signed_in: Any) -> None:
    page = signed_in("privacy", "/privacy?tab=consent")
    statements = _series(page, "#consent-statements .chart")
    visitors = _series(page, "#consent-visitors .chart")
    events = _series(page, "#consent-events .chart")
    gpc = _series(page, "#gpc-share")
    stats = api(web, "GET", "/consent/stats").json()
    purposes = [p["purpose"] for p in stats["purposes"]]
    assert statements == {"labels": purposes, "series": [
        {"name": k, "values": [p[k] for p in stats["purposes"]]}
        for k in ("granted", "refused", "withdrawn")]}
    for got, k in ((visitors, "visitors_with_consent_share"),
                   (events, "events_with_consent_share")):
        assert got == {"labels": purposes, "series": [
            {"name": k, "values": [p[k] for p in stats["purposes"]]}]}
    assert gpc == {"labels": ["gpc_share"], "series": [{"name": "gpc_share",
                                                        "values": [stats["gpc_share"]]}]}
    assert sum(p["granted"] for p in stats["purposes"]) > 0  # the demo's consent is there
    # the table of statements per day holds the API's rows
    rows = page.locator("#panel-consent .data-table").first
    expect(rows).to_contain_text(f"{len(stats['by_day'])} row")


def test_person_lookup_is_audited_and_the_audit_tab_shows_it(web: Web, signed_in: Any) -> None:
    uid = new_person(web, "look-me-up")
    page = signed_in("privacy", "/privacy?tab=person")
    expect(page.get_by_role("note")).to_contain_text("recorded in the audit log")
    page.get_by_label("Identifier", exact=True).fill(uid)
    page.get_by_role("button", name="Look up").click()
    result = page.locator("#person-result")
    expect(result).to_have_attribute("data-events-total", "3", timeout=SLOW_MS)
    expect(page.locator("#person-traits")).to_contain_text(f"{uid}@example.test")
    expect(page.locator("#person-timeline tbody tr")).to_have_count(3)
    newest = api(web, "GET", "/audit", params={"action": "person.viewed", "limit": 1}
                 ).json()["entries"][0]
    assert newest["actor"] == f"key:{web.key_ids['privacy']}"
    assert uid not in json.dumps(newest)  # hashed, never the raw id
    # the Audit tab shows the entry
    page.get_by_role("tab", name="Audit log").click()
    page.get_by_label("Action (prefix)").fill("person.viewed")
    page.get_by_role("button", name="Apply").click()
    row = page.locator(f"#audit-table tr[data-seq='{newest['seq']}']")
    expect(row).to_contain_text("person.viewed", timeout=SLOW_MS)
    expect(row).to_contain_text(newest["actor"])
    page.get_by_role("button", name="Verify").click()
    verdict = api(web, "GET", "/audit/verify").json()
    assert verdict["ok"] is True
    expect(page.locator("#verify-result")).to_have_attribute("data-ok", "true")


def test_tabs_work_by_keyboard(web: Web, signed_in: Any) -> None:
    page = signed_in("privacy", "/privacy")
    first = page.get_by_role("tab", name="Requests")
    expect(first).to_have_attribute("aria-selected", "true", timeout=TIMEOUT_MS)
    first.focus()
    page.keyboard.press("ArrowRight")
    consent = page.get_by_role("tab", name="Consent")
    expect(consent).to_have_attribute("aria-selected", "true")
    expect(consent).to_be_focused()
    assert "tab=consent" in page.url
    page.keyboard.press("End")
    expect(page.get_by_role("tab", name="Person lookup")).to_be_focused()
    page.keyboard.press("ArrowRight")  # wraps around
    expect(first).to_be_focused()
    expect(page.get_by_role("tabpanel")).to_have_attribute("aria-labelledby", "tab-requests")


@pytest.mark.parametrize("tab", TABS)
def test_every_tab_passes_axe_at_both_widths(web: Web, signed_in: Any, axe_check: Any,
                                             screenshot: Any, tab: str) -> None:
    for width in (1280, 375):
        page = signed_in("privacy", f"/privacy?tab={tab}", width=width)
        panel = page.get_by_role("tabpanel")
        expect(panel).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator(".loading")).to_have_count(0, timeout=SLOW_MS)
        axe_check(page)
        # nothing wider than the viewport but the scrolling tables
        assert_fits(page, width, context=tab)
    screenshot(page, f"privacy-{tab}")
