"""The real `rudder-sdk-python` client from PyPI against AAP's `/v1/batch`: RudderStack's
differences from Segment (traits in `context.traits`, `channel`,
`integrations: {"All": true}`) arrive intact, and its error handling (which needs `code`
and `message` in an error body) works on AAP's answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rudderstack.analytics.client import Client
from rudderstack.analytics.request import APIError

from tests.conftest import Running
from tests.e2e.warehouse import person_traits, persons_rows


@pytest.fixture(scope="module")
def running(sdk_server: Running) -> Running:
    return sdk_server


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "batched"])
def test_rudderstack_python_calls_land_in_the_warehouse(running: Running, sync: bool) -> None:
    errors: list[Any] = []
    tag = "sync" if sync else "batched"
    client = Client(running.key, host=running.url, sync_mode=sync, gzip=True, max_retries=0,
                    on_error=lambda e, batch: errors.append(e))
    anon, user = f"rs-anon-{tag}", f"rs-user-{tag}"
    ts = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    calls = [
        client.page(anonymous_id=anon, name="Home", properties={"path": "/", "url":
                    "https://shop.example/"}, timestamp=ts),
        client.track(anonymous_id=anon, event="Product Viewed", properties={"sku": "a-1"},
                     timestamp=ts + timedelta(seconds=3)),
        client.identify(user_id=user, anonymous_id=anon, traits={"plan": "team", "seats": 4},
                        timestamp=ts + timedelta(seconds=6)),
        client.track(user_id=user, event="Order Completed", properties={"revenue": 12.0},
                     timestamp=ts + timedelta(seconds=9)),
        client.group(user_id=user, group_id=f"org-{tag}", traits={"size": 10},
                     timestamp=ts + timedelta(seconds=12)),
        client.alias(previous_id=user, user_id=f"rs-new-{tag}",
                     timestamp=ts + timedelta(seconds=15)),
    ]
    client.flush()
    if not sync:
        client.shutdown()
    assert errors == []
    sent = {m["messageId"]: m for _, m in calls}
    stored = {e.message_id: e for e in running.stored() if e.message_id in sent}
    assert set(stored) == set(sent)
    for mid, m in sent.items():
        assert stored[mid].context["channel"] == "server"
        assert stored[mid].integrations == {"All": True}
        assert "traits" not in stored[mid].context  # moved to traits (sealed where personal)
        assert stored[mid].type == m["type"]
    identify = next(e for e in stored.values() if e.type == "identify")
    assert identify.traits == {"plan": "team", "seats": 4}  # taken from context.traits
    running.server.wait_processed()
    rows = persons_rows(running.server, [calls[0][1]["messageId"]])
    assert {r.message_id for r in rows} == set(sent)
    assert len({r.person_id for r in rows}) == 1
    for r in rows:
        m = sent[r.message_id]
        assert r.timestamp == datetime.fromisoformat(m["timestamp"]) or abs(
            r.timestamp - datetime.fromisoformat(m["timestamp"])) < timedelta(seconds=2)
    assert person_traits(running.server, rows[0].person_id)["plan"] == "team"


def test_rudderstack_python_reads_aap_error_bodies(running: Running) -> None:
    client = Client("wk_not_a_key", host=running.url, sync_mode=True, max_retries=0)
    with pytest.raises(APIError) as info:
        client.track(user_id="u", event="E")
    assert (info.value.status, info.value.code) == (401, "unknown_write_key")
    assert info.value.message == "unknown write key"
