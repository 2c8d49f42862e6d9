"""The processor role's ``GET /healthz`` on TCP (:mod:`aap.core.health`), against the real
role: ``aap serve --role processor`` on Kafka (librdkafka's mock cluster in a holder
process, :class:`benchmarks.cluster.MockKafka`).

200 while the core answers and its processor loop turns; 503 with the reason when the
core is stuck (stopped with SIGSTOP), when the loop has not turned for longer than the
threshold, and when the log does not answer (the brokers killed); a port already taken
stops the role with a message, not a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from benchmarks.cluster import MockKafka, _cmdline

from aap.core.health import ProcessorHealth
from aap.lifecycle import child_env
from aap.log import open_log
from aap.runner import free_port
from aap.settings import Settings
from tests.conftest import slow_fixture

pytestmark = pytest.mark.slow


def _health(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    except httpx.HTTPError:
        return None
    return r.status_code, r.json()


def _wait(port: int, ok: Callable[[int, dict[str, Any]], bool], what: str,
          timeout: float = 150.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = _health(port)
        if last is not None and ok(*last):
            return last[1]
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last answer {last}")


class Role:
    def __init__(self, data: Path, port: int, env: dict[str, str], log: Path) -> None:
        out = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aap", "serve", "--role", "processor", "--data-dir",
             str(data), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=child_env({**os.environ, **env}),
            start_new_session=True)
        out.close()

    def core_pid(self) -> int:
        """The core (``aap process``), a child in the role's process group."""
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                same_group = os.getpgid(int(d)) == self.proc.pid
            except ProcessLookupError:
                continue
            args = _cmdline(int(d))
            if same_group and "aap" in args and "process" in args:
                return int(d)
        raise AssertionError("the core process (aap process) is not running")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()


@slow_fixture
def kafka() -> Iterator[MockKafka]:
    k = MockKafka()
    yield k
    k.stop()


def test_processor_healthz_says_when_it_works_and_why_not(tmp_path: Path,
                                                          kafka: MockKafka) -> None:
    data, port = tmp_path / "data", free_port()
    url = kafka.url(f"health-{uuid.uuid4().hex[:8]}")
    role = Role(data, port, {"AAP_LOG_URL": url}, tmp_path / "processor.log")
    try:
        body = _wait(port, lambda st, b: st == 200, "the processor healthy")
        assert body["ok"] is True and body["role"] == "processor" and body["log"] == "ok"
        assert body["loop_age_s"] < 60 and body["failures"] == 0
        assert "publishing_stopped" in body and body["publishing_stopped"] is None
        # the loop judged: the same check, with a threshold any loop is past
        settings = Settings(data_dir=str(data), log_url=url)
        strict = ProcessorHealth(settings, lambda: open_log(settings), stuck_after_s=-1.0)
        try:
            strict.check_once()
            status, answer = strict.answer()
        finally:
            strict.close()
        assert status == 503 and answer["ok"] is False
        assert "loop has not turned" in answer["message"]
        assert answer["code"] == "processor_unhealthy"
        # a stuck core (stopped): 503 naming it, and 200 again once it goes on
        core = role.core_pid()
        os.kill(core, signal.SIGSTOP)
        try:
            body = _wait(port, lambda st, b: st == 503, "503 for a stuck core")
            assert body["ok"] is False and "the core does not answer" in body["message"]
        finally:
            os.kill(core, signal.SIGCONT)
        _wait(port, lambda st, b: st == 200, "200 once the core goes on")
        # the log's brokers gone: 503 naming the log
        kafka.stop()
        body = _wait(port, lambda st, b: st == 503 and "log" in b["message"],
                     "503 for the log")
        assert body["message"].startswith("the log does not answer")
        assert body["log"] != "ok"
        # only /healthz is served there
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/insights", timeout=10)
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        assert "Traceback" not in (tmp_path / "processor.log").read_text()
    finally:
        role.stop()


def test_a_taken_port_stops_the_processor_role_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "aap", "serve", "--role", "processor", "--data-dir",
             str(tmp_path / "data"), "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True, text=True, timeout=120, env=child_env())
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr
