"""The durable log's interface: append, read from a position, commit a position, retain.

The embedded implementation is :class:`aap.log.sqlite.SQLiteLog`; a Kafka one will
implement the same methods. A *record* is one appended batch: the events of one
request, in the order they were sent, under one offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


@dataclass(frozen=True, slots=True)
class Append:
    source: str
    count: int
    """Number of events in ``payload``."""
    payload: bytes


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    appended_at_ms: int
    source: str
    count: int
    payload: bytes


class LogStats(NamedTuple):
    head_offset: int
    """Offset of the newest record (0 when empty)."""
    total_events: int
    """Events ever appended."""
    size_bytes: int
    lag_events: dict[str, int]
    """Unconsumed events per consumer group."""


class Log(Protocol):
    def append(self, batches: Sequence[Append]) -> list[int]:
        """Append atomically; durable when the call returns. Returns one offset per batch."""

    def read(self, after: int, limit: int = 1000, max_events: int | None = None,
             max_bytes: int | None = None) -> list[Record]:
        """Records with an offset greater than ``after``, oldest first: at most ``limit``
        records, and no more records than it takes to reach ``max_events`` events or
        ``max_bytes`` bytes of payload (at least one record, however large)."""

    def position(self, group: str) -> int:
        """The committed position of a consumer group (0 when it has none)."""

    def commit(self, group: str, offset: int) -> None:
        """Record that ``group`` has consumed every record up to ``offset``."""

    def drop_older_than(self, cutoff_ms: int) -> int:
        """Drop records appended before ``cutoff_ms``; returns how many were dropped."""

    def stats(self) -> LogStats: ...

    def close(self) -> None: ...
