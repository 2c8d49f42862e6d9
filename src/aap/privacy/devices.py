"""What is personal about a device: its owner and its location.

A device's owner is a raw userId: the registry keeps only its keyed hash (the subject,
:mod:`aap.privacy.ids`), and the raw id sealed under the subject's key in the keystore,
so that erasing the person also makes their device's owner unreadable. Location readings
(``lat``/``lon``) are coarsened here, before anything else sees them, as
:mod:`aap.privacy.ip` truncates addresses: rounded to ``decimals`` (1: a cell of about
11 km), precise coordinates never leave this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aap.privacy.ids import IdHasher
from aap.privacy.keystore import Keystore

LOCATION_KEYS = frozenset({"lat", "lon", "lng", "latitude", "longitude"})


def remember_owner(data_dir: Path, user_id: str) -> int:
    """The owner's subject (keyed hash), their raw id sealed in the keystore."""
    subject = IdHasher.for_data_dir(data_dir).key(user_id)
    ks = Keystore(data_dir)
    try:
        ks.remember({subject: user_id})
    finally:
        ks.close()
    return subject


class Handles:
    """A device's handle in its events (property ``device``): a keyed hash of its
    pseudonym, so that whoever may count persons can count devices (devices active per
    day: ``math: "unique"`` of ``device``), while the registry's id stays sealed like any
    device id. One device, one handle; it says no more than the person's id does."""

    def __init__(self, data_dir: Path) -> None:
        self._hasher = IdHasher.for_data_dir(data_dir)

    def of(self, device_id: str) -> str:
        return f"dh_{self._hasher.key('device:' + device_id) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


class Owners:
    """Owner subject → raw userId, for the collector (``None`` once the person is erased)."""

    def __init__(self, data_dir: Path) -> None:
        self._keystore = Keystore(data_dir)

    def user_id(self, subject: int) -> str | None:
        return self._keystore.identifier(subject)

    def close(self) -> None:
        self._keystore.close()


def coarsen_location(values: dict[str, Any], decimals: int) -> dict[str, Any]:
    """``values`` with every latitude/longitude rounded to ``decimals`` (a copy if any)."""
    if not LOCATION_KEYS.intersection(values):
        return values
    out = dict(values)
    for k in LOCATION_KEYS.intersection(values):
        v = out[k]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = round(float(v), decimals)
        else:
            out.pop(k)  # a location that is not a number is not stored at all
    return out
