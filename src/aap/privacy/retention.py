"""Retention per purpose and tier, enforced by a scheduled job.

Every purpose of the registry keeps events at most ``retention.days`` (25 months at
most, never unlimited), or less while they are in a tier with a limit of its own
(``retention.hot`` / ``warm`` / ``cold``). The job, run every ``AAP_RETENTION_INTERVAL_S``
by the core process (in the tiering thread, so it never races a tier move), takes each
purpose off the events past its limit in every tier — hot rows updated, warm and cold
files rewritten with the warehouse's own file-rewrite code — and erases the events left
with no purpose, as a consent withdrawal does; every event older than
``AAP_COLD_DAYS`` goes whatever its purposes; orders made from erased events and the
profiles of persons with no event left go too.

Cutoffs are rounded **up** to the next whole hour: data goes up to one hour before its
limit, never after it (only the wait for the next run, at most the interval, plus the
run itself, can delay it), and a file at the boundary is rewritten at most once an hour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aap.privacy import removal
from aap.privacy.purposes import MAX_RETENTION_DAYS, Registry
from aap.settings import Settings
from aap.store.warehouse import Warehouse

logger = logging.getLogger("aap.retention")

TIERS = ("hot", "warm", "cold")


def check_settings(settings: Settings, registry: Registry) -> None:
    """Refuse (ValueError naming the setting) a log retention longer than a purpose of
    ``registry`` keeps events (the settings' own limits were checked when they were made:
    :meth:`aap.settings.TierSettings.check`)."""
    settings.tiers.check_log_retention(p.retention.days or 0 for p in registry.purposes.values())


def _ceil_hour(t: datetime) -> datetime:
    floor = t.replace(minute=0, second=0, microsecond=0)
    return floor if floor == t else floor + timedelta(hours=1)


def cutoffs(registry: Registry, cold_days: int, now: datetime
            ) -> tuple[dict[str, dict[str, datetime]], datetime]:
    """Per purpose and tier, the time before which events lose the purpose; and the time
    before which every event goes. Naive UTC, like the warehouse's timestamps."""
    now = now.astimezone(UTC).replace(tzinfo=None)
    cap = min(cold_days, MAX_RETENTION_DAYS)
    out = {p.id: {t: _ceil_hour(now - timedelta(days=min(p.retention.limit(t), cap)))
                  for t in TIERS}
           for p in registry.purposes.values()}
    return out, _ceil_hour(now - timedelta(days=cap))


class RetentionJob:
    """Runs :func:`aap.privacy.removal.expire` every ``interval_s`` seconds of ``clock``."""

    def __init__(self, wh: Warehouse, registry: Registry, cold_days: int, interval_s: float,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 after: tuple[Callable[[datetime], object], ...] = (),
                 forget: Callable[[list[int]], object] | None = None) -> None:
        """``after``: more clean-ups run with each run's time (e.g. expired CNIL salts);
        ``forget``: drops what the keystore keeps of ids whose persons have no event
        left (:meth:`aap.privacy.keystore.Keystore.forget`)."""
        self.after = after
        self.forget = forget
        self.wh = wh
        self.registry = registry
        self.cold_days = cold_days
        self.interval = timedelta(seconds=interval_s)
        self.clock = clock
        self.next_run: datetime | None = None  # None: at the first call
        self.last: dict[str, Any] = {}

    def run(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or self.clock()
        by_purpose, everything = cutoffs(self.registry, self.cold_days, now)
        started = time.monotonic()
        out = removal.expire(self.wh, by_purpose, everything, forget=self.forget)
        for clean in self.after:
            out[getattr(clean, "__qualname__", "after")] = clean(now)
        out["seconds"] = round(time.monotonic() - started, 3)
        out["ran_at"] = now.isoformat()
        self.last = out
        return out

    def sweep(self) -> dict[str, int]:
        """Persons left with no event by something other than :meth:`run` (the tiering
        job dropping cold archives past ``cold_days``) go, with their ids."""
        return removal.drop_orphans(self.wh, forget=self.forget)

    def run_pending(self) -> dict[str, Any] | None:
        """Run if due; the next run is due one interval after this one started. A run
        that fails (the shared state unreachable, files that kept moving under another
        processor's jobs) is due again at once: the next tick of its thread tries it."""
        now = self.clock()
        if self.next_run is not None and now < self.next_run:
            return None
        self.next_run = now + self.interval
        try:
            return self.run(now)
        except Exception:
            self.next_run = now
            raise
