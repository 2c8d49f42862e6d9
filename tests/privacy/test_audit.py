"""The audit log is append-only and hash-chained: `aap audit verify` notices any edit,
removal, reordering or cut, and entries hold no raw identifiers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from aap.datadir import DataDir
from aap.privacy.audit import AuditLog
from aap.runner import ServerProcess, create_source
from tests.conftest import slow_fixture

pytestmark = pytest.mark.slow  # a server per test, and writer processes


def aap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aap", *args], capture_output=True, text=True)


@slow_fixture
def data(tmp_path: Path) -> Path:
    """A data dir whose audit log has a source, two keys (one revoked) and consent."""
    return _made(tmp_path)


@slow_fixture
def data_on(tmp_path: Path, meta_url: str) -> Path:
    """The same, on both engines of the shared state (with ``AAP_META_URL``, the chain is
    rows in PostgreSQL: tests/privacy/test_audit_pg.py tampers with them)."""
    return _made(tmp_path)


def _made(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    key = create_source(d, "shop")
    assert aap("keys", "create", "--role", "analyst", "--data-dir", str(d)).returncode == 0
    made = aap("keys", "create", "--role", "admin", "--data-dir", str(d))
    key_id = made.stdout.strip().splitlines()[-1].split("_")[1]
    assert aap("keys", "revoke", key_id, "--data-dir", str(d)).returncode == 0
    with ServerProcess(d, workers=1) as server:
        r = httpx.post(server.url + "/v1/consent", auth=(key, ""), json={
            "userId": "audit-canary-user-81", "purposes": {"analytics": True},
            "policy_version": "v3"})
        assert r.status_code == 200
    return d


def test_actions_are_recorded_and_the_chain_verifies(data_on: Path, meta_url: str) -> None:
    data = data_on
    actions = [e["action"] for e in AuditLog(data).entries()]
    assert actions == ["source.created", "key.created", "key.created", "key.revoked",
                       "consent.recorded"]
    out = aap("audit", "verify", "--data-dir", str(data))
    assert out.returncode == 0 and out.stdout.strip() == "ok: 5 entries, chain intact"
    shown = [json.loads(line) for line in aap("audit", "show", "--data-dir", str(data)
                                              ).stdout.splitlines()]
    assert [e["seq"] for e in shown] == [1, 2, 3, 4, 5]
    assert shown[4]["detail"]["policy_version"] == "v3"
    if meta_url:
        with psycopg.connect(meta_url) as con:
            rows = repr(con.execute("SELECT * FROM audit_entries").fetchall())
        assert "consent.recorded" in rows and "audit-canary-user-81" not in rows
        assert not DataDir(data).audit_log.exists()
    else:
        assert b"audit-canary-user-81" not in DataDir(data).audit_log.read_bytes()


def _edit(lines: list[bytes]) -> list[bytes]:
    lines[1] = lines[1].replace(b'"role":"analyst"', b'"role":"privacy"')
    return lines


def _remove(lines: list[bytes]) -> list[bytes]:
    return lines[:2] + lines[3:]


def _swap(lines: list[bytes]) -> list[bytes]:
    lines[1], lines[2] = lines[2], lines[1]
    return lines


def _cut(lines: list[bytes]) -> list[bytes]:
    return lines[:-1]


def _forge(lines: list[bytes]) -> list[bytes]:
    """Edit an entry and fix up seq/prev everywhere (without the key the mac stays wrong)."""
    entry = json.loads(lines[3])
    entry["action"] = "key.rotated"
    lines[3] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    return lines


@pytest.mark.parametrize(("tamper", "says"), [
    (_edit, "entry 2 was changed"),
    (_remove, "line 3 has seq 4"),
    (_swap, "line 2 has seq 3"),
    (_cut, "entries were cut off the end"),
    (_forge, "entry 4 was changed"),
])
def test_tampering_is_detected(data: Path, tamper: Callable[[list[bytes]], list[bytes]],
                               says: str) -> None:
    path = DataDir(data).audit_log
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join(tamper(lines)) + b"\n")
    out = aap("audit", "verify", "--data-dir", str(data))
    assert out.returncode == 1
    assert "audit log tampered" in out.stderr and says in out.stderr, out.stderr


def test_appends_from_many_processes_keep_one_chain(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from aap.privacy.audit import AuditLog;"
            "log = AuditLog(Path(sys.argv[1]));"
            "[log.append('test', 'tick', {'i': i}) for i in range(40)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)]) for _ in range(4)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    verdict = AuditLog(tmp_path).verify()
    assert verdict.ok and verdict.entries == 160, verdict
