"""Keyed hashes of raw identifiers (userId, anonymousId, previousId).

Lookups by raw id go through :class:`IdHasher`: a 64-bit BLAKE2b MAC under a secret
kept in ``DATA_DIR/keys/id-hash.key`` (mode 0600). Without the secret the stored keys
cannot be tested against guessed ids.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from aap.datadir import DataDir


def load_or_create_secret(path: Path) -> bytes:
    """The secret in ``path``; made if missing. Several processes may start at once: the
    secret is written to a temporary file and linked into place, so a reader never sees
    half of it and the first one to link wins."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(32))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return path.read_bytes()



def key_of(setting: str, path: Path) -> bytes:
    """The key given as ``AAP_<SETTING>`` (from a Secret: the same for every process of a
    deployment, and on no disk), else the secret in the file ``path`` (made if missing)."""
    from aap.settings import PrivacySettings

    return PrivacySettings.load().key_bytes(setting) or load_or_create_secret(path)

MAX_CACHED = 200_000
"""Raw ids whose keyed hash is remembered, cleared beyond."""


class IdHasher:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._cache: dict[str, int] = {}

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> IdHasher:
        return cls(key_of("id_hash_key", DataDir(data_dir).id_hash_key))

    def key(self, raw: str) -> int:
        """A signed 64-bit key (fits DuckDB BIGINT and SQLite INTEGER)."""
        k = self._cache.get(raw)
        if k is None:
            digest = hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=8,
                                     key=self._secret).digest()
            k = int.from_bytes(digest, "big", signed=True)
            if len(self._cache) > MAX_CACHED:
                self._cache.clear()
            self._cache[raw] = k
        return k
