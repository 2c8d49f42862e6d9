"""How many queries run at once in the core: per API key, and in all.

A query (``POST /api/v1/query``, ``GET /api/v1/insights/{id}``) takes a slot before it
runs on the core's query threads: at most ``per_key`` of one key's queries run at once
and at most ``total`` of all keys' (``total`` is the size of the query threads' pool,
more than ``per_key``, so one key cannot take them all). Further queries of a key wait
in its queue, at most ``queue_per_key`` of them; one more is refused at once with a 429
and Retry-After. A query that waited ``max_wait_s`` without a slot gets a 503. Waiting
costs no thread: it happens on the core's event loop.

Everything else (privacy requests, keys, cohorts, the CLI's privacy calls) runs on other
threads and never waits for a slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aap.errors import ServiceUnavailable, TooManyRequests


class QueryGate:
    def __init__(self, *, total: int, per_key: int, queue_per_key: int,
                 max_wait_s: float, retry_after: int = 1) -> None:
        if total < 1 or per_key < 1 or queue_per_key < 0:
            raise ValueError("query concurrency must be at least 1 (queue at least 0)")
        self.total = total
        self.per_key = per_key
        self.queue_per_key = queue_per_key
        self.max_wait_s = max_wait_s
        self.retry_after = retry_after
        self.running = 0
        self.by_key: dict[str, int] = {}
        self.waiting: dict[str, int] = {}
        self._cond: asyncio.Condition | None = None

    def _free(self, key: str) -> bool:
        return self.running < self.total and self.by_key.get(key, 0) < self.per_key

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        if self._cond is None:
            self._cond = asyncio.Condition()
        cond = self._cond
        async with cond:
            if not self._free(key):
                if self.waiting.get(key, 0) >= self.queue_per_key:
                    raise TooManyRequests(
                        f"too many queries with this key: {self.by_key.get(key, 0)} running"
                        f" and {self.waiting.get(key, 0)} waiting (at most"
                        f" {self.per_key} running per key, AAP_QUERY_CONCURRENCY_PER_KEY, and"
                        f" {self.queue_per_key} waiting, AAP_QUERY_QUEUE_PER_KEY)",
                        retry_after=self.retry_after, code="too_many_queries")
                self.waiting[key] = self.waiting.get(key, 0) + 1
                try:
                    await asyncio.wait_for(cond.wait_for(lambda: self._free(key)),
                                           self.max_wait_s)
                except TimeoutError:
                    raise ServiceUnavailable(
                        f"no query slot came free in {self.max_wait_s:g} s (at most"
                        f" {self.total} queries run at once, AAP_QUERY_CONCURRENCY)",
                        retry_after=self.retry_after, code="queries_busy") from None
                finally:
                    self.waiting[key] -= 1
                    if not self.waiting[key]:
                        del self.waiting[key]
            self.running += 1
            self.by_key[key] = self.by_key.get(key, 0) + 1
        try:
            yield
        finally:
            async with cond:
                self.running -= 1
                self.by_key[key] -= 1
                if not self.by_key[key]:
                    del self.by_key[key]
                cond.notify_all()
