"""Hostile data for the web app's quality sweep (tests/e2e/web/test_quality.py): markup
and script payloads planted through the real collector and API in every place a page
shows (event names, property values, page paths and titles, referrers, UTM values,
traits, a source's name and origin, consent channels, insight and dashboard names), and
the check that a page shows them as text and ran none of them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from aap.privacy.tokens import SubjectTokens
from aap.sources import Sources
from tests.e2e.web.helpers import Web

IMG = "<img src=x onerror=alert(1)>"
SCRIPT = '"><script>window.__pwned=1</script>'
JS_URL = "javascript:alert(1)"
SVG = "<svg onload=alert(1)>"
PAYLOADS = (IMG, SCRIPT, JS_URL, SVG)
ORIGIN = 'https://"><svg>.example'
"""An origin of markup the admin API takes (scheme://host, the host any printable)."""

SPY = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
    (e) => window.__csp.push(e.effectiveDirective + ' ' + e.blockedURI));
"""
"""An init script (the driver's, not the page's): records every CSP refusal, so a payload
the CSP stopped still fails the check: it must never have been markup at all."""

INERT = """() => ({
    pwned: typeof window.__pwned !== 'undefined',
    csp: window.__csp || [],
    img: document.querySelectorAll('img[src="x"]').length,
    svg: document.querySelectorAll('svg[onload]').length,
    handlers: [...document.querySelectorAll('*')].filter(
        (e) => [...e.attributes].some((a) => a.name.toLowerCase().startsWith('on'))
    ).map((e) => e.tagName),
    inline_scripts: [...document.scripts].filter((s) => !s.src).length,
    js_links: document.querySelectorAll('a[href^="javascript:" i]').length,
})"""


@dataclass
class Hostile:
    """What was planted: a source of markup (name, origin, write key), one person per
    payload (their userIds), an insight broken down by the hostile property and a
    dashboard holding it, both named with markup."""

    source: str
    write_key: str
    users: list[str]
    insight: int
    board: int
    insight_name: str
    board_name: str

    def token(self, web: Web) -> str:
        """A portal link's subject token for the first person."""
        src = Sources(web.data_dir).by_name(self.source)
        assert src is not None
        return SubjectTokens(web.data_dir).issue(src.id, {"userId": self.users[0]}, ttl_s=3600)


def api(web: Web, role: str, method: str, path: str, **kw: Any) -> Any:
    r = httpx.request(method, web.url + "/api/v1" + path, timeout=120,
                      headers={"Authorization": f"Bearer {web.keys[role]}"}, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def events(user: str, payload: str) -> list[dict[str, Any]]:
    """One person's identify, page view and event, every field a page shows hostile."""
    now = datetime.now(UTC).isoformat()
    context = {"consent": {"categoryPreferences": {"analytics": True}},
               "campaign": {"name": payload, "source": payload, "medium": payload},
               "page": {"title": payload}}
    return [
        {"type": "identify", "userId": user, "timestamp": now, "context": context,
         "traits": {"name": payload, "plan": payload}},
        {"type": "page", "userId": user, "name": payload, "timestamp": now, "context": context,
         "properties": {"path": "/" + payload, "title": payload,
                        "referrer": "https://" + payload + "/"}},
        {"type": "track", "userId": user, "event": payload, "timestamp": now,
         "context": context, "properties": {"plan": payload, "link": JS_URL}},
    ]


def send(web: Web, write_key: str, batch: list[dict[str, Any]]) -> None:
    r = httpx.post(web.url + "/v1/batch", auth=(write_key, ""), json={"batch": batch},
                   timeout=60)
    assert r.status_code == 200 and r.json()["accepted"] == len(batch), r.text


def plant(web: Web) -> Hostile:
    tag = uuid.uuid4().hex[:6]
    made = api(web, "admin", "POST", "/sources", json={
        "name": f"{IMG} {tag}", "origins": [ORIGIN], "rate_limit": 0})
    key = made["write_key"]
    users = [f"xss-{tag}-{i}" for i in range(len(PAYLOADS))]
    for user, payload in zip(users, PAYLOADS, strict=True):
        r = httpx.post(web.url + "/v1/consent", auth=(key, ""), timeout=60, json={
            "userId": user, "purposes": {"analytics": True}, "channel": SVG,
            "policy_version": SCRIPT})
        assert r.status_code == 200, r.text
        send(web, key, events(user, payload))
    web.server.wait_processed(timeout=180)
    insight_name, board_name = f"{SCRIPT} {tag}", f"{SVG} {tag}"
    insight = api(web, "analyst", "POST", "/insights", json={"name": insight_name, "query": {
        "kind": "trends", "series": [{"event": p} for p in PAYLOADS], "breakdown": "plan",
        "date_from": "-7d"}})
    board = api(web, "analyst", "POST", "/dashboards",
                json={"name": board_name, "insights": [insight["id"]]})
    return Hostile(made["name"], key, users, insight["id"], board["id"], insight_name,
                   board_name)


def assert_inert(page: Any, dialogs: list[str]) -> None:
    """Nothing of the payloads ran or became an element."""
    got = page.evaluate(INERT)
    assert dialogs == [], dialogs
    assert got == {"pwned": False, "csp": [], "img": 0, "svg": 0, "handlers": [],
                   "inline_scripts": 0, "js_links": 0}, got
