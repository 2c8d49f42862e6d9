"""The data dir: :class:`DataDir` names every path under it; and it belongs to its owner
alone: directories 0700, files 0600.

Every process that writes it (``aap serve``, ``aap process`` and the CLI commands) sets
the umask to 0o077 first, so what it creates (SQLite files and their ``-wal``/``-shm``
files, warehouse and tier files, sockets, exports, receipts, the audit log) is closed
to group and others; :func:`secure` also closes what an older version left open.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

UMASK = 0o077

LOG_DB = "log.db"
"""The durable log's SQLite file, in the log's directory."""
LOG_WRITE_LOCK = "write.lock"
LOG_POSITIONS_DB = "positions.db"
"""The consumer groups' positions in the SQLite log (for lag metrics), in the log's
directory: a file apart from the log's, so that a consumer noting its position never
holds the lock the collectors' appends wait for."""
HOT_DB = "hot.duckdb"
"""The warehouse's hot tier, in the warehouse's directory."""


UNIX_PATH_MAX = 107
"""Bytes in a Unix socket's path (``sun_path`` is 108 with its terminating NUL)."""


@dataclass(frozen=True)
class DataDir:
    """Every path under a data dir (``root``), by what it holds."""

    root: Path

    # -- run/: what lives as long as the server runs --
    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def core_socket(self) -> Path:
        """The core process's Unix socket (queries, privacy requests)."""
        return self.run / "core.sock"

    @property
    def metrics(self) -> Path:
        """The collector workers' Prometheus files (made afresh at each start)."""
        return self.run / "metrics"

    # -- log/ --
    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def log_db(self) -> Path:
        return self.log / LOG_DB

    @property
    def log_positions_db(self) -> Path:
        return self.log / LOG_POSITIONS_DB

    # -- the registries beside the log --
    @property
    def meta_db(self) -> Path:
        """Sources, API keys, web sessions, cohorts, saved insights, dashboards and devices
        (without ``AAP_META_URL``: :mod:`aap.store.meta`)."""
        return self.root / "meta.db"

    @property
    def identities_db(self) -> Path:
        """Identities and merges shared by processors (:mod:`aap.store.identities`), when
        ``AAP_META_URL`` is not PostgreSQL (the embedded processor keeps them in its
        warehouse instead)."""
        return self.root / "identities.db"

    @property
    def tier_list_db(self) -> Path:
        """The list of live tier files when processors publish batch files
        (:mod:`aap.store.filelist`) and ``AAP_META_URL`` is not PostgreSQL."""
        return self.root / "tiers.db"

    @property
    def imports(self) -> Path:
        """Each import's last durable input position (``aap import``): counts, no data."""
        return self.root / "imports"

    # -- warehouse/ and tiers/ --
    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse"

    @property
    def hot_db(self) -> Path:
        return self.warehouse / HOT_DB

    @property
    def tiers(self) -> Path:
        """Warm and cold files, unless ``AAP_TIER_URL`` puts them elsewhere."""
        return self.root / "tiers"

    # -- keys/ --
    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def master_key(self) -> Path:
        return self.keys / "master.key"

    @property
    def keystore_db(self) -> Path:
        return self.keys / "keystore.db"

    @property
    def id_hash_key(self) -> Path:
        return self.keys / "id-hash.key"

    @property
    def subject_token_key(self) -> Path:
        return self.keys / "subject-token.key"

    @property
    def audit_key(self) -> Path:
        return self.keys / "audit.key"

    @property
    def cnil_salts(self) -> Path:
        return self.keys / "cnil-salts"

    # -- privacy/ --
    @property
    def privacy(self) -> Path:
        return self.root / "privacy"

    @property
    def purposes(self) -> Path:
        return self.privacy / "purposes.json"

    @property
    def consent_db(self) -> Path:
        return self.privacy / "consent.db"

    @property
    def requests_db(self) -> Path:
        return self.privacy / "requests.db"

    @property
    def audit_log(self) -> Path:
        return self.privacy / "audit.jsonl"

    @property
    def audit_head(self) -> Path:
        return self.privacy / "audit.head"

    @property
    def receipts(self) -> Path:
        return self.privacy / "receipts"

    @property
    def exports(self) -> Path:
        return self.privacy / "exports"


def restrict_umask() -> None:
    """Files and directories this process (and its children) create: owner only."""
    os.umask(UMASK)


def secure(data_dir: Path) -> None:
    """Create ``data_dir`` 0700 if needed, and take group and other permissions off it
    and everything under it (symlinks are not followed)."""
    restrict_umask()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    for root, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077:
                continue
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)
