"""Insights and analysts' SQL read only events that may be used for analytics: events
stored for other purposes alone (a marketing-only source, or events whose analytics
purpose was withdrawn) are not counted — in the hot tier, the warm tier and the query
cache alike."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.runner import ServerProcess, create_source

pytestmark = pytest.mark.slow  # a server end to end

DAY = (datetime.now(UTC) - timedelta(days=20)).replace(hour=12, minute=0, second=0,
                                                       microsecond=0)
RECENT = (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0, second=0,
                                                          microsecond=0)


def key(data: Path, role: str) -> str:
    out = subprocess.run([sys.executable, "-m", "aap", "keys", "create", "--role", role,
                          "--data-dir", str(data)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def batch(prefix: str, when: datetime, n: int) -> list[dict[str, Any]]:
    return [{"type": "track", "event": "Viewed", "userId": f"{prefix}-{i}",
             "timestamp": (when + timedelta(minutes=i)).isoformat()} for i in range(n)]


def test_only_events_for_analytics_reach_insights_and_sql(tmp_path: Path) -> None:
    data = tmp_path / "data"
    web = create_source(data, "web", "--historical", "--purpose", "analytics",
                        "--basis", "legitimate_interest")
    ads = create_source(data, "ads", "--historical", "--purpose", "marketing",
                        "--basis", "legitimate_interest")
    both = create_source(data, "both", "--historical", "--purpose", "analytics",
                         "--purpose", "marketing", "--basis", "legitimate_interest")
    analyst = key(data, "analyst")
    env = {"AAP_HOT_DAYS": "7", "AAP_TIERING_INTERVAL_S": "1", "AAP_QUERY_CACHE_INTERVAL_S": "1"}
    with ServerProcess(data, workers=1, env=env) as server:
        for wk, prefix, n in ((web, "w", 3), (ads, "m", 5), (both, "b", 2)):
            for when in (DAY, RECENT):  # warm tier (after tiering) and hot tier
                r = httpx.post(server.url + "/v1/batch", auth=(wk, ""), timeout=30,
                               json={"batch": batch(prefix + when.strftime("%d"), when, n)})
                assert r.status_code == 200 and r.json()["accepted"] == n, r.text
        server.wait_processed()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and server.sql(
                "SELECT count(*) FROM events_raw WHERE timestamp < ?",
                [(DAY + timedelta(days=1)).replace(tzinfo=None).isoformat()]) != [[0]]:
            time.sleep(0.5)  # the old day moved to the warm tier
        while server.sql("SELECT count(*) FROM query_cache_files") == [[0]]:
            assert time.monotonic() < deadline, "the query cache never picked the warm file up"
            time.sleep(0.5)

        def query(doc: dict[str, Any]) -> dict[str, Any]:
            r = httpx.post(server.url + "/api/v1/query", json=doc, timeout=60,
                           headers={"Authorization": f"Bearer {analyst}"})
            assert r.status_code == 200, r.text
            out: dict[str, Any] = r.json()
            return out

        # the marketing-only events exist, in both tiers...
        assert server.sql("SELECT count(*) FROM events_all") == [[20]]
        # ...but insights and SQL see the analytics ones only: web 3 + both 2 per day
        trend = query({"kind": "trends", "series": [{"event": "Viewed", "math": "total"}],
                       "interval": "day", "date_from": (DAY - timedelta(days=1)).date().isoformat(),
                       "date_to": RECENT.date().isoformat()})
        assert sum(trend["series"][0]["values"]) == 10, trend
        persons = query({"kind": "trends", "series": [{"event": "Viewed", "math": "persons"}],
                         "interval": "month",
                         "date_from": (DAY - timedelta(days=1)).date().isoformat(),
                         "date_to": RECENT.date().isoformat()})
        assert sum(persons["series"][0]["values"]) == 10, persons
        rows = query({"kind": "sql", "query": "SELECT count(*) FROM events"})["rows"]
        assert rows == [[10]]
