"""What the processes of tests/store/test_meta_pg.py run (spawned: kept free of pytest's
imports so that they start quickly)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from aap.privacy.keystore import Keystore


def _aad(subject: int) -> bytes:
    return b"id" + struct.pack(">q", subject)


def make_keys(data_dir: str, url: str, rounds: list[list[int]], barrier: Any, out: Any,
              given: Any, result: Any) -> None:
    """At each round, at the same moment as the other process, ``keys_for`` the round's
    new subjects; seal every subject's id under the key got; hand the sealed ids out, and
    open the other process's under the keys this one got."""
    ks = Keystore(Path(data_dir), url=url)
    keys = {}
    for subjects in rounds:
        barrier.wait(timeout=120)
        keys.update(ks.keys_for(subjects))
    out.put({s: ks.seal(k, s, "id", str(s).encode()) for s, k in keys.items()})
    theirs: dict[int, bytes] = given.get(timeout=120)
    opened = 0
    for s, blob in theirs.items():
        try:
            if keys[s].decrypt(blob[:12], blob[12:], _aad(s)) == str(s).encode():
                opened += 1
        except (InvalidTag, KeyError):
            pass
    result.put((len(keys), opened))
    ks.close()


def race_destroy(data_dir: str, url: str, rounds: list[list[int]], barrier: Any, role: str,
                 result: Any) -> None:
    """At each round, at the same moment as the other process: ``keys_for`` (role
    ``make``) or ``destroy`` (role ``destroy``) the round's subjects."""
    ks = Keystore(Path(data_dir), url=url)
    made = 0
    for subjects in rounds:
        barrier.wait(timeout=120)
        if role == "make":
            made += len(ks.keys_for(subjects))
        else:
            ks.destroy(subjects)
    result.put((role, made))
    ks.close()
