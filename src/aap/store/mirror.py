"""A query node's copy of the shared merges: ``person_overrides`` of its reader warehouse
(:mod:`aap.core.reader`) kept equal to the shared ``identity_overrides``
(:mod:`aap.store.identities`, on ``AAP_META_URL``).

Reloaded in full every :data:`RELOAD_S` seconds: one ``SELECT`` of every merge from the
shared store, compared with the table in DuckDB, and only the difference written (rows
whose target changed updated, rows gone deleted, new rows inserted) in one DuckDB
transaction, so a query sees the merges of one reload or the next, never half of one.
The cost is one read of every merge per reload: ~16 bytes a merge (a million merges:
~16 MB read, well under a second on PostgreSQL); incremental reloads (a change sequence,
as the flags have) are not built.
"""

from __future__ import annotations

import logging
import threading
import time

import pyarrow as pa

from aap.store.identities import SharedIdentities
from aap.store.meta import log_failure
from aap.store.warehouse import Warehouse

logger = logging.getLogger("aap.query")

RELOAD_S = 2.0
"""How often the merges are reloaded (seconds): a merge made by a processor shows on a
query node at most this much after the batch files holding its events do."""


class OverridesMirror:
    def __init__(self, warehouse: Warehouse, identities: SharedIdentities,
                 interval_s: float = RELOAD_S) -> None:
        self.wh = warehouse
        self.identities = identities
        self.interval_s = interval_s
        self.loaded_at = 0.0
        """``time.monotonic()`` of the last reload that succeeded (0: none yet)."""
        self.rows = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aap-overrides-mirror",
                                        daemon=True)

    def reload(self) -> int:
        """Bring ``person_overrides`` equal to the shared merges; returns how many rows
        changed."""
        pairs = self.identities.overrides()
        table = pa.table({"old": pa.array([a for a, _ in pairs], pa.int64()),
                          "new": pa.array([b for _, b in pairs], pa.int64())})
        with self.wh.write_lock, self.wh.transaction() as cur:
            cur.register("shared_overrides", table)
            changed = _count(cur.execute(
                "UPDATE person_overrides o SET person_id = s.new FROM shared_overrides s"
                " WHERE s.old = o.old_person_id AND o.person_id <> s.new"))
            changed += _count(cur.execute(
                "DELETE FROM person_overrides WHERE old_person_id NOT IN"
                " (SELECT old FROM shared_overrides)"))
            changed += _count(cur.execute(
                "INSERT INTO person_overrides SELECT s.old, s.new FROM shared_overrides s"
                " ANTI JOIN person_overrides o ON o.old_person_id = s.old"))
            cur.unregister("shared_overrides")
        self.rows = len(pairs)
        self.loaded_at = time.monotonic()
        return changed

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.reload()
            except Exception as exc:  # the shared store away for a while: again next turn
                self.failures += 1
                log_failure(logger, "reloading the shared merges failed", exc)
            self._stop.wait(self.interval_s)


def _count(res: object) -> int:
    row = res.fetchone()  # type: ignore[attr-defined]
    return int(row[0]) if row and row[0] is not None else 0
