"""The body of ``POST /v1/consent`` (aap.collect.consent.parse_consent), in-process."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aap.collect.consent import parse_consent
from aap.errors import BadRequest

ids = st.one_of(st.text(min_size=1, max_size=20), st.integers())


@given(st.dictionaries(st.text(min_size=1, max_size=12), st.booleans(), min_size=1, max_size=4),
       ids, st.none() | st.text(st.characters(codec="ascii", categories=("L", "N")),
                                min_size=1, max_size=64))
def test_a_statement_keeps_what_it_says(purposes: dict[str, bool], user: str | int,
                                        channel: str | None) -> None:
    body = {"purposes": purposes, "userId": user, "policy_version": "v3"}
    if channel is not None:
        body["channel"] = channel
    req = parse_consent(json.dumps(body).encode())
    assert (req.purposes, req.user_id, req.anonymous_id, req.channel, req.policy_version) == \
        (purposes, user, None, channel, "v3")


@pytest.mark.parametrize(("body", "code"), [
    (b"{", "invalid_json"),
    (b"\xff", "invalid_json"),
    (b'{"userId": "u"}', "invalid_consent"),
    (b'{"purposes": {"a": "yes"}, "userId": "u"}', "invalid_consent"),
    (b'{"purposes": {}, "userId": "u"}', "invalid_consent"),
    (b'{"purposes": {"a": true}}', "missing_identity"),
    (b'{"purposes": {"a": true}, "userId": ""}', "missing_identity"),
    (b'{"purposes": {"a": true}, "userId": "u", "channel": ""}', "invalid_consent"),
    (b'{"purposes": {"a": true}, "userId": "u", "policy_version": "' + b"v" * 129 + b'"}',
     "invalid_consent"),
    (b'{"purposes": {"a": true}, "userId": "u", "channel": "me@example.com"}', "personal_data"),
    (b'{"purposes": {"a": true}, "userId": "u", "policy_version": "10.1.2.3"}', "personal_data"),
    (b'{"purposes": ' + b"[" * 100 + b"]" * 100 + b"}", "too_deep"),
])
def test_bad_statements_are_refused_with_their_code(body: bytes, code: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_consent(body)
    assert err.value.code == code


def test_a_subject_token_names_the_person_instead() -> None:
    req = parse_consent(b'{"purposes": {"a": false}}', token=True)
    assert req.purposes == {"a": False} and req.user_id is None
