"""The audit log: an append-only, hash-chained record of consent changes, rights
requests, reads of personal data, key operations and admin actions.

``DATA_DIR/privacy/audit.jsonl`` holds one JSON object per line: ``seq``, ``at`` (UTC,
ISO 8601), ``actor``, ``action``, ``detail``, ``prev`` (the previous entry's ``mac``)
and ``mac``, an HMAC-SHA256 of the entry's canonical JSON (without ``mac``) under a
secret in ``DATA_DIR/keys/audit.key`` (0600). ``DATA_DIR/privacy/audit.head`` holds the
count and the last ``mac``. :func:`verify` recomputes the chain: an edited entry breaks
its own ``mac``, a removed or reordered one breaks ``seq`` or ``prev``, and entries cut
off the end no longer match the head. Without the key, a changed entry cannot be given
a valid ``mac``. Entries never hold raw personal identifiers.

Writers in several processes (collector workers, the core, the CLI) append under an
``flock`` of the file; each append is fsynced before the call returns.

With ``AAP_META_URL`` set, the chain is rows of the shared-state database instead
(:mod:`aap.privacy.audit_table`), one chain for every process given that URL; the entries
and the MAC are the same, and the key is still the file ``keys/audit.key``, which every
process must share and which never goes to the database.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import os
from pathlib import Path
from typing import Any

from aap.datadir import DataDir
from aap.privacy.audit_chain import GENESIS, Verdict, canonical, mac_of, new_entry
from aap.privacy.audit_table import AuditTable
from aap.privacy.ids import key_of
from aap.store.meta import meta_url, open_meta

__all__ = ["GENESIS", "AuditLog", "Verdict", "canonical", "local_actor", "mac_of"]

class AuditLog:
    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        """``url``: the shared-state database (``None``: ``AAP_META_URL``; empty: the file
        under the data dir)."""
        paths = DataDir(data_dir)
        paths.privacy.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = paths.audit_log
        self.head_path = paths.audit_head
        self._key = key_of("audit_key", paths.audit_key)
        url = meta_url() if url is None else url
        self._table: AuditTable | None = None
        if url:
            self._table = AuditTable(open_meta(paths.privacy / "audit.db", url), self._key,
                                     paths.audit_key)

    def _mac(self, entry: dict[str, Any]) -> str:
        return mac_of(self._key, canonical(entry))

    def append(self, actor: str, action: str, detail: dict[str, Any] | None = None) -> int:
        """Record one action; returns its sequence number."""
        if self._table is not None:
            return self._table.append(actor, action, detail)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            seq, prev = self._head()
            entry = new_entry(seq + 1, prev, actor, action, detail)
            entry["mac"] = self._mac(entry)
            os.write(fd, canonical(entry) + b"\n")
            os.fsync(fd)
            self._write_head(entry["seq"], entry["mac"])
            return int(entry["seq"])
        finally:
            os.close(fd)  # releases the lock

    def _head(self) -> tuple[int, str]:
        try:
            seq, mac = self.head_path.read_text().split()
            return int(seq), mac
        except FileNotFoundError:
            return 0, GENESIS

    def _write_head(self, seq: int, mac: str) -> None:
        tmp = self.head_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{seq} {mac}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.head_path)

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first, each with its ``mac``."""
        if self._table is not None:
            return self._table.entries()
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_bytes().splitlines() if line]

    def verify(self) -> Verdict:
        """Recompute the chain; the first problem found, if any."""
        if self._table is not None:
            return self._table.verify()
        try:
            lines = self.path.read_bytes().splitlines() if self.path.exists() else []
        except OSError as exc:
            return Verdict(False, 0, f"cannot read the audit log: {exc}")
        prev, n = GENESIS, 0
        for n, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
                mac = entry.pop("mac")
            except (ValueError, KeyError, AttributeError):
                return Verdict(False, n, f"line {n} is not an audit entry")
            if entry.get("seq") != n:
                return Verdict(False, n, f"line {n} has seq {entry.get('seq')}: an entry was"
                                         " removed, added or moved")
            if entry.get("prev") != prev:
                return Verdict(False, n, f"entry {n} does not follow entry {n - 1}: the chain"
                                         " was cut, reordered or rewritten")
            if not hmac.compare_digest(self._mac(entry), str(mac)):
                return Verdict(False, n, f"entry {n} was changed after it was written")
            prev = mac
        seq, head = self._head()
        if (seq, head) != (len(lines), prev):
            return Verdict(False, len(lines), f"the log ends at entry {len(lines)} but its head"
                                              f" says {seq}: entries were cut off the end")
        return Verdict(True, len(lines), f"{len(lines)} entries, chain intact")


def local_actor() -> str:
    """Who runs a command on this machine, for the audit log: ``cli:<OS user>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"
