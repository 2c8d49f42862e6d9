"""Back-pressure: whether this worker should take events right now.

Checked at most every ``health_interval_ms``: free disk under the data dir against
``min_free_disk_mb``, and each consumer group's lag against ``max_consumer_lag``. Its
code is ``log_unavailable`` when the log cannot be read at all (a Kafka cluster
unreachable: the append would fail too), ``backpressure`` otherwise.

The check runs in a thread of the worker's own, and the request that asked for it waits
for its answer: with Kafka's brokers away, reading the lag takes up to the client's
timeout (2 s), and the worker's event loop — every other request, ``/healthz`` too — must
not stand still meanwhile. Every answer comes from a check begun at most one interval
before the request (requests within the interval share the last one, or the one
running): an idle worker never answers from a check as old as its idleness.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from aap.log.base import Log

LOG_UNREADABLE = "the log cannot be read"
T = TypeVar("T")


class Problem(NamedTuple):
    message: str
    code: str
    """The code of the 503 it causes: ``log_unavailable`` or ``backpressure``."""


STOPPING = Problem("this worker is stopping", "backpressure")
"""The answer once the worker's health thread is closed: a 503 to retry elsewhere."""


class Health:
    def __init__(self, data_dir: Path, log: Log, *, min_free_disk_mb: int, max_lag: int,
                 interval_ms: int) -> None:
        self.data_dir = data_dir
        self.log = log
        self.min_free = min_free_disk_mb * 1024 * 1024
        self.max_lag = max_lag
        self.interval = interval_ms / 1000
        self._checked = float("-inf")
        """When the check last answered was begun (monotonic)."""
        self._problem: Problem | None = None
        self._running: tuple[float, asyncio.AbstractEventLoop, asyncio.Future[Problem | None]] \
            | None = None
        """The check running: when it began, on which event loop, its answer."""
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="aap-health")
        self._closed = False

    async def problem(self) -> Problem | None:
        """None when events can be accepted, otherwise why not."""
        if self._closed:  # a request the shutdown found in flight: the server is going
            return STOPPING
        now = time.monotonic()
        if now - self._checked < self.interval:
            return self._problem
        loop = asyncio.get_running_loop()
        running = self._running
        if running is None or running[1] is not loop or now - running[0] >= self.interval:
            future = loop.run_in_executor(self._pool, self.check)
            running = self._running = (now, loop, future)
            future.add_done_callback(partial(self._done, now))
        # shielded: a request that goes away does not cancel the check others wait for
        return await asyncio.shield(running[2])

    def _done(self, began: float, future: asyncio.Future[Problem | None]) -> None:
        if self._running is not None and self._running[2] is future:
            self._running = None
        if future.cancelled() or future.exception() is not None or began < self._checked:
            return  # the next request checks again (or a later check answered already)
        self._checked = began
        self._problem = future.result()

    def check(self) -> Problem | None:
        """The check itself, in the caller's thread."""
        try:
            free = shutil.disk_usage(self.data_dir).free
        except OSError:
            return Problem("the data directory cannot be read", "backpressure")
        if free < self.min_free:
            return Problem(f"free disk is below the floor of {self.min_free // (1024 * 1024)}"
                           " MiB", "backpressure")
        try:
            lag = self.log.stats().lag_events
        except Exception:
            return Problem(LOG_UNREADABLE, "log_unavailable")
        worst = max(lag.values(), default=0)
        if worst > self.max_lag:
            return Problem(f"consumer lag of {worst} events is over the bound of"
                           f" {self.max_lag}", "backpressure")
        return None

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the health thread: other reads of the log's figures (the
        metrics' scrape) that would hold the event loop while brokers do not answer."""
        if self._closed:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        """Waits for a check running (the log is closed next); requests after this are
        refused (:data:`STOPPING`)."""
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
