"""The CNIL mode's daily salts on the shared-state database (``AAP_META_URL``), so that
every collector of a deployment hashes a visitor with the same salt on a given day
(:class:`aap.privacy.cnil.DailySalts` uses it when the setting is set; without it the
salts stay files under the data dir).

One row per UTC day in ``cnil_salts`` (``day`` as ``YYYY-MM-DD``, 32 random bytes): the
first collector to need a day's salt inserts one (``INSERT … ON CONFLICT (day) DO
NOTHING``) and every collector then reads the row that won, as the files are linked into
place first-writer-wins. The salt stays random and deletable: a salt derived from a
shared secret (an HMAC of the day) could be derived again after its day, which is what
the CNIL's deletion condition rules out. Rows whose day began 48 hours ago or more are
deleted (:meth:`SaltTable.purge`), and the table is then rewritten (``VACUUM FULL``), so
the deleted salt's bytes leave the table's files at once instead of staying in a dead
tuple until a later VACUUM; PostgreSQL's WAL (and any backup or replica of the server)
still holds the inserted row until it is recycled (see README, "Shared state on
PostgreSQL").
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, date, datetime, timedelta

from aap.errors import ServiceUnavailable
from aap.store.meta import MetaUnavailable, PostgresMeta, SharedStateUnavailable
from aap.store.migrations import Schema

logger = logging.getLogger(__name__)

TABLE = "cnil_salts"
LIFETIME = timedelta(hours=48)
"""A salt is deleted 48 hours after its UTC day began."""

_SQLITE = """
CREATE TABLE IF NOT EXISTS cnil_salts (
    day TEXT PRIMARY KEY,
    salt BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
"""
_PG = """
CREATE TABLE IF NOT EXISTS cnil_salts (
    day TEXT PRIMARY KEY,
    salt BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
"""
SCHEMA = Schema(TABLE, _SQLITE, postgres=_PG, steps=())


class SaltsUnavailable(ServiceUnavailable, SharedStateUnavailable):
    """The shared salts cannot be read or written now: a CNIL-mode event waits (503)
    rather than be hashed with a salt of this collector's own."""

    code = "salts_unavailable"


def began(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


def expired(day: date, now: datetime) -> bool:
    """The day's salt must be gone: its day began 48 hours ago or more."""
    return began(day) + LIFETIME <= now.astimezone(UTC)


class SaltTable:
    """The daily salts in ``cnil_salts`` on the PostgreSQL database at ``url``."""

    def __init__(self, url: str) -> None:
        try:
            self._db = PostgresMeta(url)
            self._db.migrate(SCHEMA)
        except Exception as exc:
            _refuse(exc, "AAP_META_URL")
            raise
        self.where = f"table {TABLE} on {self._db.where}"

    def load_or_create(self, day: date) -> bytes:
        """The day's salt; made if no collector has made it yet (the first one wins)."""
        key = day.isoformat()
        try:
            self._db.execute(f"INSERT INTO {TABLE} (day, salt, created_at) VALUES (?, ?, ?)"
                             " ON CONFLICT (day) DO NOTHING",
                             (key, secrets.token_bytes(32), int(datetime.now(UTC).timestamp())))
            row = self._db.fetchone(f"SELECT salt FROM {TABLE} WHERE day = ?", (key,))
        except Exception as exc:
            _refuse(exc, self.where)
            raise
        if row is None:  # deleted between the two statements: only a day 48 h old is
            raise SaltsUnavailable(f"the CNIL salt of {key} is past its 48 hours")
        return bytes(row[0])

    def days(self) -> list[date]:
        """The days that have a salt in the table."""
        return [date.fromisoformat(str(d)) for (d,) in
                self._db.fetchall(f"SELECT day FROM {TABLE} ORDER BY day")]

    def expired(self, now: datetime) -> list[date]:
        return [d for d in self.days() if expired(d, now)]

    def purge(self, now: datetime) -> int:
        """Delete the salts whose day began 48 hours ago or more, then rewrite the table
        when one went (its bytes leave the table's files); returns how many went."""
        cutoff = (now.astimezone(UTC) - LIFETIME).date().isoformat()
        gone = self._db.execute(f"DELETE FROM {TABLE} WHERE day <= ?", (cutoff,))
        if gone:
            self._db.execute(f"VACUUM FULL {TABLE}")
        return gone


def _refuse(exc: Exception, where: str) -> None:
    """Raises :class:`SaltsUnavailable` when the server cannot be reached or refuses now (a
    lost connection, a pool with none), logged with the reason (the client is told no
    more than that); returns for any other error (raised as it is)."""
    import psycopg

    if isinstance(exc, (psycopg.OperationalError, MetaUnavailable)):
        logger.warning("the shared CNIL salts (%s) cannot be used now: %s", where, exc)
        raise SaltsUnavailable("the CNIL mode's daily salt is on the shared-state database,"
                               " which cannot be reached now: try again") from exc
