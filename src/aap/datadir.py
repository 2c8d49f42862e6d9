"""The data dir belongs to its owner alone: directories 0700, files 0600.

Every process that writes it (``aap serve``, ``aap process`` and the CLI commands) sets
the umask to 0o077 first, so what it creates (SQLite files and their ``-wal``/``-shm``
files, warehouse and tier files, sockets, exports, receipts, the audit log) is closed
to group and others; :func:`secure` also closes what an older version left open.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

UMASK = 0o077


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
