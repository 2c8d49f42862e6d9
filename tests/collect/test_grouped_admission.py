"""Batches admitted together (:meth:`aap.collect.app.Collector._not_stored_all`, the
group a worker's shared-state thread makes of the batches that queued) each see the
consent ledger as it was when they arrived: the group reads what the ledger gained once,
before the first batch, whatever that batch is — also when it comes from a CNIL-mode
source, whose admission reads no ledger. A statement another worker wrote after this
worker's last read applies to every batch of the group."""

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
from aap.runner import create_source
from aap.settings import Settings
from aap.sources import Sources

pytestmark = pytest.mark.slow  # the sources are made with the CLI (a subprocess)


def _event(source: str, anonymous_id: str) -> Event:
    now = datetime.now(UTC)
    return Event(type="track", event="Viewed", message_id=str(uuid.uuid4()),
                 anonymous_id=anonymous_id, timestamp=now, received_at=now, source=source)


@pytest.fixture
def collector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AAP_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("AAP_META_URL", raising=False)
    keys = {"site": create_source(tmp_path, "site"),  # analytics by consent
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
