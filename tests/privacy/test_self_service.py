"""A person exercises their rights themselves, with a token their site signed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.runner import ServerProcess, create_source

pytestmark = pytest.mark.slow  # each test starts a server


def site_token(secret_b64: str, source_id: str, subject: dict[str, str], exp: float) -> str:
    """What a site's backend does, from the README alone (no AAP code)."""
    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    secret = base64.urlsafe_b64decode(secret_b64 + "=" * (-len(secret_b64) % 4))
    body = b64(json.dumps({"src": source_id, "sub": subject, "exp": int(exp)}).encode())
    return body + "." + b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())


def test_a_person_asks_for_their_data_then_to_be_forgotten(tmp_path: Path, meta_url: str
                                                           ) -> None:
    data = tmp_path / "data"
    key = create_source(data, "shop", "--basis", "contract")
    out = subprocess.run([sys.executable, "-m", "aap", "sources", "secret", "shop",
                          "--data-dir", str(data)], capture_output=True, text=True, check=True)
    secret = out.stdout.strip().splitlines()[-1]
    listing = subprocess.run([sys.executable, "-m", "aap", "sources", "list", "--data-dir",
                              str(data)], capture_output=True, text=True, check=True).stdout
    source_id = listing.split("\t")[0]
    with ServerProcess(data, workers=1) as server:
        batch = [{"type": "track", "userId": who, "event": "Viewed", "messageId": str(uuid.uuid4())}
                 for who in ("me", "me", "someone-else")]
        assert httpx.post(server.url + "/v1/batch", auth=(key, ""),
                          json={"batch": batch}).json()["accepted"] == 3
        server.wait_processed()
        mine = {"Authorization": "Subject " + site_token(secret, source_id, {"userId": "me"},
                                                         time.time() + 600)}
        theirs = {"Authorization": "Subject " + site_token(
            secret, source_id, {"userId": "someone-else"}, time.time() + 600)}

        def run(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            r = httpx.post(server.url + "/v1/privacy/requests", json=body, headers=mine)
            assert r.status_code == 200 and r.json()["status"] == "pending", r.text
            rid = r.json()["id"]
            deadline = time.monotonic() + 180
            while (got := httpx.get(f"{server.url}/v1/privacy/requests/{rid}", headers=mine
                                    ).json())["status"] in ("pending", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            return rid, got

        rid, got = run({"type": "access"})
        assert got["status"] == "done" and got["result"]["events"] == 2
        r = httpx.get(f"{server.url}/v1/privacy/requests/{rid}/export", headers=mine)
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            assert len(json.loads(z.read("events.json"))) == 2
        # another person sees nothing of it
        assert httpx.get(f"{server.url}/v1/privacy/requests/{rid}", headers=theirs
                         ).status_code == 404
        _, got = run({"type": "erasure"})
        assert got["status"] == "done" and got["result"]["removed"]["hot_events"] == 2
        assert server.sql("SELECT count(*) FROM events") == [[1]]


def test_bad_tokens_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    create_source(data, "shop")
    out = subprocess.run([sys.executable, "-m", "aap", "sources", "secret", "shop",
                          "--data-dir", str(data)], capture_output=True, text=True, check=True)
    secret = out.stdout.strip().splitlines()[-1]
    source_id = subprocess.run([sys.executable, "-m", "aap", "sources", "list", "--data-dir",
                                str(data)], capture_output=True, text=True, check=True
                               ).stdout.split("\t")[0]
    other = base64.urlsafe_b64encode(b"x" * 32).decode()
    cases = {
        "": "missing_subject_token",
        "Bearer abc": "missing_subject_token",
        "Subject nonsense": "bad_subject_token",
        "Subject " + site_token(other, source_id, {"userId": "me"}, time.time() + 60):
            "bad_subject_token",
        "Subject " + site_token(secret, source_id, {"userId": "me"}, time.time() - 1):
            "bad_subject_token",
        "Subject " + site_token(secret, source_id, {"userId": "me", "anonymousId": "a"},
                                time.time() + 60): "bad_subject_token",
    }
    with ServerProcess(data, workers=1) as server:
        for auth, code in cases.items():
            r = httpx.post(server.url + "/v1/privacy/requests", json={"type": "access"},
                           headers={"Authorization": auth} if auth else {})
            assert r.status_code == 401 and r.json()["code"] == code, (auth, r.text)
        good = {"Authorization": "Subject " + site_token(secret, source_id, {"userId": "me"},
                                                         time.time() + 60)}
        r = httpx.post(server.url + "/v1/privacy/requests", json={"type": "sale"}, headers=good)
        assert r.status_code == 400 and r.json()["code"] == "invalid_request"
