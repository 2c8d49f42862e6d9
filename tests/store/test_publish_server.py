"""``aap serve`` with ``AAP_PUBLISH_SECONDS``: the core publishes batch files, a query
reads every event once, an erasure reaches the files, and the same data dir with
publishing off is refused with a message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.runner import ServerProcess, create_source
from tests.privacy.test_personal_canary import warehouse_text

pytestmark = pytest.mark.slow  # a server, and the CLI

GONE = "publish-canary-of-ana-c41e"
KEPT = "publish-kept-of-bo-8a0b"


def msg(days_ago: float, user: str, mark: str) -> dict[str, Any]:
    return {"type": "track", "event": "Viewed", "messageId": str(uuid.uuid4()),
            "userId": user, "properties": {"mark": mark},
            "timestamp": (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()}


def test_a_server_publishes_batches_and_erasure_reaches_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = create_source(data, "shop", "--basis", "contract", "--historical")
    env = {"AAP_PUBLISH_SECONDS": "0.5", "AAP_TIERING_INTERVAL_S": "1"}
    batch = [msg(d, "user-ana", GONE) for d in (3, 2, 1, 0)] + \
            [msg(d, "user-bo", KEPT) for d in (3, 2, 1, 0)]
    with ServerProcess(data, workers=1, env=env) as server:
        r = httpx.post(server.url + "/v1/batch", auth=(key, ""), json={"batch": batch})
        assert r.json()["accepted"] == 8
        server.wait_processed()
        deadline = time.monotonic() + 180
        while server.sql("SELECT count(*) FROM events_raw") != [[0]]:
            assert time.monotonic() < deadline, "the hot rows were not published"
            time.sleep(0.2)
        assert any(p.name.startswith("batch-") for p in (data / "tiers").rglob("*.parquet"))
        assert server.sql("SELECT count(*) FROM events_all") == [[8]]
        assert (data / "tiers.db").is_file()
        out = subprocess.run([sys.executable, "-m", "aap", "privacy", "erase", "--user-id",
                              "user-ana", "--data-dir", str(data)],
                             capture_output=True, text=True, check=True)
        assert json.loads(out.stdout)["removed"]["warm_rows"] == 4
        assert server.sql("SELECT count(*) FROM events_all") == [[4]]
    contents = warehouse_text(data)
    assert GONE not in contents and KEPT in contents
    # the same data dir with publishing off: refused, with the reason
    env_off = {k: v for k, v in os.environ.items() if k != "AAP_PUBLISH_SECONDS"}
    refused = subprocess.run([sys.executable, "-m", "aap", "serve", "--data-dir", str(data),
                              "--port", "0"], capture_output=True, text=True, env=env_off,
                             timeout=120)
    assert refused.returncode != 0
    assert "AAP_PUBLISH_SECONDS" in refused.stderr and "Traceback" not in refused.stderr
