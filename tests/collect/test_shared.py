"""The collector's calls to the shared state (:mod:`aap.collect.shared`): in order, on one
thread, the queued calls of one group function made as one call; each caller gets its
own result or error. The thread is held by a first call that waits for an event, so the
others queue deterministically."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from aap import errors
from aap.collect.shared import SharedState


class Refused(Exception):
    pass


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.threads: set[str] = set()
        self.entered = threading.Event()
        self.release = threading.Event()

    def hold(self) -> str:
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        assert self.release.wait(30)
        self.calls.append(("hold", None))
        return "held"

    def plain(self, x: int) -> int:
        self.threads.add(threading.current_thread().name)
        self.calls.append(("plain", x))
        return x * 10

    def group(self, items: list[int]) -> Sequence[int | BaseException]:
        self.threads.add(threading.current_thread().name)
        self.calls.append(("group", tuple(items)))
        return [Refused(i) if i < 0 else i + 1 for i in items]


async def _queued(shared: SharedState, rec: Recorder, *jobs: tuple[str, int]) -> list[object]:
    """Hold the thread, queue ``jobs`` behind it, release it; each job's outcome."""
    held = asyncio.ensure_future(shared(rec.hold))
    assert await asyncio.to_thread(rec.entered.wait, 30)  # the thread is held
    futures = []
    for kind, x in jobs:
        if kind == "plain":
            futures.append(asyncio.ensure_future(shared(rec.plain, x)))
        else:
            futures.append(asyncio.ensure_future(shared.grouped(rec.group, x)))
    while len(shared._jobs) < len(jobs):  # every job queued before the thread is let go
        await asyncio.sleep(0.01)
    rec.release.set()
    assert await held == "held"
    return list(await asyncio.gather(*futures, return_exceptions=True))


def test_queued_calls_of_a_group_are_made_as_one_in_order_and_split_by_other_calls() -> None:
    rec = Recorder()
    shared = SharedState(threaded=True)
    try:
        got = asyncio.run(_queued(shared, rec, ("group", 1), ("group", 2), ("plain", 3),
                                  ("group", 4), ("group", -5), ("group", 6)))
    finally:
        shared.close()
    assert rec.calls == [("hold", None), ("group", (1, 2)), ("plain", 3),
                         ("group", (4, -5, 6))]
    assert got[:4] == [2, 3, 30, 5] and got[5] == 7
    assert isinstance(got[4], Refused) and got[4].args == (-5,)  # its caller's alone
    assert rec.threads == {"aap-shared-state"}


def test_an_error_of_the_whole_group_reaches_each_of_its_callers_and_the_thread_goes_on() -> None:
    rec = Recorder()

    def broken(items: list[int]) -> Sequence[int]:
        raise Refused("the database is gone")

    async def run() -> tuple[list[object], int]:
        got = await _queued(shared, rec, ("plain", 1))
        errors = await asyncio.gather(shared.grouped(broken, 1), shared.grouped(broken, 2),
                                      return_exceptions=True)
        return [*got, *errors], await shared(rec.plain, 9)

    shared = SharedState(threaded=True)
    try:
        got, after = asyncio.run(run())
    finally:
        shared.close()
    assert got[0] == 10
    assert all(isinstance(e, Refused) for e in got[1:]) and len(got) == 3
    assert after == 90


def test_a_cancelled_caller_does_not_stop_the_thread() -> None:
    rec = Recorder()

    async def run() -> int:
        held = asyncio.ensure_future(shared(rec.hold))
        assert await asyncio.to_thread(rec.entered.wait, 30)  # the thread is held
        gone = asyncio.ensure_future(shared.grouped(rec.group, 1))
        while not shared._jobs:  # queued behind the held call
            await asyncio.sleep(0.01)
        gone.cancel()
        rec.release.set()
        await held
        return await shared.grouped(rec.group, 2)

    shared = SharedState(threaded=True)
    try:
        assert asyncio.run(run()) == 3
    finally:
        shared.close()
    # the cancelled caller's item was still made (it was queued), then 2: in one group if
    # 2 was queued before the thread took 1
    assert rec.calls[0] == ("hold", None)
    assert [i for _, items in rec.calls[1:] for i in items] == [1, 2]  # type: ignore[union-attr]


def test_inline_calls_run_on_the_callers_thread_as_groups_of_one() -> None:
    rec = Recorder()
    shared = SharedState(threaded=False)

    async def run() -> tuple[int, int]:
        a = await shared(rec.plain, 2)
        b = await shared.grouped(rec.group, 3)
        with pytest.raises(Refused):
            await shared.grouped(rec.group, -1)
        return a, b

    assert asyncio.run(run()) == (20, 4)
    assert rec.calls == [("plain", 2), ("group", (3,)), ("group", (-1,))]
    assert rec.threads == {threading.current_thread().name}


def test_after_close_no_call_is_taken() -> None:
    shared = SharedState(threaded=True)
    shared.close()

    async def run() -> None:
        await shared(int, "1")

    with pytest.raises(errors.ServiceUnavailable, match="stopping"):
        asyncio.run(run())
