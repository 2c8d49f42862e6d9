"""Back-pressure: whether this worker should take events right now.

Checked every ``health_interval_ms``: free disk under the data dir against
``min_free_disk_mb``, and each consumer group's lag against ``max_consumer_lag``. Its
code (:func:`code_for`) is ``log_unavailable`` when the log cannot be read at all (a
Kafka cluster unreachable: the append would fail too), ``backpressure`` otherwise.

The checks after the first run in a thread of the worker's own: on Kafka a check is a
round trip to the brokers for each partition, and while they are away it waits
:data:`aap.log.kafka.STATS_TIMEOUT_S`. Made in the request path, it held the worker's
event loop — every request, ``/healthz`` too — for those seconds every interval.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from aap.log.base import Log

LOG_UNREADABLE = "the log cannot be read"

logger = logging.getLogger(__name__)


def code_for(problem: str | None) -> str:
    """The code of the 503 that ``problem`` causes."""
    return "log_unavailable" if problem == LOG_UNREADABLE else "backpressure"


class Health:
    def __init__(self, data_dir: Path, log: Log, *, min_free_disk_mb: int, max_lag: int,
                 interval_ms: int) -> None:
        self.data_dir = data_dir
        self.log = log
        self.min_free = min_free_disk_mb * 1024 * 1024
        self.max_lag = max_lag
        self.interval = interval_ms / 1000
        self._checked: float | None = None
        """When the last check finished (monotonic); None: not yet."""
        self._problem: str | None = None
        self._asked = False
        """A check is asked of the health thread and not finished yet."""
        self._due = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def code(self) -> str:
        """The code of the 503 the last problem causes."""
        return code_for(self._problem)

    def problem(self) -> str | None:
        """None when events can be accepted, otherwise why not: what the last check found.

        The first call checks at once, in the caller (so does every call with an
        interval of 0); later, once the last check is ``interval`` old, a call asks
        the health thread for the next one and answers the last one meanwhile."""
        if self._checked is None or self.interval <= 0:
            self._problem = self._check()
            self._checked = time.monotonic()
        elif not self._asked and time.monotonic() - self._checked >= self.interval:
            self._asked = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="aap-health",
                                                daemon=True)
                self._thread.start()
            self._due.set()
        return self._problem

    def _run(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            try:
                self._problem = self._check()
            except Exception:  # a check that fails in an unforeseen way: the last stands
                logger.exception("the health check failed")
            self._checked = time.monotonic()
            self._asked = False

    def _check(self) -> str | None:
        try:
            free = shutil.disk_usage(self.data_dir).free
        except OSError:
            return "the data directory cannot be read"
        if free < self.min_free:
            return f"free disk is below the floor of {self.min_free // (1024 * 1024)} MiB"
        try:
            lag = self.log.stats().lag_events
        except Exception:
            return LOG_UNREADABLE
        worst = max(lag.values(), default=0)
        if worst > self.max_lag:
            return f"consumer lag of {worst} events is over the bound of {self.max_lag}"
        return None
