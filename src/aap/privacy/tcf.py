"""IAB TCF v2 (2.0 to 2.2) consent strings: the core segment's purpose consents.

A TC string is segments of URL-safe base64 (no padding) joined by ``.``; the first is
the core segment, a bit field (IAB "Consent string and vendor list formats v2"):
version (6 bits, = 2), created and last updated (36 each, deciseconds), CMP id (12),
CMP version (12), consent screen (6), language (12), vendor list version (12), policy
version (6), service specific (1), non-standard texts (1), special feature opt-ins
(12), **purpose consents (24)**, purpose legitimate interests (24), then vendors.

Checked in the tests against strings made by the IAB's own library (@iabtechlabtcf/core).
"""

from __future__ import annotations

import base64
from typing import NamedTuple


class TCFError(ValueError):
    pass


class CoreSegment(NamedTuple):
    version: int
    created_ds: int
    updated_ds: int
    cmp_id: int
    cmp_version: int
    policy_version: int
    service_specific: bool
    purpose_consents: frozenset[int]
    purpose_legitimate_interests: frozenset[int]


_FIELDS = (("version", 6), ("created_ds", 36), ("updated_ds", 36), ("cmp_id", 12),
           ("cmp_version", 12), ("consent_screen", 6), ("language", 12),
           ("vendor_list_version", 12), ("policy_version", 6), ("service_specific", 1),
           ("non_standard_texts", 1), ("special_features", 12), ("purpose_consents", 24),
           ("purpose_li", 24))
_CORE_BITS = sum(n for _, n in _FIELDS)
MAX_TC_STRING = 8192
"""Characters of a TC string read at most."""


def decode(tc_string: str) -> CoreSegment:
    """The core segment of ``tc_string``; :class:`TCFError` if it is not a v2 string."""
    if not isinstance(tc_string, str) or not tc_string or len(tc_string) > MAX_TC_STRING:
        raise TCFError("not a TC string")
    core = tc_string.split(".", 1)[0]
    try:
        raw = base64.urlsafe_b64decode(core + "=" * (-len(core) % 4))
    except (ValueError, TypeError) as exc:
        raise TCFError(f"not URL-safe base64: {exc}") from None
    if len(raw) * 8 < _CORE_BITS:
        raise TCFError("too short for a TCF v2 core segment")
    bits = int.from_bytes(raw, "big")
    total = len(raw) * 8
    values: dict[str, int] = {}
    at = 0
    for name, width in _FIELDS:
        values[name] = (bits >> (total - at - width)) & ((1 << width) - 1)
        at += width
    if values["version"] != 2:
        raise TCFError(f"TCF version {values['version']} is not supported (only 2)")

    def purposes(field: int) -> frozenset[int]:  # bit 1 (the first) is purpose 1
        return frozenset(i for i in range(1, 25) if field >> (24 - i) & 1)

    return CoreSegment(values["version"], values["created_ds"], values["updated_ds"],
                       values["cmp_id"], values["cmp_version"], values["policy_version"],
                       bool(values["service_specific"]), purposes(values["purpose_consents"]),
                       purposes(values["purpose_li"]))


def preferences(tc_string: str, mapping: dict[str, tuple[int, ...]]) -> dict[str, bool]:
    """Our purposes from a TC string: a purpose is granted when every TCF purpose it is
    mapped to has consent (purposes mapped to none are not decided by TCF)."""
    consents = decode(tc_string).purpose_consents
    return {pid: all(p in consents for p in tcf) for pid, tcf in mapping.items() if tcf}
