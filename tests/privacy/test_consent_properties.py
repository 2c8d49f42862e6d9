"""Properties of the consent decision, for any history of statements and any event."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from aap.privacy.consent import ConsentLedger, ConsentState, Statement, decide
from aap.privacy.purposes import GPC_WITHDRAWS

PURPOSES = ["analytics", "marketing", "personalization", "partner_sharing"]
BASES = ["consent", "legitimate_interest", "contract"]
SUBJECTS = [11, 22, 33]

statements = st.lists(st.tuples(
    st.integers(0, 1_000),  # at_ms
    st.sampled_from(SUBJECTS),
    st.dictionaries(st.sampled_from(PURPOSES), st.booleans(), min_size=1),
), max_size=12)
source_purposes = st.dictionaries(st.sampled_from(PURPOSES), st.sampled_from(BASES), min_size=1)
event_ids = st.lists(st.sampled_from([*SUBJECTS, 44]), min_size=1, max_size=2, unique=True)
own = st.dictionaries(st.sampled_from(PURPOSES), st.booleans())


class _Nowhere(ConsentLedger):
    """A ledger that keeps nothing: these properties are about the decision."""

    def __init__(self) -> None:
        self.path = Path("/nonexistent")

    def record(self, statements: object) -> None:
        pass


def latest(history: list[tuple[int, int, dict[str, bool]]], ids: list[int], purpose: str
           ) -> bool | None:
    """The person's most recent statement about ``purpose``: per id the last one made at
    the latest time; across their ids the latest, and at the same time a "no" wins."""
    per_id: dict[int, tuple[int, bool]] = {}
    for at, subject, purposes in history:
        if subject in ids and purpose in purposes:
            if subject not in per_id or at >= per_id[subject][0]:
                per_id[subject] = (at, purposes[purpose])
    if not per_id:
        return None
    newest = max(at for at, _ in per_id.values())
    return all(said for at, said in per_id.values() if at == newest)


@given(statements, source_purposes, event_ids, own, st.booleans())
def test_a_purpose_is_served_only_on_a_basis(history: list[tuple[int, int, dict[str, bool]]],
                                             declared: dict[str, str], ids: list[int],
                                             prefs: dict[str, bool], gpc: bool) -> None:
    state = ConsentState(_Nowhere())
    state.apply([Statement(at, "src", s, p, None, "api") for at, s, p in history])
    d = decide("src", list(declared.items()), state, ids, prefs, 2_000, gpc)
    for purpose, basis in declared.items():
        said = prefs[purpose] if purpose in prefs else latest(history, ids, purpose)
        if gpc and purpose in GPC_WITHDRAWS:
            assert purpose not in d.purposes, "GPC withdraws sale/sharing and marketing"
        elif said is False:
            assert purpose not in d.purposes, "a no (withdrawal or objection) is honoured"
        elif basis == "consent":
            assert (purpose in d.purposes) == (said is True), "consent needs a yes"
        else:
            assert d.purposes.get(purpose) == basis, "other bases stand without a statement"
    assert set(d.purposes) <= set(declared), "only the source's own purposes"
    # what the event said is written down where it changes the person's state
    for s in d.statements:
        assert s.subject in ids and s.at_ms == 2_000
        for purpose, granted in s.purposes.items():
            if s.channel == "gpc":
                assert purpose in GPC_WITHDRAWS and granted is False
            else:
                assert prefs[purpose] == granted
                assert latest(history, ids, purpose) != granted
