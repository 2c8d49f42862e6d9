"""``aap cluster up`` as a test's context: started on consecutive free ports (the
collectors', then the processors' ``/healthz``, then the query nodes'), waited for,
stopped with SIGTERM (SIGKILL of its group if that hangs); and, for a cluster of several
processors on Kafka, waiting until what was sent is published (:func:`wait_published`)
and a query node's mirror of the merges has read it (:func:`wait_mirrored`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from aap.lifecycle import child_env
from tests.kafka_mock import Cluster, topic_of
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



def _published(meta_url: str) -> dict[int, int]:
    """The shared ``log_partitions``: each partition's position its published files reach
    (a processor commits a position with the chunk's rows and lists it with the files
    holding them: :mod:`aap.store.handover`)."""
    import psycopg

    with psycopg.connect(meta_url) as con:
        return {int(p): int(v) for p, v in con.execute(
            "SELECT log_partition, position FROM log_partitions").fetchall()}


def wait_published(kafka: Cluster, log_url: str, meta_url: str, timeout: float) -> float:
    """Until every partition of the log's topic is published up to the head it had when
    called: every record sent before was processed, whichever processor owns its
    partition, and its rows are in listed files, which a query node reads at its next
    query. Returns ``time.monotonic()`` then."""
    heads = kafka.heads(topic_of(log_url))
    deadline = time.monotonic() + timeout
    while True:
        at = _published(meta_url)
        short = {p: (at.get(p, 0), h) for p, h in heads.items() if at.get(p, 0) < h}
        if not short:
            return time.monotonic()
        assert time.monotonic() < deadline, f"not published in {timeout} s: {short}" \
                                            " (partition: (published position, head))"
        time.sleep(0.2)


def _mirror_ended(url: str, admin_key: str) -> tuple[float, float]:
    """Bounds (``time.monotonic()``) of when a query node's last reload of the merges
    (:mod:`aap.store.mirror`) ended, from the age its ``GET /api/v1/health`` gives."""
    before = time.monotonic()
    r = httpx.get(url + "/api/v1/health", timeout=60,
                  headers={"Authorization": f"Bearer {admin_key}"})
    after = time.monotonic()
    assert r.status_code == 200, r.text
    age = float(r.json()["merges"]["age_s"])  # rounded to the millisecond
    return before - age - 0.001, after - age + 0.001


def wait_mirrored(url: str, admin_key: str, since: float, timeout: float = 300.0) -> None:
    """Until a reload of the query node's merges began after ``since`` (a
    ``time.monotonic()``): the reloads run one after the other, so one that ended after
    a reload that ended after ``since`` began after it."""
    deadline = time.monotonic() + timeout
    first: float | None = None  # the latest end of a reload that ended after since
    while True:
        low, high = _mirror_ended(url, admin_key)
        if first is None and low > since:
            first = high
        elif first is not None and low > first:
            return
        assert time.monotonic() < deadline, f"the merges were not reloaded in {timeout} s"
        time.sleep(0.2)
