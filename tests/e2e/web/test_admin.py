"""The admin page (/admin) in Chromium against the real server with demo data: a source
created in the page sends through the collector with the key the page showed once; an
API key created in the page signs in, and revoking it ends that session; a privacy
user sees the server's 403; the health tiles hold the numbers the API answered; both
widths, axe, no console errors."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.e2e.web.helpers import TIMEOUT_MS, Web, assert_fits

_ANY = re.compile(r".+")


def admin_api(web: Web, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, web.url + "/api/v1" + path, timeout=60,
                         headers={"Authorization": f"Bearer {web.keys['admin']}"}, **kw)


def send(web: Web, key: str) -> httpx.Response:
    return httpx.post(web.url + "/v1/batch", auth=(key, ""), timeout=60, json={
        "batch": [{"type": "track", "event": "Admin UI Test", "anonymousId": "admin-ui-1"}]})


def shown_once(page: Any, kind: str) -> str:
    box = page.locator(f"[data-secret={kind}] input")
    expect(box).to_be_visible(timeout=TIMEOUT_MS)
    value: str = box.input_value()
    return value


def test_source_created_in_the_page_sends_with_the_key_shown_once(
        web: Web, signed_in: Any, axe_check: Any, screenshot: Any) -> None:
    page = signed_in("admin", "/admin")
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    name = f"ui-src-{secrets.token_hex(4)}"
    page.locator("#new-source-name").fill(name)
    page.locator("#new-source-origins").fill("https://ui.example\nhttp://localhost:3000")
    page.locator("#new-source-rate").fill("0")
    page.get_by_role("button", name="Create source").click()
    key = shown_once(page, "write_key")
    assert key.startswith("wk_")
    expect(page.locator("[data-secret=write_key]")).to_contain_text("shown once")
    row = page.locator("[data-testid=sources-table] tr", has_text=name)
    expect(row).to_have_count(1, timeout=TIMEOUT_MS)
    assert key not in row.inner_text()
    # the collector takes the key (consent aside: the answer is 200 either way); a wrong
    # key is refused
    assert send(web, key).status_code == 200
    assert send(web, key[:-2] + "xx").status_code == 401
    listed = admin_api(web, "GET", "/sources")
    assert listed.status_code == 200 and key not in listed.text
    made = next(s for s in listed.json()["sources"] if s["name"] == name)
    assert made["origins"] == ["https://ui.example", "http://localhost:3000"]
    assert made["rate_limit"] == 0
    axe_check(page)
    screenshot(page, "admin-source-created")
    # the key is shown once: after "I have saved it" it is nowhere in the page
    page.get_by_role("button", name="I have saved it").click()
    expect(page.locator("[data-secret=write_key]")).to_have_count(0, timeout=TIMEOUT_MS)
    assert key not in page.content()
    page.reload()
    expect(row).to_have_count(1, timeout=TIMEOUT_MS)
    assert key not in page.content()
    assert dialogs == []


def test_source_edited_in_the_page(web: Web, signed_in: Any, axe_check: Any) -> None:
    name = f"ui-edit-{secrets.token_hex(4)}"
    made = admin_api(web, "POST", "/sources", json={"name": name})
    assert made.status_code == 200, made.text
    page = signed_in("admin", "/admin")
    page.get_by_role("button", name=f"Edit source {name}").click()
    page.locator("#edit-source-origins").fill("https://edited.example")
    page.locator("#edit-source-rate").fill("7")
    page.locator("#edit-source-purposes").fill("analytics:legitimate_interest")
    axe_check(page)
    page.get_by_role("button", name="Save changes").click()
    row = page.locator(f"tr[data-source-id={made.json()['id']}]")
    expect(row).to_contain_text("7/s", timeout=TIMEOUT_MS)
    expect(row).to_contain_text("https://edited.example")
    src = next(s for s in admin_api(web, "GET", "/sources").json()["sources"]
               if s["name"] == name)
    assert src["rate_limit"] == 7 and src["origins"] == ["https://edited.example"]
    assert src["purposes"] == {"analytics": "legitimate_interest"}
    # a refused change shows the server's message
    page.get_by_role("button", name=f"Edit source {name}").click()
    page.locator("#edit-source-origins").fill("javascript:alert(1)")
    page.get_by_role("button", name="Save changes").click()
    error = page.locator(".admin-form .error[data-status='400']")
    expect(error).to_contain_text("is not an origin", timeout=TIMEOUT_MS)


def test_markup_in_a_source_name_is_text(web: Web, signed_in: Any) -> None:
    name = f'<img src=x onerror=alert(1)>"><b>{secrets.token_hex(3)}'
    page = signed_in("admin", "/admin")
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.locator("#new-source-name").fill(name)
    page.get_by_role("button", name="Create source").click()
    shown_once(page, "write_key")
    cell = page.locator("[data-testid=sources-table] td.source-name", has_text=name)
    expect(cell).to_have_count(1, timeout=TIMEOUT_MS)
    assert cell.inner_text() == name
    assert page.locator("[data-testid=sources-table] img, [data-testid=sources-table] b").count() == 0
    assert dialogs == []


def test_key_created_in_the_page_signs_in_and_revoking_ends_its_session(
        web: Web, signed_in: Any, web_browser: Any) -> None:
    page = signed_in("admin", "/admin")
    page.locator("#new-key-name").fill("ui analyst")
    page.locator("#new-key-role").select_option("analyst")
    page.get_by_role("button", name="Create key").click()
    key = shown_once(page, "api_key")
    key_id = key.split("_")[1]
    row = page.locator(f"tr[data-key-id='{key_id}']")
    expect(row).to_contain_text("analyst", timeout=TIMEOUT_MS)
    # a new browser context signs in with it
    ctx = web_browser.new_context()
    try:
        other = ctx.new_page()
        r = other.request.post(web.url + "/api/v1/session", data={"key": key})
        assert r.ok, r.text()
        assert r.json()["role"] == "analyst" and r.json()["key_id"] == key_id
        assert other.request.get(web.url + "/api/v1/session").status == 200
        assert other.request.get(web.url + "/api/v1/cohorts").status == 200
        # revoke, after the confirmation
        row.get_by_role("button", name=f"Revoke key ui analyst ({key_id})").click()
        row.get_by_role("button", name="Yes, revoke").click()
        expect(row).to_contain_text("revoked", timeout=TIMEOUT_MS)
        assert other.request.get(web.url + "/api/v1/session").status == 401
        assert other.request.get(web.url + "/api/v1/cohorts").status == 401
    finally:
        ctx.close()
    keys = admin_api(web, "GET", "/keys").json()["keys"]
    assert next(k for k in keys if k["id"] == key_id)["revoked_at"] is not None


def test_cancelled_revocation_keeps_the_key(web: Web, signed_in: Any) -> None:
    made = admin_api(web, "POST", "/keys", json={"role": "viewer", "name": "keep me"}).json()
    page = signed_in("admin", "/admin")
    row = page.locator(f"tr[data-key-id='{made['id']}']")
    row.get_by_role("button", name=f"Revoke key keep me ({made['id']})").click()
    row.get_by_role("button", name="Cancel").click()
    expect(row.get_by_role("button", name="Yes, revoke")).to_have_count(0, timeout=TIMEOUT_MS)
    assert next(k for k in admin_api(web, "GET", "/keys").json()["keys"]
                if k["id"] == made["id"])["revoked_at"] is None


def test_privacy_user_sees_the_servers_403(web: Web, signed_in: Any, axe_check: Any) -> None:
    page = signed_in("privacy", "/admin")
    errors = page.locator(".error[data-status='403']")
    expect(errors).to_have_count(3, timeout=TIMEOUT_MS)  # sources, keys, health
    for i in range(3):
        expect(errors.nth(i)).to_contain_text("This needs role admin")
        expect(errors.nth(i)).to_contain_text("you are signed in as privacy")
    assert page.locator("[data-testid=sources-table], [data-testid=keys-table],"
                        " .health-tiles").count() == 0
    axe_check(page)


def _path(answer: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        answer = answer[part]
    return answer


def test_health_tiles_equal_the_api(web: Web, signed_in: Any, axe_check: Any,
                                    screenshot: Any) -> None:
    page = signed_in("admin", "/admin")
    tiles = page.locator(".health-tiles")
    expect(tiles).to_have_attribute("data-render-ms", _ANY, timeout=TIMEOUT_MS)
    with page.expect_response(lambda r: r.url == web.url + "/api/v1/health") as got:
        page.get_by_role("button", name="Refresh").click()
    answer = got.value.json()
    expect(page.get_by_role("button", name="Refresh")).to_be_enabled(timeout=TIMEOUT_MS)
    drawn = json.loads(tiles.get_attribute("data-series"))
    assert drawn["labels"], drawn
    assert drawn["series"][0]["values"] == [_path(answer, k) for k in drawn["labels"]]
    # the figures that matter are there, and they are the demo's
    for key in ("log.lag_max", "tiers.hot.rows", "tiers.warm.files", "tiers.cold.files",
                "disk.free_bytes", "processor.position", "processor.dead_letters"):
        assert key in drawn["labels"], key
    assert answer["tiers"]["hot"]["rows"] > 0 and answer["processor"]["running"] is True
    # each tile: its own data-series and the exact number in its <data value>
    for tile in tiles.locator(".health-tile").all():
        key = tile.get_attribute("data-key")
        own = json.loads(tile.get_attribute("data-series"))
        assert own["labels"] == [key] and own["series"][0]["values"] == [_path(answer, key)]
        assert tile.locator("data").get_attribute("value") == str(_path(answer, key))
    axe_check(page)
    screenshot(page, "admin")
    page.set_viewport_size({"width": 375, "height": 800})
    expect(tiles).to_be_visible(timeout=TIMEOUT_MS)
    assert_fits(page, 375)
    axe_check(page)


def test_keyboard_alone_creates_a_key_and_cancels_a_revocation(
        web: Web, signed_in: Any) -> None:
    page = signed_in("admin", "/admin")
    name = page.locator("#new-key-name")
    expect(name).to_be_visible(timeout=TIMEOUT_MS)
    name.focus()
    page.keyboard.type("keyboard key")
    page.keyboard.press("Tab")  # the role
    expect(page.locator("#new-key-role")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Create key")).to_be_focused()
    page.keyboard.press("Enter")
    # the key shown once takes the focus
    box = page.locator("[data-secret=api_key] input")
    expect(box).to_be_focused(timeout=TIMEOUT_MS)
    key_id = box.input_value().split("_")[1]
    made = next(k for k in admin_api(web, "GET", "/keys").json()["keys"] if k["id"] == key_id)
    assert made["name"] == "keyboard key" and made["role"] == "viewer"
    # Revoke asks first, with the focus on Cancel; cancelling puts it back on Revoke
    revoke = page.get_by_role("button", name=f"Revoke key keyboard key ({key_id})")
    revoke.focus()
    page.keyboard.press("Enter")
    cancel = page.locator(f"tr[data-key-id='{key_id}']").get_by_role("button", name="Cancel")
    expect(cancel).to_be_focused(timeout=TIMEOUT_MS)
    page.keyboard.press("Enter")
    expect(revoke).to_be_focused(timeout=TIMEOUT_MS)
    assert next(k for k in admin_api(web, "GET", "/keys").json()["keys"]
                if k["id"] == key_id)["revoked_at"] is None


def test_server_key_made_in_the_page_sends(web: Web, signed_in: Any) -> None:
    name = f"ui-backend-{secrets.token_hex(4)}"
    assert admin_api(web, "POST", "/sources", json={"name": name}).status_code == 200
    page = signed_in("admin", "/admin")
    page.get_by_role("button", name=f"Edit source {name}").click()
    page.get_by_role("button", name="Make a server key").click()
    page.get_by_role("button", name="Yes, make a server key").click()
    secret = shown_once(page, "server_key")
    assert secret.startswith("sk_")
    assert send(web, secret).status_code == 200
    src = next(s for s in admin_api(web, "GET", "/sources").json()["sources"]
               if s["name"] == name)
    assert src["server_key"] is True
