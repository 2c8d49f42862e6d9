"""Planted client addresses never reach the disk or a log line, in any form."""

from __future__ import annotations

import base64
import ipaddress
import sqlite3
from pathlib import Path

import httpx
import pytest
from segment.analytics import Client

from aap.events import payload_bytes
from tests.conftest import start

pytestmark = pytest.mark.slow  # a server end to end

V4 = "203.0.113.77"
V6 = "2001:db8:85a3:1234:5678:8a2e:370:7334"
V4_CTX = "198.51.100.213"
MARKER = "canary-marker-5f1c9e"  # not personal: proves the scan reads what was stored


def forms(ip: str) -> list[bytes]:
    addr = ipaddress.ip_address(ip)
    texts = {ip, str(addr), addr.exploded, addr.compressed}
    out = {t.encode() for t in texts}
    out |= {base64.b64encode(t.encode()) for t in texts}
    out |= {t.encode().hex().encode() for t in texts}
    out.add(addr.packed)
    out.add(addr.packed.hex().encode())
    out.add(base64.b64encode(addr.packed))
    return sorted(out)


def blobs(root: Path) -> list[tuple[str, bytes]]:
    """Every file under ``root`` as bytes, plus every log payload decompressed (the log
    stores its records zstd-compressed, where a plain byte scan would see nothing)."""
    out = [(str(p), p.read_bytes()) for p in root.rglob("*") if p.is_file()]
    for db in root.rglob("log.db"):
        con = sqlite3.connect(db)
        for seq, payload in con.execute("SELECT seq, payload FROM records"):
            out.append((f"{db}#record{seq}", payload_bytes(payload)))
        con.close()
    return out


def scan(root: Path, needle: bytes) -> list[str]:
    return [name for name, data in blobs(root) if needle in data]


def test_planted_ips_are_nowhere_on_disk(tmp_path: Path) -> None:
    r = start(tmp_path, env={"AAP_TRUSTED_PROXIES": "127.0.0.1/32"})
    try:
        for ip in (V4, V6):
            body = {"batch": [{"type": "track", "event": "Viewed", "userId": "u1",
                               "properties": {"note": MARKER}}]}
            resp = r.post("/v1/batch", json=body, headers={"X-Forwarded-For": f"{ip}, 127.0.0.1"})
            assert resp.status_code == 200
            # the same address on error paths
            assert r.post("/v1/batch", b"{bad", headers={"X-Forwarded-For": ip}).status_code == 400
            assert r.post("/v1/batch", json=body, auth=False,
                          headers={"X-Forwarded-For": ip}).status_code == 401
        # a server-side SDK passing the end user's address in context.ip
        client = Client(r.key, host=r.url, sync_mode=True, max_retries=0)
        client.track("u2", "Bought", {"note": MARKER}, context={"ip": V4_CTX})
        assert httpx.get(r.url + "/metrics").status_code == 200
        stored = r.stored()
        assert {e.ip for e in stored} == {"203.0.113.0", "2001:db8:85a3::", "198.51.100.0"}
        assert all(e.geo is None or e.geo.country for e in stored)
        for phase in ("running", "stopped"):
            if phase == "stopped":
                r.server.stop()
            roots = [tmp_path]  # data dir and the server's own log file
            assert scan(tmp_path, MARKER.encode()), "the scan must see stored events"
            for ip in (V4, V6, V4_CTX):
                for form in forms(ip):
                    for root in roots:
                        assert scan(root, form) == [], (phase, ip, form)
    finally:
        r.server.stop()
