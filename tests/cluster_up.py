"""``aap cluster up`` as a test's context: started on consecutive free ports (the
collectors', then the processors' ``/healthz``, then the query nodes'), waited for,
stopped with SIGTERM (SIGKILL of its group if that hangs)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from aap.lifecycle import child_env
from tests.test_cluster import _free_ports, _pids


class Up:
    def __init__(self, data: Path, base: int, collectors: int, proc: subprocess.Popen[bytes],
                 log: Path, query: int = 0, processors: int = 1) -> None:
        self.data, self.base, self.proc, self.log = data, base, proc, log
        self.urls = [f"http://127.0.0.1:{base + i}" for i in range(collectors)]
        first = base + collectors + processors  # after the processors' /healthz
        self.query_urls = [f"http://127.0.0.1:{first + i}" for i in range(query)]
        """The query nodes' (``--query``); their data dirs are ``query_dir(data, i)``."""

    def pids(self, role: str) -> list[int]:
        """The processes of a role (``collector`` or ``processor``) now."""
        return _pids("--role", role, str(self.data))


@contextlib.contextmanager
def cluster_up(data: Path, log: Path, *, collectors: int = 2, query: int = 0,
               processors: int = 1, env: dict[str, str] | None = None,
               timeout: float = 180.0) -> Iterator[Up]:
    # the collectors, then the processors' /healthz, then the query nodes
    base = _free_ports(collectors + processors + query)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "aap", "cluster", "up", "--data-dir",
                                 str(data), "--collectors", str(collectors), "--query",
                                 str(query), "--processors", str(processors),
                                 "--port", str(base)],
                                stdout=out, stderr=subprocess.STDOUT,
                                env=child_env({**os.environ, **(env or {})}),
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while "cluster up:" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the cluster did not come up"
            time.sleep(0.2)
        yield Up(data, base, collectors, proc, log, query, processors)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
