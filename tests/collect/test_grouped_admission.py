"""Batches admitted together (:meth:`aap.collect.app.Collector._not_stored_all`, the
group a worker's shared-state thread makes of the batches that queued) each see the
consent ledger as it was when they arrived: the group reads what the ledger gained once,
before the first batch, whatever that batch is — also when it comes from a CNIL-mode
source, whose admission reads no ledger. A statement another worker wrote after this
worker's last read applies to every batch of the group.

What the group's events said about consent is written to the ledger in one transaction
(its writers take turns: one turn for the group) and to the audit log as one entry per
source, counting the requests and statements, before any event is stored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aap.collect.app import Collector
from aap.collect.consent import ConsentRequest, Gate
from aap.events import Event
from aap.privacy.audit import AuditLog
from aap.runner import create_source
from aap.settings import Settings
from aap.sources import Sources

pytestmark = pytest.mark.slow  # the sources are made with the CLI (a subprocess)


def _event(source: str, anonymous_id: str, consent: dict[str, bool] | None = None) -> Event:
    now = datetime.now(UTC)
    return Event(type="track", event="Viewed", message_id=str(uuid.uuid4()),
                 anonymous_id=anonymous_id, timestamp=now, received_at=now, source=source,
                 context={"consent": {"categoryPreferences": consent}} if consent else {})


@pytest.fixture
def collector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AAP_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("AAP_META_URL", raising=False)
    keys = {"site": create_source(tmp_path, "site"),  # analytics by consent
            "shop": create_source(tmp_path, "shop"),
            "audience": create_source(tmp_path, "audience", "--mode", "cnil")}
    app = Collector(Settings())
    sources = Sources(tmp_path)
    try:
        yield app, {name: sources.by_key(key) for name, key in keys.items()}
    finally:
        sources.close()
        app.close()


@pytest.mark.parametrize("first", ["audience", "site"])
def test_a_grant_another_worker_wrote_applies_to_every_batch_of_a_group(
        collector: Any, tmp_path: Path, first: str) -> None:
    app, sources = collector
    site, audience = sources["site"], sources["audience"]
    conn = SimpleNamespace(headers={})
    # this worker reads the ledger (nothing granted yet: the event is withheld)
    assert app._not_stored_all([(conn, site, [_event(site.id, "warm-up")], None)]) == [
        {"no_lawful_basis": 1}]
    # another worker records a grant of person P
    other = Gate(tmp_path)
    assert other.record(site, ConsentRequest(purposes={"analytics": True}, anonymous_id="P"),
                        False) == 1
    group = {"audience": (conn, audience, [_event(audience.id, "-")], None),
             "site": (conn, site, [_event(site.id, "P")], None)}
    batches = [group[first], *(b for name, b in group.items() if name != first)]
    got = app._not_stored_all(batches)
    assert got == [{}, {}], got  # nothing withheld: P's event is kept
    (kept,) = group["site"][2]
    assert "analytics" in kept.purposes and kept.anonymous_id is None  # sealed


def test_a_group_s_consent_statements_take_one_ledger_turn_and_one_audit_entry_a_source(
        collector: Any, tmp_path: Path) -> None:
    app, sources = collector
    site, shop = sources["site"], sources["shop"]
    conn = SimpleNamespace(headers={})
    writes: list[int] = []
    ledger = app.gate.state.ledger
    record = ledger.record

    def counted(statements: Any) -> None:
        writes.append(len(statements))
        record(statements)

    ledger.record = counted
    before = len(AuditLog(tmp_path).entries())
    yes, no = {"analytics": True}, {"analytics": False}
    batches = [(conn, site, [_event(site.id, "p1", yes), _event(site.id, "p2", yes)], None),
               (conn, shop, [_event(shop.id, "p3", yes)], None),
               (conn, site, [_event(site.id, "p4", no), _event(site.id, "p5")], None),
               (conn, site, [_event(site.id, "p6", yes)], None)]
    got = app._not_stored_all(batches)
    # p4 said no and p5 said nothing: both withheld; every "yes" kept
    assert got == [{}, {}, {"no_lawful_basis": 2}, {}], got
    assert writes == [5], writes  # one transaction: p1, p2, p3, p4, p6
    assert len(ledger.since(0)) == 5
    new = AuditLog(tmp_path).entries()[before:]
    assert [(e["action"], e["actor"]) for e in new] == [
        ("consent.recorded", f"source:{site.id}"), ("consent.recorded", f"source:{shop.id}")]
    assert new[0]["detail"] | {"scope": None} == {
        "channels": ["event"], "statements": 4, "requests": 3, "scope": None, "key": "write"}
    assert new[1]["detail"]["statements"] == 1 and new[1]["detail"]["requests"] == 1
    # a group whose events say nothing about consent writes nothing
    assert app._not_stored_all([(conn, site, [_event(site.id, "p1")], None)]) == [{}]
    assert writes == [5] and len(AuditLog(tmp_path).entries()) == before + 2
