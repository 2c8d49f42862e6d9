"""Consent-exempt audience measurement under the CNIL's conditions (sources created with
``--mode cnil``).

For the events of such a source the collector keeps anonymous statistics only:
``identify``, ``alias`` and ``group`` calls are rejected; userId, anonymousId,
previousId, groupId, traits, session and device ids are dropped; the visitor is a
**daily salted hash** of (truncated IP, user agent, source id) — a different salt each
UTC day, so the same visitor has another id tomorrow and on another site; the IP serves
the city-level location and is not kept at all, not even truncated. Salts live in
``DATA_DIR/keys/cnil-salts/DAY.salt`` (0600; created atomically, so every collector
worker and a restart within the day use the same one) and are deleted 48 hours after
their day began, by the workers when the day changes and by the core's retention job.
The events serve the exempt purpose ``audience_measurement`` only (legitimate interest,
no consent needed); an event whose consent says ``audience_measurement: false`` is not
stored (the person objected). ``aap privacy check --cnil`` checks each condition.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from aap.datadir import DataDir
from aap.events import Event
from aap.privacy.ids import load_or_create_secret
from aap.settings import Settings

CNIL = "cnil"
SALT_LIFETIME = timedelta(hours=48)
NOT_ANONYMOUS = "not_anonymous"
NOT_ANONYMOUS_TEXT = ("the source measures audience anonymously (CNIL mode):"
                      " identify, alias and group calls are not accepted")
_DROPPED_CONTEXT = ("traits", "sessionId", "externalIds", "ip")
_DROPPED_DEVICE = ("id", "advertisingId", "adTrackingEnabled", "token")
_DROPPED_PROPERTIES = ("$session_id", "$device_id", "$anon_distinct_id", "distinct_id",
                       "$user_id", "$window_id")


class DailySalts:
    """One random salt per UTC day, shared through files, deleted after 48 hours."""

    def __init__(self, data_dir: Path, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
                 ) -> None:
        self.dir = DataDir(data_dir).cnil_salts
        self.clock = clock
        self._day: date | None = None
        self._salt = b""

    def path(self, day: date) -> Path:
        return self.dir / f"{day.isoformat()}.salt"

    def today(self) -> bytes:
        day = self.clock().astimezone(UTC).date()
        if day != self._day:
            self._salt = load_or_create_secret(self.path(day))  # 0600, atomic, first wins
            self._day = day  # the previous day's salt leaves memory here
            self.purge()
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
        now = (now or self.clock()).astimezone(UTC)
        return [p for day, p in self.on_disk()
                if datetime.combine(day, datetime.min.time(), UTC) + SALT_LIFETIME <= now]

    def purge(self, now: datetime | None = None) -> int:
        """Delete the salts whose day began 48 hours ago or more."""
        gone = 0
        for p in self.expired(now):
            try:
                p.unlink()
                gone += 1
            except FileNotFoundError:
                pass
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


def salt_file_modes(salts: DailySalts) -> list[tuple[Path, int]]:
    return [(p, os.stat(p).st_mode & 0o777) for _, p in salts.on_disk()]


Check = tuple[str, bool, str]
"""(condition, passed, what was found)."""


def check_source(source: Any, registry: Any, settings: Settings, salts: DailySalts,
                 sql: Callable[[str, list[Any]], list[Any]],
                 log_events: Callable[[str], list[Event]], now: datetime) -> list[Check]:
    """Each of the CNIL's conditions for a source in CNIL mode, from its configuration and
    the data on disk (the warehouse through ``sql``, the log through ``log_events``)."""
    sid = source.id
    out: list[Check] = []
    declared = dict(source.purposes)
    exempt = {p.id for p in registry.purposes.values() if p.cnil_exempt}
    ok = bool(declared) and set(declared) <= exempt and all(
        b == "legitimate_interest" for b in declared.values())
    out.append(("purpose_audience_measurement_only", ok,
                f"purposes {', '.join(f'{p}:{b}' for p, b in declared.items())}"
                f" (exempt: {', '.join(sorted(exempt)) or 'none'})"))

    [[identifying, identified, with_traits]] = sql(
        "SELECT count(*) FILTER (WHERE e.type IN ('identify', 'alias', 'group')),"
        " count(DISTINCT e.person_id) FILTER (WHERE p.identified),"
        " count(DISTINCT e.person_id) FILTER (WHERE p.traits IS NOT NULL)"
        " FROM events e LEFT JOIN persons p ON p.person_id = e.person_id WHERE e.source = ?",
        [sid])
    logged = log_events(sid)
    raw = sum(1 for e in logged if e.user_id or e.anonymous_id or e.previous_id or e.user_key
              or e.previous_key or e.traits or e.sealed or e.group_id)
    out.append(("anonymous_statistics_only", not (identifying or identified or with_traits or raw),
                f"{identifying} identify/alias/group events, {identified} identified visitors,"
                f" {with_traits} with traits in the warehouse; {raw} of {len(logged)} log events"
                f" with an id or traits"))

    [[shared]] = sql(
        "SELECT count(DISTINCT person_id) FROM events WHERE source = ? AND person_id IN"
        " (SELECT person_id FROM events WHERE source <> ?)", [sid, sid])
    out.append(("no_cross_site_identifier", not shared,
                f"{shared} visitor ids also seen on another source (the hash includes the"
                f" source id)"))

    [[multi_day]] = sql(
        "SELECT count(*) FROM (SELECT person_id FROM events WHERE source = ? GROUP BY person_id"
        " HAVING count(DISTINCT CAST(received_at AS DATE)) > 1)", [sid])
    modes = salt_file_modes(salts)
    loose = [p.name for p, m in modes if m & 0o077]
    out.append(("daily_salted_hash_instead_of_an_id", not multi_day and not loose,
                f"{multi_day} visitor ids spanning more than one day; salt files"
                f" {'not 0600: ' + ', '.join(loose) if loose else 'all 0600'}"))

    old = salts.expired(now)
    out.append(("salts_deleted_after_48h", not old,
                f"{len(modes)} salt files on disk, {len(old)} older than 48 h"
                + (f": {', '.join(p.name for p in old)}" if old else "")))

    with_ip = sum(1 for e in logged if e.ip)
    ip = settings.privacy
    prefixes_ok = ip.ipv4_prefix <= 24 and ip.ipv6_prefix <= 48
    out.append(("ip_for_city_level_geo_only", not with_ip and prefixes_ok,
                f"{with_ip} log events keep an IP; location is country, region, city only;"
                f" IP truncated to /{ip.ipv4_prefix} and /{ip.ipv6_prefix} first"))

    days = min([settings.tiers.cold_days, *(registry.get(p).retention.days or 10**9
                                           for p in declared if p in registry)])
    limit = (now.astimezone(UTC).replace(tzinfo=None) - timedelta(days=days, hours=1)
             ).isoformat(sep=" ")
    [[too_old]] = sql("SELECT count(*) FROM events WHERE source = ? AND timestamp < ?",
                      [sid, limit])
    out.append(("kept_at_most_25_months", days <= 760 and not too_old,
                f"retention {days} days (at most 760); {too_old} events older than that"))
    return out


def check_all(settings: Settings, core_running: bool, now: datetime | None = None
              ) -> list[tuple[Any, list[Check]]]:
    """Every source in CNIL mode with its checks. The warehouse is read through the
    running core process, or opened directly when no server runs."""
    import tempfile

    import httpx

    from aap.log.sqlite import SQLiteLog
    from aap.privacy.purposes import Registry
    from aap.sources import Sources
    from aap.store.warehouse import Warehouse

    data = settings.data_path
    registry = Registry.for_data_dir(data)
    sources = [s for s in Sources(data).list() if s.mode == CNIL]
    if not sources:
        return []
    now = now or datetime.now(UTC)
    log_dir = settings.data.log

    def log_events(source_id: str) -> list[Event]:
        from aap.events import decode_events

        if not settings.data.log_db.exists():
            return []
        log = SQLiteLog(log_dir)
        out: list[Event] = []
        try:
            after = 0
            while recs := log.read(after, 1000):
                for r in recs:
                    if r.source == source_id:
                        out.extend(decode_events(r.payload))
                after = recs[-1].offset
        finally:
            log.close()
        return out

    salts = DailySalts(data)
    with tempfile.TemporaryDirectory() as empty:
        if core_running:
            sock = str(settings.data.core_socket)
            with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://core",
                              timeout=600) as core:
                def sql(q: str, params: list[Any]) -> list[Any]:
                    r = core.post("/internal/sql", json={"sql": q, "params": params})
                    if r.status_code != 200:
                        raise ValueError(f"the warehouse query failed: {r.text}")
                    rows: list[Any] = r.json()["rows"]
                    return rows

                return [(s, check_source(s, registry, settings, salts, sql, log_events, now))
                        for s in sources]
        path = settings.data.warehouse
        wh = Warehouse(path if settings.data.hot_db.exists() else Path(empty))
        try:
            def direct(q: str, params: list[Any]) -> list[Any]:
                return wh.query(q, params)[1]

            return [(s, check_source(s, registry, settings, salts, direct, log_events, now))
                    for s in sources]
        finally:
            wh.close()
