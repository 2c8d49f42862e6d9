"""The web app's shell in Chromium against the real server with demo data: sign-in and
sign-out, the session cookie, CSRF, sessions ending, the one-time link, the nav per
role, the CSP, and the build's size budget."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from aap.web.app import PAGES
from tests.e2e.web.helpers import ROLES, TIMEOUT_MS, Web

NAV_ROLE = {"/": "analyst", "/insights": "analyst", "/sql": "analyst", "/live": "analyst",
            "/dashboards": "viewer", "/privacy": "privacy", "/admin": "admin"}


def _open(web: Web, browser: Any, path: str = "/") -> Any:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    page.goto(web.url + path)
    return page


@pytest.mark.parametrize("role", ROLES)
def test_sign_in_with_the_form_and_out(web: Web, web_browser: Any, role: str) -> None:
    page = _open(web, web_browser)
    try:
        page.get_by_label("API key").fill(web.keys[role])
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator(".role-badge")).to_have_text(role, timeout=TIMEOUT_MS)
        cookies = {c["name"]: c for c in page.context.cookies()}
        assert cookies["aap_session"]["httpOnly"] and cookies["aap_session"]["sameSite"] == "Strict"
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_label("API key")).to_be_visible(timeout=TIMEOUT_MS)
        r = page.request.get(web.url + "/api/v1/session")
        assert r.status == 401
    finally:
        page.context.close()


def test_nav_shows_only_what_the_role_may_see(web: Web, signed_in: Any) -> None:
    order = {r: i for i, r in enumerate(ROLES)}
    for role in ROLES:
        page = signed_in(role, "/dashboards")
        nav = page.get_by_role("navigation", name="Pages")
        expect(nav).to_be_visible(timeout=TIMEOUT_MS)
        shown = {a.get_attribute("href") for a in nav.get_by_role("link").all()}
        expected = {p for p, need in NAV_ROLE.items() if order[role] >= order[need]}
        assert shown == expected, (role, shown)
    assert set(NAV_ROLE) == set(PAGES)
