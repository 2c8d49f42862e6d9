"""Secret keys a request names (write keys, device keys) to what they open, per worker.

A key is read from its registry (SQLite, or PostgreSQL with ``AAP_META_URL``: a round
trip on the worker's event loop) and remembered: a known key for :data:`KNOWN_TTL_S`, so
that a revoked or replaced key stops working within that time; an unknown one for
:data:`UNKNOWN_TTL_S`, so that a key created a moment ago works a second later.

Remembering one unknown key does not help against a spray of random keys: every one is a
miss. So the reads of keys the worker has not seen before take a token from a bucket of
``AAP_KEY_LOOKUPS_PER_SECOND`` (split across the workers, one second's worth at most);
with the bucket empty the request is answered ``429 key_lookups_limited`` without a
read, and the SDKs send it again later. A key the worker knew (its time ran out) is read
again without a token: an attacker cannot make valid keys, so these reads are bounded by
the keys in use and such requests never wait behind a spray.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

from aap import errors
from aap.collect import metrics
from aap.collect.ratelimit import RateLimiter, retry_after

T = TypeVar("T")

KNOWN_TTL_S = 5.0
UNKNOWN_TTL_S = 1.0
MAX_REMEMBERED = 10_000
MAX_KEY_CHARS = 200
"""AAP's keys are 35 characters; a longer one is unknown without a read, a token or a
place in memory (10,000 remembered keys of a header's size would be hundreds of MB)."""
BUCKET = "\x00key-lookups"
"""The limiter's bucket for reads of new keys (a source id never starts with NUL)."""


class KeyLookups(Generic[T]):
    """``get(key)``: what the key opens, ``None`` when the registry has no such key;
    :class:`errors.TooManyRequests` when a new key would be read over the budget."""

    def __init__(self, what: str, read: Callable[[str], T | None], limiter: RateLimiter,
                 per_second: float) -> None:
        self.what = what
        self.read = read
        self.limiter = limiter
        self.per_second = per_second
        self._known: dict[str, tuple[T, float]] = {}
        self._unknown: dict[str, float] = {}

    def get(self, key: str) -> T | None:
        if len(key) > MAX_KEY_CHARS:
            return None
        now = time.monotonic()
        known = self._known.get(key)
        if known is not None and now - known[1] < KNOWN_TTL_S:
            return known[0]
        if known is None:
            if now - self._unknown.get(key, -UNKNOWN_TTL_S) < UNKNOWN_TTL_S:
                return None
            wait = self.limiter.take(BUCKET, self.per_second, 1)
            if wait:
                metrics.KEY_LOOKUPS.labels(self.what, "limited").inc()
                raise errors.TooManyRequests(
                    f"too many unknown {self.what} keys: this worker reads at most"
                    f" {self.per_second / self.limiter.workers:g} new keys a second; send again"
                    " later", retry_after=retry_after(wait), code="key_lookups_limited")
        found = self.read(key)
        if found is None:
            metrics.KEY_LOOKUPS.labels(self.what, "unknown").inc()
            self._known.pop(key, None)
            if len(self._unknown) >= MAX_REMEMBERED:
                self._unknown.clear()
            self._unknown[key] = now
            return None
        metrics.KEY_LOOKUPS.labels(self.what, "found").inc()
        if len(self._known) >= MAX_REMEMBERED:
            self._known.clear()
        self._known[key] = (found, now)
        return found
