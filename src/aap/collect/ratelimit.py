"""Per-source token buckets (events per second), one set per worker process.

A source's limit is divided among the workers, so the sum over the server holds.
"""

from __future__ import annotations

import math
import time


class RateLimiter:
    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)
        self._buckets: dict[str, tuple[float, float]] = {}  # source → (tokens, last refill)

    def take(self, source: str, limit: float, n: int) -> float:
        """Take ``n`` tokens; returns 0 when allowed, else the seconds to wait."""
        if limit <= 0 or n <= 0:
            return 0.0
        rate = limit / self.workers
        burst = max(rate, float(n))  # one second of traffic, and never less than one batch
        now = time.monotonic()
        tokens, last = self._buckets.get(source, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens >= n:
            self._buckets[source] = (tokens - n, now)
            return 0.0
        self._buckets[source] = (tokens, now)
        return (n - tokens) / rate


def retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))
