"""The warehouse's write lock: one writer at a time, but the publisher lets the
processor's chunks in while it writes and lists a batch.

``with wh.write_lock:`` holds it alone, as a ``threading.Lock`` would (not re-entrant,
not tied to a thread). The processor writes each chunk under :meth:`WriteLock.chunk`,
which waits for a free lock, like any writer, **or** for one its holder has opened
(:meth:`WriteLock.opened`). The publisher opens it for steps 2 and 3 of a batch (the
files written from the batch's rows, then listed on the shared store: most of its
time), which read only what the mark step set aside and what a DuckDB snapshot shows,
so a chunk committed meanwhile is as one committed just after the listing
(:mod:`aap.store.publish`). Everyone else (erasures, rectifications, rewrites, tiering,
the mark and the end of a batch) still waits for the holder to let go, and closing the
lock (:meth:`WriteLock.shut`) waits for the chunk that is in.

A writer waiting for the lock goes before the chunks that come after it began to wait
(else the processor, whose next chunk is usually waiting already, takes the lock back
as soon as its last chunk lets go, and the publisher's turn waits another chunk), and
the publisher takes it for steps 2 and 3 already opened (``acquire(opened=True)``): it
need not wait for the chunk that is in, only for other holders.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class WriteLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held: bool = False
        """Someone holds the lock (alone, or opened to chunks)."""
        self._open: bool = False
        """The holder lets chunks in."""
        self._chunk: bool = False
        """A chunk is being written."""
        self._wanting: int = 0
        """Writers waiting for the lock: no new chunk goes in before them."""

    def acquire(self, opened: bool = False) -> bool:
        """Held alone once no one holds it and no chunk is in; ``opened``: held already
        opened to chunks (:meth:`opened`), so the chunk that is in goes on (the holder
        may do only what it may do opened until it :meth:`shut` it)."""
        with self._cond:
            self._wanting += 1
            try:
                self._cond.wait_for(lambda: not self._held and (opened or not self._chunk))
                self._held = True
                self._open = opened
            finally:
                self._wanting -= 1
                self._cond.notify_all()  # chunks waited for this writer (or it gave up)
        return True

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("release of a write lock that is not held")
            self._held = self._open = False
            self._cond.notify_all()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def locked(self) -> bool:
        with self._cond:
            return self._held or self._chunk

    def _chunk_may_enter(self) -> bool:
        """(With the condition's lock.) No chunk is in, and the lock is opened, or free
        with no writer waiting for it."""
        return not self._chunk and (self._open or (not self._held and not self._wanting))

    @contextmanager
    def chunk(self) -> Iterator[None]:
        """A chunk's write: when the lock is free or opened, one chunk at a time."""
        with self._cond:
            self._cond.wait_for(self._chunk_may_enter)
            self._chunk = True
        try:
            yield
        finally:
            with self._cond:
                self._chunk = False
                self._cond.notify_all()

    @contextmanager
    def opened(self) -> Iterator[None]:
        """Held by the caller: chunks may come in until the block ends, which waits for
        the chunk being written (the caller holds the lock alone again)."""
        with self._cond:
            if not self._held:
                raise RuntimeError("only the holder of the write lock can open it")
            self._open = True
            self._cond.notify_all()
        try:
            yield
        finally:
            self.shut()

    def shut(self) -> None:
        """Held by the caller: no chunk comes in any more; returns once the one being
        written has ended (the caller holds the lock alone)."""
        with self._cond:
            if not self._held:
                raise RuntimeError("only the holder of the write lock can shut it")
            self._open = False
            self._cond.wait_for(lambda: not self._chunk)
