"""The durable log's interface: append, read from a position, commit a position, retain.

The embedded implementation is :class:`aap.log.sqlite.SQLiteLog`; the scaled-out one is
:class:`aap.log.kafka.KafkaLog`. A *record* is one appended batch: the events of one
request (SQLite), or those of one request that go to one partition (Kafka), in the order
they were sent, under one offset.

Positions are per partition: a mapping partition → position, the position being the
offset of the last record consumed (offsets start at 1, so 0 is "nothing yet"). The
SQLite log is one partition, 0; a plain ``int`` stands for ``{0: int}`` wherever a
position is taken, so its callers need not know about partitions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeAlias, cast

from aap.events import Event, encode_events

Positions: TypeAlias = Mapping[int, int]
"""Partition → offset of the last record consumed there (0: none yet)."""


def as_positions(after: int | Positions) -> dict[int, int]:
    """``after`` as a mapping: an ``int`` is partition 0's position."""
    return {0: after} if isinstance(after, int) else dict(after)


def advance(positions: Positions, records: Sequence[Record]) -> dict[int, int]:
    """``positions`` moved past ``records`` (each partition's records come in order)."""
    out = dict(positions)
    for r in records:
        out[r.partition] = r.offset
    return out


@dataclass(frozen=True, slots=True)
class Append:
    source: str
    count: int
    """Number of events in ``payload``."""
    payload: bytes
    key: bytes | None = None
    """The person the events belong to (their keyed id), when they are one person's: a
    partitioned log keeps one key's records in order in one partition."""
    partition: int | None = None
    """The partition of a partitioned log the record goes to, when the log chose it for
    the events' keys (:meth:`aap.log.kafka.KafkaLog.records`)."""


class Record(NamedTuple):
    """One record as read. A tuple, not a frozen dataclass: a consumer makes one per
    message, and a frozen dataclass took 2.7 µs to make (a tuple 0.4 µs), on a machine
    where a record of Kafka's often holds one event."""

    offset: int
    appended_at_ms: int
    source: str
    count: int  # type: ignore[assignment]  # shadows tuple.count, which no caller uses
    """Number of events in ``payload``."""
    payload: bytes
    partition: int = 0


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

    def read(self, after: int | Positions, limit: int = 1000, max_events: int | None = None,
             max_bytes: int | None = None) -> list[Record]:
        """Records past the positions ``after``, oldest first within each partition: at
        most ``limit`` records, and no more records than it takes to reach ``max_events``
        events or ``max_bytes`` bytes of payload (at least one record, however large).
        A partitioned log reads only the partitions assigned to this consumer."""

    def position(self, group: str) -> int:
        """The committed position of a consumer group (0 when it has none); summed over
        the partitions on a partitioned log."""

    def positions(self, group: str) -> dict[int, int]:
        """The committed positions of a consumer group, per partition."""

    def commit(self, group: str, offset: int | Positions) -> None:
        """Record that ``group`` has consumed every record up to ``offset`` (per
        partition; the partitions not named keep their position)."""

    def drop_older_than(self, cutoff_ms: int) -> int:
        """Drop records appended before ``cutoff_ms``; returns how many were dropped."""

    def stats(self) -> LogStats: ...

    def close(self) -> None: ...


def records(log: Log, source: str, events: list[Event]) -> list[Append]:
    """The records a request's events are appended as: one (the embedded log), or what
    the log makes of them (a partitioned log: :meth:`aap.log.kafka.KafkaLog.records`)."""
    own = getattr(log, "records", None)
    if own is not None:
        return cast(list[Append], own(source, events))
    return [Append(source, len(events), encode_events(events))]


def scan(log: Log, batch: int = 500) -> Iterator[Record]:
    """Every record the log holds, for a one-off reader (a data subject's access request):
    on Kafka through a consumer outside the processors' group."""
    own = getattr(log, "scan", None)
    if own is not None:
        yield from own()
        return
    after = 0
    while recs := log.read(after, batch):
        yield from recs
        after = recs[-1].offset
