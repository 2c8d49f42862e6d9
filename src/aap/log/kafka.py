"""The scaled-out log: one Kafka topic, through confluent-kafka (librdkafka).

``AAP_LOG_URL=kafka://host:port[,host:port…]/topic[?librdkafka.option=value&…]``.

Producer: idempotent (``enable.idempotence=true``, which implies ``acks=all`` and at most
5 requests in flight, so a retried send neither duplicates nor reorders), zstd
compression. :meth:`KafkaLog.append` returns only once every message of the call has its
delivery report without error; anything else (a broker down past
``message.timeout.ms``, a refused message) raises :class:`~aap.errors.ServiceUnavailable`,
so the collector answers 503 and the client sends the batch again. A failed call may
have stored some of its messages: the batch sent again then holds events already in the
log, which the processor's dedup step drops (same message id).

Partitions: each device stream (its key is the keyed ``anonymous_key``, else
``user_key``: :func:`aap.log.keys.stream_keys`) goes to one partition, so Kafka keeps one
stream's events in order. The partition is the one librdkafka's default partitioner
gives the stream's key (:func:`partition_of`), but the collector does not send a message
per stream: :meth:`KafkaLog.records` makes one message of a request's events per
partition (events with no stream go to one partition of the request's), as the embedded
log makes one record of a request. A message per stream cost the collector about twice
the CPU per event in produce calls and delivery reports, and the processor a record per
event or two (``bench cluster``). Until the topic's partitions are known (its first
append) the messages are one per stream, keyed, and librdkafka picks the same
partitions; an Append that comes with neither a key nor a partition is split here so.

Offsets: a record's offset is its Kafka offset + 1 and a position is Kafka's "next
offset" (so 0 is "nothing read" as in the SQLite log, and a committed Kafka offset *is*
a position). Consumers of one group share the partitions; :meth:`KafkaLog.read` seeks an
assigned partition when the caller's position differs from the consumer's, and on
assignment each partition starts from ``stored_positions()`` (the processor's are in the
warehouse, committed with the rows) or else from the group's committed offsets.
``on_revoke`` runs before partitions are taken away (the processor finishes its write
there), and ``generation`` counts assignments, so a caller knows when to reload.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import confluent_kafka as ck

from aap.errors import ServiceUnavailable
from aap.events import Event, decode_events, encode_events
from aap.log.base import Append, LogStats, Positions, Record, as_positions
from aap.log.keys import per_person, person_key
from aap.logurl import parse_url
from aap.store.meta import log_failure

logger = logging.getLogger(__name__)

SOURCE = "aap-source"
COUNT = "aap-count"
DELIVERY_TIMEOUT_MS = 30_000
"""``message.timeout.ms``: how long a message may wait for its broker before its append
fails (librdkafka's default, five minutes, would hold a request that long)."""
POLL_S = 0.1
"""How long :meth:`KafkaLog.read` waits for a first message when none has arrived (what
has arrived it takes at once: librdkafka's ``consume(n, timeout)`` waits until ``n``
messages are there or the timeout, so asking for a chunk's 10,000 with this timeout cost
every read of a partly full chunk the whole 0.1 s)."""
GROUP = "processor"
MAX_RECORD_BYTES = 512 * 1024
"""A message's payload at most: a request's events for one partition are split, in their
order, past it (librdkafka's and the brokers' default limit is 1 MB)."""
PARTITIONS_EVERY_S = 60.0
"""How often the topic's partition count is read again (after an append): partitions
added to the topic are used from then on, as librdkafka's partitioner would."""
STATS_TIMEOUT_S = 2.0
ASSIGN_RETRY_S = 120.0
"""How long a failing ``on_assign`` is tried again (the partitions are not read meanwhile);
then the consumer leaves the group at its next read and joins again, so the partitions
are assigned again (to it or another member) and the take-over is tried again then."""


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of a message with this key, as librdkafka's default partitioner
    (``consistent_random``) picks it: the key's CRC-32 modulo the partitions."""
    return zlib.crc32(key) % partitions


def _sized(source: str, events: list[Event], partition: int) -> list[Append]:
    """``events`` (of one partition) as messages of at most :data:`MAX_RECORD_BYTES`
    (one event's, if larger), in their order."""
    payload = encode_events(events, compress=False)
    if len(payload) <= MAX_RECORD_BYTES or len(events) == 1:
        return [Append(source, len(events), payload, partition=partition)]
    half = len(events) // 2
    return (_sized(source, events[:half], partition)
            + _sized(source, events[half:], partition))


def _split(b: Append) -> list[Append]:
    if b.key is not None or b.partition is not None or not b.count:
        return [b]
    parts = per_person(b.source, decode_events(b.payload))
    return parts if len(parts) > 1 else [Append(b.source, b.count, b.payload, parts[0].key)]


class KafkaLog:
    keyed = True
    """Its records are per partition (:meth:`records`), not per request."""

    def __init__(self, url: str, *, group: str = GROUP, client_id: str = "aap",
                 stored_positions: Callable[[], Positions] | None = None) -> None:
        self.url = parse_url(url)
        self.topic = self.url.topic
        self.group = group
        self.client_id = client_id
        self.stored_positions = stored_positions
        """Where this consumer's positions are kept (the warehouse); None: the group's
        committed offsets."""
        self.on_revoke: Callable[[], None] | None = None
        """Called before partitions are taken from this consumer."""
        self.on_assign: Callable[[list[int]], None] | None = None
        """Called with the partitions given to this consumer, before their start positions
        are read (the processor takes the shared positions there: :mod:`aap.store.handover`)."""
        self.generation = 0
        """Counts the assignments this consumer got (and lost)."""
        self._producer: ck.Producer | None = None
        self._consumer: ck.Consumer | None = None
        self._meta_consumer: ck.Consumer | None = None
        self._stats_down_until = 0.0
        self._stats: LogStats | None = None
        """The last stats read: what a slow read answers while appends go through."""
        self._appended_at = -1e9
        """When an append was last acknowledged (monotonic)."""
        self._lock = threading.Lock()
        self._partition_count = 0
        """The topic's partitions, once an append made sure it exists (0: not known)."""
        self._counted_at = -1e9
        self._assigned: set[int] = set()
        self._next: dict[int, int] = {}
        """Assigned partition → the Kafka offset the consumer fetches next."""
        self._buffer: deque[ck.Message] = deque()
        self._rejoin = False
        """An assignment was not taken (``on_assign`` kept failing): leave and join again."""
        self._to_seek: dict[int, int] = {}
        """Partitions whose seek failed (not fetching yet): tried again at each read, their
        messages skipped meanwhile."""

    # -- configuration --

    def _common(self) -> dict[str, Any]:
        """Every client's settings: the URL's options without a ``producer.`` or
        ``consumer.`` prefix go to all of them (security settings, for instance)."""
        return {"bootstrap.servers": self.url.servers, "client.id": self.client_id,
                **{k: v for k, v in self.url.options.items()
                   if not k.startswith(("producer.", "consumer."))}}

    def _prefixed(self, prefix: str) -> dict[str, str]:
        return {k[len(prefix):]: v for k, v in self.url.options.items() if k.startswith(prefix)}

    def _producer_conf(self) -> dict[str, Any]:
        return {"compression.type": "zstd", "linger.ms": 2,
                "message.timeout.ms": DELIVERY_TIMEOUT_MS, **self._common(),
                **self._prefixed("producer."), "enable.idempotence": True, "acks": "all"}

    def _delivery_timeout_s(self) -> float:
        return float(self._producer_conf()["message.timeout.ms"]) / 1000

    def _consumer_conf(self) -> dict[str, Any]:
        return {"auto.offset.reset": "earliest", "partition.assignment.strategy": "range",
                **self._common(),
                **self._prefixed("consumer."), "group.id": self.group,
                "enable.auto.commit": False, "enable.auto.offset.store": False}

    # -- producing --

    def producer(self) -> ck.Producer:
        if self._producer is None:
            self._producer = ck.Producer(self._producer_conf())
        return self._producer

    def records(self, source: str, events: list[Event]) -> list[Append]:
        """A request's events as messages: one per partition their streams go to
        (:func:`partition_of`), each partition's events in their order; one per stream,
        keyed, while the topic's partitions are not known yet."""
        n = self._partition_count
        if n <= 0:
            return per_person(source, events)
        spare = -1  # events with no stream: one partition, drawn once for the request
        groups: dict[int, list[Event]] = {}
        for ev in events:
            key = person_key(ev)
            if key is not None:
                p = partition_of(key, n)
            else:
                p = spare = spare if spare >= 0 else random.randrange(n)
            groups.setdefault(p, []).append(ev)
        return [a for p, evs in groups.items() for a in _sized(source, evs, p)]

    def append(self, batches: Sequence[Append]) -> list[int]:
        """Produce one message per Append (to its partition, or its key's; split per
        person when it has neither); returns once every one is acknowledged by the
        brokers (``acks=all``), the offset (+1) of each Append's last message. Raises
        :class:`ServiceUnavailable` otherwise."""
        if not batches:
            return []
        with self._lock:  # a delivery report must reach the call that waits for it
            return self._append(batches)

    def _append(self, batches: Sequence[Append]) -> list[int]:
        p = self.producer()
        offsets = [0] * len(batches)
        errors: list[ck.KafkaError] = []
        sent = 0

        def report(i: int) -> Callable[[ck.KafkaError | None, ck.Message], None]:
            def done(err: ck.KafkaError | None, msg: ck.Message) -> None:
                nonlocal sent
                sent -= 1
                if err is not None:
                    errors.append(err)
                else:
                    offsets[i] = max(offsets[i], (msg.offset() or 0) + 1)
            return done

        for i, batch in enumerate(batches):
            for part in _split(batch):
                headers: list[tuple[str, str | bytes | None]] = [
                    (SOURCE, part.source.encode()), (COUNT, str(part.count).encode())]
                while True:
                    try:
                        p.produce(self.topic, part.payload, part.key, headers=headers,
                                  on_delivery=report(i),
                                  partition=-1 if part.partition is None else part.partition)
                        break
                    except BufferError:  # the local queue is full: let it drain
                        p.poll(0.05)
                sent += 1
        p.flush(self._delivery_timeout_s() + 5)  # serves the delivery reports
        if errors or sent > 0:
            err = errors[0] if errors else "no delivery report"
            logger.error("Kafka append failed: %s (%d messages unreported)", err, sent)
            raise ServiceUnavailable("the log cannot take the batch", code="log_unavailable")
        self._appended_at = time.monotonic()
        if self._appended_at - self._counted_at > PARTITIONS_EVERY_S:
            self._count_partitions()
        return offsets

    def _count_partitions(self) -> None:
        """Read the topic's partition count (for :meth:`records`); kept as it was when
        the brokers do not say now."""
        self._counted_at = time.monotonic()
        try:
            parts = self._partitions(STATS_TIMEOUT_S)
        except ck.KafkaException as exc:
            logger.warning("the topic's partitions were not read (%s); read again after"
                           " the next append", exc)
            self._counted_at = -1e9
            return
        if parts:
            self._partition_count = len(parts)

    # -- consuming --

    def consumer(self) -> ck.Consumer:
        if self._consumer is None:
            c = ck.Consumer(self._consumer_conf())
            c.subscribe([self.topic], on_assign=self._assign, on_revoke=self._revoke,
                         on_lost=self._revoke)
            self._consumer = c
        return self._consumer

    def _assign(self, c: ck.Consumer, parts: list[ck.TopicPartition]) -> None:
        if self.on_assign is not None:
            deadline = time.monotonic() + ASSIGN_RETRY_S
            while True:  # reading before it is done could read a partition twice
                try:
                    self.on_assign(sorted(tp.partition for tp in parts))
                    break
                except Exception as exc:
                    log_failure(logger, "taking over the assigned partitions failed", exc)
                    if time.monotonic() > deadline:
                        # not assigned: a consumer that stayed in the group would leave
                        # them unread until some other member joined or left
                        logger.error("partitions %s not taken over for %.0f s: the consumer"
                                     " joins the group again",
                                     sorted(tp.partition for tp in parts), ASSIGN_RETRY_S)
                        self._rejoin = True
                        return
                    time.sleep(1.0)
        if self.stored_positions is not None:
            start = dict(self.stored_positions())
        else:
            start = {tp.partition: tp.offset for tp in c.committed(parts, timeout=30)
                     if tp.offset >= 0}
        for tp in parts:
            tp.offset = start.get(tp.partition, 0)
        c.assign(parts)
        self._assigned = {tp.partition for tp in parts}
        self._next = {tp.partition: tp.offset for tp in parts}
        self._buffer.clear()
        self._to_seek.clear()
        self.generation += 1

    def _revoke(self, c: ck.Consumer, parts: list[ck.TopicPartition]) -> None:
        if self.on_revoke is not None:
            try:
                self.on_revoke()
            except Exception as exc:
                log_failure(logger, "finishing the work of revoked partitions failed", exc)
        c.unassign()
        self._unassigned()

    def _leave(self) -> None:
        """Leave the group (the next :meth:`consumer` joins it again)."""
        c, self._consumer, self._rejoin = self._consumer, None, False
        if c is not None:
            c.close()
        self._unassigned()

    def _unassigned(self) -> None:
        """No partition is this consumer's now: what was fetched or due is forgotten."""
        self._assigned = set()
        self._next = {}
        self._buffer.clear()
        self._to_seek.clear()
        self.generation += 1

    @property
    def assigned(self) -> frozenset[int]:
        return frozenset(self._assigned)

    def read(self, after: int | Positions, limit: int = 1000, max_events: int | None = None,
             max_bytes: int | None = None) -> list[Record]:
        if self._rejoin:
            self._leave()
        c = self.consumer()
        pos = as_positions(after)
        for p in sorted(self._assigned):
            want = pos.get(p, 0)  # a partition not named: nothing read there yet
            if want != self._next.get(p) or p in self._to_seek:
                self._seek(c, p, want)
        gen = self.generation
        out: list[Record] = []
        events = size = 0
        wait = POLL_S
        while len(out) < limit:
            if not self._buffer:
                got = c.consume(min(limit - len(out), 10_000), 0)  # what has arrived
                if not got and wait:  # nothing yet: wait for a first message
                    first = c.poll(wait)
                    got = [first] if first is not None else []
                if self.generation != gen:  # a rebalance: the batch may be from before it
                    self._buffer.clear()
                    for p in sorted(self._assigned):
                        self._seek(c, p, self._next.get(p, 0))
                    return []
                self._buffer.extend(got)
                if not got:
                    break
                wait = 0
            msg = self._buffer.popleft()
            err = msg.error()
            if err is not None:
                if err.code() != ck.KafkaError._PARTITION_EOF:
                    logger.warning("Kafka consumer: %s", err)
                continue
            p, off = msg.partition() or 0, msg.offset() or 0
            if (p not in self._assigned or p in self._to_seek
                    or off < self._next.get(p, 0)):
                continue  # fetched before a seek or a rebalance
            self._next[p] = off + 1
            rec = _record(msg)
            out.append(rec)
            events += rec.count
            size += len(rec.payload)
            if ((max_events is not None and events >= max_events)
                    or (max_bytes is not None and size >= max_bytes)):
                break
        return out

    def scan(self, timeout_s: float = 30.0) -> Iterator[Record]:
        """Every record the topic holds now, partition by partition, through a consumer of
        its own that joins no group (the data subject's access request reads the log so):
        the processors' positions and assignments are not touched."""
        c = self._admin_consumer(f"{self.group}-scan")
        try:
            for p in self._partitions():
                tp = ck.TopicPartition(self.topic, p)
                low, high = c.get_watermark_offsets(tp, timeout=timeout_s)
                if high <= low:
                    continue
                c.assign([ck.TopicPartition(self.topic, p, low)])
                deadline = time.monotonic() + timeout_s
                nxt = low
                while nxt < high:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"reading partition {p} of the Kafka log timed out")
                    for msg in c.consume(1000, 0.5):
                        off = msg.offset()
                        if msg.error() is None and off is not None and nxt <= off < high:
                            nxt = off + 1
                            yield _record(msg)
                c.unassign()
        finally:
            c.close()

    def _seek(self, c: ck.Consumer, partition: int, offset: int) -> None:
        self._buffer = deque(m for m in self._buffer if m.partition() != partition)
        self._next[partition] = offset
        try:
            c.seek(ck.TopicPartition(self.topic, partition, offset))
        except ck.KafkaException as exc:  # not fetching yet: again at the next read
            logger.debug("seek of partition %d deferred: %s", partition, exc)
            self._to_seek[partition] = offset
        else:
            self._to_seek.pop(partition, None)

    def position(self, group: str) -> int:
        return sum(self.positions(group).values())

    def positions(self, group: str) -> dict[int, int]:
        parts = self._partitions()
        c = self._meta() if group == self.group else self._admin_consumer(group)
        try:
            tps = c.committed([ck.TopicPartition(self.topic, p) for p in parts], timeout=30)
        finally:
            if c is not self._meta_consumer:
                c.close()
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}

    def commit(self, group: str, offset: int | Positions) -> None:
        tps = [ck.TopicPartition(self.topic, p, o) for p, o in as_positions(offset).items()]
        if not tps:
            return
        # a member of the group commits as one; anyone else (an empty group) from outside
        member = group == self.group and self._consumer is not None and bool(self._assigned)
        c = self.consumer() if member else self._admin_consumer(group)
        try:
            c.commit(offsets=tps, asynchronous=False)
        finally:
            if c is not self._consumer:
                c.close()

    def _meta(self) -> ck.Consumer:
        """A consumer that never subscribes (so never joins the group): committed offsets
        and watermarks for :meth:`stats`, which the collectors call too."""
        if self._meta_consumer is None:
            self._meta_consumer = self._admin_consumer(self.group)
        return self._meta_consumer

    def _admin_consumer(self, group: str) -> ck.Consumer:
        return ck.Consumer({**self._common(), **self._prefixed("consumer."), "group.id": group,
                            "enable.auto.commit": False})

    def _partitions(self, timeout_s: float = 30) -> list[int]:
        md = self._meta().list_topics(self.topic, timeout=timeout_s)
        t = md.topics.get(self.topic)
        if t is None or t.error is not None:
            return []
        return sorted(t.partitions)

    # -- upkeep --

    def drop_older_than(self, cutoff_ms: int) -> int:
        """Nothing: on Kafka, retention is the topic's ``retention.ms`` (set it to at most
        ``AAP_LOG_RETENTION_HOURS``)."""
        return 0

    def stats(self) -> LogStats:
        """Counted in messages (a request's events for one partition each), not events:
        Kafka's offsets count messages. ``size_bytes`` is unknown here (0).

        The collectors ask for it every ``health_interval_ms`` in their request path: each
        call waits at most :data:`STATS_TIMEOUT_S`, and after a failure the next calls
        fail at once for as long (the brokers are unreachable: ingestion answers 503).
        A read that failed while this process's appends are acknowledged (one in the last
        ``2 * STATS_TIMEOUT_S``) answers the last stats read instead: the brokers are there,
        only slow to answer offsets (a busy machine: it refused a collector's requests
        with ``log_unavailable`` in CI while its appends went through)."""
        if time.monotonic() < self._stats_down_until:
            raise ServiceUnavailable("the Kafka log did not answer", code="log_unavailable")
        try:
            self._stats = self._read_stats()
        except ck.KafkaException:
            if (self._stats is not None
                    and time.monotonic() - self._appended_at < 2 * STATS_TIMEOUT_S):
                logger.warning("Kafka offsets not read in %.0f s while appends go through:"
                               " the last ones read stand", STATS_TIMEOUT_S)
                return self._stats
            self._stats_down_until = time.monotonic() + STATS_TIMEOUT_S
            raise
        return self._stats

    def _read_stats(self) -> LogStats:
        c = self._meta()
        heads = {p: c.get_watermark_offsets(ck.TopicPartition(self.topic, p),
                                            timeout=STATS_TIMEOUT_S)[1]
                 for p in self._partitions(STATS_TIMEOUT_S)}
        tps = c.committed([ck.TopicPartition(self.topic, p) for p in heads],
                          timeout=STATS_TIMEOUT_S)
        done = {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
        lag = {self.group: sum(max(0, h - done.get(p, 0)) for p, h in heads.items())}
        total = sum(heads.values())
        return LogStats(total, total, 0, lag)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
        for c in (self._consumer, self._meta_consumer):
            if c is not None:
                c.close()
        self._consumer = self._meta_consumer = None


def _record(msg: ck.Message) -> Record:
    source = count = b""
    raw = msg.headers() or []
    for k, v in raw.items() if isinstance(raw, dict) else raw:
        if k == SOURCE:
            source = v if isinstance(v, bytes) else str(v or "").encode()
        elif k == COUNT:
            count = v if isinstance(v, bytes) else str(v or "").encode()
    value = msg.value()
    return Record((msg.offset() or 0) + 1, msg.timestamp()[1], source.decode(), int(count),
                  value if isinstance(value, bytes) else (value or "").encode(),
                  msg.partition() or 0)
