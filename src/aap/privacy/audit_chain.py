"""An audit entry, its MAC and a verdict on a chain: what the audit log's file
(:mod:`aap.privacy.audit`) and its rows in the shared-state database
(:mod:`aap.privacy.audit_table`) have in common."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
"""What the first entry's ``prev`` holds."""


def canonical(entry: dict[str, Any]) -> bytes:
    """The bytes an entry's MAC covers (and the file's line holds, with the MAC)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def new_entry(seq: int, prev: str, actor: str, action: str, detail: dict[str, Any] | None
              ) -> dict[str, Any]:
    """Entry ``seq`` of the chain, following the entry whose MAC is ``prev`` (no MAC yet)."""
    return {"seq": seq, "at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "actor": actor, "action": action, "detail": detail or {}, "prev": prev}


def mac_of(key: bytes, text: bytes) -> str:
    """HMAC-SHA256 of ``text`` under ``key``, in hex."""
    return hmac.new(key, text, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Verdict:
    ok: bool
    entries: int
    message: str
