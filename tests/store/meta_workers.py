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


def record_statements(data_dir: str, url: str, writer: int, rounds: int, barrier: Any,
                      done: Any) -> None:
    """After the barrier, as fast as it can: for each of ``rounds`` new subjects, a grant
    then a withdrawal (each its own ``record``; every third round both in one)."""
    from aap.privacy.consent import FULL, ConsentLedger, Statement

    ledger = ConsentLedger(Path(data_dir), url=url)
    barrier.wait(timeout=120)
    for i in range(rounds):
        subject = writer * 1_000_000 + i
        grant = Statement(2 * i, f"src_{writer}", subject, {"analytics": True}, "v1", "api")
        withdraw = Statement(2 * i + 1, f"src_{writer}", subject, {"analytics": False}, "v1",
                             "api", history=FULL)
        if i % 3 == 2:
            ledger.record([grant, withdraw])
        else:
            ledger.record([grant])
            ledger.record([withdraw])
    done.put(writer)
    ledger.close()


def poll_consent(data_dir: str, url: str, barrier: Any, stop: Any, result: Any) -> None:
    """A :class:`~aap.privacy.consent.ConsentState` refreshed in a loop until ``stop``,
    then once more; hands out the ``seq`` of every statement it applied and its state."""
    from aap.privacy.consent import ConsentLedger, ConsentState, Statement

    seen: list[int] = []

    class Watched(ConsentLedger):
        def since(self, seq: int) -> list[tuple[int, Statement]]:
            rows = super().since(seq)
            seen.extend(s for s, _ in rows)
            return rows

    state = ConsentState(Watched(Path(data_dir), url=url))
    state.refresh(force=True)
    barrier.wait(timeout=120)
    polls = 0
    while not stop.is_set():
        state.refresh(force=True)
        polls += 1
    state.refresh(force=True)
    result.put((seen, state.latest, state.binding, state.withdrawn, polls))
    state.ledger.close()


def keys_and_sessions(data_dir: str, url: str, n: int, links: list[str], barrier: Any,
                      result: Any) -> None:
    """After the barrier, at the same moment as the other process: ``n`` API keys, a web
    session of each, and an attempt at every one-time link of ``links``; hands out the
    keys, the session tokens and the links this process consumed."""
    from aap.api.keys import ApiKeys
    from aap.web.sessions import Sessions

    keys = ApiKeys(Path(data_dir), url=url)
    sessions = Sessions(Path(data_dir), keys, ttl_s=3600, url=url)
    barrier.wait(timeout=120)
    made, tokens, consumed = [], [], []
    for i in range(n):
        record, key = keys.create("analyst", f"k{i}")
        made.append(key)
        tokens.append(sessions.create(record, "key")[0])
        # a link between each key: both processes go through the same links at once
        consumed += [link for link in links[i::n] if sessions.consume_link(link)]
    result.put((made, tokens, consumed))
    sessions.close()
    keys.close()
