"""The audit chain on both engines of the shared state: the file under the data dir (the
default) and rows in PostgreSQL (``AAP_META_URL``). On PostgreSQL: any edited, deleted,
inserted or reordered row, a cut end and a lost head are detected; processes appending
at once make one unbroken chain; a process given another key is refused; and whoever
holds the key can rewrite the chain (the limit README states)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from aap.datadir import DataDir
from aap.privacy.audit import GENESIS, AuditLog, canonical, mac_of
from aap.privacy.audit_table import AuditKeyMismatch
from tests.pg import Cluster
from tests.pg import fresh_database as _fresh


def _fill(log: AuditLog) -> None:
    log.append("cli:alice", "source.created", {"source": "src_1"})
    log.append("cli:alice", "key.created", {"key": "k1", "role": "analyst"})
    log.append("key:k1", "data.read", {"rows": 3})
    log.append("cli:alice", "key.revoked", {"key": "k1"})
    log.append("source:src_1", "consent.recorded", {"statements": 1})


def test_the_chain_is_one_for_every_writer_of_a_data_dir(tmp_path: Path, meta_url: str) -> None:
    first, second = AuditLog(tmp_path), AuditLog(tmp_path)
    assert first.append("a", "one") == 1
    assert second.append("b", "two", {"n": 2}) == 2
    assert first.append("a", "three") == 3
    entries = AuditLog(tmp_path).entries()
    assert [(e["seq"], e["actor"], e["action"]) for e in entries] == [
        (1, "a", "one"), (2, "b", "two"), (3, "a", "three")]
    assert entries[1]["detail"] == {"n": 2} and entries[1]["prev"] == entries[0]["mac"]
    assert AuditLog(tmp_path).verify().ok
    assert AuditLog(tmp_path).verify().message == "3 entries, chain intact"
    on_file = DataDir(tmp_path).audit_log.exists()
    assert on_file == (not meta_url)  # with a URL, nothing is written under the data dir
    if meta_url:
        with psycopg.connect(meta_url) as con:
            assert con.execute("SELECT count(*) FROM audit_entries").fetchone() == (3,)


def test_an_empty_chain_verifies(tmp_path: Path, meta_url: str) -> None:
    verdict = AuditLog(tmp_path).verify()
    assert verdict.ok and verdict.entries == 0


# -- tampering with the rows, on PostgreSQL --

def _sql(*statements: str) -> Callable[[psycopg.Connection], None]:
    def run(con: psycopg.Connection) -> None:
        for s in statements:
            con.execute(s)  # type: ignore[arg-type]
    return run


def _forge_at_end(con: psycopg.Connection) -> None:
    """A well-formed entry 6 after entry 5, with the head moved to it: only the MAC is
    wrong (it needs the key)."""
    row = con.execute("SELECT mac FROM audit_entries WHERE seq = 5").fetchone()
    assert row is not None
    entry = {"seq": 6, "at": "2026-01-01T00:00:00.000000+00:00", "actor": "cli:mallory",
             "action": "key.created", "detail": {"role": "admin"}, "prev": row[0]}
    mac = mac_of(b"not the key" * 3, canonical(entry))
    con.execute("INSERT INTO audit_entries VALUES (6, %s, %s)", (canonical(entry).decode(), mac))
    con.execute("UPDATE audit_head SET seq = 6, mac = %s", (mac,))


def _forge_seq_and_prev(con: psycopg.Connection) -> None:
    """Entry 4 edited, and its text rewritten canonically (seq and prev kept)."""
    row = con.execute("SELECT entry FROM audit_entries WHERE seq = 4").fetchone()
    assert row is not None
    entry = json.loads(row[0])
    entry["action"] = "key.rotated"
    con.execute("UPDATE audit_entries SET entry = %s WHERE seq = 4", (canonical(entry).decode(),))


@pytest.mark.slow
@pytest.mark.parametrize(("tamper", "says"), [
    (_sql("UPDATE audit_entries SET entry = replace(entry, '\"analyst\"', '\"admin\"')"
          " WHERE seq = 2"), "entry 2 was changed"),
    (_sql("UPDATE audit_entries SET mac = (SELECT mac FROM audit_entries WHERE seq = 1)"
          " WHERE seq = 2"), "entry 2 was changed"),
    (_sql("DELETE FROM audit_entries WHERE seq = 3"), "row 3 has seq 4"),
    (_sql("UPDATE audit_entries SET seq = -seq WHERE seq IN (2, 3)",
          "UPDATE audit_entries SET seq = 5 + seq WHERE seq IN (-2, -3)"),
     "row 2 holds entry 3"),
    (_sql("INSERT INTO audit_entries SELECT 6, entry, mac FROM audit_entries WHERE seq = 5"),
     "row 6 holds entry 5"),
    (_sql("UPDATE audit_entries SET seq = seq + 10 WHERE seq >= 3",
          "UPDATE audit_entries SET seq = seq - 9 WHERE seq >= 13",
          "INSERT INTO audit_entries SELECT 3, entry, mac FROM audit_entries WHERE seq = 2"),
     "row 3 holds entry 2"),
    (_forge_at_end, "entry 6 was changed"),
    (_forge_seq_and_prev, "entry 4 was changed"),
    (_sql("DELETE FROM audit_entries WHERE seq = 5"), "entries were cut off the end"),
    (_sql("DELETE FROM audit_entries WHERE seq >= 4",
          "UPDATE audit_head SET seq = 3"), "entries were cut off the end"),
    (_sql("DELETE FROM audit_head"), "head row is gone"),
], ids=["edit", "edit-mac", "delete", "swap", "insert-copy-at-end", "insert-in-the-middle",
        "forge-at-end", "forge", "cut", "cut-and-head", "head-deleted"])
def test_tampering_with_rows_is_detected(tmp_path: Path, pg: Cluster,
                                         tamper: Callable[[psycopg.Connection], None],
                                         says: str) -> None:
    _fresh(pg.url)
    log = AuditLog(tmp_path, url=pg.url)
    _fill(log)
    assert log.verify().ok
    with psycopg.connect(pg.url) as con:
        tamper(con)
    verdict = AuditLog(tmp_path, url=pg.url).verify()
    assert not verdict.ok and says in verdict.message, verdict


@pytest.mark.slow
def test_whoever_holds_the_key_can_rewrite_the_chain(tmp_path: Path, pg: Cluster) -> None:
    """The limit of tamper-evidence: with ``keys/audit.key``, a database user can edit an
    entry and recompute every MAC after it; ``verify`` then passes. The key is a file
    under the data dir, never in the database."""
    _fresh(pg.url)
    log = AuditLog(tmp_path, url=pg.url)
    _fill(log)
    key = DataDir(tmp_path).audit_key.read_bytes()
    with psycopg.connect(pg.url) as con:
        stored = json.dumps(con.execute("SELECT * FROM audit_entries").fetchall()
                            + con.execute("SELECT * FROM audit_head").fetchall())
        assert key.hex() not in stored
        prev = GENESIS
        for seq, text in con.execute("SELECT seq, entry FROM audit_entries ORDER BY seq"
                                     ).fetchall():
            entry = json.loads(text)
            entry["prev"] = prev
            if seq == 2:
                entry["detail"]["role"] = "admin"
            prev = mac_of(key, canonical(entry))
            con.execute("UPDATE audit_entries SET entry = %s, mac = %s WHERE seq = %s",
                        (canonical(entry).decode(), prev, seq))
        con.execute("UPDATE audit_head SET mac = %s", (prev,))
    verdict = AuditLog(tmp_path, url=pg.url).verify()
    assert verdict.ok, verdict
    assert AuditLog(tmp_path, url=pg.url).entries()[1]["detail"]["role"] == "admin"


@pytest.mark.slow
def test_a_process_with_another_key_is_refused(tmp_path: Path, pg: Cluster) -> None:
    _fresh(pg.url)
    AuditLog(tmp_path / "a", url=pg.url).append("a", "one")
    with pytest.raises(AuditKeyMismatch, match=r"keys/audit\.key") as caught:
        AuditLog(tmp_path / "b", url=pg.url)  # a data dir of its own: a new key
    assert "secret-pw" not in str(caught.value)
    out = subprocess.run([sys.executable, "-m", "aap", "audit", "verify", "--data-dir",
                          str(tmp_path / "b")], capture_output=True, text=True,
                         env={**os.environ, "AAP_META_URL": pg.url})
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "written with another key" in out.stderr and "secret-pw" not in out.stderr
    (tmp_path / "b" / "keys" / "audit.key").write_bytes(
        (tmp_path / "a" / "keys" / "audit.key").read_bytes())
    AuditLog(tmp_path / "b", url=pg.url).append("b", "two")  # the same key: one chain
    verdict = AuditLog(tmp_path / "a", url=pg.url).verify()
    assert verdict.ok and verdict.entries == 2


_WRITER = """
import sys, time
from pathlib import Path
from aap.privacy.audit import AuditLog
data, url, go, me, n = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
log = AuditLog(data, url=url)
while not go.exists():
    time.sleep(0.005)
for i in range(n):
    log.append("test:" + me, "tick", {"writer": me, "i": i})
"""


@pytest.mark.slow
def test_processes_appending_at_once_make_one_unbroken_chain(tmp_path: Path,
                                                             pg: Cluster) -> None:
    """Four processes, each with a data dir of its own (the same audit key), append 60
    entries each, starting together: one chain of 240 entries, each exactly once, in
    seq order 1..240, and ``verify`` passes."""
    _fresh(pg.url)
    AuditLog(tmp_path / "w0", url=pg.url)  # the key and the tables
    for w in range(1, 4):
        (tmp_path / f"w{w}" / "keys").mkdir(parents=True)
        (tmp_path / f"w{w}" / "keys" / "audit.key").write_bytes(
            DataDir(tmp_path / "w0").audit_key.read_bytes())
    go, n = tmp_path / "go", 60
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / f"w{w}"), pg.url,
                               str(go), str(w), str(n)]) for w in range(4)]
    time.sleep(1.0)  # let them start (no assertion rests on it: they wait for `go`)
    go.touch()
    assert [p.wait(timeout=180) for p in procs] == [0, 0, 0, 0]
    log = AuditLog(tmp_path / "w0", url=pg.url)
    verdict = log.verify()
    assert verdict.ok and verdict.entries == 4 * n, verdict
    entries = log.entries()
    assert [e["seq"] for e in entries] == list(range(1, 4 * n + 1))
    written = [(e["detail"]["writer"], e["detail"]["i"]) for e in entries]
    assert sorted(written) == sorted((str(w), i) for w in range(4) for i in range(n))
    for w in range(4):  # each writer's entries in its own order
        assert [i for who, i in written if who == str(w)] == list(range(n))
    interleaved = sum(1 for a, b in itertools.pairwise(written) if a[0] != b[0])
    print("writer changes along the chain:", interleaved)


@pytest.mark.slow
def test_aap_audit_verify_and_show_read_the_chain_in_postgresql(tmp_path: Path,
                                                                pg: Cluster) -> None:
    _fresh(pg.url)
    _fill(AuditLog(tmp_path, url=pg.url))
    env = {**os.environ, "AAP_META_URL": pg.url}

    def aap(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aap", *args, "--data-dir", str(tmp_path)],
                              capture_output=True, text=True, env=env)

    out = aap("audit", "verify")
    assert out.returncode == 0 and out.stdout.strip() == "ok: 5 entries, chain intact", out
    shown = [json.loads(line) for line in aap("audit", "show", "--limit", "2").stdout.splitlines()]
    assert [e["seq"] for e in shown] == [4, 5]
    with psycopg.connect(pg.url) as con:
        con.execute("DELETE FROM audit_entries WHERE seq = 2")
    out = aap("audit", "verify")
    assert out.returncode == 1 and "audit log tampered: row 2 has seq 3" in out.stderr, out
    assert "secret-pw" not in out.stderr + out.stdout
    assert not DataDir(tmp_path).audit_log.exists()
