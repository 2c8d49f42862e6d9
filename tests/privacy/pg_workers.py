"""What the processes of tests/privacy/test_requests_pg.py run (spawned: kept free of
pytest's imports so that they start quickly)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from aap.datadir import DataDir
from aap.privacy.audit import AuditLog
from aap.privacy.ids import IdHasher
from aap.privacy.keystore import Keystore
from aap.privacy.requests import Requests
from aap.privacy.rights import Rights
from aap.store.meta import open_meta
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse


def core_side(data_dir: Path, url: str, **kw: Any) -> tuple[Requests, Warehouse]:
    """A core's request worker on ``data_dir`` (its own warehouse) and the shared state
    at ``url``, as :class:`aap.core.app.Core` makes it."""
    paths = DataDir(data_dir)
    wh = Warehouse(paths.warehouse, tiers=TierStore(TierConfig(str(paths.tiers))))
    rights = Rights(data_dir, wh, Keystore(data_dir, url=url), IdHasher.for_data_dir(data_dir),
                    AuditLog(data_dir, url=url))
    return Requests(data_dir, rights, url=url, **kw), wh


def work_off(data_dir: str, url: str, barrier: Any, result: Any) -> None:
    """Start a request worker at the same moment as the other process; stop once no
    request is pending or running (at most 180 s); say how many this worker finished."""
    os.environ["AAP_META_URL"] = url
    requests, wh = core_side(Path(data_dir), url)
    db = open_meta(Path(data_dir) / "unused.db", url)
    barrier.wait(timeout=120)
    requests.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        row = db.fetchone("SELECT count(*) FROM requests WHERE status IN ('pending', 'running')")
        if row is not None and row[0] == 0:
            break
        time.sleep(0.05)
    requests.close()
    mine = db.fetchone("SELECT count(*) FROM requests WHERE claimed_by = ?", (requests.worker,))
    wh.close()
    result.put((requests.worker, int(mine[0]) if mine else 0))
