"""The collector's health check names what kind of problem it found: the code of the
503 that ingestion answers meanwhile."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from aap.collect.health import Health
from aap.log.base import Append, LogStats
from aap.log.kafka import KafkaLog
from aap.log.sqlite import SQLiteLog
from aap.runner import free_port


@pytest.mark.slow  # the Kafka client waits for brokers that are not there (2 s)
def test_a_log_that_cannot_be_read_is_log_unavailable(tmp_path: Path) -> None:
    log = KafkaLog(f"kafka://127.0.0.1:{free_port()}/t")  # nothing listens there
    try:
        h = Health(tmp_path, log, min_free_disk_mb=0, max_lag=10, interval_ms=0)
        assert h.problem() == "the log cannot be read"
        assert h.code == "log_unavailable"
    finally:
        log.close()


def test_consumer_lag_is_backpressure_and_a_healthy_log_is_no_problem(tmp_path: Path) -> None:
    log = SQLiteLog(tmp_path / "log.db")
    try:
        h = Health(tmp_path, log, min_free_disk_mb=0, max_lag=2, interval_ms=0)
        assert h.problem() is None
        log.commit("slow", 0)
        log.append([Append("s", 5, b"x")])
        assert h.problem() == "consumer lag of 5 events is over the bound of 2"
        assert h.code == "backpressure"
    finally:
        log.close()


class _Gated(SQLiteLog):
    """The embedded log whose stats wait at a gate the test opens (as Kafka's wait for
    brokers that do not answer)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def stats(self) -> LogStats:
        self.entered.set()
        assert self.gate.wait(60)
        return super().stats()


def test_a_slow_check_never_holds_the_caller(tmp_path: Path) -> None:
    """Past the first, checks run in the health thread: a request asks for one and gets
    the last answer at once, however long the log takes to say its lag."""
    log = _Gated(tmp_path / "log.db")
    try:
        h = Health(tmp_path, log, min_free_disk_mb=0, max_lag=2, interval_ms=1)
        assert h.problem() is None  # the first: checked in the caller
        log.gate.clear()
        log.entered.clear()
        log.commit("slow", 0)
        log.append([Append("s", 5, b"x")])
        deadline = time.monotonic() + 30
        while not log.entered.is_set():  # the thread's check has begun, behind the gate
            assert h.problem() is None  # the last answer, while the check waits
            assert time.monotonic() < deadline, "no check was asked of the health thread"
            time.sleep(0.01)
        assert h.problem() is None and not log.gate.is_set()
        log.gate.set()
        while h.problem() is None:
            assert time.monotonic() < deadline, "the thread's answer never came"
            time.sleep(0.01)
        assert h.problem() == "consumer lag of 5 events is over the bound of 2"
        assert h.code == "backpressure"
    finally:
        log.gate.set()
        log.close()
