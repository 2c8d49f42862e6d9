"""Keys given as Secrets (``AAP_ID_HASH_KEY``, ``AAP_AUDIT_KEY``,
``AAP_SUBJECT_TOKEN_KEY``, as ``AAP_MASTER_KEY``): every process of a deployment uses the
same key whatever its data dir, and no key file is written; without them each data dir
makes its own files, and a shared audit chain refuses a second data dir's key."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aap.datadir import DataDir
from aap.privacy.audit import AuditLog
from aap.privacy.audit_table import AuditKeyMismatch
from aap.privacy.ids import IdHasher
from aap.privacy.tokens import SubjectTokens
from tests.pg import Cluster, new_database

KEYS = {"AAP_ID_HASH_KEY": b"i" * 32, "AAP_AUDIT_KEY": b"a" * 32,
        "AAP_SUBJECT_TOKEN_KEY": b"t" * 32}


def given(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, key in KEYS.items():
        monkeypatch.setenv(name, base64.b64encode(key).decode())


def key_files(data: Path) -> list[str]:
    keys = DataDir(data).keys
    return sorted(p.name for p in keys.iterdir()) if keys.exists() else []


def test_given_keys_are_the_same_in_every_data_dir_and_never_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    given(monkeypatch)
    assert IdHasher.for_data_dir(a).key("alice") == IdHasher.for_data_dir(b).key("alice")
    assert SubjectTokens(a).secret("src") == SubjectTokens(b).secret("src")
    for data in (a, b):
        AuditLog(data).append("test", "write", {"n": 1})
    assert key_files(a) == key_files(b) == []
    # the files made without them are other keys
    for name in KEYS:
        monkeypatch.delenv(name)
    assert IdHasher.for_data_dir(a).key("alice") != IdHasher.for_data_dir(b).key("alice")
    assert SubjectTokens(a).secret("src") != SubjectTokens(b).secret("src")
    assert {"id-hash.key", "subject-token.key"} <= set(key_files(a))


@pytest.mark.slow
def test_a_shared_audit_chain_takes_every_data_dir_with_the_given_key(
        tmp_path: Path, pg: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    meta_url = new_database(pg.url)  # the chain is shared on PostgreSQL only
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    given(monkeypatch)
    AuditLog(a, url=meta_url).append("test", "one", None)
    AuditLog(b, url=meta_url).append("test", "two", None)
    verdict = AuditLog(c, url=meta_url).verify()
    assert verdict.ok and verdict.entries == 2
    monkeypatch.delenv("AAP_AUDIT_KEY")
    with pytest.raises(AuditKeyMismatch) as exc:  # c's own file is another key
        AuditLog(c, url=meta_url)
    assert "AAP_AUDIT_KEY" in str(exc.value)


@pytest.mark.slow
def test_the_cli_refuses_a_key_that_is_not_32_bytes(tmp_path: Path) -> None:
    env = {**os.environ, "AAP_ID_HASH_KEY": base64.b64encode(b"short").decode()}
    out = subprocess.run([sys.executable, "-m", "aap", "sources", "create", "web",
                          "--data-dir", str(tmp_path / "d")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "AAP_ID_HASH_KEY: the key must be 32 bytes" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert base64.b64encode(b"short").decode() not in out.stdout + out.stderr
