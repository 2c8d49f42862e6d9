"""The privacy center's API (role privacy): the requests queue, one person's consent
history, the record of processing with each tier's retention status, the CNIL check,
the audit log (browse and verify) and the person lookup.

Every read of personal data here is audited: a consent history viewed
(``consent.viewed``) and a person looked up (``person.viewed``), with the caller and the
keyed hashes of the ids asked about, never the ids themselves. The queue shows requests
as the queue holds them: types, statuses, receipts and summaries, no subject.

:class:`PrivacyCenter` is a part of :class:`aap.api.rest.RestAPI`, which dispatches the
routes of :data:`aap.api.routes.ROUTES` to these methods by name.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from aap import errors
from aap.privacy import subjects
from aap.privacy.audit import AuditLog
from aap.privacy.cnil_check import check_all
from aap.privacy.purposes import Registry, record_of_processing
from aap.privacy.requests import TYPES, Requests, decode_request
from aap.privacy.retention import TIERS, RetentionJob
from aap.privacy.rights import Rights
from aap.settings import Settings
from aap.sources import Sources
from aap.store.warehouse import Warehouse

STATUSES = ("pending", "running", "done", "failed")
TIMELINE_LIMIT = 200
"""The most events a person lookup shows (newest first; the answer says how many there are)."""


class Who(msgspec.Struct, forbid_unknown_fields=True):
    """Whom a lookup is about: a userId or an anonymousId (or both, of one person)."""

    userId: str | None = None
    anonymousId: str | None = None

    def ids(self) -> tuple[list[str], list[str]]:
        users = [self.userId] if self.userId else []
        anons = [self.anonymousId] if self.anonymousId else []
        if not users and not anons:
            raise errors.BadRequest("name a `userId` or an `anonymousId`",
                                    code="missing_identity")
        for v in (*users, *anons):
            if len(v) > 512:
                raise errors.BadRequest("an id is at most 512 characters", code="invalid_request")
        return users, anons


def int_param(params: dict[str, str], name: str, default: int | None, lo: int, hi: int
              ) -> int | None:
    """An integer query parameter in ``lo..hi`` (400 otherwise), or ``default``."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise errors.BadRequest(f"`{name}` must be a whole number from {lo} to {hi}",
                                {"parameter": name}, code="invalid_query")
    return int(raw)


def choice_param(params: dict[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    """A query parameter that must be one of ``allowed`` (400 otherwise), or ``None``."""
    raw = params.get(name)
    if not raw:
        return None
    if raw not in allowed:
        raise errors.BadRequest(f"`{name}` must be one of {', '.join(allowed)}",
                                {"parameter": name}, code="invalid_query")
    return raw


def _iso(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


def _rows(cur: Any, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    res = cur.execute(sql, params)
    cols = [d[0] for d in res.description]
    return [{c: _iso(v) for c, v in zip(cols, row, strict=True)} for row in res.fetchall()]


def _when(params: dict[str, str], name: str, end: bool = False) -> datetime | None:
    """An ISO 8601 time (UTC unless it says), or a date: its start, or with ``end`` the
    start of the next day (``to=2026-12-04`` takes the whole day)."""
    raw = params.get(name)
    if not raw:
        return None
    try:
        t = datetime.fromisoformat(raw)
    except ValueError:
        raise errors.BadRequest(f"`{name}` must be an ISO 8601 date or time",
                                {"parameter": name}, code="invalid_query") from None
    if end and len(raw) == 10:  # a date alone
        t += timedelta(days=1)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


class PrivacyCenter:
    settings: Settings
    warehouse: Warehouse
    privacy: Requests | None
    audit: AuditLog
    retention: RetentionJob | None = None
    """Set by the core: the retention job, whose last run the record shows."""

    def caller(self) -> str:
        """Who is calling, for the audit log (:class:`aap.api.rest.RestAPI` says)."""
        raise NotImplementedError

    def call_args(self) -> dict[str, str]:
        """The call's query-string parameters (those its route takes)."""
        raise NotImplementedError

    def _center_requests(self) -> Requests:
        if self.privacy is None:
            raise errors.NotFound("privacy requests are not served here")
        return self.privacy

    def _center_rights(self) -> Rights:
        return self._center_requests().rights

    def _subject_keys(self, body: bytes) -> tuple[list[int], dict[str, bool]]:
        """The keyed hashes of the ids a lookup names, and which kinds it named."""
        users, anons = decode_request(body, Who).ids()
        keys = self._center_rights().subject_keys(users, anons)
        return keys, {"userId": bool(users), "anonymousId": bool(anons)}

    # -- the queue --

    def privacy_list(self, params: dict[str, str], body: bytes, role: str) -> Any:
        q = self.call_args()
        return self._center_requests().list(
            status=choice_param(q, "status", STATUSES), kind=choice_param(q, "type", TYPES),
            limit=int_param(q, "limit", 50, 1, 500) or 50, before=q.get("before") or None)

    # -- consent --

    def consent_lookup(self, params: dict[str, str], body: bytes, role: str) -> Any:
        keys, named = self._subject_keys(body)
        rights = self._center_rights()
        _, all_keys = subjects.person_closure(self.warehouse, keys)
        names = {s.id: s.name for s in Sources(self.settings.data_path).list()}
        history = []
        for st in rights.ledger.history(sorted(all_keys | set(keys))):
            for purpose, granted in sorted(st.purposes.items()):
                history.append({
                    "at": datetime.fromtimestamp(st.at_ms / 1000, UTC).isoformat(),
                    "purpose": purpose, "granted": bool(granted),
                    "source": names.get(st.source, st.source), "scope": st.where,
                    "channel": st.channel, "gpc": st.channel == "gpc",
                    "policy_version": st.policy_version})
        history.reverse()  # newest first
        self.audit.append(self.caller(), "consent.viewed", {
            "subjects": [f"{k & (2**64 - 1):016x}" for k in keys], **named,
            "statements": len(history)})
        return {"history": history, "current": _current(history)}

    # -- record of processing, retention, CNIL --

    def privacy_record(self, params: dict[str, str], body: bytes, role: str) -> Any:
        data = self.settings.data_path
        registry = Registry.for_data_dir(data)
        sources = Sources(data).list()
        kept = self.settings.tiers
        tiers = (kept.hot_days, kept.warm_days, kept.cold_days)
        purposes = []
        for p in registry.purposes.values():
            purposes.append({
                **msgspec.to_builtins(p),
                "retention_days": {t: min(p.retention.limit(t), kept.cold_days) for t in TIERS},
                "sources": [{"name": s.name, "basis": basis} for s in sources
                            for pid, basis in s.purposes if pid == p.id]})
        return {"markdown": record_of_processing(registry, [(s.name, s.purposes) for s in sources],
                                                 tiers, kept.log_retention_hours),
                "purposes": purposes, "tiers": self._tier_status(registry),
                "log_retention_hours": kept.log_retention_hours,
                "retention_job": self._retention_job()}

    def _tier_status(self, registry: Registry) -> list[dict[str, Any]]:
        """Per tier: the events it holds, the oldest, the longest any purpose may keep
        an event there, and whether the oldest is within it (with the hour of rounding
        and one interval of the job's schedule)."""
        kept = self.settings.tiers
        now = datetime.now(UTC).replace(tzinfo=None)
        slack = timedelta(hours=1, seconds=kept.retention_interval_s)
        span = {"hot": (0, kept.hot_days), "warm": (kept.hot_days, kept.warm_days),
                "cold": (kept.warm_days, kept.cold_days)}
        out = []
        with self.warehouse.snapshot() as cur:
            for tier in TIERS:
                table = "events_raw" if tier == "hot" else f"{tier}_events"
                n, oldest = cur.execute(f"SELECT count(*), min(timestamp) FROM {table}"
                                        ).fetchone() or (0, None)
                limit = max([min(p.retention.limit(tier), kept.cold_days)
                             for p in registry.purposes.values()] or [kept.cold_days])
                ok = oldest is None or oldest >= now - timedelta(days=limit) - slack
                out.append({"tier": tier, "events": n, "oldest": _iso(oldest),
                            "from_days": span[tier][0], "to_days": span[tier][1],
                            "limit_days": limit, "within_limit": ok,
                            "age_days": round((now - oldest).total_seconds() / 86400, 2)
                            if oldest is not None else None})
        return out

    def _retention_job(self) -> dict[str, Any]:
        job = self.retention
        last = dict(job.last) if job is not None else {}
        return {"interval_s": self.settings.tiers.retention_interval_s,
                "last_run": last.get("ran_at"), "last_seconds": last.get("seconds"),
                "next_run": _iso(job.next_run) if job is not None else None,
                "last_result": {k: v for k, v in last.items()
                                if isinstance(v, int | float | str) and k not in ("ran_at",)}}

    def privacy_cnil(self, params: dict[str, str], body: bytes, role: str) -> Any:
        def sql(q: str, args: list[Any]) -> list[Any]:
            return self.warehouse.query(q, args)[1]

        try:
            report = check_all(self.settings, core_running=True, sql=sql)
        except ValueError as exc:
            raise errors.BadRequest(str(exc), code="cnil_check_failed") from None
        sources = [{"id": s.id, "name": s.name, "passed": all(ok for _, ok, _ in checks),
                    "checks": [{"condition": name, "passed": ok, "found": found}
                               for name, ok, found in checks]}
                   for s, checks in report]
        return {"sources": sources, "passed": all(s["passed"] for s in sources)}

    # -- the audit log --

    def audit_list(self, params: dict[str, str], body: bytes, role: str) -> Any:
        q = self.call_args()
        limit = int_param(q, "limit", 50, 1, 500) or 50
        before = int_param(q, "before", None, 1, 10**12)
        start, end = _when(q, "from"), _when(q, "to", end=True)
        action, actor = q.get("action", ""), q.get("actor", "")
        found = []
        for e in reversed(self.audit.entries()):
            if before is not None and e["seq"] >= before:
                continue
            if action and not str(e["action"]).startswith(action):
                continue
            if actor and actor not in str(e["actor"]):
                continue
            at = datetime.fromisoformat(e["at"])
            if (start is not None and at < start) or (end is not None and at >= end):
                continue
            found.append(e)
            if len(found) > limit:
                break
        page = found[:limit]
        return {"entries": page, "next": page[-1]["seq"] if len(found) > limit else None}

    def audit_verify(self, params: dict[str, str], body: bytes, role: str) -> Any:
        v = self.audit.verify()
        return {"ok": v.ok, "entries": v.entries, "message": v.message,
                "checked_at": datetime.now(UTC).isoformat()}

    # -- person lookup --

    def person_lookup(self, params: dict[str, str], body: bytes, role: str) -> Any:
        keys, named = self._subject_keys(body)
        rights = self._center_rights()
        persons, all_keys = subjects.person_closure(self.warehouse, keys)
        hashed = [f"{k & (2**64 - 1):016x}" for k in keys]
        erased = bool(set(keys) & rights.keystore.refresh_destroyed())
        self.audit.append(self.caller(), "person.viewed", {
            "subjects": hashed, **named, "persons": len(persons), "erased": erased})
        if not persons:
            if erased:
                raise errors.NotFound("this person was erased: nothing is held about them",
                                      {"erased": True}, code="person_erased")
            raise errors.NotFound("no person with this id: never seen, or all their data"
                                  " has expired", {"erased": False}, code="person_not_found")
        out = _person_view(self.warehouse, sorted(persons))
        # the log's copies of their events, opened: the traits sealed in them (the
        # warehouse keeps no personal trait), then what rectifications keep sealed
        logged = rights.logged_events(all_keys)
        out["identifiers"] = rights.identifiers(keys, named, all_keys, logged)
        opened: dict[str, Any] = {}
        for ev in sorted(logged, key=lambda e: str(e.get("timestamp") or "")):
            opened.update(ev.get("traits") or {})
        out["traits_opened"] = {**opened, **rights.keystore.personal_traits(all_keys)}
        out["erased"] = False
        return out


def _current(history: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The latest statement per purpose (``history`` newest first)."""
    out: dict[str, dict[str, Any]] = {}
    for h in history:
        out.setdefault(h["purpose"], {"granted": h["granted"], "at": h["at"],
                                      "source": h["source"], "channel": h["channel"]})
    return out


def _person_view(wh: Warehouse, persons: list[int]) -> dict[str, Any]:
    """The persons' profile, flags, newest events, sessions and orders."""
    p = {"persons": persons}
    events_sql = ("SELECT e.* REPLACE (coalesce(o.person_id, e.person_id) AS person_id)"
                  " FROM events_all e LEFT JOIN person_overrides o"
                  " ON o.old_person_id = e.person_id"
                  " WHERE list_contains($persons, coalesce(o.person_id, e.person_id))")
    wh.fresh_flags()  # the flags shown are the shared store's (AAP_META_URL)
    with wh.snapshot() as cur:
        cur.execute(f"CREATE TEMP TABLE lookup_events AS {events_sql}", p)
        try:
            [[total]] = cur.execute("SELECT count(*) FROM lookup_events").fetchall()
            events = _rows(cur, "SELECT timestamp, type, event, name, source, session_id, path,"
                                " url, referrer_domain, browser, os, device_type, country,"
                                " purposes, properties FROM lookup_events"
                                " ORDER BY timestamp DESC, message_id DESC LIMIT $n",
                           {"n": TIMELINE_LIMIT})
            sessions = _rows(cur, "SELECT session_id, min(timestamp) AS started_at,"
                                  " max(timestamp) AS ended_at, count(*) AS events,"
                                  " count(*) FILTER (WHERE type IN ('page', 'screen')) AS views,"
                                  " arg_min(path, timestamp) AS entry_path,"
                                  " arg_max(path, timestamp) AS exit_path,"
                                  " arg_min(referrer_domain, timestamp) AS referrer_domain"
                                  " FROM lookup_events GROUP BY session_id"
                                  " ORDER BY started_at DESC LIMIT 100", {})
        finally:
            cur.execute("DROP TABLE lookup_events")
        orders = _rows(cur, "SELECT order_id, source, session_id, timestamp, revenue, currency,"
                            " items FROM orders_resolved WHERE list_contains($persons, person_id)"
                            " ORDER BY timestamp DESC LIMIT 100", p)
        flags = _rows(cur, "SELECT flag, set_at FROM person_flags"
                           " WHERE list_contains($persons, person_id) ORDER BY flag", p)
        profile = _rows(cur, "SELECT person_id, first_seen, last_seen, identified, traits"
                             " FROM persons WHERE list_contains($persons, person_id)"
                             " ORDER BY person_id", p)
    for e in events:
        e["properties"] = json.loads(e["properties"]) if e["properties"] else {}
    for row in profile:
        row["traits"] = json.loads(row["traits"]) if row["traits"] else {}
    return {"persons": len(persons), "profile": profile, "flags": flags,
            "events": {"total": total, "shown": len(events), "rows": events},
            "sessions": sessions, "orders": orders}
