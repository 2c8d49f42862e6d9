"""The registry of purposes: why events are processed, on which lawful basis (GDPR
Art. 6), what data, for whom, with which enrichments, and for how long.

Defaults are below; ``DATA_DIR/privacy/purposes.json`` (a JSON list of objects with the
fields of :class:`Purpose`) replaces them. Every source declares the purposes its events
serve; an event may be used only for the purposes it has a basis for.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import msgspec

from aap.datadir import DataDir


class Basis(StrEnum):
    CONSENT = "consent"
    LEGITIMATE_INTEREST = "legitimate_interest"
    CONTRACT = "contract"
    LEGAL_OBLIGATION = "legal_obligation"


MAX_RETENTION_DAYS = 760
"""25 months: the longest any purpose may keep event data (every stored event carries a
pseudonymous person id, so every purpose processes personal data)."""


class Retention(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How long events keep the purpose, in days from the event's time; enforced by the
    retention job (:mod:`aap.privacy.retention`). ``days`` holds in every tier;
    ``hot``, ``warm``, ``cold`` set a shorter limit while the event is in that tier
    (``0``: the purpose leaves an event as soon as it reaches that tier; ``None``: no
    limit of the tier's own). ``days: null`` (unlimited) is refused."""

    days: int | None = MAX_RETENTION_DAYS
    hot: int | None = None
    warm: int | None = None
    cold: int | None = None

    def limit(self, tier: str) -> int:
        """Days the purpose stays on an event while it is in ``tier``."""
        own = getattr(self, tier)
        assert self.days is not None, "validated by Registry"
        return self.days if own is None else min(own, self.days)


def check_retention(purpose_id: str, r: Retention) -> None:
    """Refuse an unlimited retention, or one over 25 months (ValueError naming it)."""
    where = f"purpose {purpose_id!r}: retention"
    if r.days is None:
        raise ValueError(f"{where}.days is unlimited (null); personal data must have a"
                         f" retention of at most {MAX_RETENTION_DAYS} days (25 months)")
    for name in ("days", "hot", "warm", "cold"):
        v = getattr(r, name)
        if v is None:
            continue
        if v < (1 if name == "days" else 0):
            raise ValueError(f"{where}.{name} = {v} is not a valid number of days")
        if v > MAX_RETENTION_DAYS:
            raise ValueError(f"{where}.{name} = {v} days is longer than 25 months"
                             f" ({MAX_RETENTION_DAYS} days), the most allowed for personal data")


class Purpose(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    description: str
    basis: Basis = Basis.CONSENT
    categories: tuple[str, ...] = ()
    """Categories of personal data processed."""
    recipients: tuple[str, ...] = ()
    enrichments: tuple[str, ...] = ()
    """Enrichments used (declared in the record of processing)."""
    profiling: bool = False
    """Used for profiling (segments, predictions): people may object (Art. 21)."""
    tcf: tuple[int, ...] = ()
    """IAB TCF v2 purposes that must all have consent in a TC string for this purpose to
    count as granted by it (none: a TC string does not decide this purpose)."""
    retention: Retention = Retention()
    cnil_exempt: bool = False
    """Audience measurement exempt from consent under the CNIL's conditions: only sources
    in CNIL mode (``aap sources create --mode cnil``) may collect for it, and only it."""


_EVENT_DATA = ("online identifiers (pseudonymous ids)", "interaction events",
               "device and browser type", "coarse location (country, region, city)")

DEFAULT_PURPOSES: tuple[Purpose, ...] = (
    Purpose("analytics", "Product analytics: which features are used, funnels, retention.",
            categories=_EVENT_DATA, recipients=("the site operator's analysts",),
            enrichments=("user agent → browser, OS, device type",
                         "truncated IP → country, region, city (offline database)"),
            tcf=(1, 8, 9)),
    Purpose("marketing", "Measuring campaigns and marketing attribution.",
            categories=(*_EVENT_DATA, "campaign parameters"),
            recipients=("the site operator's marketing team",),
            enrichments=("UTM campaign fields",), tcf=(1, 2, 3, 4, 7)),
    Purpose("personalization", "Personalising the product from behaviour (profiling).",
            categories=_EVENT_DATA, recipients=("the site operator",), profiling=True,
            tcf=(1, 5, 6)),
    Purpose("partner_sharing", "Sharing with partners (a sale or sharing under CCPA/CPRA).",
            categories=_EVENT_DATA, recipients=("partners named in the privacy policy",)),
    Purpose("audience_measurement",
            "Anonymous audience statistics of the site, for the site operator alone"
            " (CNIL consent exemption; sources in CNIL mode only).",
            basis=Basis.LEGITIMATE_INTEREST,
            categories=("a visitor hash that changes every day (no identifier, no cookie)",
                        "page views and events", "device and browser type",
                        "coarse location (country, region, city)"),
            recipients=("the site operator",),
            enrichments=("user agent → browser, OS, device type",
                         "truncated IP → country, region, city (offline database)"),
            retention=Retention(days=MAX_RETENTION_DAYS), cnil_exempt=True),
    Purpose("device_diagnostics",
            "Telemetry of registered devices (IoT) for a declared purpose: how devices"
            " work, fail and are used (trends of a reading, devices active per day); not"
            " continuous monitoring of a person. An owned device's events follow its"
            " owner's consent.",
            basis=Basis.LEGITIMATE_INTEREST,
            categories=("a device pseudonym (dev_…, never a serial number)",
                        "the owner's pseudonymous id when a person owns the device",
                        "device readings", "coarse location (lat/lon to 0.1°, about 11 km)"),
            recipients=("the device operator's engineers",),
            enrichments=("lat/lon readings coarsened before storage",),
            retention=Retention(days=395)),
)

GPC_WITHDRAWS = ("partner_sharing", "marketing")
"""Purposes a ``Sec-GPC: 1`` request withdraws (CCPA/CPRA treat GPC as an opt-out)."""


class UnknownPurpose(ValueError):
    pass


class Registry:
    def __init__(self, purposes: tuple[Purpose, ...] = DEFAULT_PURPOSES) -> None:
        ids = [p.id for p in purposes]
        if len(set(ids)) != len(ids):
            raise ValueError("purpose ids must be unique")
        for p in purposes:
            check_retention(p.id, p.retention)
        self.purposes = {p.id: p for p in purposes}
        self.tcf = {p.id: p.tcf for p in purposes if p.tcf}
        """Purpose → the TCF purposes it needs (see :func:`aap.privacy.tcf.preferences`)."""

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> Registry:
        path = DataDir(data_dir).purposes
        if not path.exists():
            return cls()
        try:
            purposes = msgspec.json.decode(path.read_bytes(), type=list[Purpose])
        except msgspec.DecodeError as exc:
            raise ValueError(f"{path}: {exc}") from None
        try:
            return cls(tuple(purposes))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def __contains__(self, purpose_id: object) -> bool:
        return purpose_id in self.purposes

    def get(self, purpose_id: str) -> Purpose:
        try:
            return self.purposes[purpose_id]
        except KeyError:
            raise UnknownPurpose(
                f"unknown purpose {purpose_id!r}; known: {', '.join(self.purposes)}") from None


def record_of_processing(registry: Registry, sources: list[tuple[str, tuple[tuple[str, str], ...]]],
                         tiers: tuple[int, int, int], log_hours: float = 168.0,
                         controller: str = "(the operator of this AAP installation)") -> str:
    """The record of processing activities (GDPR Art. 30(1)) as Markdown: one section per
    purpose, with the sources that collect for it and on which basis."""
    lines = ["# Record of processing activities (GDPR Art. 30)", "",
             f"Controller: {controller}", "",
             "Technical and organisational measures: client IP addresses truncated before"
             " storage (IPv4 /24, IPv6 /48); identifiers and personal traits sealed with"
             " AES-256-GCM under per-identifier keys wrapped by a master key; consent"
             " enforced before storage; append-only, hash-chained audit log; hashed API keys"
             " with roles.", ""]
    for p in registry.purposes.values():
        collecting = [f"{name} ({basis.replace('_', ' ')})" for name, declared in sources
                      for pid, basis in declared if pid == p.id]
        lines += [
            f"## {p.id}", "", p.description, "",
            f"- Lawful basis (default): {p.basis.value.replace('_', ' ')}",
            f"- Sources collecting for it: {', '.join(collecting) or 'none'}",
            f"- Categories of personal data: {', '.join(p.categories) or 'none'}",
            f"- Recipients: {', '.join(p.recipients) or 'none'}",
            f"- Enrichments: {', '.join(p.enrichments) or 'none'}",
            f"- Profiling: {'yes (people may object, Art. 21)' if p.profiling else 'no'}",
            f"- Retention (enforced by the retention job, at most one hour late): the purpose"
            f" leaves events older than {p.retention.days} days"
            f" (hot tier {min(p.retention.limit('hot'), tiers[2])} days,"
            f" warm tier {min(p.retention.limit('warm'), tiers[2])} days,"
            f" cold tier {min(p.retention.limit('cold'), tiers[2])} days);"
            f" events left with no purpose are erased; every event is erased after"
            f" {tiers[2]} days; raw log records after {log_hours:g} hours"
            f" (tiers: {tiers[0]} days hot, then warm until {tiers[1]} days, then cold)",
            f"- IAB TCF purposes that grant it: {', '.join(map(str, p.tcf)) or 'none'}",
            "- Transfers to third countries: none (AAP runs on the controller's machines)",
            ""]
    return "\n".join(lines)


ANALYTICS_PURPOSES = ("analytics", "audience_measurement", "device_diagnostics")
"""Purposes whose events insights, cohorts and analysts' SQL may read (the CNIL mode's
exempt purpose is audience measurement, statistics too; device diagnostics are statistics
of devices' readings). Events stored before events
carried purposes count as analytics."""


def analytics_only(column: str = "purposes") -> str:
    """A SQL condition: the event may be used for analytics."""
    wanted = ", ".join(f"'{p}'" for p in ANALYTICS_PURPOSES)
    return f"({column} IS NULL OR list_has_any({column}, [{wanted}]))"
