"""``aap serve --role`` and ``aap cluster up``: collectors as processes of their own on one
data dir, one processor behind them, each started again when it dies."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from aap.cli import cli
from aap.lifecycle import child_env
from aap.runner import ServerProcess, create_source


def test_roles_that_cannot_run_yet_are_refused_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AAP_META_URL", raising=False)
    monkeypatch.delenv("AAP_PUBLISH_SECONDS", raising=False)
    data = str(tmp_path / "data")
    out = CliRunner().invoke(cli, ["serve", "--role", "query", "--data-dir", data])
    assert out.exit_code == 1 and "--role query needs AAP_PUBLISH_SECONDS" in out.output
    assert "AAP_META_URL" in out.output and "Traceback" not in out.output
    monkeypatch.setenv("AAP_PUBLISH_SECONDS", "1")  # publishing alone is not enough
    out = CliRunner().invoke(cli, ["serve", "--role", "query", "--data-dir", data])
    assert out.exit_code == 1 and "--role query needs AAP_META_URL" in out.output, out.output
    monkeypatch.delenv("AAP_PUBLISH_SECONDS")
    for args, reason in ((["--processors", "2"], "--processors 2: several processors need the log on Kafka"),
                         (["--query", "2"], "--query 2: --role query needs")):
        out = CliRunner().invoke(cli, ["cluster", "up", "--data-dir", data, *args])
        assert out.exit_code == 1 and reason in out.output, out.output
    out = CliRunner().invoke(cli, ["serve", "--role", "cook", "--data-dir", data])
    assert out.exit_code == 2 and "'cook' is not one of" in out.output


def _free_ports(n: int) -> int:
    """A port p with p + 1 … p + n - 1 free too."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            p = int(a.getsockname()[1])
            taken = False
            for k in range(1, n):
                with socket.socket() as b:
                    try:
                        b.bind(("127.0.0.1", p + k))
                    except OSError:
                        taken = True
                        break
            if not taken:
                return p
    raise RuntimeError(f"no {n} consecutive free ports")


def _two_free_ports() -> int:
    """Two collectors' ports and the processor's /healthz after them (the name is older
    than the third port; other tests import it)."""
    return _free_ports(3)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(what: str, ok: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.2)


def _send(port: int, key: str, n: int, tag: str) -> list[str]:
    ids = [f"{tag}-{uuid.uuid4()}" for _ in range(n)]
    now = datetime.now(UTC).isoformat()
    batch = [{"type": "track", "event": "Clicked", "messageId": i, "anonymousId": f"a-{i}",
              "timestamp": now} for i in ids]
    auth = base64.b64encode(f"{key}:".encode()).decode()
    r = httpx.post(f"http://127.0.0.1:{port}/v1/batch", json={"batch": batch}, timeout=60,
                   headers={"Authorization": f"Basic {auth}"})
    assert r.status_code == 200 and r.json()["accepted"] == n, r.text
    return ids


def _pids(*needles: str) -> list[int]:
    """Processes whose command line holds every needle."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(args).decode(errors="replace")
        if all(n in text for n in needles):
            out.append(int(cmdline.parent.name))
    return out


@pytest.mark.slow  # a cluster of processes
def test_cluster_up_two_collectors_one_processor_survives_a_kill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = create_source(data, "web", "--basis", "legitimate_interest")
    base = _free_ports(3)  # two collectors, then the processor's /healthz
    log = open(tmp_path / "cluster.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "aap", "cluster", "up", "--data-dir",
                             str(data), "--collectors", "2", "--port", str(base)],
                            stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                            start_new_session=True)
    log.close()
    try:
        _wait("the cluster up", lambda: "cluster up:" in (tmp_path / "cluster.log").read_text())
        assert _healthy(base) and _healthy(base + 1)  # it says so once they answer
        # the processor answers its own /healthz on the port after the collectors'
        health = httpx.get(f"http://127.0.0.1:{base + 2}/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["role"] == "processor"
        sent = _send(base, key, 40, "c1") + _send(base + 1, key, 60, "c2")
        # the processor: one core for the data dir, reached through its socket
        core = ServerProcess(data, base)
        core.wait_processed()
        assert core.sql("SELECT count(*) FROM events") == [[100]]
        # kill -9 the first collector: the second goes on, the first is started again
        victim = _pids("--role", "collector", f"--port {base}", str(data))
        assert victim, "the first collector runs as its own process"
        for pid in victim:
            os.kill(pid, signal.SIGKILL)
        sent += _send(base + 1, key, 10, "during")
        _wait("the first collector back", lambda: _healthy(base))
        sent += _send(base, key, 10, "after")
        core.wait_processed()
        got = core.sql("SELECT message_id FROM events ORDER BY message_id")
        assert sorted(r[0] for r in got) == sorted(sent)  # each once
        text = (tmp_path / "cluster.log").read_text()
        assert f"collector 1: http://127.0.0.1:{base}" in text and "cluster up:" in text
        assert f"health http://127.0.0.1:{base + 2}/healthz" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode == 0
    _wait("no process of the cluster left", lambda: not _pids("aap", str(data)), 30)


def test_a_data_dir_too_long_for_the_core_socket_is_refused_with_a_message(
        tmp_path: Path) -> None:
    data = tmp_path / ("d" * 120)  # its run/core.sock is past a Unix socket's 107 bytes
    for args in (["serve"], ["serve", "--role", "collector"], ["process"], ["cluster", "up"]):
        out = CliRunner().invoke(cli, [*args, "--data-dir", str(data)])
        assert out.exit_code == 1, (args, out.output)
        assert "the data dir's path is too long" in out.output and "at most 107" in out.output
        assert "Traceback" not in out.output
