"""The nesting-depth check every JSON parser runs first (aap.jsonlimits), in-process."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aap.errors import BadRequest
from aap.jsonlimits import MAX_DEPTH, check_depth, depth, too_deep

# strings full of the characters the scan has to see past: quotes, brackets, backslashes
tricky_text = st.text(st.sampled_from('ab"[]{}\\/ \u00e9'), max_size=8)
documents = st.recursive(
    st.none() | st.booleans() | st.integers() | tricky_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3),
    max_leaves=30)


def reference_depth(doc: Any) -> int:
    if isinstance(doc, list):
        return 1 + max((reference_depth(v) for v in doc), default=0)
    if isinstance(doc, dict):
        return 1 + max((reference_depth(v) for v in doc.values()), default=0)
    return 0


@given(documents, st.booleans())
def test_depth_is_the_nesting_of_the_document(doc: Any, ascii_only: bool) -> None:
    text = json.dumps(doc, ensure_ascii=ascii_only)
    assert depth(text) == reference_depth(doc)
    assert depth(text.encode()) == reference_depth(doc)


@given(documents, st.integers(0, 8))
def test_check_depth_refuses_exactly_what_is_deeper_than_the_limit(doc: Any, limit: int) -> None:
    text = json.dumps(doc)
    if reference_depth(doc) > limit:
        with pytest.raises(BadRequest) as err:
            check_depth(text, limit=limit)
        assert err.value.code == "too_deep"
        assert err.value.detail == {"depth": reference_depth(doc), "limit": limit}
    else:
        check_depth(text.encode(), limit=limit)


def test_the_default_limit_and_its_message() -> None:
    check_depth(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    with pytest.raises(BadRequest, match="nested 65 levels deep; the limit is 64"):
        check_depth("[" * 65 + "]" * 65, "the body")
    check_depth('["' + "[" * 500 + '"]')  # brackets inside a string are text
    assert depth(b"") == depth("") == 0
    assert too_deep("`ue_pr`").code == "too_deep"
