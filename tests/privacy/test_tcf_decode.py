"""The TC string decoder (aap.privacy.tcf) and an event's consent in-process, on core segments this test
encodes bit by bit from the IAB layout; tests/privacy/test_tcf.py checks it against the
IAB's own library (Node) and at the collector's door."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aap.privacy import tcf
from aap.privacy.consent import event_preferences

LAYOUT = (("version", 6), ("created", 36), ("updated", 36), ("cmp_id", 12), ("cmp_version", 12),
          ("consent_screen", 6), ("language", 12), ("vendor_list_version", 12),
          ("policy_version", 6), ("service_specific", 1), ("non_standard_texts", 1),
          ("special_features", 12), ("purpose_consents", 24), ("purpose_li", 24))


def purpose_bits(purposes: frozenset[int]) -> int:
    return sum(1 << (24 - p) for p in purposes)


def encode(fields: dict[str, int], tail: bytes = b"") -> str:
    bits, width = 0, 0
    for name, n in LAYOUT:
        bits, width = (bits << n) | fields.get(name, 0), width + n
    bits <<= -width % 8
    raw = bits.to_bytes((width + 7) // 8, "big") + tail
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


purposes = st.frozensets(st.integers(1, 24), max_size=24)


@given(st.integers(0, 2**36 - 1), st.integers(0, 2**12 - 1), st.integers(0, 2**12 - 1),
       st.integers(0, 63), st.booleans(), purposes, purposes, st.binary(max_size=12),
       st.lists(st.text("ABCDEFabcdef0123456789-_", min_size=1, max_size=10), max_size=2))
def test_the_core_segment_decodes_to_its_fields(created: int, cmp_id: int, cmp_version: int,
                                                 policy: int, specific: bool,
                                                 consents: frozenset[int], li: frozenset[int],
                                                 vendors: bytes, segments: list[str]) -> None:
    tc = encode({"version": 2, "created": created, "updated": created, "cmp_id": cmp_id,
                 "cmp_version": cmp_version, "policy_version": policy,
                 "service_specific": int(specific), "purpose_consents": purpose_bits(consents),
                 "purpose_li": purpose_bits(li)}, vendors)
    core = tcf.decode(".".join([tc, *segments]))
    assert core == tcf.CoreSegment(2, created, created, cmp_id, cmp_version, policy, specific,
                                   consents, li)


@given(purposes, st.dictionaries(st.sampled_from(["analytics", "ads", "personalisation"]),
                                 st.lists(st.integers(1, 24), max_size=3).map(tuple)))
def test_a_purpose_is_granted_when_all_its_tcf_purposes_are(consents: frozenset[int],
                                                            mapping: dict[str, tuple[int, ...]]
                                                            ) -> None:
    tc = encode({"version": 2, "purpose_consents": purpose_bits(consents)})
    got = tcf.preferences(tc, mapping)
    assert got == {pid: set(tcf_ids) <= consents for pid, tcf_ids in mapping.items() if tcf_ids}


def test_what_is_not_a_v2_core_segment_is_refused() -> None:
    for bad, why in (("", "not a TC string"), ("x" * 8193, "not a TC string"),
                     ("CO", "too short"), ("ABCDE", "not URL-safe base64"),
                     (encode({"version": 1}), "version 1 is not supported")):
        with pytest.raises(tcf.TCFError, match=why):
            tcf.decode(bad)
    with pytest.raises(tcf.TCFError):
        tcf.decode(None)  # type: ignore[arg-type]


@given(purposes, st.dictionaries(st.sampled_from(["analytics", "ads"]), st.booleans()),
       st.booleans())
def test_an_events_consent_reads_the_tc_string_then_category_preferences(
        consents: frozenset[int], prefs: dict[str, bool], undecodable: bool) -> None:
    """``context.consent`` of an event (aap.privacy.consent.event_preferences): the TC
    string mapped to our purposes, then ``categoryPreferences``, which win; an undecodable
    TC string says nothing, and values that are not booleans are ignored."""
    mapping = {"analytics": (1, 7), "ads": (1, 3, 4)}
    tc = "ABCDE" if undecodable else encode({"version": 2,
                                             "purpose_consents": purpose_bits(consents)})
    context = {"consent": {"tcString": tc, "categoryPreferences": {**prefs, "other": "yes"}}}
    want = {} if undecodable else tcf.preferences(tc, mapping)
    assert event_preferences(context, mapping) == {**want, **prefs}
    assert event_preferences(context) == prefs  # no mapping: the TC string is not read
    assert event_preferences({"consent": "all"}, mapping) == event_preferences({}, mapping) == {}
