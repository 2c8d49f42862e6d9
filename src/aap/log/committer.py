"""Group commit: one writer thread per process turns many concurrent appends into one
durable transaction, so one fsync acknowledges every request that arrived meanwhile."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

from aap.errors import ServiceUnavailable
from aap.log.base import Append, Log

logger = logging.getLogger(__name__)

_STOP = object()


class GroupCommitter:
    def __init__(self, log: Log, max_pending: int = 2000, retry_after: int = 1,
                 retention_hours: float = 0, retention_every_s: float = 60.0) -> None:
        self.log = log
        self.retention_ms = int(retention_hours * 3600 * 1000)
        self.retention_every = retention_every_s
        self._next_retention = time.monotonic()
        self.max_pending = max_pending
        self.retry_after = retry_after
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="aap-group-commit", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    async def append(self, batch: Append) -> int:
        """Append one batch; returns its offset once it is durable."""
        return (await self.append_all([batch]))[0]

    async def append_all(self, batches: list[Append]) -> list[int]:
        """Append a request's batches (one per person on a keyed log) in the same commit;
        returns their offsets once every one is durable."""
        with self._lock:
            if self._pending >= self.max_pending:
                raise ServiceUnavailable(
                    "too many batches are waiting to be written", retry_after=self.retry_after,
                    code="log_busy",
                )
            self._pending += 1
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[int]] = loop.create_future()
        self._queue.put((batches, fut, loop))
        return await fut

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            self._retain()
            try:
                item = self._queue.get(timeout=self.retention_every)
            except queue.Empty:
                continue
            items = [item]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(i is _STOP for i in items)
            work = [i for i in items if i is not _STOP]
            if work:
                self._commit(work)  # type: ignore[arg-type]
            if stop:
                return

    def _retain(self) -> None:
        """Drop records past the retention, at most once per ``retention_every`` seconds."""
        if not self.retention_ms or time.monotonic() < self._next_retention:
            return
        self._next_retention = time.monotonic() + self.retention_every
        try:
            dropped = self.log.drop_older_than(int(time.time() * 1000) - self.retention_ms)
        except Exception as exc:
            logger.warning("log retention failed: %s", type(exc).__name__)
        else:
            if dropped:
                logger.info("log retention dropped %d records", dropped)

    def _commit(self, work: list[tuple[list[Append], asyncio.Future[list[int]],
                                       asyncio.AbstractEventLoop]]) -> None:
        results: list[list[int] | None]
        err: ServiceUnavailable | None = None
        try:
            offsets = iter(self.log.append([b for w in work for b in w[0]]))
            results = [[next(offsets) for _ in w[0]] for w in work]
        except Exception as exc:  # disk full, I/O error, lock timeout: the batch is not stored
            logger.error("log append failed: %s", type(exc).__name__)
            err = ServiceUnavailable(
                "the log cannot take the batch", retry_after=self.retry_after, code="log_unavailable"
            )
            results = [None] * len(work)
        with self._lock:  # before waking the waiters, so they see the queue as it now is
            self._pending -= len(work)
        for (_, fut, loop), res in zip(work, results, strict=True):
            loop.call_soon_threadsafe(_settle, fut, res, err)


def _settle(fut: asyncio.Future[list[int]], value: list[int] | None,
            err: BaseException | None) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(value)  # type: ignore[arg-type]
