"""Back-pressure: whether this worker should take events right now.

Checked at most every ``health_interval_ms``: free disk under the data dir against
``min_free_disk_mb``, and each consumer group's lag against ``max_consumer_lag``. Its
:attr:`~Health.code` is ``log_unavailable`` when the log cannot be read at all (a Kafka
cluster unreachable: the append would fail too), ``backpressure`` otherwise.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from aap.log.base import Log

LOG_UNREADABLE = "the log cannot be read"


class Health:
    def __init__(self, data_dir: Path, log: Log, *, min_free_disk_mb: int, max_lag: int,
                 interval_ms: int) -> None:
        self.data_dir = data_dir
        self.log = log
        self.min_free = min_free_disk_mb * 1024 * 1024
        self.max_lag = max_lag
        self.interval = interval_ms / 1000
        self._checked = 0.0
        self._problem: str | None = None
        self.code = "backpressure"
        """What kind of problem :meth:`problem` named (the code of the 503 it causes)."""

    def problem(self) -> str | None:
        """None when events can be accepted, otherwise why not."""
        now = time.monotonic()
        if now - self._checked >= self.interval:
            self._checked = now
            self._problem = self._check()
            self.code = ("log_unavailable" if self._problem == LOG_UNREADABLE
                         else "backpressure")
        return self._problem

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
