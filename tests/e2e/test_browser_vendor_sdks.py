"""posthog-js and @segment/analytics-next (from npm, installed by scripts/setup) in headless
Chromium against the real server: an anonymous page view, events, an identify, a group
and an alias, and the warehouse holds exactly those, as one person."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Running
from tests.e2e.browser import PageServer, wait_for, wait_rows


@pytest.fixture(scope="module")
def running(sdk_server: Running) -> Running:
    return sdk_server


POSTHOG = """<!doctype html><html><head><title>PostHog page</title></head><body>
<script src="/posthog.js"></script>
<script>
posthog.init({key}, {{api_host: {aap}, opt_out_useragent_filter: true, autocapture: false,
  capture_pageview: true, capture_pageleave: false, disable_session_recording: true,
  capture_performance: false, disable_surveys: true, capture_dead_clicks: false,
  capture_heatmaps: false, capture_exceptions: false, persistence: "localStorage",
  loaded: () => {{ window.phLoaded = true; }} }});
</script></body></html>"""

SEGMENT = """<!doctype html><html><head><title>Segment page</title></head><body>
<script src="/analytics-next.js"></script>
<script>
window.analytics = AnalyticsBrowser.load({{writeKey: {key}, cdnURL: {aap}}},
  {{integrations: {{"Segment.io": {{deliveryStrategy: {strategy} }} }} }});
</script></body></html>"""

BATCHING = {"strategy": "batching", "config": {"size": 10, "timeout": 300}}


@pytest.fixture(scope="module")
def site(running: Running) -> Iterator[PageServer]:
    key, aap = json.dumps(running.key), json.dumps(running.url)
    s = PageServer({
        "posthog": lambda q: POSTHOG.format(key=key, aap=aap),
        "segment": lambda q: SEGMENT.format(key=key, aap=aap, strategy=json.dumps(
            BATCHING if q.get("mode") == "batching" else {"strategy": "standard"})),
    })
    yield s
    s.close()


def _collector_requests(page: Any, running: Running) -> list[tuple[str, str, bytes]]:
    seen: list[tuple[str, str, bytes]] = []
    page.on("request", lambda r: seen.append((r.method, r.url[len(running.url):],
                                              (r.post_data_buffer or b"")[:2]))
            if r.url.startswith(running.url) else None)
    return seen


def _recent(rows: list[Any]) -> bool:
    now = datetime.now(UTC)
    return all(now - timedelta(minutes=2) < r.timestamp <= now + timedelta(seconds=5)
               for r in rows)


def test_posthog_js(browser: Any, running: Running, site: PageServer) -> None:
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        seen = _collector_requests(page, running)
        page.goto(site.url + "/posthog/pricing")
        page.wait_for_function("window.phLoaded === true")
        anon = page.evaluate("posthog.get_distinct_id()")
        page.evaluate("""
            posthog.capture('Plan Viewed', {plan: 'pro'});
            posthog.identify('ph-web-user', {plan: 'pro'});
            posthog.capture('Order Completed', {revenue: 10});
            posthog.group('company', 'acme-web', {name: 'Acme'});
            posthog.alias('ph-web-login');
        """)
        wait_for(lambda: any(e.anonymous_id == anon for e in running.stored())
                 or page.wait_for_timeout(200) or False, what="posthog-js events")
        anchor = next(e.message_id for e in running.stored() if e.anonymous_id == anon)
        want = ["$page", "Plan Viewed", "$identify", "Order Completed", "$group", "$alias"]
        rows = wait_rows(running.server, anchor, lambda rs: len(rs) >= len(want))
        page.wait_for_timeout(1000)  # anything extra posthog-js might still send
        rows = wait_rows(running.server, anchor, lambda rs: True)
        assert sorted(r.event for r in rows) == sorted(want)  # nothing missing, nothing extra
        assert len({r.person_id for r in rows}) == 1
        by = {r.event: r for r in rows}
        assert by["$page"].path == "/posthog/pricing" and by["$page"].name == "PostHog page"
        assert by["$page"].library_name == "web"
        assert by["Plan Viewed"].properties["plan"] == "pro"
        assert by["Order Completed"].properties["revenue"] == 10
        assert _recent(rows)
        sessions = {r.session_id for r in rows}
        assert len(sessions) == 1 and next(iter(sessions)).startswith("s:")
        logged = {e.message_id: e for e in running.stored()}
        ident = logged[by["$identify"].message_id]
        assert (ident.user_id, ident.anonymous_id) == ("ph-web-user", anon)
        assert ident.traits["plan"] == "pro"  # with the $set_once initial properties
        assert logged[by["$alias"].message_id].previous_id == "ph-web-login"
        assert logged[by["$group"].message_id].group_id == "acme-web"
        paths = [p for _, p, _ in seen]
        assert any(p.startswith("/array/") and "/config" in p for p in paths)
        assert any(p.startswith("/flags/") for p in paths)
        # it read our config (supportedCompression) and sent gzip as text/plain
        assert any(p.startswith("/e/") and head == b"\x1f\x8b" for _, p, head in seen)
    finally:
        ctx.close()


@pytest.mark.parametrize("mode", ["standard", "batching"])
def test_segment_analytics_next(browser: Any, running: Running, site: PageServer,
                                mode: str) -> None:
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        seen = _collector_requests(page, running)
        page.goto(f"{site.url}/segment/docs?mode={mode}")
        anon = page.evaluate("""(async () => {
            const [a] = await analytics;
            await analytics.page('Docs');
            await analytics.track('Plan Viewed', {plan: 'team'});
            await analytics.identify('seg-web-user-MODE', {plan: 'team'});
            await analytics.group('seg-org-MODE', {name: 'Acme'});
            await analytics.alias('seg-web-login-MODE');
            return a.user().anonymousId();
        })()""".replace("MODE", mode))
        wait_for(lambda: any(e.anonymous_id == anon for e in running.stored())
                 or page.wait_for_timeout(200) or False, what="analytics-next events")
        anchor = next(e.message_id for e in running.stored() if e.anonymous_id == anon)
        want = ["$page", "Plan Viewed", "$identify", "$group", "$alias"]
        rows = wait_rows(running.server, anchor, lambda rs: len(rs) >= len(want))
        page.wait_for_timeout(500)
        rows = wait_rows(running.server, anchor, lambda rs: True)
        assert sorted(r.event for r in rows) == sorted(want)
        assert len({r.person_id for r in rows}) == 1
        by = {r.event: r for r in rows}
        assert by["$page"].name == "Docs" and by["$page"].path == "/segment/docs"
        assert by["Plan Viewed"].properties == {"plan": "team"}
        assert by["$page"].library_name == "analytics.js"
        assert _recent(rows)
        paths = [p for _, p, _ in seen]
        assert f"/v1/projects/{running.key}/settings" in paths
        if mode == "batching":
            assert "/v1/b" in paths and "/v1/t" not in paths
        else:
            assert {"/v1/p", "/v1/t", "/v1/i", "/v1/g", "/v1/a"} <= set(paths)
    finally:
        ctx.close()
