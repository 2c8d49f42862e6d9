"""Data-subject rights, run in the core process (which owns the warehouse).

**Erasure** (GDPR Art. 17) of the person behind a userId or anonymousId:

1. the person is found through the keyed hash of the id, with every person merged into
   them and every id they used;
2. the data keys of all those ids are destroyed (crypto-shredding: every sealed copy,
   in the log and in backups, becomes unreadable at once), and the ids join the
   suppression list, so late events are not stored (the collector and the processor
   drop them, counted as ``erased_subject``);
3. the person's rows are physically removed from the hot tables and from every warm and
   cold file that held any (rewritten without them; the old files deleted);
4. a receipt says what was removed where and when, with a SHA-256 digest of itself, and
   the audit log records it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aap.privacy.audit import AuditLog
from aap.privacy.ids import IdHasher
from aap.privacy.keystore import Keystore
from aap.store.warehouse import Warehouse


class Rights:
    def __init__(self, data_dir: Path, warehouse: Warehouse, keystore: Keystore,
                 hasher: IdHasher, audit: AuditLog) -> None:
        self.dir = data_dir / "privacy" / "receipts"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.wh = warehouse
        self.keystore = keystore
        self.hasher = hasher
        self.audit = audit

    def erase(self, user_ids: list[str], anonymous_ids: list[str], actor: str = "privacy"
              ) -> dict[str, Any]:
        """Erase the persons behind these ids; returns the receipt."""
        if not user_ids and not anonymous_ids:
            raise ValueError("name at least one userId or anonymousId")
        t0 = time.perf_counter()
        started = datetime.now(UTC)
        keys = [self.hasher.key(x) for x in (*user_ids, *anonymous_ids)]
        persons, all_keys = self.wh.person_closure(keys)
        destroyed = self.keystore.destroy(all_keys)
        removed = self.wh.erase_persons(persons)
        receipt: dict[str, Any] = {
            "id": "er_" + secrets.token_hex(8),
            "type": "erasure",
            "requested": {"userIds": len(user_ids), "anonymousIds": len(anonymous_ids)},
            "started_at": started.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "seconds": round(time.perf_counter() - t0, 3),
            "persons": len(persons),
            "identifiers_suppressed": len(all_keys),
            "data_keys_destroyed": destroyed,
            "removed": removed,
            "where": {"log": "sealed copies unreadable (data keys destroyed); records expire"
                             " with the log's retention",
                      "hot": "rows deleted", "warm": "files rewritten without the rows",
                      "cold": "archives rewritten without the rows"},
        }
        receipt["digest"] = hashlib.sha256(
            json.dumps(receipt, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        path = self.dir / f"{receipt['id']}.json"
        path.write_text(json.dumps(receipt, indent=1) + "\n")
        path.chmod(0o600)
        self.audit.append(actor, "privacy.erasure", {
            "receipt": receipt["id"], "digest": receipt["digest"], "persons": len(persons),
            "identifiers": len(all_keys)})
        return receipt
