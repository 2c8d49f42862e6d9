"""The collector's health check: what kind of problem it found (the code of the 503 that
ingestion answers meanwhile), that it runs beside the worker's event loop and not in it,
and that every answer comes from a check begun within an interval of the request."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aap.collect.health import STOPPING, Health, Problem
from aap.log.base import Append, Log, LogStats
from aap.log.kafka import KafkaLog
from aap.log.sqlite import SQLiteLog
from aap.runner import free_port

LAGGING = Problem("consumer lag of 5 events is over the bound of 2", "backpressure")


@contextmanager
def checking(tmp_path: Path, log: Log, *, interval_ms: int = 0,
             min_free_disk_mb: int = 0) -> Iterator[Health]:
    """A health check of ``log`` (lag bound: 2 events); both closed after."""
    h = Health(tmp_path, log, min_free_disk_mb=min_free_disk_mb, max_lag=2,
               interval_ms=interval_ms)
    try:
        yield h
    finally:
        h.close()
        log.close()


def _lag(log: SQLiteLog) -> None:
    """A consumer group 5 events behind."""
    log.commit("slow", 0)
    log.append([Append("s", 5, b"x")])


@pytest.mark.slow  # the Kafka client waits for brokers that are not there (2 s)
def test_a_log_that_cannot_be_read_is_log_unavailable(tmp_path: Path) -> None:
    with checking(tmp_path, KafkaLog(f"kafka://127.0.0.1:{free_port()}/t")) as h:  # no broker
        assert asyncio.run(h.problem()) == Problem("the log cannot be read", "log_unavailable")


def test_consumer_lag_is_backpressure_and_a_healthy_log_is_no_problem(tmp_path: Path) -> None:
    log = SQLiteLog(tmp_path / "log.db")
    with checking(tmp_path, log) as h:
        assert asyncio.run(h.problem()) is None
        _lag(log)
        assert asyncio.run(h.problem()) == LAGGING


def test_a_full_disk_is_backpressure(tmp_path: Path) -> None:
    with checking(tmp_path, SQLiteLog(tmp_path / "log.db"), min_free_disk_mb=2**40) as h:
        problem = asyncio.run(h.problem())
        assert problem is not None and problem.code == "backpressure"
        assert problem.message.startswith("free disk is below the floor")


class _Gated(SQLiteLog):
    """The embedded log whose stats wait at a gate (as Kafka's wait for brokers that do not
    answer); counts the reads and the threads they ran in."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.reads = 0
        self.threads: set[int] = set()

    def stats(self) -> LogStats:
        self.reads += 1
        self.threads.add(threading.get_ident())
        self.entered.set()
        assert self.gate.wait(60), "the gate was never opened"
        return super().stats()


def test_the_event_loop_runs_while_a_check_waits_for_the_log(tmp_path: Path) -> None:
    """The check waits at the gate, and only a coroutine of the same event loop opens it:
    a check run in the loop's thread would never let it run (the gate's 60 s assertion
    would fail instead). Requests meanwhile share the check running."""
    log = _Gated(tmp_path / "log.db")
    log.gate.clear()

    async def main(h: Health) -> list[Problem | None]:
        asking = [asyncio.create_task(h.problem()) for _ in range(3)]
        while not log.entered.is_set():  # the check has begun, in another thread
            await asyncio.sleep(0.01)
        log.gate.set()  # by the event loop's thread
        return await asyncio.gather(*asking)

    with checking(tmp_path, log, interval_ms=60_000) as h:
        assert asyncio.run(main(h)) == [None, None, None]
        assert log.reads == 1 and threading.get_ident() not in log.threads


def test_an_answer_is_never_older_than_the_interval(tmp_path: Path) -> None:
    """Within the interval the last answer stands; past it the request waits for a new
    check (no answer from before an idle spell), which sees the lag that arrived."""
    log = _Gated(tmp_path / "log.db")
    with checking(tmp_path, log, interval_ms=60_000) as h:
        assert asyncio.run(h.problem()) is None
        _lag(log)
        assert asyncio.run(h.problem()) is None and log.reads == 1  # within the interval
        h.interval = 0.0  # the interval has passed
        assert asyncio.run(h.problem()) == LAGGING and log.reads == 2


def test_a_request_that_goes_away_leaves_the_check_to_the_others(tmp_path: Path) -> None:
    log = _Gated(tmp_path / "log.db")
    log.gate.clear()

    async def main(h: Health) -> Problem | None:
        gone = asyncio.create_task(h.problem())
        staying = asyncio.create_task(h.problem())
        while not log.entered.is_set():
            await asyncio.sleep(0.01)
        gone.cancel()
        log.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await staying

    with checking(tmp_path, log, interval_ms=60_000) as h:
        assert asyncio.run(main(h)) is None and log.reads == 1


def test_a_request_after_close_is_told_the_worker_is_stopping(tmp_path: Path) -> None:
    """The shutdown closes the health thread before the log; a request still in flight is
    a 503 to retry (not a 500 from a thread pool that takes no more work)."""
    log = SQLiteLog(tmp_path / "log.db")
    with checking(tmp_path, log) as h:
        assert asyncio.run(h.problem()) is None
        h.close()
        assert asyncio.run(h.problem()) == STOPPING
        assert asyncio.run(h.off_loop(lambda: "read")) == "read"
