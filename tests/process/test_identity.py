"""Identity stitching against a plain reference model, on random interleavings."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aap.process.identity import Identities
from tests.conftest import examples

IDS = ["u1", "u2", "u3", "a1", "a2", "a3", "a4"]
USERS = IDS[:3]
ANONS = IDS[3:]


class Reference:
    """Persons as sets of ids, found by scanning: slow and obviously right."""

    def __init__(self) -> None:
        self.persons: list[dict[str, object]] = []

    def find(self, i: str) -> dict[str, object] | None:
        return next((p for p in self.persons if i in p["ids"]), None)  # type: ignore[operator]

    def new(self, *ids: str) -> dict[str, object]:
        p: dict[str, object] = {"ids": set(ids), "identified": False}
        self.persons.append(p)
        return p

    def merge(self, old: dict[str, object], new: dict[str, object]) -> None:
        new["ids"] |= old["ids"]  # type: ignore[operator]
        new["identified"] = bool(new["identified"] or old["identified"])
        self.persons.remove(old)

    def event(self, user: str | None, anon: str | None) -> None:
        if user is None:
            if self.find(anon) is None:  # type: ignore[arg-type]
                self.new(anon)  # type: ignore[arg-type]
            return
        pu, pa = self.find(user), (self.find(anon) if anon else None)
        if pu is None and pa is None:
            p = self.new(user, *([anon] if anon else []))
        elif pu is None:
            p = pa
            p["ids"].add(user)  # type: ignore[union-attr]
        else:
            p = pu
            if anon:
                if pa is None:
                    p["ids"].add(anon)  # type: ignore[attr-defined]
                elif pa is not pu and not pa["identified"]:
                    self.merge(pa, pu)
        p["identified"] = True  # type: ignore[index]

    def alias(self, prev: str, user: str) -> None:
        pu, pp = self.find(user), self.find(prev)
        if pu is None and pp is None:
            p = self.new(prev, user)
        elif pu is None:
            p = pp
            p["ids"].add(user)  # type: ignore[union-attr]
        elif pp is None:
            p = pu
            p["ids"].add(prev)  # type: ignore[attr-defined]
        else:
            p = pu
            if pp is not pu:
                self.merge(pp, pu)
        p["identified"] = True  # type: ignore[index]

    def partition(self) -> set[frozenset[str]]:
        return {frozenset(p["ids"]) for p in self.persons}  # type: ignore[arg-type]


ops = st.lists(st.one_of(
    st.tuples(st.just("track"), st.sampled_from([None, *USERS]), st.sampled_from([None, *ANONS]))
    .filter(lambda t: t[1] or t[2]),
    st.tuples(st.just("identify"), st.sampled_from(USERS), st.sampled_from(ANONS)),
    st.tuples(st.just("alias"), st.sampled_from(IDS), st.sampled_from(USERS)),
), max_size=30)


# more than the profile's: cheap, and merges, aliases and re-identifies interleave many ways
@settings(max_examples=examples(500))
@given(ops)
def test_same_persons_as_the_reference(ops: list[tuple[str, str | None, str | None]]) -> None:
    ident, ref = Identities(), Reference()
    key = {i: n for n, i in enumerate(IDS, start=100)}
    seen: list[tuple[int, str]] = []  # (person given to the event, the id it belongs by)
    for op, a, b in ops:
        if op == "alias":
            p = ident.alias(key[a], key[b])  # type: ignore[index]
            ref.alias(a, b)  # type: ignore[arg-type]
            seen.append((p, b))  # type: ignore[arg-type]
        else:
            p = ident.observe(key[a] if a else None, key[b] if b else None)
            ref.event(a, b)
            seen.append((p, a or b))  # type: ignore[arg-type]
    by_person: dict[int, set[str]] = {}
    for i in IDS:
        p = ident.person_of(key[i])
        if p is not None:
            by_person.setdefault(p, set()).add(i)
    assert {frozenset(s) for s in by_person.values()} == ref.partition()
    # every event, resolved now, belongs to the person that now holds the id it came by
    # (its userId, or its anonymousId when it had none): persons merge, never split
    for p, i in seen:
        assert ident.resolve(p) == ident.person_of(key[i])


def test_events_before_identify_count_for_the_person() -> None:
    ident = Identities()
    p_anon = ident.observe(None, 1)
    p_user = ident.observe(2, None)
    assert p_anon != p_user
    ident.observe(2, 1)  # identify: anonymous 1 is user 2
    assert ident.resolve(p_anon) == ident.resolve(p_user) == p_user
    assert ident.take_changes().overrides == {p_anon: p_user}


def test_shared_device_is_not_merged() -> None:
    ident = Identities()
    alice = ident.observe(10, 1)
    bob = ident.observe(20, None)
    assert ident.observe(20, 1) == bob  # Bob logs in on Alice's device
    assert ident.resolve(alice) == alice != bob


def test_chains_resolve_in_one_lookup() -> None:
    ident = Identities()
    a = ident.observe(None, 1)
    b = ident.observe(None, 2)
    c = ident.observe(None, 3)
    ident.alias(1, 2)
    ident.alias(2, 3)
    assert ident.merged == {a: c, b: c}
