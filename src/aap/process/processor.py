"""The processor: reads the log from its committed position, runs the steps, and writes
each chunk to the warehouse in one transaction together with the position it reached.

At-least-once in (the log is re-read after a crash), exactly-once out (a chunk and its
position commit together, and the steps are deterministic).

Positions are per log partition (the SQLite log has one, 0). On a partitioned log
(Kafka) the processors of one consumer group share the partitions: a chunk commits the
positions of its records' partitions only; before partitions are taken away the write in
flight is finished (so the next owner starts where this one stopped), and after any
change of assignment the processor reloads its state and positions from the warehouse,
which is also where the consumer starts each partition it is given.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import Counter as PromCounter

from aap.log.base import Log, Record, advance
from aap.privacy import consent as consent_history
from aap.privacy import removal
from aap.privacy.consent import ConsentState, Statement
from aap.privacy.ids import IdHasher
from aap.privacy.subjects import identified, person_closure
from aap.process import shop
from aap.process.identity import Identities
from aap.process.prepare import LocalPreparer, PrepareConfig, Prepared, WorkerPreparer
from aap.process.steps import Batch, DedupIndex, State, Stream, steps_for
from aap.store import handover, quarantine
from aap.store.identities import SharedIdentities
from aap.store.meta import log_failure, transient, unavailable
from aap.store.schema import EVENT_ARROW_SCHEMA, EVENT_COLUMNS
from aap.store.warehouse import NEXT_PERSON, Chunk, StaleChunk, Warehouse

logger = logging.getLogger("aap.process")

GROUP = "processor"
PROCESSED = PromCounter("aap_processor_events", "Events written to the warehouse.")
DROPPED = PromCounter("aap_processor_dropped", "Events the processor dropped, by reason.",
                      ["reason"])
WITHDRAWN = PromCounter("aap_processor_withdrawn_rows",
                        "Stored events erased because a withdrawal left them no purpose.", ["purpose"])
CONSENT_APPLIED = "consent_applied"
SOURCES_REFRESH_S = 5.0
CLAMPED = PromCounter("aap_processor_clamped", "Events whose time was in the future, clamped.")
CHUNK_EVENTS = 50_000
"""Events in a full chunk (however many records hold them). Larger chunks drain a
backlog no faster here (the write of one chunk overlaps the preparation of the next
ones either way) and take more memory: at 131,072 the server's peak while draining
grew from ~1.5 to ~2.7 GiB (benchmarks/pipeline.py)."""
CHUNK_RECORDS = 1000
"""Records in a full chunk on the embedded log, where a record is one request's events."""
KEYED_CHUNK_RECORDS = 20_000
"""Records in a full chunk on a keyed log (Kafka), where a record is a request's events for
one partition (one person's, a few, before :meth:`aap.log.kafka.KafkaLog.records`): with
:data:`CHUNK_RECORDS` a chunk of one-event records held about 1,000 events and the
processor spent several times the CPU per event of the embedded log (bench cluster);
:data:`CHUNK_EVENTS` bounds a chunk of larger records."""
CHUNK_BYTES = 16 << 20
"""Compressed payload bytes in a full chunk: a bound on its memory whatever the events'
sizes (requests may hold up to 20 MiB; 50,000 typical events are a few MiB)."""
ONE_AT_A_TIME_FAILURES = 3
"""After this many failures in a row at the same position, records are read one at a
time."""
SET_ASIDE_FAILURES = 5
"""After this many failures in a row, a record read alone is set aside."""
WITHDRAWAL_RETRY_S = 1.0
"""After applying consent withdrawals failed, how long before they are tried again."""
PRESSED_SPARE = 0.25
"""A chunk that left less than this share of the linger spare means the processor is
busy: it reads ahead again."""



def _chunk_records(log: Log) -> int:
    return KEYED_CHUNK_RECORDS if getattr(log, "keyed", False) else CHUNK_RECORDS


class _Rebalanced(Exception):
    """The log's partitions were assigned anew while reading: what was read is dropped."""


@dataclass(slots=True)
class _Built:
    """A chunk ready for the warehouse, and what to count once it is committed."""

    chunk: Chunk
    rows: int
    dropped: Counter[str]
    clamped: int


class Processor:
    publish_now: Callable[[], object] | None = None
    """Publishes the hot rows now: before partitions are revoked (:meth:`_revoked`)."""

    def __init__(self, log: Log, warehouse: Warehouse, hasher: IdHasher, *,
                 historical_sources: frozenset[str] | Callable[[], frozenset[str]] = frozenset(),
                 inactivity: timedelta = timedelta(minutes=30), late: timedelta = timedelta(minutes=60),
                 chunk_records: int | None = None, chunk_events: int = CHUNK_EVENTS,
                 chunk_bytes: int = CHUNK_BYTES, consent: ConsentState | None = None,
                 worker: bool = False, prepare_processes: int = 1,
                 destroyed: Callable[[], set[int]] | None = None,
                 forgotten: Callable[[], set[int]] | None = None,
                 scopes: Callable[[], dict[str, str]] | None = None,
                 identities: SharedIdentities | None = None) -> None:
        """``worker``: prepare chunks in ``prepare_processes`` child processes (see
        :mod:`aap.process.prepare`) while this one runs the stateful steps; otherwise in
        this thread. ``identities``: shared with other processors (:mod:`aap.store.identities`)."""
        self.log = log
        self.wh = warehouse
        self.chunk_records = chunk_records or _chunk_records(log)
        self.chunk_events = chunk_events
        self.chunk_bytes = chunk_bytes
        self.full = False
        """Whether the last chunk was full (the log held more): :meth:`run` then goes on
        at once."""
        self.hasher = hasher
        self._historical = historical_sources if callable(historical_sources) else None
        """Reads the historical sources again (every :data:`SOURCES_REFRESH_S`), so that a
        source created while the processor runs is known."""
        self._historical_due = 0.0
        if callable(historical_sources):
            historical_sources = historical_sources()
        self.inactivity, self.late = inactivity, late
        self.consent = consent
        self.destroyed = destroyed
        self._scopes = scopes
        """Reads the sources' consent scopes again (with the historical flags)."""
        self.scopes: dict[str, str] = scopes() if scopes is not None else {}
        self.forgotten = forgotten
        """Ids whose persons retention removed since the last call: they are forgotten
        here too, so that an id coming back is a new person."""
        self.shared, self.steps = identities, steps_for(identities)
        self.dropped: Counter[str] = Counter()
        self.failures, self.turned_at = 0, time.monotonic()  # run()'s last turn: aap.core.health
        self.last_write_at: float | None = None
        """When a chunk was last committed (Unix time; None: not since start)."""
        self._pending: Future[_Built] | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="aap-warehouse-write")
        cfg = PrepareConfig(historical_sources=historical_sources)
        self.preparer: LocalPreparer | WorkerPreparer = (
            WorkerPreparer(cfg, prepare_processes) if worker else LocalPreparer(cfg))
        self._withdrawals_due = 0.0
        self.pressed = True
        """Read ahead (set by :meth:`run` from how busy the last chunk kept it)."""
        self._ahead: deque[list[Record]] = deque()
        """Chunks of records submitted for preparation, after the chunk being built."""
        self.on_written: Callable[[pa.Table], object] | None = None
        """Called with each chunk's events once they are in the warehouse (live events)."""
        self.positions: dict[int, int] = {}
        """Per log partition, the position committed with the warehouse rows."""
        self._read_to: dict[int, int] = {}
        """Positions after the last chunk read (the read-ahead's start)."""
        self._join_group()
        self._first_load()

    def _join_group(self) -> None:
        """On a partitioned log (Kafka), whose group may move partitions: each assigned
        partition starts from the warehouse's position, and the write in flight commits
        before partitions are revoked."""
        self._generation = getattr(self.log, "generation", 0)
        if hasattr(self.log, "on_revoke"):
            grouped: Any = self.log
            grouped.on_revoke = self._revoked
            grouped.stored_positions = self.wh.get_positions
            if self.wh.handover:  # partitions another processor advanced: from the shared
                grouped.on_assign = self._assigned  # positions (aap.store.handover)

    def _first_load(self) -> None:
        """The state at start-up; with the tier store (S3) or the shared state away the
        processor starts all the same, and loads before its first chunk (run_once)."""
        try:
            self._load()
        except Exception as exc:
            if not transient(exc, self.wh.tiers):
                raise
            log_failure(logger, "the processor's state cannot be loaded yet; tried again"
                        " before the first chunk", exc, self.wh.tiers)

    def _assigned(self, partitions: list[int]) -> None:
        handover.adopt(self.wh, partitions)

    @property
    def position(self) -> int:
        """Records consumed, all partitions together (the SQLite log's position)."""
        return sum(self.positions.values())

    def _load(self) -> None:
        """State as the warehouse has it: at start-up, and after a chunk failed to write
        (the steps had already changed the state in memory for rows that are not stored)."""
        wh = self.wh
        self._stale = True  # until the state is read whole: a load that fails (S3 away:
        # the dedup keys are in the warm tier) is done again before anything is read
        self._epoch = wh.epoch  # a reset from now on is seen by the next turn
        ids = Identities()
        if self.shared is None:
            ids.load(*wh.load_identities())
        elif not hasattr(self, "state"):  # at start: the shared store holds them, and its
            self.shared.ensure_above(wh.get_state(NEXT_PERSON, 1))  # new persons are new here
        sessions, partitions = wh.load_streams()
        frontier: dict[int, int] = {}
        for k, (_, _, seen) in sessions.items():
            p = partitions.get(k, 0)
            if seen > frontier.get(p, seen - 1):
                frontier[p] = seen
        self.state = State(identities=ids, hasher=self.hasher,
                           dedup=DedupIndex(wh.load_dedup_keys()), sessions=sessions,
                           inactivity=self.inactivity, late=self.late, frontier=frontier,
                           partitions=partitions,
                           consent=self.consent, destroyed=self.destroyed, scopes=self.scopes)
        self.positions = wh.get_positions()
        self._next = dict(self.positions)
        """Where the next chunk starts: past the write in flight, if there is one."""
        self._read_to = dict(self._next)
        self._stale = False

    def run_once(self) -> int:
        """Process one chunk; returns the number of log records it consumed.

        The chunk's warehouse write runs in the background while the next chunk is
        built (the engine works outside the GIL); a call that finds nothing new to read
        waits for that write, so :attr:`position` is always what is committed.

        After a failure the processor reloads its state from the warehouse and goes on
        one chunk at a time; after :data:`ONE_AT_A_TIME_FAILURES` (three) failures in a
        row at the same position, records are taken one at a time, and after
        :data:`SET_ASIDE_FAILURES` (five) a record that still cannot be written is set
        aside (its offset goes to ``dead_letters``, its events are counted as dropped with
        reason ``unprocessable``) so that one bad record cannot stop the pipeline. The
        shared state out of reach (any of its stores: :func:`aap.store.meta.unavailable`)
        is no failure of the records: not counted.
        """
        records: list[Record] = []
        if self._stale:  # the last load failed: the state in memory is not the stored one
            self._load()
        if self.wh.epoch != self._epoch:  # unpublished rows were dropped: read them again
            self._abandon()
            self._load()
            return 0
        self._withdraw_when_due()
        self._refresh_sources()
        try:
            if not self._ahead and not self._read_next():
                self.full = False
                self._finish_write()
                return 0
            records = self._ahead.popleft()
            prepared = self.preparer.result()
            self.full = self._full(records)
            if not self.failures and (self.pressed or self.full):
                self._read_ahead(records)
            self._start_write(self._build(records, prepared))
        except (_Rebalanced, StaleChunk):  # nothing read is written: again from the warehouse
            self._abandon()
            self._generation = getattr(self.log, "generation", 0)
            self._load()
            return 0
        except Exception as exc:
            self._abandon()
            # the shared state out of reach (aap.store.meta.unavailable), whichever store
            if not unavailable(exc):  # the chunk used, is not the records' fault: an
                self.failures += 1    # outage of any length sets none aside
            self._load()
            if self.failures >= SET_ASIDE_FAILURES and len(records) == 1:
                self._set_aside(records[0])
                return 1
            raise
        return len(records)

    def _withdraw_when_due(self) -> None:
        if self.consent is not None and time.monotonic() >= self._withdrawals_due:
            try:
                self._apply_withdrawals()
            except Exception as exc:  # events go on; tried again in a second
                log_failure(logger, "applying consent withdrawals to stored events failed",
                            exc, self.wh.tiers)
                self._withdrawals_due = time.monotonic() + WITHDRAWAL_RETRY_S

    def _read_next(self) -> bool:
        """Reads the chunk at :attr:`_next` and submits it for preparation; False when the
        log holds nothing new."""
        records = self._read(self._next)
        if not records:
            return False
        self._read_to = advance(self._next, records)
        self.preparer.submit([r.payload for r in records])
        self._ahead.append(records)
        return True

    def _read_ahead(self, records: list[Record]) -> None:
        """Submits the chunks after ``records`` for preparation, while they are full and
        the preparer has room.

        Behind (a full chunk, or chunks that keep the processor busy, see :meth:`run`):
        the next chunks are prepared while this one goes on. Caught up with time to spare:
        nothing is read ahead, so that the next chunk is read, prepared and written as
        soon as it is due — a chunk read ahead now would wait a whole cycle before its
        turn."""
        while len(self._ahead) < self.preparer.capacity:
            if self._ahead and not self._full(self._ahead[-1]):
                break
            ahead = self._read(self._read_to)
            if not ahead:
                break
            self._read_to = advance(self._read_to, ahead)
            self.preparer.submit([r.payload for r in ahead])
            self._ahead.append(ahead)

    def _start_write(self, built: _Built) -> None:
        """Writes the chunk in the background once the write before it is done (at once,
        after a failure)."""
        self._finish_write()
        self._pending = self._writer.submit(self._write, built)
        self._next.update(_as_dict(built.chunk.position))
        if self.failures:
            self._finish_write()

    def _set_aside(self, record: Record) -> None:
        """A record that cannot be written: its offset goes to ``dead_letters``, its events
        are dropped as ``unprocessable``, and the processor goes on after it."""
        logger.error("log record %d cannot be processed; set aside", record.offset)
        p = record.partition
        self.wh.dead_letter(record.offset, record.count, self.positions.get(p, 0), p)
        DROPPED.labels("unprocessable").inc(record.count)
        quarantine.report("processor", "unprocessable", record.count,
                          f"log record {record.offset} (see dead_letters)")
        self.dropped["unprocessable"] += record.count
        self.positions[p] = record.offset
        self._next = dict(self.positions)
        self._read_to = dict(self._next)
        self.failures = 0

    def _apply_withdrawals(self) -> None:
        """Take withdrawn purposes off the stored events of the persons concerned (events
        left with none are erased); the ledger position done is kept in the warehouse, so
        a crash in between only means doing it again (one position per ledger:
        :attr:`aap.privacy.consent.ConsentLedger.id`)."""
        assert self.consent is not None
        ledger = self.consent.ledger
        position = f"{CONSENT_APPLIED}:{ledger.id}" if ledger.id else CONSENT_APPLIED
        done = self.wh.get_state(position)
        rows = ledger.since(done)
        if not rows:
            return
        withdrawn, unlinked, until = _withdrawals(rows)
        if withdrawn:
            self._refresh_sources(force=True)  # a source just put in a group is in it
        for (scope, purpose), subjects in sorted(withdrawn.items()):
            full = sorted(subjects - unlinked)
            persons: set[int] = person_closure(self.wh, full)[0] if full else set()
            for subject in sorted(subjects & unlinked):
                mine, _ = person_closure(self.wh, [subject])
                # an anonymousId's public statement reaches no identified person's history
                if not identified(self.wh, mine):
                    persons |= mine
            if persons:
                # the events of the sources the statement was given for, no other's
                sources = sorted(s for s, sc in self.scopes.items() if sc == scope
                                 ) if scope.startswith("controller:") else [scope]
                got = removal.strip_purpose(self.wh, persons, purpose, sources,
                                             until[scope, purpose] + 1)
                erased = got["hot_erased"] + got["warm_rows"] + got["cold_rows"]
                logger.info("consent withdrawn for %s: %d persons, %s", purpose, len(persons), got)
                if erased:
                    WITHDRAWN.labels(purpose).inc(erased)
        self.wh.set_state(position, rows[-1][0])

    def _read(self, after: dict[int, int]) -> list[Record]:
        if self.failures >= ONE_AT_A_TIME_FAILURES:
            records = self.log.read(after, 1)
        else:
            records = self.log.read(after, self.chunk_records, self.chunk_events,
                                    self.chunk_bytes)
        if getattr(self.log, "generation", 0) != self._generation:
            raise _Rebalanced
        return records

    def _revoked(self) -> None:
        """Partitions are being taken from this processor: the write in flight commits
        first (the next owner starts from the positions it stores); nothing read after it
        is written (see :class:`_Rebalanced`). With :attr:`Warehouse.handover` the hot rows
        are published too (:attr:`publish_now`), so that the next owner starts where this
        one stopped."""
        try:
            self._finish_write()
        except Exception as exc:
            log_failure(logger, "the last chunk before a rebalance failed to write", exc,
                        self.wh.tiers)
        if self.publish_now is not None and self.wh.handover:
            try:  # the next owner starts where this one stopped
                self.publish_now()
            except Exception as exc:
                log_failure(logger, "publishing before a rebalance failed", exc, self.wh.tiers)

    def _full(self, records: list[Record]) -> bool:
        return (len(records) >= self.chunk_records
                or sum(r.count for r in records) >= self.chunk_events
                or sum(len(r.payload) for r in records) >= self.chunk_bytes)

    def close(self) -> None:
        """Wait for the write in flight; stop the writer thread and the preparer."""
        try:
            self._finish_write()
        finally:
            self._writer.shutdown(wait=True)
            self.preparer.reset()
            self.preparer.close()

    def _refresh_sources(self, force: bool = False) -> None:
        if (self._historical is None and self._scopes is None) or (
                not force and time.monotonic() < self._historical_due):
            return
        self._historical_due = time.monotonic() + SOURCES_REFRESH_S
        if self._scopes is not None:
            try:
                self.scopes = self.state.scopes = self._scopes()
            except Exception as exc:  # the registry is busy: they stay until the next read
                log_failure(logger, "reading the sources' consent scopes failed", exc)
        if self._historical is None:
            return
        try:
            now = self._historical()
        except Exception as exc:  # the registry is busy: they stay until the next read
            log_failure(logger, "reading the sources' historical flags failed", exc)
            return
        if now != self.preparer.cfg.historical_sources:
            self.preparer.cfg = replace(self.preparer.cfg, historical_sources=now)

    def _build(self, records: list[Record], prepared: Prepared) -> _Built:
        if self.forgotten is not None:
            gone = self.forgotten()
            for key in gone:
                self.state.identities.ids.pop(key, None)
                self.state.sessions.pop(key, None)  # the warehouse deleted its row too
                self.state.partitions.pop(key, None)
            if gone and self.shared is not None:
                self.shared.forget(gone)
        # erasures other processors recorded: their ids are suppressed from this chunk
        # on, and the chunk notes how far it read (aap.store.erasures)
        seen = self.wh.erasures.refresh() if self.wh.erasures is not None else None
        # rectifications other processors recorded: applied before the chunk's traits
        # (aap.store.rectifications)
        fixes = self.wh.rectifications
        fixed = fixes.refresh() if fixes is not None else None
        batch = Batch(prepared.table, partition=_partitions(records, prepared.table))
        for _, step in self.steps:
            if not len(batch):
                break
            step(batch, self.state)
        chunk = self._chunk(batch, advance({}, records), prepared.shop,
                            prepared.table.num_rows)
        chunk.erasures_seen = seen
        chunk.rectifications_seen = fixed
        return _Built(chunk, len(batch), batch.dropped, prepared.clamped)

    def _write(self, built: _Built) -> _Built:
        self.wh.write(built.chunk)
        return built

    def _finish_write(self) -> None:
        """Wait for the write in flight; count what it committed (raises if it failed)."""
        fut, self._pending = self._pending, None
        if fut is None:
            return
        built = fut.result()
        self.positions.update(_as_dict(built.chunk.position))
        self.failures = 0
        self.last_write_at = time.time()
        try:  # for lag metrics; the truth is in the warehouse
            self.log.commit(GROUP, _as_dict(built.chunk.position))
        except Exception as exc:  # e.g. Kafka in the middle of a rebalance
            logger.warning("committing the log position for metrics failed: %s", exc)
        PROCESSED.inc(built.rows)
        for reason, n in built.dropped.items():
            DROPPED.labels(reason).inc(n)
        if built.clamped:
            CLAMPED.inc(built.clamped)
        self.dropped.update(built.dropped)
        if self.on_written is not None:
            try:
                self.on_written(built.chunk.events)
            except Exception:  # a viewer of live events never stops the processing
                logger.exception("live events: a chunk could not be passed on")

    def _abandon(self) -> None:
        """Forget the write in flight (waiting for it) and the chunk being prepared."""
        fut, self._pending = self._pending, None
        if fut is not None:
            with contextlib.suppress(Exception):
                fut.result()
        self.preparer.reset()
        self._ahead.clear()

    def _chunk(self, b: Batch, position: dict[int, int], rows: shop.Rows, size: int) -> Chunk:
        st = self.state
        changes = st.identities.take_changes() if b.identity is None else b.identity
        t = b.table
        person = pa.array(b.person_id, pa.int64())
        if len(b):
            cols = {**{n: t.column(n) for n in t.column_names}, "person_id": person,
                    "session_id": pa.array(b.session_id, pa.string())}
            events = pa.table([cols[n] for n, _, _ in EVENT_COLUMNS], schema=EVENT_ARROW_SCHEMA)
        else:
            events = EVENT_ARROW_SCHEMA.empty_table()
        persons = _persons(b, person, changes.identified)
        orders, items, products = shop.attach(
            rows, b.table.column("row").to_numpy(), size, b.person_id, b.session_id,
            t.column("timestamp"))
        return Chunk(
            events=events, position=position, next_person=st.identities.next_person,
            streams=_streams(b, st.sessions, st.partitions), streams_pruned=b.pruned,
            persons=persons,
            new_ids=changes.new_ids, overrides=changes.overrides, orders=orders,
            order_items=items, products=products, mirror=self.shared is not None,
            epoch=self._epoch if self.wh.handover else None,
        )

    def run(self, stop: threading.Event, idle_sleep: float = 0.05, linger: float = 0.2) -> None:
        """Process until ``stop``. A chunk that is not full (see ``chunk_records``,
        ``chunk_events`` and ``chunk_bytes``) means the processor has caught up: it then lets ``linger``
        seconds pass from that chunk's start before reading again, so that under a steady
        load chunks are large enough for their fixed costs (a DuckDB commit, the consent
        and key lookups) to be small per event, at the price of at most ``linger`` of
        freshness."""
        try:
            while not stop.is_set():
                started = self.turned_at = time.monotonic()
                try:
                    n = self.run_once()
                except Exception as exc:
                    log_failure(logger, "processing a chunk failed; retrying", exc, self.wh.tiers)
                    stop.wait(1.0)
                    continue
                spare = linger - (time.monotonic() - started)
                # A chunk that took most of the linger to process means the load is close
                # to what the processor can do in step: read ahead again (see run_once).
                self.pressed = self.full or spare < linger * PRESSED_SPARE
                if n == 0:
                    stop.wait(idle_sleep)
                elif not self.full:
                    stop.wait(max(0.0, spare))
        finally:
            self.close()


def _as_dict(position: int | Mapping[int, int]) -> dict[int, int]:
    return {0: position} if isinstance(position, int) else dict(position)



def _partitions(records: list[Record], table: pa.Table) -> list[int]:
    """Each prepared event's log partition (empty when the chunk has one partition, 0: the
    embedded log's case)."""
    parts = {r.partition for r in records}
    if parts <= {0}:
        return []
    if len(parts) == 1:
        return [records[0].partition] * table.num_rows
    per_event = np.repeat(np.array([r.partition for r in records], np.int64),
                          [r.count for r in records])
    rows = table.column("row").to_numpy()
    return per_event[np.minimum(rows, len(per_event) - 1)].tolist()


_STREAMS = pa.schema([("stream_key", pa.int64()), ("last_ts", pa.timestamp("us")),
                      ("session_id", pa.string()), ("seen_ms", pa.int64()),
                      ("log_partition", pa.int32())])


def _streams(b: Batch, state: dict[int, Stream], partitions: dict[int, int]) -> pa.Table:
    """The rows of ``session_streams`` this chunk changed: its streams, as they are now
    (those it pruned excepted)."""
    keys = [k for k in set(b.streams) if k in state]
    rows = [state[k] for k in keys]
    return pa.table([pa.array(keys, pa.int64()),
                     pa.array([r[0] for r in rows], pa.int64()).cast(pa.timestamp("us")),
                     pa.array([r[1] for r in rows], pa.string()),
                     pa.array([r[2] for r in rows], pa.int64()),
                     pa.array([partitions.get(k, 0) for k in keys] if partitions
                              else [0] * len(keys), pa.int32())], schema=_STREAMS)


def _withdrawals(rows: list[tuple[int, Statement]]) -> tuple[
        dict[tuple[str, str], set[int]], set[int], dict[tuple[str, str], int]]:
    """Of the ledger's new statements: the subjects who withdrew each (scope, purpose), the
    subjects of unlinked statements (an anonymousId's through a public key: they reach no
    identified person's history), and the time of the last withdrawal of each."""
    withdrawn: dict[tuple[str, str], set[int]] = {}
    unlinked: set[int] = set()
    until: dict[tuple[str, str], int] = {}
    for _, st in rows:
        if st.history == consent_history.NONE:
            continue  # made with a public key about a userId: collection stopped only
        if st.history == consent_history.UNLINKED:
            unlinked.add(st.subject)
        for purpose, granted in st.purposes.items():
            if not granted:
                withdrawn.setdefault((st.where, purpose), set()).add(st.subject)
                until[st.where, purpose] = max(until.get((st.where, purpose), 0), st.at_ms)
    return withdrawn, unlinked, until


def _persons(b: Batch, person: pa.Array, identified: set[int]) -> pa.Table:
    """The chunk's persons: first and last seen, identified, traits of identify events
    (merged in log order), as columns (one group-by; no Python object per person)."""
    if len(b):
        seen = pa.table({"p": person, "t": b.table.column("timestamp")}).group_by("p").aggregate(
            [("t", "min"), ("t", "max")])
        pids, first, last = seen.column("p"), seen.column("t_min"), seen.column("t_max")
    else:
        pids = first = last = pa.chunked_array([], pa.int64())
    extra = sorted(identified.difference(pids.to_pylist())) if identified else []
    if extra:  # identified now, without an event of theirs in this chunk
        pids = pa.chunked_array([*pids.chunks, pa.array(extra, pa.int64())], pa.int64())
        nulls = pa.nulls(len(extra), pa.timestamp("us"))
        first = pa.chunked_array([*first.chunks, nulls], pa.timestamp("us"))
        last = pa.chunked_array([*last.chunks, nulls], pa.timestamp("us"))
    merged: dict[int, dict[str, Any]] = {}
    if len(b):
        traits = b.table.column("traits")
        if traits.null_count < len(traits):
            idx = pc.indices_nonzero(pc.is_valid(traits))
            for i, doc in zip(idx.to_pylist(), traits.take(idx).to_pylist(), strict=True):
                p = b.person_id[i]
                merged[p] = {**merged.get(p, {}), **json.loads(doc)}
    ids = pids.combine_chunks() if isinstance(pids, pa.ChunkedArray) else pids
    trait_col = (pa.array([json.dumps(merged[p]) if p in merged else None
                           for p in ids.to_pylist()], pa.string()) if merged
                 else pa.nulls(len(ids), pa.string()))
    return pa.table({
        "person_id": ids,
        "first_seen": first.combine_chunks().cast(pa.timestamp("us")) if len(ids) else
        pa.array([], pa.timestamp("us")),
        "last_seen": last.combine_chunks().cast(pa.timestamp("us")) if len(ids) else
        pa.array([], pa.timestamp("us")),
        "identified": pc.is_in(ids, value_set=pa.array(sorted(identified), pa.int64())),
        "traits": trait_col,
    })
