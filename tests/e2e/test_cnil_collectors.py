"""Two collectors behind one load balancer, in the CNIL mode: two real ``aap serve`` on
different data dirs (two pods, each its own volume) with the same ``AAP_META_URL``. The
same visitor (same address, same browser) hits both on the same day; the stored events
count one visitor, because both collectors hash it with the one daily salt on the shared
store (with a salt per data dir, as before, it counted two)."""

from __future__ import annotations

import shutil
import uuid
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

VISITOR, OTHER = "203.0.113.77", "198.51.100.213"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0"


def hit(server: ServerProcess, key: str, ip: str, n: int) -> None:
    batch: list[dict[str, Any]] = [
        {"type": "track", "event": "Home", "messageId": str(uuid.uuid4()),
         "anonymousId": str(uuid.uuid4())}  # a new cookie each time: ids are dropped anyway
        for _ in range(n)]
    r = httpx.post(server.url + "/v1/batch", auth=(key, ""), json={"batch": batch},
                   headers={"X-Forwarded-For": ip, "User-Agent": UA}, timeout=60)
    assert r.status_code == 200 and r.json()["accepted"] == n, r.text


def test_one_visitor_through_two_collectors_is_one_visitor(
        tmp_path: Path, pg: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    url = new_database(pg.url)
    monkeypatch.setenv("AAP_META_URL", url)  # the CLI and the servers below
    a, b = tmp_path / "a", tmp_path / "b"
    Keystore(a, url=url).close()  # the keys every pod is given (docs/deploy.md)
    IdHasher.for_data_dir(a)
    AuditLog(a, url=url)
    shutil.copytree(DataDir(a).keys, DataDir(b).keys)
    key = create_source(a, "site", "--mode", "cnil")  # the registry is shared: b knows it
    env = {"AAP_TRUSTED_PROXIES": "127.0.0.1/32"}
    with ServerProcess(a, workers=1, env=env) as one, ServerProcess(b, workers=1, env=env) as two:
        hit(one, key, VISITOR, 3)
        hit(two, key, VISITOR, 2)
        hit(one, key, OTHER, 1)
        hit(two, key, OTHER, 1)
        for server in (one, two):
            server.wait_processed()
        stored = [(str(p), int(n)) for server in (one, two) for p, n in server.sql(
            "SELECT person_id, count(*) FROM events WHERE event = 'Home' GROUP BY 1")]
    per_visitor: dict[str, int] = {}
    for person, n in stored:
        per_visitor[person] = per_visitor.get(person, 0) + n
    assert sorted(per_visitor.values()) == [2, 5], stored  # two visitors, not four
    assert len(stored) == 4  # each collector's warehouse holds both visitors
    # the salt is one row of the shared table; no data dir made one of its own
    assert not DataDir(a).cnil_salts.exists() and not DataDir(b).cnil_salts.exists()
