"""How a collector worker calls the shared state (the consent ledger, the keystore, the
privacy requests) without stopping its event loop, and with one keystore commit for
the requests that waited together.

On PostgreSQL (``AAP_META_URL``) each of those calls waits for the server: a request's
consent gate and sealing make a few round trips and, when the request brings a new
person, two commits (a data key, the sealed raw id). Made on the event loop, they
stopped every other request of the worker meanwhile — its health check, its other
sources' events, the answers of appends the log had acknowledged — and a table locked by
a migration or a slow server stopped them all. There, one thread of the worker's own
makes every such call, in the order they were asked: the stores and their caches are
touched by that thread alone, as they were by the loop alone before, and the loop goes
on. Calls of one *group* function (:meth:`SharedState.grouped`: the ingestion's consent
gate and sealing) that are next to each other in the queue are made as one call of it
with all their items: the batches that arrived while the thread waited for PostgreSQL
share their keystore transactions (group commit, as the log's
:class:`~aap.log.committer.GroupCommitter` does for appends; no wait is added).

On the SQLite files of the default a call is a local read of a few microseconds, less
than handing it to a thread and back: it runs inline, as before, a group of one.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from aap import errors
from aap.collect import metrics

P = ParamSpec("P")
T = TypeVar("T")
I = TypeVar("I")  # noqa: E741

Group = Callable[[list[Any]], Sequence[Any]]
"""Items → one result per item, in order; a result that is an exception is raised to
that item's caller alone."""


@dataclass
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    call: Callable[[], Any] | None = None
    group: Group | None = None
    item: Any = None


def _settle(future: asyncio.Future[Any], result: Any, failed: bool) -> None:
    if future.done():  # the request was cancelled meanwhile (its client went away)
        return
    if failed:
        future.set_exception(result)
    else:
        future.set_result(result)


class SharedState:
    """``await shared(fn, *args)``: ``fn(*args)``; ``await shared.grouped(group, item)``:
    ``group([item, …])``'s result for ``item``. On the shared state's thread when it is
    remote (``threaded``), else inline."""

    def __init__(self, threaded: bool) -> None:
        self.threaded = threaded
        self._jobs: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kw: P.kwargs) -> T:
        if not self.threaded:
            return fn(*args, **kw)
        result: T = await self._submit(call=functools.partial(fn, *args, **kw))
        return result

    async def grouped(self, group: Callable[[list[I]], Sequence[T | BaseException]],
                      item: I) -> T:
        if not self.threaded:
            (result,) = group([item])
            if isinstance(result, BaseException):
                raise result
            return result
        out: T = await self._submit(group=group, item=item)
        return out

    def _submit(self, **job: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._wake:
            if self._closed:
                raise errors.ServiceUnavailable("the collector is stopping",
                                                code="stopping")
            self._jobs.append(_Job(loop, future, **job))
            metrics.SHARED_QUEUED.inc()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="aap-shared-state")
                self._thread.start()
            self._wake.notify()
        return future

    def _next(self) -> list[_Job] | None:
        """The next job, with the jobs of the same group right behind it."""
        with self._wake:
            while not self._jobs and not self._closed:
                self._wake.wait()
            if not self._jobs:
                return None
            taken = [self._jobs.popleft()]
            group = taken[0].group
            # == : a bound method is a new object at each access, equal to the others
            while group is not None and self._jobs and self._jobs[0].group == group:
                taken.append(self._jobs.popleft())
        metrics.SHARED_QUEUED.dec(len(taken))
        metrics.SHARED_CALLS.inc(len(taken))
        metrics.SHARED_GROUPS.inc()
        return taken

    def _run(self) -> None:
        while (taken := self._next()) is not None:
            head = taken[0]
            try:
                if head.group is None:
                    assert head.call is not None
                    results: Sequence[Any] = [head.call()]
                else:
                    results = head.group([job.item for job in taken])
                if len(results) != len(taken):
                    raise RuntimeError(f"{len(results)} results for {len(taken)} calls")
                outcomes = [(r, isinstance(r, BaseException)) for r in results]
            except BaseException as exc:  # every caller of the group gets it
                outcomes = [(exc, True)] * len(taken)
            for job, (result, failed) in zip(taken, outcomes, strict=True):
                try:
                    job.loop.call_soon_threadsafe(_settle, job.future, result, failed)
                except RuntimeError:  # its loop is closed: the worker is stopping
                    pass

    def close(self) -> None:
        """No more calls; the thread ends after the queued ones (it is a daemon: a call
        stuck on the server does not hold the process's exit)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
