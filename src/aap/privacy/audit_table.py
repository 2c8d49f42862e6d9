"""The audit chain as rows of the shared-state database (``AAP_META_URL``,
:mod:`aap.store.meta`): one chain for every collector, processor and CLI given the URL.

``audit_entries`` holds one row per entry: ``seq``, ``entry`` (the entry's canonical JSON
without its MAC, as text: exactly the bytes the MAC covers, so ``TEXT`` and not
``JSONB``, which would reorder them) and ``mac``, an HMAC-SHA256 under the key file
``DATA_DIR/keys/audit.key``. Each entry holds the previous entry's MAC (``prev``), as in
the file (:mod:`aap.privacy.audit_chain`). ``audit_head`` is one row: the last ``seq`` and
``mac`` (what the file ``audit.head`` holds) and ``key_check``, a MAC of a fixed text
under the key, by which a process given another key is refused before it writes.

Appenders take turns (:meth:`aap.store.meta.Tx.lock` on ``audit_entries``): each one
reads the head after the previous one committed, so the chain stays one line however
many processes append at once. :meth:`AuditTable.verify` reads the rows and the head in
one statement (one snapshot) and recomputes the chain: an edited row breaks its MAC, a
deleted, inserted or reordered one breaks ``seq`` or ``prev``, rows cut off the end or
added after it no longer match the head. Whoever holds the key can rewrite the chain:
the key never goes to the database (see README, "Shared state on PostgreSQL").
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

from aap.privacy.audit_chain import GENESIS as _GENESIS
from aap.privacy.audit_chain import Verdict, canonical, mac_of, new_entry
from aap.store.meta import MetaDB, MetaUnavailable, Tx
from aap.store.migrations import Schema

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS audit_entries (
    seq BIGINT PRIMARY KEY,
    entry TEXT NOT NULL,
    mac TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq BIGINT NOT NULL,
    mac TEXT NOT NULL,
    key_check TEXT
);
INSERT INTO audit_head (one, seq, mac) VALUES (1, 0, '{_GENESIS}') ON CONFLICT (one) DO NOTHING;
"""
SCHEMA = Schema("audit_entries", _SCHEMA, postgres=_SCHEMA, steps=())
"""The chain's tables (:mod:`aap.store.migrations`); the same DDL in both dialects."""
_KEY_CHECK = b"aap audit key check"


class AuditKeyMismatch(MetaUnavailable):
    """This process's audit key is not the one the shared chain is written with."""


class AuditTable:
    def __init__(self, db: MetaDB, key: bytes, key_path: Path) -> None:
        """The chain in ``db``, MACs under ``key`` (read from ``key_path``, for messages)."""
        self._key = key
        self._db = db
        db.migrate(SCHEMA)
        check = mac_of(key, _KEY_CHECK)
        self._db.execute("UPDATE audit_head SET key_check = ? WHERE one = 1 AND key_check IS NULL",
                         (check,))
        row = self._db.fetchone("SELECT key_check FROM audit_head WHERE one = 1")
        if row is not None and row[0] is not None and not hmac.compare_digest(str(row[0]), check):
            raise AuditKeyMismatch(
                f"the audit chain in {self._db.where} is written with another key than"
                f" this process's (AAP_AUDIT_KEY, else {key_path}): every process given"
                f" AAP_META_URL needs the same audit key")

    def append(self, actor: str, action: str, detail: dict[str, Any] | None) -> int:
        def add(tx: Tx) -> int:
            tx.lock("audit_entries")  # appenders take turns: the head read is the last commit
            head = tx.fetchall("SELECT seq, mac FROM audit_head WHERE one = 1")
            if not head:  # the head row was deleted: go on from the last entry
                head = tx.fetchall("SELECT seq, mac FROM audit_entries ORDER BY seq DESC"
                                   " LIMIT 1") or [(0, _GENESIS)]
            seq, prev = int(head[0][0]) + 1, str(head[0][1])
            text = canonical(new_entry(seq, prev, actor, action, detail))
            mac = mac_of(self._key, text)
            tx.execute("INSERT INTO audit_entries (seq, entry, mac) VALUES (?, ?, ?)",
                       (seq, text.decode(), mac))
            tx.execute("INSERT INTO audit_head (one, seq, mac) VALUES (1, ?, ?) ON CONFLICT"
                       " (one) DO UPDATE SET seq = excluded.seq, mac = excluded.mac", (seq, mac))
            return seq

        return self._db.write(add)

    def _rows(self) -> tuple[tuple[int, str] | None, list[tuple[int, str, str]]]:
        """The head and every row, oldest first, read in one statement (one snapshot)."""
        rows = self._db.fetchall(
            "SELECT h.seq, h.mac, e.seq, e.entry, e.mac FROM (SELECT 1 AS one) o"
            " LEFT JOIN audit_head h ON h.one = o.one LEFT JOIN audit_entries e ON true"
            " ORDER BY e.seq")
        head = None if rows[0][0] is None else (int(rows[0][0]), str(rows[0][1]))
        return head, [(int(r[2]), str(r[3]), str(r[4])) for r in rows if r[2] is not None]

    def entries(self) -> list[dict[str, Any]]:
        out = []
        for _, text, mac in self._rows()[1]:
            entry = json.loads(text)
            entry["mac"] = mac
            out.append(entry)
        return out

    def verify(self) -> Verdict:
        head, rows = self._rows()
        prev, n = _GENESIS, 0
        for n, (seq, text, mac) in enumerate(rows, start=1):
            try:
                entry = json.loads(text)
                inner_seq, inner_prev = entry.get("seq"), entry.get("prev")
            except (ValueError, AttributeError):
                return Verdict(False, n, f"row {seq} is not an audit entry")
            if seq != n:
                return Verdict(False, n, f"row {n} has seq {seq}: an entry was removed, added"
                                         " or moved")
            if inner_seq != seq:
                return Verdict(False, n, f"row {seq} holds entry {inner_seq}: an entry was"
                                         " removed, added or moved")
            if inner_prev != prev:
                return Verdict(False, n, f"entry {n} does not follow entry {n - 1}: the chain"
                                         " was cut, reordered or rewritten")
            if not hmac.compare_digest(mac_of(self._key, text.encode()), mac):
                return Verdict(False, n, f"entry {n} was changed after it was written")
            prev = mac
        if head is None:
            return Verdict(False, n, "the chain's head row is gone")
        if head != (len(rows), prev):
            return Verdict(False, len(rows), f"the chain ends at entry {len(rows)} but its head"
                                             f" says {head[0]}: entries were cut off the end,"
                                             " or added after it")
        return Verdict(True, len(rows), f"{len(rows)} entries, chain intact")
