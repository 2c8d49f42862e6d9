"""The live events page in Chromium: an event sent through the collector shows up once
processed, the event filter keeps others out, and no raw userId reaches the page (a
canary userId is planted)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.e2e.web.helpers import TIMEOUT_MS, Web


def send(web: Web, user_id: str, event: str) -> None:
    r = httpx.post(web.url + "/v1/batch", auth=(web.write_key, ""), timeout=30, json={
        "batch": [{"type": "track", "userId": user_id, "event": event,
                   "properties": {"path": "/live-test"},
                   "context": {"consent": {"categoryPreferences": {"analytics": True}}}}]})
    assert r.status_code == 200, r.text


def test_a_processed_event_shows_up_with_a_pseudonymous_id(web: Web, signed_in: Any,
                                                           axe_check: Any, screenshot: Any
                                                           ) -> None:
    page = signed_in("analyst", "/live")
    expect(page.locator('[data-listening="1"]')).to_have_count(1, timeout=TIMEOUT_MS)
    canary = "canary-user-" + uuid.uuid4().hex
    name = "Live " + uuid.uuid4().hex[:8]
    send(web, canary, name)
    row = page.locator(f'tr[data-event="{name}"]')
    expect(row).to_have_count(1, timeout=TIMEOUT_MS)
    expect(row.locator("td").nth(2)).to_have_text(web.source)
    person = row.locator("td").nth(3).inner_text()
    assert person.isdigit()
    assert canary not in page.content()
    # the person's key is the warehouse's pseudonymous id of that event
    got = web.server.sql("SELECT person_id FROM events WHERE event = ?", [name])
    assert [str(r[0]) for r in got] == [person]
    axe_check(page)
    screenshot(page, "live")


def test_the_event_filter_keeps_other_events_out(web: Web, signed_in: Any) -> None:
    wanted = "Wanted " + uuid.uuid4().hex[:8]
    other = "Other " + uuid.uuid4().hex[:8]
    page = signed_in("analyst", "/live")
    page.fill("#live-event", wanted)
    page.get_by_role("button", name="Apply").click()
    expect(page.locator('[data-listening="1"]')).to_have_count(1, timeout=TIMEOUT_MS)
    assert "event=Wanted" in page.url
    send(web, "someone-" + uuid.uuid4().hex, other)
    send(web, "someone-" + uuid.uuid4().hex, wanted)
    expect(page.locator(f'tr[data-event="{wanted}"]')).to_have_count(1, timeout=TIMEOUT_MS)
    web.server.wait_processed()
    assert page.locator(f'tr[data-event="{other}"]').count() == 0
    assert set(page.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.event)")) == {wanted}
