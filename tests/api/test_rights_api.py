"""Rights requests through the REST API: role privacy, an erasure receipt, and the
person gone from every insight (also from the query cache)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from aap.runner import ServerProcess, create_source


def msg(days_ago: float, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Viewed", "messageId": str(uuid.uuid4()),
            "timestamp": (datetime.now(UTC) - timedelta(days=days_ago)).isoformat(), **fields}


def key(data: Path, role: str) -> str:
    out = subprocess.run([sys.executable, "-m", "aap", "keys", "create", "--role", role,
                          "--data-dir", str(data)], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_privacy_role_erases_a_person_through_the_api(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_key = create_source(data, "shop", "--basis", "contract", "--historical")
    analyst, privacy = key(data, "analyst"), key(data, "privacy")
    env = {"AAP_HOT_DAYS": "1", "AAP_TIERING_INTERVAL_S": "0.5",
           "AAP_QUERY_CACHE_INTERVAL_S": "0.5"}
    batch = [msg(3, userId="ana"), msg(2, userId="ana"), msg(3, userId="bo"), msg(0, userId="bo")]
    doc = {"kind": "trends", "series": [{"event": "Viewed", "math": "persons"}],
           "interval": "month", "date_from": "-7d"}
    with ServerProcess(data, workers=1, env=env) as server:
        r = httpx.post(server.url + "/v1/batch", auth=(write_key, ""), json={"batch": batch})
        assert r.status_code == 200, r.text
        server.wait_processed()
        deadline = time.monotonic() + 30  # older days move to the warm tier and the cache
        while time.monotonic() < deadline and not server.sql(
                "SELECT count(*) FROM query_cache")[0][0]:
            time.sleep(0.2)

        def persons() -> int:
            r = httpx.post(server.url + "/api/v1/query", json=doc,
                           headers={"Authorization": f"Bearer {analyst}"})
            return sum(sum(s["values"]) for s in r.json()["series"])

        assert persons() == 2
        body = {"userIds": ["ana"]}
        r = httpx.post(server.url + "/api/v1/privacy/erase", json=body,
                       headers={"Authorization": f"Bearer {analyst}"})
        assert r.status_code == 403
        r = httpx.post(server.url + "/api/v1/privacy/erase", json=body,
                       headers={"Authorization": f"Bearer {privacy}"}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["type"] == "erasure"
        assert persons() == 1
        # the erasure synced the query cache: no cached row of a rewritten file is left
        assert server.sql("SELECT count(*) FROM query_cache WHERE file_no NOT IN (SELECT"
                          " f.file_no FROM query_cache_files f JOIN tier_files t USING (path))"
                          ) == [[0]]
        r = httpx.post(server.url + "/api/v1/privacy/erase", json={},
                       headers={"Authorization": f"Bearer {privacy}"})
        assert r.status_code == 400
