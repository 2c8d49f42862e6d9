"""The real `segment-analytics-python` client from PyPI, pointed at AAP with `host=`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from segment.analytics import Client

from tests.conftest import Running
from tests.e2e.warehouse import persons_rows


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("sync", [True, False], ids=["sync", "batched"])
def test_every_call_is_stored_intact(running: Running, gzip: bool, sync: bool) -> None:
    errors: list[Any] = []
    client = Client(running.key, host=running.url, gzip=gzip, sync_mode=sync,
                    on_error=lambda e, batch: errors.append(e), max_retries=0)
    tag = f"{'gz' if gzip else 'plain'}-{'sync' if sync else 'batch'}"
    ts = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    calls: list[tuple[bool, dict[str, Any]]] = [
        client.identify(f"user-{tag}", {"plan": "pro", "seats": 3}, timestamp=ts,
                        context={"ip": "198.51.100.77"}),
        client.track(f"user-{tag}", "Order Completed",
                     {"revenue": 42.5, "products": [{"sku": "a", "qty": 2}]},
                     timestamp=ts + timedelta(seconds=1)),
        client.page(f"user-{tag}", "Docs", "Install", {"path": "/docs/install"},
                    timestamp=ts + timedelta(seconds=2)),
        client.screen(f"user-{tag}", "Settings", "Privacy", {"dark": True},
                      timestamp=ts + timedelta(seconds=3)),
        client.group(f"user-{tag}", "acme", {"industry": "tools"},
                     timestamp=ts + timedelta(seconds=4)),
        client.alias(f"anon-{tag}", f"user-{tag}", timestamp=ts + timedelta(seconds=5)),
        client.track(anonymous_id=f"anon-{tag}", event="Ünïcødé ✓",
                     properties={"text": "日本語"}, timestamp=ts + timedelta(seconds=6)),
    ]
    client.flush()
    if not sync:
        client.shutdown()
    assert errors == []
    sent = {m["messageId"]: m for _, m in calls}
    stored = {e.message_id: e for e in running.stored() if e.message_id in sent}
    assert set(stored) == set(sent)
    for mid, m in sent.items():
        e = stored[mid]
        assert e.type == m["type"]
        assert e.user_id == (m.get("userId") or None)
        assert e.anonymous_id == (m.get("anonymousId") or None)
        assert e.timestamp == datetime.fromisoformat(m["timestamp"])
        assert e.sent_at is not None and e.received_at >= e.sent_at - timedelta(seconds=5)
        assert e.context["library"] == m["context"]["library"]
        assert "ip" not in e.context
        for field in ("event", "name", "category", "previousId", "groupId"):
            attr = {"previousId": "previous_id", "groupId": "group_id"}.get(field, field)
            assert getattr(e, attr) == m.get(field), field
        assert e.properties == m.get("properties", {})
        assert e.traits == m.get("traits", {})
    identify = stored[calls[0][1]["messageId"]]
    assert identify.ip == "198.51.100.0"  # context.ip, truncated to /24
    # the warehouse: exactly these events, one person (the alias joins the anonymous id)
    running.server.wait_processed()
    rows = persons_rows(running.server, [calls[0][1]["messageId"]])
    assert {r.message_id for r in rows} == set(sent)
    assert len({r.person_id for r in rows}) == 1
    for r in rows:  # as sent, plus the clock-skew correction (receivedAt - sentAt)
        sent_ts = datetime.fromisoformat(sent[r.message_id]["timestamp"])
        assert sent_ts <= r.timestamp < sent_ts + timedelta(seconds=2)
