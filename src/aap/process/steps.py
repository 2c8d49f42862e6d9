"""The stateful half of the processor: steps that carry state from one event to the
next (what was stored before, who is who, which session goes on), run in log order on
the table :mod:`aap.process.prepare` made of a chunk. Each takes a :class:`Batch` and
the processor's state; a step that drops events says why (:meth:`Batch.drop`), and
every reason is counted in ``/metrics``.

Every step is deterministic given the state and the log, so a processor that crashes
and re-reads the log from its last committed position produces the same rows.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from aap.log.keys import stream_keys
from aap.privacy.consent import ConsentState
from aap.privacy.ids import IdHasher
from aap.process.identity import Identities, IdentityChanges

if TYPE_CHECKING:
    from aap.store.identities import SharedIdentities


@dataclass(slots=True)
class Batch:
    """One chunk's events, in log order: the prepared table and what the steps add."""

    table: pa.Table
    dropped: Counter[str] = field(default_factory=Counter)
    person_id: list[int] = field(default_factory=list)
    session_id: list[str] = field(default_factory=list)
    partition: list[int] = field(default_factory=list)
    """Each event's log partition (empty: all 0, as on the embedded log)."""
    streams: list[int | None] = field(default_factory=list)
    """Each event's device stream (:func:`aap.log.keys.stream_keys`), set by :func:`sessions`."""
    pruned: list[int] = field(default_factory=list)
    """Streams :func:`sessions` forgot in this chunk (see :func:`prune_streams`)."""
    ids: tuple[list[int | None], list[int | None], list[int | None]] | None = None
    """Keyed hashes of userId, anonymousId, previousId per event (see :func:`id_keys`)."""
    identity: IdentityChanges | None = None
    """With shared identities (:func:`shared_identity`): what the warehouse records of
    the chunk's ids and merges (else the processor takes :meth:`Identities.take_changes`)."""

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> list[Any]:
        return self.table.column(name).to_pylist()

    def drop(self, mask: np.ndarray, reason: str) -> None:
        """Drop the events where ``mask`` is true, counted under ``reason``."""
        n = int(mask.sum())
        if not n:
            return
        self.dropped[reason] += n
        self.table = self.table.filter(pa.array(~mask))
        keep = np.flatnonzero(~mask).tolist()
        if self.ids is not None:
            u, a, p = self.ids
            self.ids = ([u[i] for i in keep], [a[i] for i in keep], [p[i] for i in keep])
        for name in ("person_id", "session_id", "partition", "streams"):
            vals = getattr(self, name)
            if vals:
                setattr(self, name, [vals[i] for i in keep])


class DedupIndex:
    """Keys of every stored event, as a few sorted arrays of doubling sizes (merged like
    the levels of an LSM tree), so that looking up a chunk's keys and adding them is a
    handful of vectorised operations."""

    def __init__(self, keys: np.ndarray | None = None) -> None:
        self.levels: list[np.ndarray] = []
        if keys is not None and len(keys):
            self.levels.append(np.unique(keys.astype(np.uint64)))

    def __len__(self) -> int:
        return sum(len(a) for a in self.levels)

    def __contains__(self, key: int) -> bool:
        return bool(self.contains(np.array([key], np.uint64))[0])

    def contains(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), bool)
        for level in self.levels:
            i = np.searchsorted(level, keys)
            i[i == len(level)] = 0
            found |= level[i] == keys if len(level) else False
        return found

    def add(self, keys: np.ndarray) -> None:
        """Add keys that are not in the index yet (and are unique among themselves)."""
        new = np.sort(keys.astype(np.uint64))
        while self.levels and len(self.levels[-1]) <= 2 * len(new):
            new = np.concatenate((self.levels.pop(), new))
            new.sort(kind="stable")
        self.levels.append(new)


@dataclass
class State:
    identities: Identities
    hasher: IdHasher
    dedup: DedupIndex
    sessions: dict[int, Stream]
    """Open device streams: stream key → :data:`Stream`."""
    inactivity: timedelta = timedelta(minutes=30)
    late: timedelta = timedelta(minutes=60)
    """How much later than its stream's previous event an event may be received and still
    go on with its session (see :func:`sessions`)."""
    partitions: dict[int, int] = field(default_factory=dict)
    """The log partition of each open stream not in partition 0."""
    frontier: dict[int, int] = field(default_factory=dict)
    """Per log partition: the latest time of receipt (ms) of its events seen so far."""
    prune_at: int = 0
    """When the latest frontier passes this (ms), :func:`prune_streams` runs again."""
    consent: ConsentState | None = None
    """The consent ledger as the processor last read it (``None``: no ledger)."""
    destroyed: Callable[[], set[int]] | None = None
    """The keyed hashes of erased identifiers, as of now (``None``: no keystore)."""
    scopes: dict[str, str] = field(default_factory=dict)
    """Source id → its consent scope (its controller group, or itself; see
    :attr:`aap.sources.Source.scope`); a source not listed is its own scope."""

    def scopes_of(self, source: str) -> tuple[str, ...]:
        """The scopes whose statements govern the events of ``source``."""
        scope = self.scopes.get(source, source)
        return (source, scope) if scope != source else (source,)


Step = Callable[[Batch, State], None]


def dedup(b: Batch, st: State) -> None:
    """Drop copies of events already stored, and later copies within the batch."""
    keys = b.table.column("key").to_numpy()
    seen = st.dedup.contains(keys)
    _, first = np.unique(keys, return_index=True)
    again = np.ones(len(keys), bool)
    again[first] = False
    b.drop(seen | again, "duplicate")
    st.dedup.add(b.table.column("key").to_numpy())


def consent(b: Batch, st: State) -> None:
    """Take off purposes the person withdrew (or objected to) after the event was
    received: a withdrawal is effective also for events already in the log. Drop events
    left with none. Only withdrawals in the scope of the event's source count, and only
    those that may change history (see :mod:`aap.privacy.consent`)."""
    if st.consent is None:
        return
    st.consent.refresh(force=True)
    withdrawn = st.consent.withdrawn
    if not withdrawn:
        return
    left: list[list[str]] | None = None
    drop = np.zeros(len(b), bool)
    users, anons, _ = id_keys(b, st)
    rows = zip(b.column("purposes"), users, anons, b.column("received_ms"), b.column("source"),
               strict=True)
    for i, (purposes, user, anon, at, source) in enumerate(rows):
        ids = [x for x in (user, anon) if x is not None]
        scopes = st.scopes_of(source)
        if not purposes or not any((sc, k) in withdrawn for k in ids for sc in scopes):
            continue
        gone = [p for p in purposes
                if (s := st.consent.of(scopes, ids, p, history=True)) is not None and not s[0]
                and s[1] > at]
        if not gone:
            continue
        if left is None:
            left = b.column("purposes")
        left[i] = [p for p in purposes if p not in gone]
        drop[i] = not left[i]
    if left is not None:
        b.table = b.table.set_column(b.table.schema.get_field_index("purposes"), "purposes",
                                     pa.array(left, pa.list_(pa.string())))
        b.drop(drop, "consent_withdrawn")


def id_keys(b: Batch, st: State) -> tuple[list[int | None], list[int | None], list[int | None]]:
    """Keyed hashes of each event's userId, anonymousId and previousId: as the collector
    sealed them, or (events written unsealed) hashed here."""
    if b.ids is not None:
        return b.ids
    keys = [b.column(k + "_key") for k in ("user", "anonymous", "previous")]
    raw = b.table.column("raw_ids")
    if raw.null_count < len(raw):
        h = st.hasher.key
        for i, ids in enumerate(raw.to_pylist()):
            if ids:
                for col, x in zip(keys, ids, strict=True):
                    if x:
                        col[i] = h(x)
    b.ids = (keys[0], keys[1], keys[2])
    return b.ids


def erased(b: Batch, st: State) -> None:
    """Drop events of identifiers whose person was erased (their keys are destroyed)."""
    if st.destroyed is None:
        return
    gone = st.destroyed()
    if not gone:
        return
    users, anons, previous = id_keys(b, st)
    mask = np.fromiter((u in gone or a in gone or p in gone
                        for u, a, p in zip(users, anons, previous, strict=True)), bool, len(b))
    b.drop(mask, "erased_subject")


def identity(b: Batch, st: State) -> None:
    """Each event's person (see :mod:`aap.process.identity`)."""
    users, anons, previous_ids = id_keys(b, st)
    b.person_id = assign_persons(b.column("type"), users, anons, previous_ids, st.identities)


def shared_identity(store: SharedIdentities) -> Step:
    """The identity step against identities shared by several processors
    (:mod:`aap.store.identities`): the same rules, run on the working set of the chunk's
    keys in one transaction of the shared store. What the warehouse needs is left in
    :attr:`Batch.identity`."""
    def identity(b: Batch, st: State) -> None:
        users, anons, previous_ids = id_keys(b, st)
        types = b.column("type")
        keys = {k for col in (users, anons, previous_ids) for k in col if k is not None}
        applied = store.apply(keys, lambda ids: assign_persons(
            types, users, anons, previous_ids, ids))
        b.person_id = applied.result
        b.identity = applied.mirror
    return identity


def assign_persons(types: list[str], users: list[int | None], anons: list[int | None],
                   previous_ids: list[int | None], ids: Identities) -> list[int]:
    """Each event's person, in log order, by the rules of ``ids``. Changes nothing but
    ``ids``."""
    known = ids.ids
    merged = ids.merged
    identified = ids.identified
    out = []
    for typ, ukey, anon, previous in zip(types, users, anons, previous_ids, strict=True):
        if typ == "alias" and previous is not None and ukey is not None:
            person = ids.alias(previous, ukey)
        elif ukey is None:
            p = known.get(anon)  # type: ignore[arg-type]
            out.append(merged.get(p, p) if p is not None else ids.observe(None, anon))
            continue
        else:
            if anon is None:
                p = known.get(ukey)
                if p is not None:
                    p = merged.get(p, p)
                    if p in identified:
                        out.append(p)
                        continue
                out.append(ids.observe(ukey, None))
                continue
            person = ids.observe(ukey, anon)
        out.append(person)
    return out


Stream = tuple[int, str, int]
"""An open device stream: (time of its latest event in µs, that event's session id, the
time of receipt of its last event in log order, in ms)."""

PRUNE_EVERY_MS = 10 * 60_000
"""Forgotten streams are looked for when a partition's frontier has moved this far."""
PRUNE_SLACK_MS = 10 * 60_000
"""How far out of order times of receipt may be in one partition of the log (collectors
set them on arrival and append within seconds): a stream is forgotten only this long
after no later event could go on with its session any more."""


def sessions(b: Batch, st: State) -> None:
    """Sessions per device stream (:func:`aap.log.keys.stream_keys`: the keyed anonymousId,
    else the keyed userId, which is also the log's message key): the SDK's session id
    when there is one; else the stream's session goes on when the event is within
    ``inactivity`` of the stream's latest event (by time; an earlier event that arrives
    late counts too, without becoming the latest) and was received at most
    ``inactivity + late`` after the stream's previous event (in log order); else a new
    session. A stream's sessions depend on its own events only, not on other streams
    (another device of the same person, another partition) nor on the order they are
    read in."""
    state = st.sessions
    gap = st.inactivity // timedelta(microseconds=1)
    idle = gap // 1000 + st.late // timedelta(milliseconds=1)
    users, anons, _ = id_keys(b, st)
    streams = b.streams = stream_keys(users, anons)
    times = b.table.column("timestamp").cast(pa.int64()).to_pylist()
    received = b.column("received_ms")
    out = []
    for stream, t, r, sdk, message_id in zip(streams, times, received, b.column("sdk_session"),
                                             b.column("message_id"), strict=True):
        prev = state.get(stream)  # type: ignore[arg-type]
        if sdk is not None:
            sid = "s:" + sdk
        elif prev is not None and abs(t - prev[0]) <= gap and r - prev[2] <= idle:
            sid = prev[1]
        else:
            sid = hashlib.md5(f"{stream}\x00{message_id}".encode(
                "utf-8", "surrogatepass")).hexdigest()[:20]
        out.append(sid)
        if prev is None or t >= prev[0]:
            state[stream] = (t, sid, r)  # type: ignore[index]
        else:  # a late event: the latest stays, its receipt is the stream's latest
            state[stream] = (prev[0], prev[1], r)  # type: ignore[index]
    b.session_id = out
    if b.partition:
        st.partitions.update(zip(streams, b.partition, strict=True))  # type: ignore[arg-type]
    prune_streams(b, st, received)


def prune_streams(b: Batch, st: State, received: list[int]) -> None:
    """Forget the streams no later event can go on with: received more than ``inactivity +
    late`` (and :data:`PRUNE_SLACK_MS`) before their partition's frontier. Each
    partition has its own frontier, so a partition read behind the others (a backlog)
    keeps its streams. Runs when a frontier has moved :data:`PRUNE_EVERY_MS` since the last
    time; the streams forgotten are left in :attr:`Batch.pruned` (the warehouse deletes
    them with the chunk). Forgetting changes no session: it only keeps the state small."""
    frontier = st.frontier
    if b.partition:
        for p, r in zip(b.partition, received, strict=True):
            if r > frontier.get(p, -1 << 62):
                frontier[p] = r
    elif received:
        top = max(received)
        if top > frontier.get(0, -1 << 62):
            frontier[0] = top
    latest = max(frontier.values(), default=0)
    if latest < st.prune_at:
        return
    st.prune_at = latest + PRUNE_EVERY_MS
    keep = (st.inactivity + st.late) // timedelta(milliseconds=1) + PRUNE_SLACK_MS
    cutoff = {p: f - keep for p, f in frontier.items()}
    part = st.partitions
    gone = [k for k, (_, _, seen) in st.sessions.items()
            if seen < cutoff.get(part.get(k, 0), seen)]
    for k in gone:
        del st.sessions[k]
        part.pop(k, None)
    b.pruned = gone


STEPS: tuple[tuple[str, Step], ...] = (
    ("dedup", dedup),
    ("erased", erased),
    ("consent", consent),
    ("identity", identity),
    ("sessions", sessions),
)


def steps_for(identities: SharedIdentities | None) -> tuple[tuple[str, Step], ...]:
    """:data:`STEPS`, with :func:`shared_identity` for identities shared with other
    processors."""
    if identities is None:
        return STEPS
    return tuple((name, shared_identity(identities) if name == "identity" else step)
                 for name, step in STEPS)
