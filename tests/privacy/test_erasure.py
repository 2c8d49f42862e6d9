"""Erasure (Art. 17): the person's rows leave every tier, their keys are destroyed, late
events are not stored, and a receipt with a digest says what went where."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.datadir import DataDir
from aap.privacy.audit import AuditLog
from aap.privacy.ids import IdHasher
from aap.runner import ServerProcess, create_source
from tests.conftest import Running
from tests.privacy.test_personal_canary import warehouse_text

pytestmark = pytest.mark.slow  # each test starts a server or runs the CLI

GONE_MARK = "erase-marker-of-ana-41c7"
KEPT_MARK = "kept-marker-of-bo-93d2"


def msg(kind: str, days_ago: float, mark: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": str(uuid.uuid4()),
            "timestamp": (datetime.now(UTC) - timedelta(days=days_ago)).isoformat(),
            "properties": {"mark": mark}, **fields}


def test_erasure_reaches_every_tier_and_late_events(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = create_source(data, "shop", "--basis", "contract", "--historical")
    env = {"AAP_HOT_DAYS": "1", "AAP_TIERING_INTERVAL_S": "0.5"}
    ana = [
        msg("page", 3, GONE_MARK, anonymousId="anon-ana", name="Home"),
        msg("identify", 3, GONE_MARK, anonymousId="anon-ana", userId="user-ana",
            traits={"email": "ana@example.org", "plan": "pro"}),
        msg("track", 2, GONE_MARK, userId="user-ana", event="Order Completed",
            properties={"mark": GONE_MARK, "order_id": "o-ana", "revenue": 10,
                        "products": [{"product_id": "p1", "price": 10}]}),
        msg("track", 0, GONE_MARK, userId="user-ana", event="Viewed"),
        msg("alias", 0, GONE_MARK, previousId="user-ana", userId="user-ana-2"),
        msg("track", 0, GONE_MARK, userId="user-ana-2", event="Renamed"),
    ]
    bo = [msg("page", 3, KEPT_MARK, anonymousId="anon-bo", name="Home"),
          msg("track", 0, KEPT_MARK, userId="user-bo", anonymousId="anon-bo", event="Viewed")]
    with ServerProcess(data, workers=2, env=env) as server:
        r = httpx.post(server.url + "/v1/batch", auth=(key, ""), json={"batch": ana + bo})
        assert r.json()["accepted"] == 8
        server.wait_processed()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(list(data.rglob("*.parquet"))) < 2:
            time.sleep(0.2)
        assert server.sql("SELECT count(*) FROM events") == [[8]]
        assert server.sql("SELECT count(*) FROM events_raw") == [[3 + 1]]  # today's, hot
        # the open device streams: Ana's anon-ana, user-ana (a server's, no anonymousId)
        # and user-ana-2; Bo's anon-bo
        assert server.sql("SELECT count(*) FROM session_streams") == [[4]]
        check_export(data, tmp_path / "ana.zip", ana)
        out = subprocess.run([sys.executable, "-m", "aap", "privacy", "erase", "--user-id",
                              "user-ana-2", "--data-dir", str(data)],
                             capture_output=True, text=True, check=True)
        receipt = json.loads(out.stdout)
        late = httpx.post(server.url + "/v1/batch", auth=(key, ""), json={"batch": [
            msg("track", 0, GONE_MARK, anonymousId="anon-ana", event="Came back")]})
        assert late.json() == {"success": True, "accepted": 0,
                               "not_stored": {"erased_subject": 1}}
        server.wait_processed()
        # only Bo is left, in every tier and every table
        assert server.sql("SELECT count(*), min(properties->>'mark'), max(properties->>'mark')"
                          " FROM events") == [[2, KEPT_MARK, KEPT_MARK]]
        assert server.sql("SELECT count(*) FROM orders") == [[0]]
        assert server.sql("SELECT count(*) FROM persons") == [[1]]
        assert server.sql("SELECT count(*) FROM person_overrides") == [[0]]
        assert server.sql("SELECT stream_key FROM session_streams") == [
            [IdHasher.for_data_dir(data).key("anon-bo")]]
    removed = receipt["removed"]
    assert removed["session_streams"] == 3
    assert removed["hot_events"] == 3 and removed["warm_rows"] == 3
    assert removed["warm_files_rewritten"] == 2 and removed["orders"] == 1
    assert receipt["persons"] >= 1 and receipt["data_keys_destroyed"] == 3  # anon, 2 user ids
    body = {k: v for k, v in receipt.items() if k != "digest"}
    assert receipt["digest"] == hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert json.loads((DataDir(data).receipts / f"{receipt['id']}.json").read_text()
                      ) == receipt
    # physically gone from the hot store and the Parquet files; Bo's rows are there
    contents = warehouse_text(data)
    assert GONE_MARK not in contents and KEPT_MARK in contents
    # nor any keyed hash of her ids, in any table (ids, streams, …); Bo's are there
    hasher = IdHasher.for_data_dir(data)
    assert not [x for x in ("anon-ana", "user-ana", "user-ana-2")
                if str(hasher.key(x)) in contents]
    assert str(hasher.key("anon-bo")) in contents
    # the log's sealed copies no longer open: their keys are destroyed
    stored = Running(ServerProcess(data), key).stored()
    ana_left = [e for e in stored if e.properties.get("mark") == GONE_MARK]
    assert ana_left and all(e.user_id is None and e.anonymous_id is None
                            and e.previous_id is None for e in ana_left)
    assert {e.anonymous_id for e in stored if e.properties.get("mark") == KEPT_MARK} == {"anon-bo"}
    # and it is on the record
    log = AuditLog(data)
    assert log.verify().ok
    [entry] = [e for e in log.entries() if e["action"] == "privacy.erasure"]
    assert entry["detail"]["digest"] == receipt["digest"]


def check_export(data: Path, zip_path: Path, sent: list[dict[str, Any]]) -> None:
    """Access (Art. 15, 20): the zip holds exactly the person's events, from both tiers."""
    out = subprocess.run([sys.executable, "-m", "aap", "privacy", "export", "--anonymous-id",
                          "anon-ana", "--out", str(zip_path), "--data-dir", str(data)],
                         capture_output=True, text=True, check=True)
    summary = json.loads(out.stdout)
    assert summary["events"] == len(sent) and summary["orders"] == 1
    with zipfile.ZipFile(zip_path) as z:
        names = set(z.namelist())
        assert {"README.txt", "profile.json", "events.json", "events.csv", "sessions.json",
                "consent.json", "purposes.json", "orders.csv"} <= names
        events = json.loads(z.read("events.json"))
        assert sorted(e["message_id"] for e in events) == sorted(m["messageId"] for m in sent)
        assert {e["properties"] and json.loads(e["properties"])["mark"] for e in events} == {
            GONE_MARK}
        assert len(z.read("events.csv").decode().splitlines()) == len(sent) + 1
        assert [p["id"] for p in json.loads(z.read("purposes.json"))] == [
            "analytics", "marketing", "personalization", "partner_sharing", "audience_measurement",
            "device_diagnostics"]
        [profile] = json.loads(z.read("profile.json"))
        assert profile["identified"] is True and "email" not in (profile["traits"] or "")


def test_erase_needs_an_id_and_a_running_server(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "aap", "privacy", "erase", "--data-dir", str(tmp_path)]
    out = subprocess.run(run, capture_output=True, text=True)
    assert out.returncode == 2 and "--user-id" in out.stderr
    out = subprocess.run([*run, "--user-id", "x"], capture_output=True, text=True)
    assert out.returncode == 1 and "not running" in out.stderr
