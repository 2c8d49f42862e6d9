"""Message keys of a partitioned log: the person whose events a record holds."""

from __future__ import annotations

from aap.events import Event, encode_events
from aap.log.base import Append


def person_key(ev: Event) -> bytes | None:
    """The person of a sealed event: their keyed userId, else keyed anonymousId."""
    k = ev.user_key if ev.user_key is not None else ev.anonymous_key
    return None if k is None else str(k).encode()


def per_person(source: str, events: list[Event]) -> list[Append]:
    """One Append per person of ``events``, each person's events in their order."""
    groups: dict[bytes | None, list[Event]] = {}
    for ev in events:
        groups.setdefault(person_key(ev), []).append(ev)
    return [Append(source, len(evs), encode_events(evs), key)
            for key, evs in groups.items()]
