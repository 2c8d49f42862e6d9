"""Two data dirs sharing one PostgreSQL (``AAP_META_URL``), as two query nodes or
collectors of a deployment would: a real ``aap serve`` on each, on 127.0.0.1. What one
makes, the other uses at once: an API key made with the CLI of one authenticates on the
other's server; a web session signed in on one is live on the other and ended there; a
key revoked through one is refused by the other; a saved insight and a dashboard made
through one are listed and read through the other; a device registered on one sends
telemetry to the other's collector."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.datadir import DataDir
from aap.privacy.audit import AuditLog
from aap.privacy.ids import IdHasher
from aap.privacy.keystore import Keystore
from aap.runner import ServerProcess, create_source
from tests.pg import Cluster, new_database

pytestmark = pytest.mark.slow  # two servers and PostgreSQL


def aap(data: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "aap", *args, "--data-dir", str(data)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


class Node:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.url = server.url

    def call(self, method: str, path: str, key: str | None = None, **kw: Any
             ) -> httpx.Response:
        headers = kw.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kw)

    def ok(self, method: str, path: str, key: str, **kw: Any) -> Any:
        r = self.call(method, path, key, **kw)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def nodes(tmp_path: Path, pg: Cluster, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[tuple[Path, Node, Node]]:
    """Data dirs ``a`` and ``b`` on one new PostgreSQL database, with the same keys (the
    master key, the id-hash key and the audit key: copied, as docs/deploy.md says), and a
    server on each."""
    url = new_database(pg.url)
    monkeypatch.setenv("AAP_META_URL", url)  # the CLI and the servers below
    a, b = tmp_path / "a", tmp_path / "b"
    Keystore(a, url=url).close()
    IdHasher.for_data_dir(a)
    AuditLog(a, url=url)
    shutil.copytree(DataDir(a).keys, DataDir(b).keys)
    servers: list[ServerProcess] = []
    try:
        for data in (a, b):
            servers.append(ServerProcess(data, workers=1).start())
        yield a, Node(servers[0]), Node(servers[1])
    finally:
        for server in servers:
            server.stop()
    assert not DataDir(a).meta_db.exists() and not DataDir(b).meta_db.exists()


def test_keys_sessions_dashboards_and_devices_made_on_one_node_work_on_the_other(
        nodes: tuple[Path, Node, Node]) -> None:
    a_dir, a, b = nodes
    admin = aap(a_dir, "keys", "create", "--role", "admin", "--name", "made-on-a")
    # the key made with a's CLI authenticates on b's server
    listed = b.ok("GET", "/api/v1/keys", admin)["keys"]
    assert [k["name"] for k in listed] == ["made-on-a"]
    forged = admin[:-1] + ("A" if admin[-1] != "A" else "B")
    assert b.call("GET", "/api/v1/keys", forged).status_code == 401

    # a key made through b's API works on a until b revokes it
    made = b.ok("POST", "/api/v1/keys", admin, json={"role": "analyst", "name": "via-b"})
    analyst = made["key"]
    assert a.ok("GET", "/api/v1/insights", analyst) == {"insights": []}
    b.ok("DELETE", f"/api/v1/keys/{made['id']}", admin)
    refused = a.call("GET", "/api/v1/insights", analyst)
    assert refused.status_code == 401 and refused.json()["code"] == "invalid_api_key"

    # a web session signed in on a is live on b, and ended through b
    r = a.call("POST", "/api/v1/session", json={"key": admin})
    assert r.status_code == 200, r.text
    token = r.cookies["aap_session"]
    csrf = r.json()["csrf"]
    cookie = {"Cookie": f"aap_session={token}"}
    on_b = b.call("GET", "/api/v1/session", headers=dict(cookie))
    assert on_b.status_code == 200 and on_b.json()["key_id"] == admin.split("_")[1]
    assert b.call("DELETE", "/api/v1/session", headers={**cookie, "X-CSRF-Token": csrf}
                  ).status_code == 200
    assert a.call("GET", "/api/v1/session", headers=dict(cookie)).status_code == 401

    # a saved insight and a dashboard made through a are listed and read through b
    doc = {"kind": "trends", "series": [{"event": "$page"}], "date_from": "-7d"}
    insight = a.ok("POST", "/api/v1/insights", admin, json={"name": "pages", "query": doc})
    board = a.ok("POST", "/api/v1/dashboards", admin,
                 json={"name": "Shared board", "insights": [insight["id"]]})
    boards = b.ok("GET", "/api/v1/dashboards", admin)["dashboards"]
    assert [(d["id"], d["name"]) for d in boards] == [(board["id"], "Shared board")]
    assert b.ok("GET", f"/api/v1/dashboards/{board['id']}", admin)["insights"] == [
        {"id": insight["id"], "name": "pages"}]
    assert b.ok("GET", f"/api/v1/insights/{insight['id']}", admin)["name"] == "pages"
    b.ok("DELETE", f"/api/v1/dashboards/{board['id']}", admin)
    assert a.call("GET", f"/api/v1/dashboards/{board['id']}", admin).status_code == 404

    # a device registered with a's CLI sends telemetry to b's collector
    create_source(a_dir, "home", "--purpose", "device_diagnostics:legitimate_interest")
    device_key = aap(a_dir, "devices", "register", "--source", "home", "--name", "t-1")
    reading = {"name": "temperature", "ts": time.time() - 60, "values": {"celsius": 21.5}}
    r = b.call("POST", "/v1/devices/telemetry", device_key, json=[reading])
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
