"""Live events: a bounded ring buffer of the events the processor has just written, and
the long poll of ``GET /api/v1/live`` on it.

The processor calls :meth:`LiveFeed.add` with each chunk once it is in the warehouse; a
poll waits (up to :data:`WAIT_S`) until an event after its cursor that passes its filters
is there. An event carries its time, name (or type, for page and screen views), source
name, pseudonymous person key (the warehouse's person id, never a userId or
anonymousId), path, country and browser: nothing else of the event is kept.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

import pyarrow as pa

from aap import errors

SIZE = 2000
"""Events kept."""
IDLE_KEEP = 100
"""Events kept of a chunk when nobody has polled for :data:`IDLE_S` seconds."""
IDLE_S = 120.0
WAIT_S = 10.0
"""Longest a poll waits for an event."""
FIRST = 50
"""Events a first poll (no cursor) gets at once: the latest ones."""
_COLUMNS = ("timestamp", "event", "type", "source", "person_id", "path", "country", "browser")


class LiveFeed:
    def __init__(self, size: int = SIZE, wait_s: float = WAIT_S) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=size)
        self.cursor = 0
        """Events added so far (the last one's cursor)."""
        self.wait_s = wait_s
        self.cond = threading.Condition()
        self.polled = 0.0
        self.closed = False
        self.names: Callable[[Collection[str]], dict[str, str]] = lambda ids: {}
        """Source id → name, given the ids at hand (set by the owner)."""

    def add(self, table: pa.Table) -> None:
        """The events of a chunk written to the warehouse (the processor's thread)."""
        n = table.num_rows
        if not n:
            return
        keep = SIZE if time.monotonic() - self.polled < IDLE_S else IDLE_KEEP
        cols = table.slice(max(0, n - keep)).select(list(_COLUMNS)).to_pydict()
        names = self.names(set(cols["source"]))
        rows = [{"time": t.isoformat() if t is not None else None,
                 "event": ev if ev is not None else ty, "type": ty,
                 "source": names.get(src, src), "person": str(pid) if pid is not None else "",
                 "path": path, "country": country, "browser": browser}
                for t, ev, ty, src, pid, path, country, browser in zip(
                    *(cols[c] for c in _COLUMNS), strict=True)]
        with self.cond:
            first = self.cursor + n - len(rows) + 1
            for i, row in enumerate(rows):
                row["cursor"] = first + i
            self.events.extend(rows)
            self.cursor += n
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def poll(self, args: dict[str, str]) -> dict[str, Any]:
        """``{"cursor", "events"}``: the events after ``after`` that pass the filters
        (``event``, ``source``: exact names), waiting for one up to :attr:`wait_s`."""
        after = _cursor(args.get("after"))
        event, source = args.get("event") or None, args.get("source") or None
        deadline = time.monotonic() + self.wait_s
        with self.cond:
            self.polled = time.monotonic()
            if after is None or after > self.cursor:  # first poll, or the core restarted
                got = [e for e in self.events if _passes(e, event, source)][-FIRST:]
                return {"cursor": self.cursor, "events": got}
            while True:
                got = [e for e in self.events if e["cursor"] > after
                       and _passes(e, event, source)]
                left = deadline - time.monotonic()
                if got or left <= 0 or self.closed:
                    return {"cursor": self.cursor, "events": got}
                after = self.cursor  # what is there now does not pass: wait for more
                self.cond.wait(left)


def _passes(e: dict[str, Any], event: str | None, source: str | None) -> bool:
    return (event is None or e["event"] == event) and (source is None or e["source"] == source)


def _cursor(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 18:
        raise errors.BadRequest("'after' must be a cursor from a previous answer",
                                code="invalid_cursor")
    return int(value)
