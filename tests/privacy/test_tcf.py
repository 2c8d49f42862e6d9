"""The TC string decoder against the IAB's own library, and TC strings at the door."""

from __future__ import annotations

import json
import random
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aap.privacy import tcf
from aap.runner import ServerProcess, create_source

HERE = Path(__file__).parent / "tcf"


def iab(cases: list[dict[str, object]]) -> list[dict[str, Any]]:
    """TC strings made by @iabtechlabtcf/core (installed by scripts/setup), each with what
    that library decodes from it."""
    out = subprocess.run(["node", "encode.mjs"], cwd=HERE, input=json.dumps(cases),
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def iab_encode(cases: list[dict[str, object]]) -> list[str]:
    return [r["tc"] for r in iab(cases)]


@pytest.mark.slow
def test_decoder_agrees_with_the_iab_library() -> None:
    rng = random.Random(5)
    cases = [{"consents": sorted(rng.sample(range(1, 12), rng.randint(0, 11))),
              "legitimate": sorted(rng.sample(range(2, 12), rng.randint(0, 5))),
              "cmpId": rng.randint(2, 4095), "cmpVersion": rng.randint(1, 4095),
              "policy": rng.choice([2, 4, 5])} for _ in range(150)]
    for case, theirs in zip(cases, iab(cases), strict=True):
        core = tcf.decode(theirs["tc"])
        assert core.version == theirs["version"] == 2
        assert sorted(core.purpose_consents) == sorted(theirs["consents"]) == case["consents"]
        # (policy 4+, TCF 2.2, allows no legitimate interest for purposes 3 to 6)
        assert sorted(core.purpose_legitimate_interests) == sorted(theirs["legitimate"])
        assert (core.cmp_id, core.cmp_version, core.policy_version) == (
            theirs["cmpId"], theirs["cmpVersion"], theirs["policy"])
        assert core.service_specific is theirs["serviceSpecific"] is True


@pytest.mark.slow
def test_mapping_needs_every_tcf_purpose() -> None:
    [s] = iab_encode([{"consents": [1, 8, 9, 5], "legitimate": [], "cmpId": 7,
                       "cmpVersion": 1, "policy": 5}])
    mapping = {"analytics": (1, 8, 9), "personalization": (1, 5, 6), "partner_sharing": ()}
    assert tcf.preferences(s, mapping) == {"analytics": True, "personalization": False}


@given(st.text(max_size=300))
def test_any_text_is_decoded_or_refused_cleanly(text: str) -> None:
    try:
        core = tcf.decode(text)
    except tcf.TCFError:
        return
    assert core.version == 2 and core.purpose_consents <= frozenset(range(1, 25))


@pytest.mark.parametrize("bad", ["", "!!!", "C" * 5, "BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA",
                                 "CQuV9AAQuV9AAAKACBENCWFg"])
def test_not_v2_or_too_short_is_refused(bad: str) -> None:
    with pytest.raises(tcf.TCFError):
        tcf.decode(bad)


@pytest.mark.slow
def test_a_tc_string_on_the_event_is_a_consent_statement(tmp_path: Path) -> None:
    yes, no = iab_encode([
        {"consents": [1, 8, 9], "legitimate": [], "cmpId": 7, "cmpVersion": 1, "policy": 5},
        {"consents": [1, 2, 3], "legitimate": [], "cmpId": 7, "cmpVersion": 1, "policy": 5}])
    data = tmp_path / "data"
    key = create_source(data, "shop")  # analytics on consent
    with ServerProcess(data, workers=1) as server:
        def send(anon: str, tc: str) -> dict[str, object]:
            r = httpx.post(server.url + "/v1/track", auth=(key, ""), json={
                "event": "Viewed", "anonymousId": anon, "messageId": str(uuid.uuid4()),
                "context": {"consent": {"tcString": tc}}})
            assert r.status_code == 200
            return dict(r.json())
        assert send("anon-tcf-yes", yes)["accepted"] == 1
        assert send("anon-tcf-no", no) == {"success": True, "accepted": 0,
                                           "not_stored": {"no_lawful_basis": 1}}
        assert send("anon-tcf-bad", "not a tc string")["accepted"] == 0
