"""``aap privacy check --cnil``: each of the CNIL's conditions for a source in CNIL mode
(:mod:`aap.privacy.cnil`), checked from its configuration and the data on disk (and the
salts on the shared-state database when ``AAP_META_URL`` is set).

It lives apart from :mod:`aap.privacy.cnil`, which the collector imports on its hot path:
the check reads the source registry, the log and the warehouse."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aap.core.client import CoreClient, CoreError
from aap.datadir import DataDir
from aap.events import Event, decode_events
from aap.log.sqlite import SQLiteLog
from aap.privacy.cnil import CNIL, DailySalts
from aap.privacy.purposes import Registry
from aap.privacy.salt_table import expired
from aap.settings import Settings
from aap.sources import Sources
from aap.store.warehouse import Warehouse

MAX_RETENTION_DAYS = 760
"""25 months: the longest the CNIL lets audience measurement keep its data."""

LOG_READ_BATCH = 1000

Check = tuple[str, bool, str]
"""(condition, passed, what was found)."""

Sql = Callable[[str, list[Any]], list[Any]]


def salt_file_modes(salts: DailySalts) -> list[tuple[Path, int]]:
    return [(p, os.stat(p).st_mode & 0o777) for _, p in salts.on_disk()]


@dataclass
class _Ctx:
    """What the checks of one source read."""

    source: Any
    registry: Any
    settings: Settings
    salts: DailySalts
    sql: Sql
    logged: list[Event]
    now: datetime

    @property
    def declared(self) -> dict[str, str]:
        return dict(self.source.purposes)


def _purpose(c: _Ctx) -> Check:
    declared = c.declared
    exempt = {p.id for p in c.registry.purposes.values() if p.cnil_exempt}
    ok = bool(declared) and set(declared) <= exempt and all(
        b == "legitimate_interest" for b in declared.values())
    return ("purpose_audience_measurement_only", ok,
            f"purposes {', '.join(f'{p}:{b}' for p, b in declared.items())}"
            f" (exempt: {', '.join(sorted(exempt)) or 'none'})")


def _anonymous(c: _Ctx) -> Check:
    [[identifying, identified, with_traits]] = c.sql(
        "SELECT count(*) FILTER (WHERE e.type IN ('identify', 'alias', 'group')),"
        " count(DISTINCT e.person_id) FILTER (WHERE p.identified),"
        " count(DISTINCT e.person_id) FILTER (WHERE p.traits IS NOT NULL)"
        " FROM events e LEFT JOIN persons p ON p.person_id = e.person_id WHERE e.source = ?",
        [c.source.id])
    raw = sum(1 for e in c.logged if e.user_id or e.anonymous_id or e.previous_id or e.user_key
              or e.previous_key or e.traits or e.sealed or e.group_id)
    return ("anonymous_statistics_only", not (identifying or identified or with_traits or raw),
            f"{identifying} identify/alias/group events, {identified} identified visitors,"
            f" {with_traits} with traits in the warehouse; {raw} of {len(c.logged)} log events"
            f" with an id or traits")


def _cross_site(c: _Ctx) -> Check:
    sid = c.source.id
    [[shared]] = c.sql(
        "SELECT count(DISTINCT person_id) FROM events WHERE source = ? AND person_id IN"
        " (SELECT person_id FROM events WHERE source <> ?)", [sid, sid])
    return ("no_cross_site_identifier", not shared,
            f"{shared} visitor ids also seen on another source (the hash includes the"
            f" source id)")


def _daily_hash(c: _Ctx) -> Check:
    [[multi_day]] = c.sql(
        "SELECT count(*) FROM (SELECT person_id FROM events WHERE source = ? GROUP BY person_id"
        " HAVING count(DISTINCT CAST(received_at AS DATE)) > 1)", [c.source.id])
    loose = [p.name for p, m in salt_file_modes(c.salts) if m & 0o077]
    table = c.salts.table
    return ("daily_salted_hash_instead_of_an_id", not multi_day and not loose,
            f"{multi_day} visitor ids spanning more than one day; salt files"
            f" {'not 0600: ' + ', '.join(loose) if loose else 'all 0600'}"
            + (f"; the salts in use are shared, in {table.where}" if table is not None else ""))


def _salts_deleted(c: _Ctx) -> Check:
    files = salt_file_modes(c.salts)
    old = [p.name for p in c.salts.expired(c.now)]
    found = (f"{len(files)} salt files in {c.salts.dir}, {len(old)} older than 48 h"
             + (f": {', '.join(old)}" if old else ""))
    table = c.salts.table
    if table is not None:
        days = table.days()
        shared = [d.isoformat() for d in days if expired(d, c.now)]
        old += shared
        found += (f"; {len(days)} shared salts in {table.where}, {len(shared)} older than"
                  f" 48 h" + (f": {', '.join(shared)}" if shared else ""))
    return ("salts_deleted_after_48h", not old, found)


def _ip(c: _Ctx) -> Check:
    with_ip = sum(1 for e in c.logged if e.ip)
    s = c.settings.privacy
    prefixes_ok = s.ipv4_prefix <= 24 and s.ipv6_prefix <= 48
    return ("ip_for_city_level_geo_only", not with_ip and prefixes_ok,
            f"{with_ip} log events keep an IP; location is country, region, city only;"
            f" IP truncated to /{s.ipv4_prefix} and /{s.ipv6_prefix} first")


def _retention(c: _Ctx) -> Check:
    days = min([c.settings.tiers.cold_days, *(c.registry.get(p).retention.days or 10**9
                                             for p in c.declared if p in c.registry)])
    limit = (c.now.astimezone(UTC).replace(tzinfo=None) - timedelta(days=days, hours=1)
             ).isoformat(sep=" ")
    [[too_old]] = c.sql("SELECT count(*) FROM events WHERE source = ? AND timestamp < ?",
                        [c.source.id, limit])
    return ("kept_at_most_25_months", days <= MAX_RETENTION_DAYS and not too_old,
            f"retention {days} days (at most {MAX_RETENTION_DAYS}); {too_old} events older"
            f" than that")


CHECKS: tuple[Callable[[_Ctx], Check], ...] = (
    _purpose, _anonymous, _cross_site, _daily_hash, _salts_deleted, _ip, _retention)
"""The conditions, in the order they are reported."""


def check_source(source: Any, registry: Any, settings: Settings, salts: DailySalts,
                 sql: Sql, log_events: Callable[[str], list[Event]],
                 now: datetime) -> list[Check]:
    """Each of the CNIL's conditions for a source in CNIL mode, from its configuration and
    the data on disk (the warehouse through ``sql``, the log through ``log_events``)."""
    ctx = _Ctx(source, registry, settings, salts, sql, log_events(source.id), now)
    return [check(ctx) for check in CHECKS]


def _log_reader(data: DataDir) -> Callable[[str], list[Event]]:
    def log_events(source_id: str) -> list[Event]:
        if not data.log_db.exists():
            return []
        log = SQLiteLog(data.log)
        out: list[Event] = []
        try:
            after = 0
            while recs := log.read(after, LOG_READ_BATCH):
                for r in recs:
                    if r.source == source_id:
                        out.extend(decode_events(r.payload))
                after = recs[-1].offset
        finally:
            log.close()
        return out
    return log_events


@contextmanager
def _core_sql(data: Path) -> Iterator[Sql]:
    """The warehouse read through the running core process."""
    with CoreClient(data, timeout=600) as core:
        def sql(q: str, params: list[Any]) -> list[Any]:
            try:
                return core.sql(q, params)
            except CoreError as exc:
                raise ValueError(f"the warehouse query failed: {exc.text}") from None

        yield sql


@contextmanager
def _direct_sql(data: Path) -> Iterator[Sql]:
    """The warehouse opened directly (an empty one when there is none yet)."""
    with tempfile.TemporaryDirectory() as empty:
        dirs = DataDir(data)
        wh = Warehouse(dirs.warehouse if dirs.hot_db.exists() else Path(empty))
        try:
            def direct(q: str, params: list[Any]) -> list[Any]:
                return wh.query(q, params)[1]

            yield direct
        finally:
            wh.close()


def check_all(settings: Settings, core_running: bool, now: datetime | None = None,
              sql: Sql | None = None) -> list[tuple[Any, list[Check]]]:
    """Every source in CNIL mode with its checks. The warehouse is read through ``sql``
    (the core's own, when it asks), else through the running core process, or opened
    directly when no server runs; the salts are the data dir's files, and the shared
    ones too when ``AAP_META_URL`` is set."""
    data = settings.data_path
    registry = Registry.for_data_dir(data)
    sources = [s for s in Sources(data).list() if s.mode == CNIL]
    if not sources:
        return []
    now = now or datetime.now(UTC)
    log_events = _log_reader(settings.data)
    salts = DailySalts(data)
    reader: AbstractContextManager[Sql] = (
        nullcontext(sql) if sql is not None else
        _core_sql(data) if core_running else _direct_sql(data))
    with reader as read:
        return [(s, check_source(s, registry, settings, salts, read, log_events, now))
                for s in sources]
