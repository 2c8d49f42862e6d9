"""Message keys of a partitioned log: the stream whose order a record keeps.

The key is the sender's keyed ``anonymousId``, else the keyed ``userId``. A browser or an
app sends all its events under one anonymousId, before and after the person logs in, in
the order they happened; server libraries send a userId alone. So one device's stream
lands in one partition, in its order, which is what the processor's sessions rely on:
they are cut per stream (:func:`stream_keys`), so a person's two devices, in two
partitions or read in any order, get the sessions each stream gets alone. Keying by the userId first
split a visitor's events before and after the login across two partitions: the processor
then saw the later ones first and cut more sessions than the embedded run
(tests/e2e/test_cluster_equivalence.py). The two halves of such an identity meet in the
identity store, like the events of one person's two devices.
"""

from __future__ import annotations

from aap.events import Event, encode_events
from aap.log.base import Append


def stream_keys(users: list[int | None], anons: list[int | None]) -> list[int | None]:
    """The device stream of each event, from its keyed userId and keyed anonymousId: the
    keyed anonymousId, else the keyed userId. The one definition of a stream: Kafka's
    message key (:func:`person_key`) and the processor's sessions
    (:func:`aap.process.steps.sessions`, a chunk's columns at once) both use it."""
    return [a if a is not None else u for u, a in zip(users, anons, strict=True)]


def person_key(ev: Event) -> bytes | None:
    """The message key of a sealed event: its stream (the rule of :func:`stream_keys`,
    for one event: the collector keys every event, and two one-item lists cost it 1.5 µs
    an event) as bytes."""
    k = ev.anonymous_key if ev.anonymous_key is not None else ev.user_key
    return None if k is None else str(k).encode()


def per_person(source: str, events: list[Event]) -> list[Append]:
    """One Append per stream of ``events``, each stream's events in their order, as JSON
    not compressed one by one: a keyed log's producer compresses its batches of records
    (Kafka's ``compression.type``, zstd), which holds many streams' records at once."""
    groups: dict[bytes | None, list[Event]] = {}
    for ev in events:
        groups.setdefault(person_key(ev), []).append(ev)
    return [Append(source, len(evs), encode_events(evs, compress=False), key)
            for key, evs in groups.items()]
