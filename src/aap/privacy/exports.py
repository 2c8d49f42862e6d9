"""Access exports at rest: sealed under the person's own data key.

An access export (:meth:`aap.privacy.rights.Rights.access`) holds the person's raw ids
and rectified personal traits in plain text inside its zip, so AAP keeps it only sealed:
``DATA_DIR/privacy/exports/<id>.zip.sealed`` is ``MAGIC || subject (8 bytes) ||
nonce || AES-GCM(zip)`` under the data key of one of the person's ids. It is opened
when it is downloaded (``GET …/{id}/export``, ``aap privacy export``); once the person
is erased the key is gone (the file no longer opens) and the erasure deletes the file.

A copy handed out — downloaded by the person, written by ``aap privacy export --out`` —
is plain text by design and outside AAP: no key of AAP's reaches it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path

from aap.privacy.keystore import KeyDestroyed, Keystore

MAGIC = b"AAPX1"
SUFFIX = ".zip.sealed"
_HEAD = len(MAGIC) + 8


def write(keystore: Keystore, directory: Path, export_id: str, subjects: Iterable[int],
          data: bytes) -> Path | None:
    """Seal ``data`` under the first of ``subjects`` with a live data key; ``None`` (and
    nothing written) when every one of them is destroyed."""
    for subject in subjects:
        key = keystore.keys_for([subject], create=True).get(subject)
        if key is None:
            continue
        path = directory / f"{export_id}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack(">q", subject)
                    + keystore.seal(key, subject, "export", data))
        return path
    return None


def subject_of(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    if len(head) != _HEAD or not head.startswith(MAGIC):
        return None
    return int(struct.unpack(">q", head[len(MAGIC):])[0])


def read(keystore: Keystore, path: Path) -> bytes:
    """The zip, or :class:`KeyDestroyed` once the person was erased (or the file is not
    a sealed export)."""
    blob = path.read_bytes()
    if not blob.startswith(MAGIC):
        raise KeyDestroyed(f"{path.name} is not a sealed export")
    subject = int(struct.unpack(">q", blob[len(MAGIC):_HEAD])[0])
    return keystore.open(subject, "export", blob[_HEAD:])


def delete_for(directory: Path, subjects: Iterable[int]) -> int:
    """Delete the exports sealed under any of ``subjects``; how many."""
    subs = set(subjects)
    n = 0
    for path in directory.glob(f"*{SUFFIX}"):
        if subject_of(path) in subs:
            path.unlink(missing_ok=True)
            n += 1
    return n
