"""Consent-exempt audience measurement under the CNIL's conditions (sources created with
``--mode cnil``).

For the events of such a source the collector keeps anonymous statistics only:
``identify``, ``alias`` and ``group`` calls are rejected; userId, anonymousId,
previousId, groupId, traits, session and device ids are dropped; the visitor is a
**daily salted hash** of (truncated IP, user agent, source id) — a different salt each
UTC day, so the same visitor has another id tomorrow and on another site; the IP serves
the city-level location and is not kept at all, not even truncated. Salts live in
``DATA_DIR/keys/cnil-salts/DAY.salt`` (0600; created atomically, so every collector
worker and a restart within the day use the same one) or, when ``AAP_META_URL`` is set,
in the shared-state database (:mod:`aap.privacy.salt_table`), so that collectors on
different data dirs (pods, machines) behind one load balancer count a visitor once; they
are deleted 48 hours after their day began, by the workers when the day changes and by
the core's retention job.
The events serve the exempt purpose ``audience_measurement`` only (legitimate interest,
no consent needed); an event whose consent says ``audience_measurement: false`` is not
stored (the person objected). ``aap privacy check --cnil`` checks each condition
(:mod:`aap.privacy.cnil_check`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

from aap.datadir import DataDir
from aap.events import Event
from aap.privacy.ids import load_or_create_secret
from aap.privacy.salt_table import SaltTable, expired
from aap.store.meta import meta_url

logger = logging.getLogger(__name__)

CNIL = "cnil"
NOT_ANONYMOUS = "not_anonymous"
NOT_ANONYMOUS_TEXT = ("the source measures audience anonymously (CNIL mode):"
                      " identify, alias and group calls are not accepted")
_DROPPED_CONTEXT = ("traits", "sessionId", "externalIds", "ip")
_DROPPED_DEVICE = ("id", "advertisingId", "adTrackingEnabled", "token")
_DROPPED_PROPERTIES = ("$session_id", "$device_id", "$anon_distinct_id", "distinct_id",
                       "$user_id", "$window_id")


class DailySalts:
    """One random salt per UTC day, deleted after 48 hours: files under the data dir, or
    rows of the shared-state database when ``AAP_META_URL`` is set."""

    def __init__(self, data_dir: Path, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 url: str | None = None) -> None:
        """``url``: the shared-state database (``None``: ``AAP_META_URL``; empty: the
        files)."""
        self.dir = DataDir(data_dir).cnil_salts
        self.clock = clock
        self.url = meta_url() if url is None else url
        self._table: SaltTable | None = None
        self._day: date | None = None
        self._salt = b""

    @property
    def table(self) -> SaltTable | None:
        """The shared salts (``None`` without ``AAP_META_URL``), opened on first use."""
        if self.url and self._table is None:
            self._table = SaltTable(self.url)
        return self._table

    def path(self, day: date) -> Path:
        return self.dir / f"{day.isoformat()}.salt"

    def today(self) -> bytes:
        day = self.clock().astimezone(UTC).date()
        if day != self._day:
            table = self.table
            self._salt = (table.load_or_create(day) if table is not None  # first wins
                          else load_or_create_secret(self.path(day)))  # 0600, atomic, first wins
            self._day = day  # the previous day's salt leaves memory here
            try:
                self.purge()
            except Exception:  # the core's retention job deletes them too
                logger.warning("could not delete the CNIL salts past 48 hours (%s)",
                               "the shared table" if self.url else self.dir, exc_info=True)
        return self._salt

    def on_disk(self) -> list[tuple[date, Path]]:
        if not self.dir.exists():
            return []
        out = []
        for p in sorted(self.dir.glob("*.salt")):
            try:
                out.append((date.fromisoformat(p.stem), p))
            except ValueError:
                continue
        return out

    def expired(self, now: datetime | None = None) -> list[Path]:
        """The salt files past their 48 hours (the shared ones: :meth:`SaltTable.expired`)."""
        now = now or self.clock()
        return [p for day, p in self.on_disk() if expired(day, now)]

    def purge(self, now: datetime | None = None) -> int:
        """Delete the salts whose day began 48 hours ago or more: the files (a data dir
        that moved to ``AAP_META_URL`` keeps none past them either) and the shared rows."""
        now = now or self.clock()
        gone = 0
        for p in self.expired(now):
            try:
                p.unlink()
                gone += 1
            except FileNotFoundError:
                pass
        table = self.table
        if table is not None:
            gone += table.purge(now)
        return gone


def visitor_key(salt: bytes, ip: str | None, user_agent: str | None, source_id: str) -> int:
    """The day's visitor id: a keyed BLAKE2b of (truncated IP, user agent, source id) under
    the day's salt, as a signed 64-bit key (like the keyed hashes of ids)."""
    text = "\0".join((ip or "", user_agent or "", source_id))
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8,
                             key=salt).digest()
    return int.from_bytes(digest, "big", signed=True)


def anonymize(ev: Event, salt: bytes, request_user_agent: str | None) -> str | None:
    """Make the event anonymous in place (its ``ip`` must be the truncated one); returns a
    rejection reason for calls that only identify people."""
    if ev.type in ("identify", "alias", "group"):
        return NOT_ANONYMOUS
    ctx = dict(ev.context)
    agent = ctx.get("userAgent") if isinstance(ctx.get("userAgent"), str) else request_user_agent
    ev.anonymous_key = visitor_key(salt, ev.ip, agent, ev.source)
    ev.user_id = ev.anonymous_id = ev.previous_id = ev.group_id = None
    ev.user_key = ev.previous_key = None
    ev.traits = {}
    for k in _DROPPED_CONTEXT:
        ctx.pop(k, None)
    device = ctx.get("device")
    if isinstance(device, dict):
        ctx["device"] = {k: v for k, v in device.items() if k not in _DROPPED_DEVICE}
    ev.context = ctx
    if any(k in ev.properties for k in _DROPPED_PROPERTIES):
        ev.properties = {k: v for k, v in ev.properties.items() if k not in _DROPPED_PROPERTIES}
    ev.ip = None  # used for the coarse location only
    return None


def opted_out(ev: Event, purposes: tuple[tuple[str, str], ...]) -> bool:
    """The event's own consent says no to one of the source's (exempt) purposes."""
    consent = ev.context.get("consent")
    prefs = consent.get("categoryPreferences") if isinstance(consent, dict) else None
    return isinstance(prefs, dict) and any(prefs.get(p) is False for p, _ in purposes)


def source_errors(mode: str, purposes: dict[str, str], exempt: set[str]) -> str | None:
    """Why a source with this mode cannot declare these purposes (None: it can)."""
    if mode == CNIL:
        wrong = [p for p in purposes if p not in exempt]
        if wrong or not purposes:
            return (f"a source in CNIL mode may only serve consent-exempt audience measurement"
                    f" ({', '.join(sorted(exempt)) or 'no such purpose in the registry'});"
                    f" not {', '.join(wrong) or 'nothing'}")
        if any(b != "legitimate_interest" for b in purposes.values()):
            return "the exempt purpose rests on legitimate_interest (no consent is needed)"
    elif mode == "standard":
        used = sorted(set(purposes) & exempt)
        if used:
            return (f"{', '.join(used)} is exempt from consent only under the CNIL's"
                    f" conditions: create the source with --mode cnil")
    else:
        return f"unknown mode {mode!r}: use standard or cnil"
    return None
