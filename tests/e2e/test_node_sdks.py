"""The real Node SDKs from npm (`@segment/analytics-node`, `posthog-node`, installed by
scripts/setup in sdk/js) against the real server: a page view, events, an identify, a
group and an alias, and the warehouse holds exactly those, as one person, at the times
sent."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import Running
from tests.e2e.warehouse import person_traits, persons_rows


@pytest.fixture(scope="module")
def running(sdk_server: Running) -> Running:
    return sdk_server


SCRIPT = Path(__file__).parents[2] / "sdk" / "js" / "test" / "node_client.mjs"


@pytest.mark.parametrize("sdk", ["segment", "posthog"], ids=["analytics-node", "posthog-node"])
def test_node_sdk_calls_land_in_the_warehouse(running: Running, sdk: str) -> None:
    out = subprocess.run(["node", str(SCRIPT), sdk, running.url, running.key,
                          "1" if sdk == "segment" else "2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    sent = json.loads(out.stdout.strip().splitlines()[-1])
    running.server.wait_processed()
    first = sent[0]["id"]
    rows = persons_rows(running.server, [first])
    assert len({r.person_id for r in rows}) == 1
    # nothing missing, nothing extra: one stored event per call, of the call's type
    assert sorted(r.type for r in rows) == sorted(c["type"] for c in sent)
    by_id = {r.message_id: r for r in rows}
    for c in sent:
        if c["id"] is None:
            continue
        r = by_id[c["id"]]
        assert r.type == c["type"]
        if c["type"] == "track":
            assert r.event == c["event"]
        assert abs(r.timestamp - datetime.fromisoformat(c["ts"])) < timedelta(seconds=2)
    assert by_id[first].path in ("/", "/docs")
    assert person_traits(running.server, by_id[first].person_id)["plan"] == "pro"
