"""The canary proof (issue 5, section 6), end to end on the real server.

Unique emails, user ids, anonymous ids and client IP addresses are planted; the events
go through the collector, the log, the processor, the hot, warm and cold tiers and the
query cache; the person is rectified and exported (through the API and the CLI); then
erased. Every byte under the data dir and the server's captured stdout/stderr is scanned
for each canary in plain, hex and base64 form, with the log's records decompressed and
every DuckDB and Parquet row read as text: zero hits before and after the erasure, and
for IP addresses at every step.

The access exports handed out — downloaded through the API, written by ``aap privacy
export --out`` — are the person's data in plain text by design: they leave AAP. The test
shows that they hold the canaries (so the scan would find a copy) and that they still do
after the erasure: AAP cannot shred a copy it handed out. Inside the data dir, exports
exist only sealed under the person's key, and the erasure deletes them.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.datadir import DataDir
from aap.privacy.audit import AuditLog
from aap.runner import ServerProcess, create_source
from tests.privacy import test_ip_canary as ipc
from tests.privacy.test_personal_canary import forms, warehouse_text
from tests.privacy.test_requests_api import new_key

pytestmark = pytest.mark.slow  # a server, its processor and tiers end to end

USER = "canary-e2e-user-4d1a9c"
ANON = "canary-e2e-anon-b83f02"
EMAIL = "canary.e2e.7e3d@example.net"
EMAIL_FIXED = "canary.fixed.91ac@example.net"  # the rectified value
KEEP_USER = "canary-e2e-keeper-62f0"
KEEP_EMAIL = "canary.keeper.0c5b@example.net"
IPS = ("203.0.113.143", "2001:db8:4f2a:77::9", "198.51.100.57")
GONE = "victim-marker-3a7e"  # not personal: proves the scans see (and lose) her rows
KEPT = "keeper-marker-c41d"
PERSONAL = (USER, ANON, EMAIL, EMAIL_FIXED, KEEP_USER, KEEP_EMAIL)


class HTTP:
    """httpx with a timeout a busy machine keeps (its 5 s default can expire under load)."""

    post = staticmethod(partial(httpx.post, timeout=120))
    get = staticmethod(partial(httpx.get, timeout=120))


def batch(user: str, anon: str, email: str, mark: str, days_ago: float) -> list[dict[str, Any]]:
    at = (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()
    out: list[dict[str, Any]] = [
        {"type": "page", "anonymousId": anon, "name": "Home", "timestamp": at,
         "properties": {"mark": mark}},
        {"type": "identify", "anonymousId": anon, "userId": user, "timestamp": at,
         "traits": {"email": email, "plan": "pro"}, "context": {"traits": {"email": email}}},
        {"type": "track", "userId": user, "event": "Ordered", "timestamp": at,
         "properties": {"mark": mark}, "context": {"ip": IPS[2]}},
    ]
    for m in out:
        m["messageId"] = str(uuid.uuid4())
    return out


def found(data: Path, log: Path, needles: list[bytes]) -> list[tuple[str, bytes]]:
    """(where, form) for each hit of any form: every file of the data dir, the log's
    records decompressed, every zip inside the data dir opened, and the server's log."""
    blobs = [*ipc.blobs(data), (str(log), log.read_bytes())]
    for name, blob in list(blobs):
        if blob[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(blob)) as z:
                blobs += [(f"{name}!{n}", z.read(n)) for n in z.namelist()]
    return [(name, n) for name, blob in blobs for n in needles if n in blob]


def zip_text(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        return "".join(z.read(n).decode() for n in z.namelist())


def test_canaries_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "data"
    outside = tmp_path / "outside"  # where the subject's copies go: not AAP's
    outside.mkdir()
    log = tmp_path / "server.log"
    write_key = create_source(data, "shop", "--basis", "contract", "--historical")
    privacy_key = new_key(data, "privacy")
    env = {"AAP_HOT_DAYS": "1", "AAP_WARM_DAYS": "3", "AAP_TIERING_INTERVAL_S": "0.5",
           "AAP_QUERY_CACHE_INTERVAL_S": "0.5", "AAP_TRUSTED_PROXIES": "127.0.0.1/32"}
    personal = sorted({f for c in PERSONAL for f in forms(c)})
    ips = sorted({f for ip in IPS for f in ipc.forms(ip)})

    def no_ips(phase: str) -> None:
        assert found(data, log, ips) == [], phase

    server = ServerProcess(data, workers=2, env=env, log_file=log).start()
    try:
        # hot (today), warm (2 days ago) and cold (10 days ago: archived)
        for i, days_ago in enumerate((10, 2, 0)):
            sent = batch(USER, ANON, EMAIL, GONE, days_ago) + \
                batch(KEEP_USER, "anon-" + KEEP_USER, KEEP_EMAIL, KEPT, days_ago)
            r = HTTP.post(server.url + "/v1/batch", auth=(write_key, ""), json={"batch": sent},
                           headers={"X-Forwarded-For": f"{IPS[i % 2]}, 127.0.0.1"})
            assert r.json()["accepted"] == 6, r.text
        no_ips("collected")
        server.wait_processed()
        deadline = time.monotonic() + 180
        while server.sql("SELECT count(DISTINCT tier) FROM tier_files") != [[2]] or \
                server.sql("SELECT count(*) FROM query_cache_files") == [[0]]:
            assert time.monotonic() < deadline, server.sql("SELECT tier, path FROM tier_files")
            time.sleep(0.2)
        assert server.sql("SELECT count(*) FROM events") == [[18]]
        no_ips("processed and tiered")

        api = {"Authorization": f"Bearer {privacy_key}"}

        def request(body: dict[str, Any]) -> dict[str, Any]:
            rid = HTTP.post(server.url + "/api/v1/privacy/requests", json=body, headers=api
                             ).json()["id"]
            deadline = time.monotonic() + 180
            while (got := HTTP.get(f"{server.url}/api/v1/privacy/requests/{rid}",
                                    headers=api).json())["status"] in ("pending", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert got["status"] == "done", got
            return dict(got)

        # rectification of a personal trait, then access: through the API and the CLI
        request({"type": "rectification", "subject": {"userId": USER},
                 "traits": {"email": EMAIL_FIXED}})
        access = request({"type": "access", "subject": {"anonymousId": ANON}})
        assert access["result"]["events"] == 9
        got = HTTP.get(f"{server.url}/api/v1/privacy/requests/{access['id']}/export",
                        headers=api)
        assert got.status_code == 200
        (outside / "api.zip").write_bytes(got.content)
        subprocess.run([sys.executable, "-m", "aap", "privacy", "export", "--user-id", USER,
                        "--out", str(outside / "cli.zip"), "--data-dir", str(data)],
                       check=True, capture_output=True)
        api_copy, cli_copy = zip_text(outside / "api.zip"), zip_text(outside / "cli.zip")
        # what is held, opened for her: the rectified email, the one she sent (held sealed
        # in the log), and every id of hers, raw, whichever one the request named
        assert EMAIL_FIXED in api_copy and EMAIL in api_copy and GONE in api_copy
        assert USER in api_copy and ANON in api_copy and USER in cli_copy and ANON in cli_copy
        assert len(list(DataDir(data).exports.iterdir())) == 2  # sealed
        assert found(data, log, personal) == [], "before erasure, running"
        no_ips("exported")
    finally:
        server.stop()
    # stopped: every DuckDB and Parquet row as text too
    rows = warehouse_text(data)
    assert GONE in rows and KEPT in rows, "the scan must see the stored rows"
    for needle in personal + ips:
        assert needle.decode(errors="replace") not in rows, needle
    assert found(data, log, personal + ips) == [], "before erasure, stopped"

    server = ServerProcess(data, workers=2, env=env, log_file=log).start()
    try:
        out = subprocess.run([sys.executable, "-m", "aap", "privacy", "erase", "--user-id", USER,
                              "--data-dir", str(data)], check=True, capture_output=True, text=True)
        receipt = json.loads(out.stdout)
        assert receipt["removed"]["cold_rows"] == 3 and receipt["removed"]["warm_rows"] == 3
        assert receipt["removed"]["hot_events"] == 3
        # the day's warm file, retired when it was archived, is still in its grace period
        assert receipt["removed"]["retired_files_deleted"] == 1
        assert receipt["derived"]["access_exports_deleted"] == 2
        assert receipt["derived"]["query_cache_rows"] >= 3
        assert list(DataDir(data).exports.iterdir()) == []
        gone = HTTP.get(f"{server.url}/api/v1/privacy/requests/{access['id']}/export",
                         headers=api)
        assert gone.status_code == 404
        assert server.sql("SELECT count(*) FROM events") == [[9]]
        assert found(data, log, personal + ips) == [], "after erasure, running"
    finally:
        server.stop()
    rows = warehouse_text(data)
    assert GONE not in rows and KEPT in rows  # her rows physically gone from every tier
    for needle in personal + ips:
        assert needle.decode(errors="replace") not in rows, needle
    assert found(data, log, personal + ips) == [], "after erasure, stopped"
    assert AuditLog(data).verify().ok
    # the copies handed out are outside AAP, in plain text by design: still readable
    assert EMAIL_FIXED in zip_text(outside / "api.zip") and USER in zip_text(outside / "cli.zip")
