"""The real `posthog` client from PyPI, pointed at AAP with `host=`: a page view, events,
an identify ($identify with $anon_distinct_id), $set, an alias and a group, and the
warehouse holds exactly those events, with the right person, properties and times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from posthog import Posthog

from aap.datadir import DataDir
from aap.events import payload_bytes
from aap.log.sqlite import SQLiteLog
from tests.conftest import Running
from tests.e2e.warehouse import person_traits, persons_rows


@pytest.fixture(scope="module")
def running(sdk_server: Running) -> Running:
    return sdk_server


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_posthog_python_calls_land_in_the_warehouse(running: Running, gzip: bool) -> None:
    errors: list[Any] = []
    tag = "gz" if gzip else "plain"
    client = Posthog(running.key, host=running.url, gzip=gzip, sync_mode=True, max_retries=0,
                     on_error=lambda e, batch: errors.append(e), enable_local_evaluation=False)
    anon, user = f"ph-anon-{tag}", f"ph-user-{tag}"
    ts = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
    sent = {
        "pageview": client.capture("$pageview", distinct_id=anon, timestamp=ts, properties={
            "$current_url": "https://shop.example/pricing?utm_source=news",
            "$pathname": "/pricing", "title": "Pricing", "$session_id": f"s-{tag}",
            "$ip": "203.0.113.77"}),
        "event": client.capture("Plan Viewed", distinct_id=anon, timestamp=ts + timedelta(seconds=5),
                                properties={"plan": "pro", "$session_id": f"s-{tag}"}),
        "identify": client.capture("$identify", distinct_id=user, timestamp=ts + timedelta(seconds=9),
                                   properties={"$anon_distinct_id": anon,
                                               "$set": {"company_domain": "example.com",
                                                        "email": f"canary-{tag}@example.com"}}),
        "set": client.set(distinct_id=user, properties={"plan": "pro"},
                          timestamp=ts + timedelta(seconds=10)),
        "order": client.capture("Order Completed", distinct_id=user,
                                timestamp=ts + timedelta(seconds=20),
                                properties={"revenue": 99.5, "currency": "EUR"}),
        "alias": client.alias(previous_id=user, distinct_id=f"ph-login-{tag}",
                              timestamp=ts + timedelta(seconds=30)),
        "group": client.group_identify("company", f"acme-{tag}", {"industry": "tools"},
                                       distinct_id=user, timestamp=ts + timedelta(seconds=40)),
    }
    client.flush()
    client.shutdown()
    assert errors == []
    assert all(sent.values()), sent
    running.server.wait_processed()
    rows = persons_rows(running.server, [sent["pageview"], sent["order"]])
    by_id = {r.message_id: r for r in rows}
    assert set(by_id) == set(sent.values())  # nothing missing, nothing extra
    assert len({r.person_id for r in rows}) == 1  # anonymous visit and login are one person
    page = by_id[sent["pageview"]]
    assert (page.type, page.event, page.name) == ("page", "$page", "Pricing")
    assert page.url == "https://shop.example/pricing" and page.path == "/pricing"
    assert page.session_id == f"s:s-{tag}"
    assert "$ip" not in page.properties  # the address went to the IP policy, not the row
    assert by_id[sent["event"]].event == "Plan Viewed"
    assert by_id[sent["event"]].properties["plan"] == "pro"
    assert by_id[sent["identify"]].type == "identify"
    assert by_id[sent["set"]].type == "identify"
    assert by_id[sent["order"]].properties["revenue"] == 99.5
    assert by_id[sent["alias"]].type == "alias"
    assert by_id[sent["group"]].type == "group"
    for key, offset in (("pageview", 0), ("event", 5), ("identify", 9), ("order", 20)):
        assert abs(by_id[sent[key]].timestamp - (ts + timedelta(seconds=offset))) < timedelta(
            seconds=2), key
    traits = person_traits(running.server, page.person_id)
    assert traits.get("company_domain") == "example.com" and traits.get("plan") == "pro"
    stored = {e.message_id: e for e in running.stored() if e.message_id == sent["pageview"]}
    assert stored[sent["pageview"]].ip == "203.0.113.0"
    # ids and personal traits leave the properties and are sealed: not in the log in clear
    assert all(not k.startswith(("$anon_distinct_id", "$set")) for r in rows
               for k in r.properties)
    log = SQLiteLog(DataDir(running.data_dir).log)
    raw = b"".join(payload_bytes(rec.payload) for rec in log.read(0, 100_000))
    log.close()
    assert f"canary-{tag}@example.com".encode() not in raw
    assert anon.encode() not in raw and user.encode() not in raw
