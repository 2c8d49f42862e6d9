"""Identity stitching: distinct ids (userId, anonymousId, previousId) → one person.

Every person has an internal surrogate ``person_id``; events refer to persons only by
it. Ids are looked up by a keyed hash (:func:`aap.privacy.ids.id_key`), never by the
raw value. The rules, applied in log order:

- an event with one id: that id's person, or a new anonymous person;
- an event with a ``userId`` and an ``anonymousId`` (``identify`` or any other type):
  the ids are linked. If both already belong to different persons, the anonymous
  person is merged into the user's — unless it was already identified as another
  user (a shared device), in which case nothing is merged;
- ``alias`` (previousId → userId) links the two and always merges previousId's person
  into userId's.

A merge never rewrites stored events: it records ``old person → surviving person`` in
``person_overrides`` (chains are flattened, so one lookup resolves any merge), and
queries read events through that small table.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class IdentityChanges:
    """What one processed chunk changed, for the warehouse transaction."""

    new_ids: dict[int, int] = field(default_factory=dict)  # id key → person id
    overrides: dict[int, int] = field(default_factory=dict)  # old person → surviving person
    identified: set[int] = field(default_factory=set)


class Identities:
    def __init__(self) -> None:
        self.ids: dict[int, int] = {}
        self.merged: dict[int, int] = {}  # old person → surviving person (always final)
        self._absorbed: dict[int, list[int]] = {}  # surviving person → persons merged into it
        self.identified: set[int] = set()
        self.next_person = 1
        self.changes = IdentityChanges()

    # -- state from the warehouse --

    def load(self, ids: dict[int, int], overrides: dict[int, int], identified: set[int],
             next_person: int) -> None:
        self.ids = dict(ids)
        self.merged = dict(overrides)
        self._absorbed = {}
        for old, new in overrides.items():
            self._absorbed.setdefault(new, []).append(old)
        self.identified = set(identified)
        self.next_person = next_person

    def take_changes(self) -> IdentityChanges:
        ch, self.changes = self.changes, IdentityChanges()
        return ch

    # -- rules --

    def resolve(self, person: int) -> int:
        return self.merged.get(person, person)

    def person_of(self, key: int) -> int | None:
        p = self.ids.get(key)
        return None if p is None else self.resolve(p)

    def observe(self, user_key: int | None, anon_key: int | None) -> int:
        """The person of an event with these ids, linking them as the rules say."""
        if user_key is None and anon_key is None:
            raise ValueError("an event needs a userId or an anonymousId")
        if user_key is None:
            return self._get_or_create(anon_key)  # type: ignore[arg-type]
        p_user = self.person_of(user_key)
        p_anon = self.person_of(anon_key) if anon_key is not None else None
        if p_user is None and p_anon is None:
            p = self._new()
            self._link(user_key, p)
            if anon_key is not None:
                self._link(anon_key, p)
        elif p_user is None:
            p = p_anon  # type: ignore[assignment]
            self._link(user_key, p)
        else:
            p = p_user
            if anon_key is not None:
                if p_anon is None:
                    self._link(anon_key, p)
                elif p_anon != p and p_anon not in self.identified:
                    self._merge(p_anon, p)
        self._mark_identified(p)
        return p

    def alias(self, previous_key: int, user_key: int) -> int:
        p_user = self.person_of(user_key)
        p_prev = self.person_of(previous_key)
        if p_user is None and p_prev is None:
            p = self._new()
            self._link(previous_key, p)
            self._link(user_key, p)
        elif p_user is None:
            p = p_prev  # type: ignore[assignment]
            self._link(user_key, p)
        elif p_prev is None:
            p = p_user
            self._link(previous_key, p)
        else:
            p = p_user
            if p_prev != p_user:
                self._merge(p_prev, p_user)
        self._mark_identified(p)
        return p

    # -- mechanics --

    def _new(self) -> int:
        p = self.next_person
        self.next_person += 1
        return p

    def _get_or_create(self, key: int) -> int:
        p = self.person_of(key)
        if p is None:
            p = self._new()
            self._link(key, p)
        return p

    def _link(self, key: int, person: int) -> None:
        self.ids[key] = person
        self.changes.new_ids[key] = person

    def _mark_identified(self, person: int) -> None:
        if person not in self.identified:
            self.identified.add(person)
            self.changes.identified.add(person)

    def _merge(self, old: int, new: int) -> None:
        moved = [old, *self._absorbed.pop(old, [])]
        for p in moved:
            self.merged[p] = new
            self.changes.overrides[p] = new
        self._absorbed.setdefault(new, []).extend(moved)
        if old in self.identified:
            self.identified.discard(old)
            self._mark_identified(new)
