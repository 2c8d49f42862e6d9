"""The nesting-depth check every JSON parser runs first (aap.jsonlimits), in-process;
its property against a reference depth is in tests/collect/test_body.py."""

from __future__ import annotations

import pytest

from aap.errors import BadRequest
from aap.jsonlimits import MAX_DEPTH, check_depth, depth, too_deep


def test_the_default_limit_and_its_message() -> None:
    check_depth(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    with pytest.raises(BadRequest, match="nested 65 levels deep; the limit is 64"):
        check_depth("[" * 65 + "]" * 65, "the body")
    check_depth('["' + "[" * 500 + '"]')  # brackets inside a string are text
    assert depth(b"") == depth("") == 0
    assert too_deep("`ue_pr`").code == "too_deep"
