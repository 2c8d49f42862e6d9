"""The device registry (IoT): devices of a source, their keys, owners and broker access.

``aap devices register --source S --name thermostat-12 [--owner-user-id U]`` issues a
device key (``dk_…``, a random 192-bit token shown once; only its SHA-256 is stored, as
for write keys). A device's id (``dev_…``) is a random pseudonym, never a serial number:
its events carry it. A device may have an owner (a person's userId): the registry keeps
the owner's keyed hash only (:mod:`aap.privacy.devices`), and the owner's consent then
governs the device's events.

The MQTT bridge authenticates devices through the broker: the registry writes a
mosquitto password file (PBKDF2-SHA512, mosquitto's own ``$7$`` format) and an ACL file
under ``DATA_DIR/devices/`` in which each device may publish only to its own topic
``aap/{source}/{device}/events`` and the bridge user may only read them. Point
mosquitto's ``password_file`` and ``acl_file`` at them and send it SIGHUP after a change.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import time
from pathlib import Path

import msgspec

from aap.datadir import DataDir
from aap.privacy.audit import AuditLog
from aap.privacy.devices import remember_owner
from aap.sources import Sources, hash_key
from aap.store.meta import is_conflict, open_meta
from aap.store.migrations import Schema

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    source_id TEXT NOT NULL,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    key_hint TEXT NOT NULL,
    broker_hash TEXT NOT NULL,
    owner_subject INTEGER,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    UNIQUE (source_id, name)
);
CREATE TABLE IF NOT EXISTS broker_users (
    username TEXT PRIMARY KEY,
    broker_hash TEXT NOT NULL
);
"""
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT COLLATE "C" PRIMARY KEY,
    source_id TEXT NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    key_hint TEXT NOT NULL,
    broker_hash TEXT NOT NULL,
    owner_subject BIGINT,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    UNIQUE (source_id, name)
);
CREATE TABLE IF NOT EXISTS broker_users (
    username TEXT COLLATE "C" PRIMARY KEY,
    broker_hash TEXT NOT NULL
);
"""
SCHEMA = Schema("devices", _SCHEMA, postgres=_PG_SCHEMA, steps=(), shares_file=True)
"""The registry's schema versions (:mod:`aap.store.migrations`)."""
DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TOPIC = "aap/{source}/{device}/events"
BRIDGE_USER = "aap-bridge"


class Device(msgspec.Struct, frozen=True):
    id: str
    source_id: str
    name: str
    key_hint: str
    owner_subject: int | None
    created_at: int
    revoked_at: int | None = None


def broker_hash(password: str, salt: bytes | None = None) -> str:
    """mosquitto's password hash (``mosquitto_passwd``): PBKDF2-SHA512, 101 rounds."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return f"$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def topic_safe(name: str) -> bool:
    return bool(name) and not any(c in name for c in "/+#\0") and len(name.encode()) < 200


class Devices:
    """The registry, a table of ``meta.db`` beside the sources, or of the shared state on
    PostgreSQL when ``AAP_META_URL`` is set (:mod:`aap.store.meta`). The broker's files
    are written under this data dir from the registry as it is (with ``AAP_META_URL``:
    every data dir's devices)."""

    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        """``url``: the shared-state database (``None``: ``AAP_META_URL``; empty: the
        SQLite file under the data dir)."""
        self.data_dir = data_dir
        self.sources = Sources(data_dir, url)
        self._db = open_meta(DataDir(data_dir).meta_db, url)
        self._db.migrate(SCHEMA)

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "devices"

    def register(self, source_name: str, name: str, owner_user_id: str | None = None,
                 actor: str = "admin") -> tuple[Device, str]:
        """A new device of the source; returns it with its key (the only time it is seen)."""
        src = self.sources.by_name(source_name)
        if src is None:
            raise ValueError(f"no source named {source_name!r}")
        if not topic_safe(src.name):
            raise ValueError(f"source name {src.name!r} cannot be an MQTT topic level"
                             " (no '/', '+' or '#')")
        if not DEVICE_NAME.match(name):
            raise ValueError("a device name is 1 to 64 letters, digits, '.', '_' or '-'")
        if owner_user_id is not None and not owner_user_id.strip():
            raise ValueError("--owner-user-id must not be empty")
        owner = remember_owner(self.data_dir, owner_user_id) if owner_user_id else None
        key = "dk_" + secrets.token_urlsafe(24)
        dev = Device("dev_" + secrets.token_hex(8), src.id, name, key[:7] + "…", owner,
                     int(time.time()))
        try:
            self._db.execute(
                "INSERT INTO devices (id, source_id, name, key_hash, key_hint, broker_hash,"
                " owner_subject, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (dev.id, dev.source_id, name, hash_key(key), dev.key_hint, broker_hash(key),
                 owner, dev.created_at))
        except Exception as exc:
            if not is_conflict(exc):
                raise
            raise ValueError(f"source {source_name!r} already has a device named {name!r}"
                             ) from None
        AuditLog(self.data_dir).append(actor, "device.registered", {
            "device": dev.id, "source": src.id, "name": name, "owned": owner is not None})
        self.write_broker_files()
        return dev, key

    def revoke(self, ref: str, actor: str = "admin") -> Device:
        """Revoke a device (by id): its key stops working, its broker access is removed."""
        dev = self.by_id(ref)
        if dev is None:
            raise ValueError(f"no device {ref!r}")
        if dev.revoked_at is None:
            now = int(time.time())
            self._db.execute("UPDATE devices SET revoked_at = ? WHERE id = ?", (now, dev.id))
            AuditLog(self.data_dir).append(actor, "device.revoked", {"device": dev.id})
            self.write_broker_files()
            dev = msgspec.structs.replace(dev, revoked_at=now)
        return dev

    def bridge_password(self, actor: str = "admin") -> str:
        """A new password for the bridge's broker user (shown once)."""
        password = secrets.token_urlsafe(24)
        self._db.execute("INSERT INTO broker_users (username, broker_hash) VALUES (?, ?)"
                         " ON CONFLICT (username) DO UPDATE SET broker_hash = excluded.broker_hash",
                         (BRIDGE_USER, broker_hash(password)))
        AuditLog(self.data_dir).append(actor, "device.bridge_password", {"user": BRIDGE_USER})
        self.write_broker_files()
        return password

    def by_key(self, key: str) -> Device | None:
        row = self._db.fetchone(f"SELECT {_COLUMNS} FROM devices WHERE key_hash = ?"
                                " AND revoked_at IS NULL", (hash_key(key),))
        return Device(*row) if row else None

    def by_id(self, device_id: str) -> Device | None:
        row = self._db.fetchone(f"SELECT {_COLUMNS} FROM devices WHERE id = ?",
                                (device_id,))
        return Device(*row) if row else None

    def by_topic(self, source_name: str, device_name: str) -> Device | None:
        """The live device a topic's levels name (``None``: unknown or revoked)."""
        src = self.sources.by_name(source_name)
        if src is None:
            return None
        row = self._db.fetchone(f"SELECT {_COLUMNS} FROM devices WHERE source_id = ?"
                                " AND name = ? AND revoked_at IS NULL", (src.id, device_name))
        return Device(*row) if row else None

    def list(self) -> list[Device]:
        return [Device(*r) for r in self._db.fetchall(
            f"SELECT {_COLUMNS} FROM devices ORDER BY created_at, name")]

    def write_broker_files(self) -> tuple[Path, Path]:
        """The mosquitto password and ACL files of the live devices and the bridge."""
        names = {s.id: s.name for s in self.sources.list()}
        users = self._db.fetchall("SELECT username, broker_hash FROM broker_users"
                                  " ORDER BY username")
        rows = self._db.fetchall("SELECT id, source_id, name, broker_hash FROM devices"
                                 " WHERE revoked_at IS NULL ORDER BY id")
        passwd = [f"{u}:{h}" for u, h in users] + [f"{d}:{h}" for d, _, _, h in rows]
        acl = [f"user {BRIDGE_USER}", "topic read " + TOPIC.format(source="+", device="+"), ""]
        for dev_id, source_id, name, _ in rows:
            acl += [f"user {dev_id}",
                    "topic write " + TOPIC.format(source=names.get(source_id, "-"), device=name),
                    ""]
        self.broker_dir.mkdir(parents=True, exist_ok=True)
        out = (self.broker_dir / "mosquitto.passwd", self.broker_dir / "mosquitto.acl")
        for path, lines in zip(out, (passwd, acl), strict=True):
            tmp = path.with_suffix(".tmp")
            tmp.write_text("\n".join(lines) + "\n")
            os.chmod(tmp, 0o640)
            tmp.replace(path)
        return out

    def close(self) -> None:
        self._db.close()
        self.sources.close()


_COLUMNS = "id, source_id, name, key_hint, owner_subject, created_at, revoked_at"
