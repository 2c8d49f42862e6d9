"""The warehouse's write lock (:mod:`aap.store.writelock`): one writer at a time; the
holder may open it to chunks, one at a time, while every other writer still waits; the
holder is alone again once the chunk that was in has ended. And the warehouse's chunk
write takes it so: a chunk goes in while the publisher lists a batch, unless it has
rectifications to apply (those note which listed batches still lack them).

A thread that should wait is given a moment and must not have moved: on a slow machine
that can only make such a check pass when it should fail, never the other way; every
thread that should move gets a minute."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aap.store.rectifications import SharedRectifications, mirror
from aap.store.warehouse import Chunk, Warehouse
from aap.store.writelock import WriteLock
from tests.store.publish_workers import events

MOVES = 60.0
"""Seconds a thread that should go on is given."""
STILL = 0.3
"""Seconds a thread that should wait is watched."""


def started(fn: Callable[[], object]) -> tuple[threading.Thread, threading.Event]:
    """``fn`` in a thread of its own, and an event set once it returned."""
    done = threading.Event()

    def run() -> None:
        fn()
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, done


def hold(lock: WriteLock, entered: threading.Event, leave: threading.Event
         ) -> Callable[[], None]:
    def fn() -> None:
        with lock.chunk():
            entered.set()
            assert leave.wait(MOVES)
    return fn


def test_the_holder_keeps_chunks_and_writers_out() -> None:
    lock = WriteLock()
    chunk_in, chunk_leave, writer_in = threading.Event(), threading.Event(), threading.Event()

    def writer() -> None:
        with lock:
            writer_in.set()
            assert chunk_leave.wait(MOVES)

    with lock:
        assert lock.locked()
        chunk, _ = started(hold(lock, chunk_in, chunk_leave))
        other, _ = started(writer)
        assert not chunk_in.wait(STILL) and not writer_in.is_set()
    # let go: one of the two goes in (either may be first: watch both, since waiting
    # for the chunk alone would wait for a writer that went first to leave), and the
    # other waits for it
    deadline = time.monotonic() + MOVES
    while not (chunk_in.is_set() or writer_in.is_set()):
        assert time.monotonic() < deadline, "neither went in"
        time.sleep(0.01)
    second = writer_in if chunk_in.is_set() else chunk_in
    assert not second.wait(STILL)
    chunk_leave.set()
    assert chunk_in.wait(MOVES) and writer_in.wait(MOVES)
    chunk.join(MOVES)
    other.join(MOVES)
    assert not lock.locked()


def test_an_opened_lock_lets_chunks_in_one_at_a_time_and_no_other_writer() -> None:
    lock = WriteLock()
    first_in, first_leave = threading.Event(), threading.Event()
    second_in, second_leave = threading.Event(), threading.Event()
    writer_in = threading.Event()

    def writer() -> None:
        with lock:
            writer_in.set()

    lock.acquire()
    with lock.opened():
        started(hold(lock, first_in, first_leave))
        assert first_in.wait(MOVES)  # in while the holder holds the lock
        started(hold(lock, second_in, second_leave))
        started(writer)
        assert not second_in.wait(STILL)  # one chunk at a time
        assert not writer_in.is_set()  # every other writer waits for the holder
        first_leave.set()
        assert second_in.wait(MOVES)  # the next one, the lock still open
        second_leave.set()
    assert not writer_in.wait(STILL)  # closed: still the holder's alone
    lock.release()
    assert writer_in.wait(MOVES)


def test_closing_waits_for_the_chunk_that_is_in() -> None:
    lock = WriteLock()
    entered, leave = threading.Event(), threading.Event()
    closed = threading.Event()

    def holder() -> None:
        with lock:
            with lock.opened():
                started(hold(lock, entered, leave))
                assert entered.wait(MOVES)
            closed.set()  # alone again
            assert not entered.is_set() or leave.is_set()

    t, done = started(holder)
    assert entered.wait(MOVES)
    assert not closed.wait(STILL)  # the holder cannot close while the chunk is in
    leave.set()
    assert done.wait(MOVES) and closed.is_set()
    t.join(MOVES)
    assert not lock.locked()


def test_a_release_or_an_opening_without_the_lock_is_refused() -> None:
    lock = WriteLock()
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()
    with pytest.raises(RuntimeError, match="only the holder"):
        with lock.opened():
            pass
    with lock.chunk():  # a free lock takes a chunk, as it takes any writer
        assert lock.locked()
    assert not lock.locked()


@pytest.mark.parametrize("pending", [False, True])
def test_a_chunk_with_rectifications_to_apply_waits_for_the_publisher(
        tmp_path: Path, pending: bool) -> None:
    wh = Warehouse(tmp_path / "wh")
    store = SharedRectifications(tmp_path, "")
    fixes = mirror(wh, store)
    try:
        if pending:
            store.record([1], {"plan": "pro"})
        seen = fixes.refresh()
        chunk = Chunk(events(5, "c"), position=1, next_person=100, rectifications_seen=seen)
        with wh.write_lock:  # the publisher, listing a batch
            with wh.write_lock.opened():
                _, done = started(lambda: wh.write(chunk))
                assert done.wait(STILL if pending else MOVES) is not pending
        assert done.wait(MOVES)
        n = wh.con.execute("SELECT count(*) FROM events_raw").fetchone()
        assert n == (5,)
    finally:
        store.close()
        wh.close()


def test_a_waiting_writer_goes_before_chunks_that_were_waiting_already() -> None:
    """The processor's next chunk is usually waiting when its last one ends: a writer
    (the publisher's mark) that waits meanwhile goes first, else it would wait another
    chunk at each turn."""
    lock = WriteLock()
    first_in, first_leave = threading.Event(), threading.Event()
    second_in, second_leave = threading.Event(), threading.Event()
    writer_in, writer_leave = threading.Event(), threading.Event()

    def writer() -> None:
        with lock:
            writer_in.set()
            assert writer_leave.wait(MOVES)

    started(hold(lock, first_in, first_leave))
    assert first_in.wait(MOVES)
    started(hold(lock, second_in, second_leave))  # waits first: one chunk at a time
    assert not second_in.wait(STILL)
    started(writer)
    assert not writer_in.wait(STILL)  # the chunk in is not disturbed
    first_leave.set()
    assert writer_in.wait(MOVES)
    assert not second_in.wait(STILL)  # the writer first
    writer_leave.set()
    assert second_in.wait(MOVES)
    second_leave.set()


def test_a_lock_taken_opened_lets_the_chunk_in_go_on_and_shut_waits_for_it() -> None:
    """The publisher's steps 2 and 3 take the lock opened: the chunk being written goes on
    (no wait for it), other writers wait, and :meth:`WriteLock.shut` waits for the chunk."""
    lock = WriteLock()
    chunk_in, chunk_leave = threading.Event(), threading.Event()
    writer_in = threading.Event()
    shut = threading.Event()

    def writer() -> None:
        with lock:
            writer_in.set()

    started(hold(lock, chunk_in, chunk_leave))
    assert chunk_in.wait(MOVES)
    _, taken = started(lambda: lock.acquire(opened=True))
    assert taken.wait(MOVES)  # while the chunk is still in
    started(writer)
    assert not writer_in.wait(STILL)

    ended_first: list[bool] = []

    def shut_it() -> None:
        lock.shut()
        ended_first.append(chunk_leave.is_set())
        shut.set()

    started(shut_it)
    assert not shut.wait(STILL)
    chunk_leave.set()
    assert shut.wait(MOVES) and ended_first == [True]  # only once the chunk had ended
    assert not writer_in.wait(STILL)  # the holder's alone now
    lock.release()
    assert writer_in.wait(MOVES)
    with pytest.raises(RuntimeError, match="only the holder"):
        lock.shut()
