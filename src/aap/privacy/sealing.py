"""Sealing events before they are written: raw identifiers and personal traits leave
the event and are kept only encrypted under their subject's data key
(:mod:`aap.privacy.keystore`); the event keeps the keyed hashes, which is all the
pipeline needs (identity, consent, dedup never look at a raw id).

On a sealed event ``user_id``, ``anonymous_id`` and ``previous_id`` are ``None`` and
``user_key``, ``anonymous_key`` and ``previous_key`` hold their keyed hashes; each raw
id is kept once, sealed under its own key, in the keystore (so the log carries 8 bytes
per id, not a ciphertext per event). ``sealed["traits"]`` holds the personal traits as
``nonce || AES-GCM ciphertext`` under the userId's key, else the anonymousId's. Events
of a subject whose key was destroyed (an erased person) are not written at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from aap.events import Event
from aap.privacy.ids import IdHasher
from aap.privacy.keystore import KeyDestroyed, Keystore

PERSONAL_TRAITS = frozenset({
    "email", "name", "firstName", "lastName", "first_name", "last_name", "username",
    "phone", "address", "birthday", "avatar", "website", "$email", "$name", "$phone",
})
"""Traits that are personal data by name (Segment's reserved traits and PostHog's);
they are sealed, never stored in plain text."""

_ID_FIELDS = (("user_id", "user_key", "userId"), ("anonymous_id", "anonymous_key", "anonymousId"),
              ("previous_id", "previous_key", "previousId"))
_json = msgspec.json.Encoder()


class Sealer:
    def __init__(self, data_dir: Path, hasher: IdHasher | None = None,
                 keystore: Keystore | None = None, personal: Iterable[str] = PERSONAL_TRAITS
                 ) -> None:
        self.hasher = hasher or IdHasher.for_data_dir(data_dir)
        self.keystore = keystore or Keystore(data_dir)
        self.personal = frozenset(personal)
        self._remembered: set[int] = set()
        """Subjects whose raw id this process has already handed to the keystore."""

    def seal(self, events: list[Event]) -> int:
        """Seal the events in place; take out (and return how many) those of a subject
        whose key was destroyed."""
        if not events:
            return 0
        destroyed = self.keystore.refresh_destroyed()
        forgotten = self.keystore.refresh_forgotten()
        if forgotten:  # expired (retention): remember their raw ids again if they return
            self._remembered -= forgotten
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
        if destroyed:
            kept = [ev for ev in events
                    if not any(getattr(ev, kf) in destroyed for _, kf, _ in _ID_FIELDS)]
            gone = len(events) - len(kept)
            events[:] = kept
        else:
            gone = 0
        new = {k: raw for k, raw in firsts.items() if k not in self._remembered
               and k not in destroyed}
        if new:
            self.keystore.remember(new)
            self._remembered.update(new)
            if len(self._remembered) > 500_000:
                self._remembered.clear()
        for ev in events:
            for raw_field, _, _ in _ID_FIELDS:
                setattr(ev, raw_field, None)
            personal = self._take_personal(ev)
            if personal:
                owner = ev.user_key if ev.user_key is not None else ev.anonymous_key
                if owner is not None:
                    dk = self.keystore.keys_for([owner])[owner]
                    ev.sealed = {"traits": self.keystore.seal(dk, owner, "traits",
                                                              _json.encode(personal))}
        return gone

    def _take_personal(self, ev: Event) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for traits in (ev.traits, ev.context.get("traits")):
            if isinstance(traits, dict) and traits:
                for name in self.personal.intersection(traits):
                    out[name] = traits.pop(name)
        return out

    def unseal(self, ev: Event) -> Event:
        """The event with its raw ids and personal traits back (where keys still exist);
        for access requests and tests."""
        for raw_field, key_field, _ in _ID_FIELDS:
            subject = getattr(ev, key_field)
            if subject is not None:
                setattr(ev, raw_field, self.keystore.identifier(subject))
        blob = ev.sealed.get("traits")
        owner = ev.user_key if ev.user_key is not None else ev.anonymous_key
        if blob is not None and owner is not None:
            try:
                ev.traits = {**ev.traits, **msgspec.json.decode(
                    self.keystore.open(owner, "traits", blob))}
            except KeyDestroyed:
                pass
        return ev
