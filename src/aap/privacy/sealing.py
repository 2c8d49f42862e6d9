"""Sealing events before they are written: raw identifiers and personal traits leave
the event and are kept only encrypted under their subject's data key
(:mod:`aap.privacy.keystore`); the event keeps the keyed hashes, which is all the
pipeline needs (identity, consent, dedup never look at a raw id).

On a sealed event ``user_id``, ``anonymous_id`` and ``previous_id`` are ``None`` and
``user_key``, ``anonymous_key`` and ``previous_key`` hold their keyed hashes; each raw
id is kept once, sealed under its own key, in the keystore (so the log carries 8 bytes
per id, not a ciphertext per event).

Personal fields and addresses (:mod:`aap.privacy.scrub`: personal names at any depth of
traits, properties, context and integrations; email and IP addresses inside any string)
leave the plain event; ``sealed["fields"]`` holds the originals, a JSON list of
``[path, value]``, as ``nonce || AES-GCM ciphertext`` under the data key of the
userId, else of the anonymousId. An event with no raw id to seal under (an anonymous
CNIL-mode source) loses them. ``sealed["traits"]`` (personal traits by name, top level
only) is what events written before 2026-12-03 carry; :meth:`Sealer.unseal` reads both.
Events of a subject whose key was destroyed (an erased person) are not written at all.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from aap.events import Event
from aap.privacy.ids import IdHasher
from aap.privacy.keystore import KeyDestroyed, Keystore
from aap.privacy.scrub import put_back, take_personal_all

_ID_FIELDS = (("user_id", "user_key", "userId"), ("anonymous_id", "anonymous_key", "anonymousId"),
              ("previous_id", "previous_key", "previousId"))
_json = msgspec.json.Encoder()
MAX_REMEMBERED = 500_000
"""Subjects whose raw id was handed to the keystore, remembered by this process up to
this many (then forgotten all at once: handing one again is harmless)."""


def _drop_destroyed(events: list[Event], destroyed: set[int]) -> int:
    """Takes out the events of a subject whose key was destroyed; returns how many."""
    kept = [ev for ev in events
            if not any(getattr(ev, kf) in destroyed for _, kf, _ in _ID_FIELDS)]
    gone = len(events) - len(kept)
    events[:] = kept
    return gone


class Sealer:
    def __init__(self, data_dir: Path, hasher: IdHasher | None = None,
                 keystore: Keystore | None = None) -> None:
        self.hasher = hasher or IdHasher.for_data_dir(data_dir)
        self.keystore = keystore or Keystore(data_dir)
        self._remembered: set[int] = set()
        """Subjects whose raw id this process has already handed to the keystore."""

    def seal(self, events: list[Event], body: bytes | None = None) -> int:
        """Seal the events in place; take out (and return how many) those of a subject
        whose key was destroyed. ``body``: the request's JSON when the events were decoded
        straight from it (see :func:`aap.privacy.scrub.take_personal_all`)."""
        return self.seal_all([(events, body)])[0]

    def seal_all(self, batches: list[tuple[list[Event], bytes | None]]) -> list[int]:
        """:meth:`seal` of several requests' events at once (a collector's requests that
        waited for the shared state together): their new subjects' keys and raw ids are
        made in the keystore's two transactions, not in two per request."""
        if not any(events for events, _ in batches):
            return [0] * len(batches)
        destroyed = self.keystore.refresh_destroyed()
        forgotten = self.keystore.refresh_forgotten()
        if forgotten:  # expired (retention): remember their raw ids again if they return
            self._remembered -= forgotten
        firsts: dict[int, str] = {}
        gone: list[int] = []
        for events, _ in batches:
            for k, raw in self._hash_ids(events).items():
                firsts.setdefault(k, raw)
            gone.append(_drop_destroyed(events, destroyed) if destroyed else 0)
        self._remember({k: raw for k, raw in firsts.items() if k not in self._remembered
                        and k not in destroyed})
        for events, body in batches:
            if events:
                self._seal_personal(events, body)
        return gone

    def _hash_ids(self, events: list[Event]) -> dict[int, str]:
        """Sets each raw id's keyed hash (unless the consent gate did); returns the first
        raw id of each hash."""
        key = self.hasher.key
        firsts: dict[int, str] = {}
        for ev in events:
            for raw_field, key_field, _ in _ID_FIELDS:
                raw = getattr(ev, raw_field)
                if raw is not None:
                    k = getattr(ev, key_field)  # the consent gate may have hashed it
                    if k is None:
                        k = key(raw)
                        setattr(ev, key_field, k)
                    if k not in firsts:
                        firsts[k] = raw
        return firsts

    def _remember(self, new: dict[int, str]) -> None:
        """Hands the raw ids not handed yet to the keystore."""
        if new:
            self.keystore.remember(new)
            self._remembered.update(new)
            if len(self._remembered) > MAX_REMEMBERED:
                self._remembered.clear()

    def _seal_personal(self, events: list[Event], body: bytes | None) -> None:
        """Clears the raw ids and seals the personal fields under their owner's key."""
        taken: list[tuple[Event, int, bytes]] = []
        # the owner of what is sealed: a subject whose raw id came with the event
        # (CNIL-mode events carry a visitor key, no raw id: theirs is dropped)
        owners: list[int | None] = []
        for ev in events:
            owners.append(ev.user_key if ev.user_id is not None else (
                ev.anonymous_key if ev.anonymous_id is not None else None))
            for raw_field, _, _ in _ID_FIELDS:
                setattr(ev, raw_field, None)
        for ev, owner, personal in zip(events, owners,
                                       take_personal_all(events, self.hasher.key, body),
                                       strict=True):
            if personal and owner is not None:
                taken.append((ev, owner, _json.encode(personal)))
        if taken:
            keys = self.keystore.keys_for({owner for _, owner, _ in taken})
            for ev, owner, plain in taken:
                dk = keys.get(owner)
                if dk is not None:
                    ev.sealed = {"fields": self.keystore.seal(dk, owner, "fields", plain)}

    def unseal(self, ev: Event) -> Event:
        """The event with its raw ids, personal fields and addresses back (where keys
        still exist); for access requests and tests."""
        for raw_field, key_field, _ in _ID_FIELDS:
            subject = getattr(ev, key_field)
            if subject is not None:
                setattr(ev, raw_field, self.keystore.identifier(subject))
        owner = ev.user_key if ev.user_key is not None else ev.anonymous_key
        if owner is None or not ev.sealed:
            return ev
        try:
            blob = ev.sealed.get("traits")  # events sealed before 2026-12-03
            if blob is not None:
                ev.traits = {**ev.traits, **msgspec.json.decode(
                    self.keystore.open(owner, "traits", blob))}
            blob = ev.sealed.get("fields")
            if blob is not None:
                put_back(ev, msgspec.json.decode(self.keystore.open(owner, "fields", blob)))
        except KeyDestroyed:
            pass
        return ev
