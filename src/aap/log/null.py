"""A log that stores nothing: the benchmarks' baseline for decode and validation alone."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from aap.log.base import Append, LogStats, Positions, Record


class NullLog:
    def __init__(self) -> None:
        self._seq = itertools.count(1)
        self._events = 0

    def append(self, batches: Sequence[Append]) -> list[int]:
        self._events += sum(b.count for b in batches)
        return [next(self._seq) for _ in batches]

    def read(self, after: int | Positions, limit: int = 1000, max_events: int | None = None,
             max_bytes: int | None = None) -> list[Record]:
        return []

    def position(self, group: str) -> int:
        return 0

    def positions(self, group: str) -> dict[int, int]:
        return {}

    def commit(self, group: str, offset: int | Positions) -> None:
        pass

    def drop_older_than(self, cutoff_ms: int) -> int:
        return 0

    def stats(self) -> LogStats:
        return LogStats(0, self._events, 0, {})

    def close(self) -> None:
        pass
