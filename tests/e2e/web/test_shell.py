"""The web app's shell in Chromium against the real server with demo data: sign-in and
sign-out, the session cookie, CSRF, sessions ending, the one-time link, the nav per
role, the CSP, and the build's size budget."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from aap.datadir import DataDir
from aap.web.app import PAGES
from aap.web.sessions import create_link
from tests.e2e.browser import PageServer
from tests.e2e.test_lifecycle import gone_within, names, tree, wait_until
from tests.e2e.web.conftest import watch
from tests.e2e.web.helpers import ROLES, ROOT, TIMEOUT_MS, Web

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


def _cookie_attrs(set_cookie: str) -> dict[str, str]:
    name_value, *attrs = [p.strip() for p in set_cookie.split(";")]
    out = {"_": name_value}
    for a in attrs:
        k, _, v = a.partition("=")
        out[k.lower()] = v
    return out


@pytest.mark.parametrize("role", ROLES)
def test_session_cookie_attributes_and_sign_out_revokes(web: Web, web_browser: Any,
                                                        role: str) -> None:
    ctx = web_browser.new_context()
    try:
        r = ctx.request.post(web.url + "/api/v1/session", data={"key": web.keys[role]})
        assert r.status == 200, r.text()
        body = r.json()
        assert body["role"] == role and body["key_id"] == web.key_ids[role] and body["csrf"]
        attrs = _cookie_attrs(r.headers["set-cookie"])
        assert attrs["_"].startswith("aap_session=")
        assert "httponly" in attrs and attrs["samesite"] == "Strict" and attrs["path"] == "/"
        assert int(attrs["max-age"]) == 43200
        assert "secure" not in attrs  # plain HTTP here; under TLS it is Secure
        old = attrs["_"]
        assert ctx.request.get(web.url + "/api/v1/session").json()["role"] == role
        r = ctx.request.delete(web.url + "/api/v1/session",
                               headers={"X-CSRF-Token": body["csrf"]})
        assert r.status == 200
        # the old cookie, replayed, is dead server-side (not just cleared in the browser)
        r = web_browser.new_context(extra_http_headers={"Cookie": old})
        try:
            got = r.request.get(web.url + "/api/v1/session")
            assert got.status == 401 and got.json()["code"] == "invalid_session"
            got = r.request.get(web.url + "/api/v1/insights")
            assert got.status == 401
        finally:
            r.close()
    finally:
        ctx.close()


def test_a_wrong_key_shows_the_servers_message(web: Web, web_browser: Any) -> None:
    page = _open(web, web_browser)
    try:
        page.get_by_label("API key").fill("aap_000000000000_" + "x" * 43)
        page.get_by_role("button", name="Sign in").click()
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("unknown or revoked API key", timeout=TIMEOUT_MS)
        expect(alert).to_contain_text("invalid_api_key")
    finally:
        page.context.close()


def test_csrf_token_needed_with_the_cookie(web: Web, signed_in: Any) -> None:
    page = signed_in("admin", "/dashboards")
    token = page.request.get(web.url + "/api/v1/session").json()["csrf"]
    before = len(page.request.get(web.url + "/api/v1/keys").json()["keys"])
    for headers in ({}, {"X-CSRF-Token": "0" * 64}, {"X-CSRF-Token": token[:-1]}):
        r = page.request.post(web.url + "/api/v1/keys", data={"role": "viewer"}, headers=headers)
        assert r.status == 403 and r.json()["code"] == "csrf_failed", (headers, r.text())
        r = page.request.delete(web.url + "/api/v1/session", headers=headers)
        assert r.status == 403 and r.json()["code"] == "csrf_failed"
    assert len(page.request.get(web.url + "/api/v1/keys").json()["keys"]) == before
    # with it, the same call goes through (and Bearer works unchanged beside cookies)
    r = page.request.post(web.url + "/api/v1/keys", data={"role": "viewer", "name": "csrf-ok"},
                          headers={"X-CSRF-Token": token})
    assert r.status == 200, r.text()
    r = page.request.delete(web.url + f"/api/v1/keys/{r.json()['id']}",
                            headers={"X-CSRF-Token": token})
    assert r.status == 200, r.text()


def test_another_origin_gets_no_session(web: Web, signed_in: Any) -> None:
    """A page on another port of the same host (same site: SameSite does not stop it)
    posting with credentials: the server refuses the cookie, and nothing changes."""
    page = signed_in("admin", "/dashboards")
    before = len(page.request.get(web.url + "/api/v1/keys").json()["keys"])
    evil = PageServer({"evil": lambda q: "<!doctype html><title>evil</title><p>hi</p>"})
    try:
        page.goto(evil.url + "/evil")
        out = page.evaluate("""async (api) => {
            const res = {};
            try {
                const r = await fetch(api + '/api/v1/keys', {method: 'POST', mode: 'no-cors',
                    credentials: 'include', headers: {'Content-Type': 'text/plain'},
                    body: JSON.stringify({role: 'admin', name: 'evil'})});
                res.post = r.type;
            } catch (e) { res.post = 'error'; }
            try {
                const r = await fetch(api + '/api/v1/session', {credentials: 'include'});
                res.read = await r.text();
            } catch (e) { res.read = 'blocked'; }
            return res;
        }""", web.url)
        assert out["read"] == "blocked"  # no CORS: the other origin reads nothing
        watch(page).errors.clear()  # Chromium's CORS message about that read was the point
        after = page.request.get(web.url + "/api/v1/keys").json()["keys"]
        assert len(after) == before and not any(k["name"] == "evil" for k in after)
    finally:
        evil.close()
    # and what the server answers such a request (Sec-Fetch-Site as Chromium sends it)
    r = page.request.get(web.url + "/api/v1/keys", headers={"Sec-Fetch-Site": "same-site"})
    assert r.status == 403 and r.json()["code"] == "csrf_failed"


def test_forged_and_expired_cookies_get_401(web: Web, web_browser: Any) -> None:
    ctx = web_browser.new_context()
    try:
        r = ctx.request.post(web.url + "/api/v1/session", data={"key": web.keys["analyst"]})
        assert r.status == 200
        token = _cookie_attrs(r.headers["set-cookie"])["_"].partition("=")[2]
    finally:
        ctx.close()
    for forged in ("A" * 43, token[:-1] + ("A" if token[-1] != "A" else "B"), "x", "<script>"):
        got = web_browser.new_context(extra_http_headers={"Cookie": f"aap_session={forged}"})
        try:
            r = got.request.get(web.url + "/api/v1/insights")
            assert r.status == 401 and r.json()["code"] == "invalid_session", forged
        finally:
            got.close()
    # the session expires (its row's expiry moved into the past, as time would)
    con = sqlite3.connect(DataDir(web.data_dir).meta_db)
    con.execute("UPDATE web_sessions SET expires_at = 1 WHERE token_hash = ?",
                (hashlib.sha256(token.encode()).digest(),))
    con.commit()
    con.close()
    got = web_browser.new_context(extra_http_headers={"Cookie": f"aap_session={token}"})
    try:
        r = got.request.get(web.url + "/api/v1/insights")
        assert r.status == 401 and r.json()["code"] == "invalid_session"
    finally:
        got.close()


def test_a_revoked_keys_session_ends(web: Web, signed_in: Any) -> None:
    admin = {"Authorization": "Bearer " + web.keys["admin"]}
    made = httpx.post(web.url + "/api/v1/keys", json={"role": "analyst", "name": "to-revoke"},
                      headers=admin, timeout=60).json()
    ctx_page = signed_in("viewer", "/dashboards")
    ctx = ctx_page.context
    r = ctx.request.post(web.url + "/api/v1/session", data={"key": made["key"]})
    assert r.status == 200 and r.json()["role"] == "analyst"
    assert ctx.request.get(web.url + "/api/v1/insights").status == 200
    assert httpx.delete(web.url + f"/api/v1/keys/{made['id']}", headers=admin,
                        timeout=60).status_code == 200
    r = ctx.request.get(web.url + "/api/v1/insights")
    assert r.status == 401 and r.json()["code"] == "invalid_session"
    ctx_page.reload()
    expect(ctx_page.get_by_label("API key")).to_be_visible(timeout=TIMEOUT_MS)


def test_one_time_link_works_once(web: Web, web_browser: Any) -> None:
    token = create_link(web.data_dir, web.key_ids["privacy"])
    page = _open(web, web_browser, f"/dashboards#signin={token}")
    try:
        expect(page.locator(".role-badge")).to_have_text("privacy", timeout=TIMEOUT_MS)
        assert "signin" not in page.url  # the fragment is gone from the address bar
    finally:
        page.context.close()
    page = _open(web, web_browser, f"/dashboards#signin={token}")
    try:
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("unknown, used or expired", timeout=TIMEOUT_MS)
        expect(page.get_by_label("API key")).to_be_visible()
    finally:
        page.context.close()


def test_a_viewer_on_the_insight_builder_sees_the_servers_403(web: Web, signed_in: Any) -> None:
    page = signed_in("viewer", "/insights")
    expect(page.get_by_role("heading", level=1)).to_be_visible(timeout=TIMEOUT_MS)
    if page.get_by_text("This page is coming.").count():
        pytest.skip("the insights page is still the shell's stub (it makes no API call)")
    alert = page.get_by_role("alert").first
    expect(alert).to_contain_text("needs role analyst", timeout=TIMEOUT_MS)
    expect(alert).to_contain_text("you are signed in as viewer")


def test_csp_header_and_inline_script_does_not_run(web: Web, signed_in: Any) -> None:
    page = signed_in("analyst", "/dashboards")
    r = page.request.get(web.url + "/sql")
    headers = r.headers
    policy = headers["content-security-policy"]
    for part in ("default-src 'self'", "script-src 'self'", "object-src 'none'",
                 "base-uri 'none'", "frame-ancestors 'none'", "form-action 'self'"):
        assert part in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    nonce = re.search(r"'nonce-([^']+)'", policy)
    assert nonce and f'content="{nonce.group(1)}"' in r.text()
    # a nonce is per answer
    assert page.request.get(web.url + "/sql").headers["content-security-policy"] != policy
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.evaluate("""() => {
        const s = document.createElement('script');
        s.textContent = 'window.__injected = 1';
        document.body.appendChild(s);
        const d = document.createElement('div');
        d.innerHTML = '<img src=x onerror="window.__injected2 = 1">';
        document.body.appendChild(d);
    }""")
    page.wait_for_function("() => document.querySelector('img[src=x]') !== null")
    assert page.evaluate("() => window.__injected") is None
    page.wait_for_timeout(500)  # the image's error event has fired by then
    assert page.evaluate("() => window.__injected2") is None
    watch(page).errors.clear()  # the refused script and the missing x were the point


def test_static_files_and_missing_names(web: Web) -> None:
    r = httpx.get(web.url + "/app/main.js", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert r.headers["cache-control"] == "no-cache" and r.headers["etag"]
    again = httpx.get(web.url + "/app/main.js", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    chunk = re.search(r'"\./(chunks/[^"]+\.js)"', r.text) or re.search(r"chunks/[A-Za-z0-9_-]+\.js", r.text)
    assert chunk
    name = chunk.group(1) if chunk.lastindex else chunk.group(0)
    r = httpx.get(web.url + "/app/" + name, timeout=30)
    assert r.status_code == 200 and "immutable" in r.headers["cache-control"]
    for bad in ("/app/../pyproject.toml", "/app/%2e%2e/x.js", "/app/index.html",
                "/app/nope.js", "/app/chunks/..%2fmain.js", "/app/a/b/c.js", "/app/size.json.bak"):
        r = httpx.get(web.url + bad, timeout=30)
        assert r.status_code == 404 and r.json()["code"] == "not_found", bad


def test_build_fails_over_the_budget(tmp_path: Any) -> None:
    proc = subprocess.run(["node", str(ROOT / "web" / "build.mjs"), "--out", str(tmp_path / "out")],
                          env={**os.environ, "AAP_WEB_BUDGET": "1000"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    assert "over the budget of 1000 bytes" in proc.stderr
    size = (tmp_path / "out" / "size.json").read_text()
    assert '"budget": 1000' in size


def test_demo_serves_the_dashboard_until_ctrl_c(tmp_path: Any, web_browser: Any) -> None:
    """``aap demo`` ends by serving: the printed one-time link signs a browser in as an
    admin, the printed portal link opens the demo source's public portal; Ctrl-C (SIGINT)
    stops it with rc 0, no process left, the temp dir gone."""
    out = tmp_path / "demo.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "aap", "demo", "--people", "50"],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: b"Serving until" in out.read_bytes() or proc.poll() is not None,
                   "the demo's dashboard link", timeout=600)
        text = out.read_text()
        assert proc.poll() is None, text
        link = re.search(r"Dashboard: (http://127\.0\.0\.1:\d+/#signin=[A-Za-z0-9_-]+)", text)
        assert link, text
        data_dir = re.search(r"data dir (\S+)", text)
        assert data_dir and "works once" in text.replace("\n", " ")
        ctx = web_browser.new_context()
        ctx.set_default_timeout(TIMEOUT_MS)
        try:
            page = ctx.new_page()
            page.goto(link.group(1))
            expect(page.locator(".role-badge")).to_have_text("admin", timeout=TIMEOUT_MS)
            nav = page.get_by_role("navigation", name="Pages")
            expect(nav.get_by_role("link", name="Admin")).to_be_visible()
            assert "signin" not in page.url
            # the portal the demo site links to as "Your data", public (a fresh context)
            portal = re.search(r"Portal: (http://127\.0\.0\.1:\d+/portal/[\w-]+)", text)
            assert portal, text
            public = web_browser.new_context().new_page()
            public.goto(portal.group(1))
            expect(public.locator("h1")).to_contain_text("demo-site", timeout=TIMEOUT_MS)
            expect(public.get_by_role("heading", name="Product analytics")).to_be_visible()
            public.context.close()
        finally:
            ctx.close()
        procs = tree(proc.pid)
        assert len(procs) >= 3, names(procs)  # the demo, its server and the core at least
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, out.read_text()[-2000:]
        left = gone_within(procs, 10)
        assert not left, names(dict.fromkeys(left, ""))
        assert not os.path.exists(data_dir.group(1))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_shell_passes_axe_and_is_screenshotted(web: Web, web_browser: Any, signed_in: Any,
                                              axe_check: Any, screenshot: Any) -> None:
    page = _open(web, web_browser, "/")
    try:
        expect(page.get_by_label("API key")).to_be_visible(timeout=TIMEOUT_MS)
        axe_check(page)
        shots = screenshot(page, "signin")
        assert all(p.stat().st_size > 1000 for p in shots)
    finally:
        page.context.close()
    page = signed_in("admin", "/dashboards", width=375)
    expect(page.locator(".role-badge")).to_have_text("admin", timeout=TIMEOUT_MS)
    axe_check(page)
    # keyboard: the skip link is the first stop and leads to <main>
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    screenshot(page, "shell")
