"""The collector's health check names what kind of problem it found: the code of the
503 that ingestion answers meanwhile."""

from __future__ import annotations

from pathlib import Path

import pytest

from aap.collect.health import Health
from aap.log.base import Append
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
