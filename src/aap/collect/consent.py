"""Consent at the door: ``POST /v1/consent`` and the gate every event passes before
it is appended to the log. An event with no lawful basis for any of its source's
purposes is not written anywhere; it is counted (``aap_events_not_stored_total``).
See :mod:`aap.privacy.consent` for the rules.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from aap import errors
from aap.collect.ratelimit import retry_after
from aap.events import Event
from aap.jsonlimits import check_depth
from aap.privacy.audit import AuditLog
from aap.privacy.cnil import CNIL, opted_out
from aap.privacy.consent import (
    FULL,
    NONE,
    UNLINKED,
    ConsentLedger,
    ConsentState,
    Statement,
    decide,
    event_preferences,
)
from aap.privacy.ids import IdHasher
from aap.privacy.purposes import GPC_WITHDRAWS, Basis, Registry
from aap.privacy.scrub import holds_address
from aap.sources import Source

Id = str | int
MAX_CHANNEL = 64
"""Characters of a statement's ``channel`` (kept in plain text in the ledger)."""
MAX_POLICY_VERSION = 128
"""Characters of a statement's ``policy_version``."""
RATE_WINDOW_MS = 60_000
"""The window of the per-subject cap on ``POST /v1/consent`` (a minute)."""
MAX_RECENT = 100_000
"""(scope, subject) windows kept for that cap before the ended ones are forgotten."""


class ConsentRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    purposes: dict[str, bool]
    user_id: Id | None = None
    anonymous_id: Id | None = None
    policy_version: str | None = msgspec.field(default=None, name="policy_version")
    channel: str | None = None
    write_key: str | None = None


_decoder = msgspec.json.Decoder(ConsentRequest)


def parse_consent(body: bytes, token: bool = False) -> ConsentRequest:
    """The body of ``POST /v1/consent`` (``token``: the person is named by a subject
    token, the body need not name them)."""
    check_depth(body)
    try:
        req = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise errors.BadRequest(f"invalid consent request: {exc}", code="invalid_consent") from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise errors.BadRequest("the body is not valid JSON", code="invalid_json") from None
    if not token and req.user_id in (None, "") and req.anonymous_id in (None, ""):
        raise errors.BadRequest("a consent statement needs `userId` or `anonymousId`",
                                code="missing_identity")
    if not req.purposes:
        raise errors.BadRequest("`purposes` must name at least one purpose",
                                code="invalid_consent")
    if req.channel is not None and not (0 < len(req.channel) <= MAX_CHANNEL):
        raise errors.BadRequest(f"`channel` must be 1 to {MAX_CHANNEL} characters",
                                code="invalid_consent")
    if req.policy_version is not None and len(req.policy_version) > MAX_POLICY_VERSION:
        raise errors.BadRequest(f"`policy_version` must be at most {MAX_POLICY_VERSION}"
                                " characters", code="invalid_consent")
    # the ledger and the audit log keep these two in plain text: nothing personal in them
    for field, value in (("channel", req.channel), ("policy_version", req.policy_version)):
        if value is not None and holds_address(value):
            raise errors.BadRequest(f"`{field}` must not hold an email or IP address",
                                    {"field": field}, code="personal_data")
    return req


class Gate:
    """The consent state of one collector process, and the decisions it makes."""

    def __init__(self, data_dir: Path, per_subject: int = 0) -> None:
        self.per_subject = per_subject
        """Statements per id and scope per minute through ``POST /v1/consent`` (0: no cap)."""
        self._recent: dict[tuple[str, int], tuple[int, int]] = {}
        """(scope, subject) → (start of its window in ms, statements in it)."""
        self.registry = Registry.for_data_dir(data_dir)
        self.hasher = IdHasher.for_data_dir(data_dir)
        self.state = ConsentState(ConsentLedger(data_dir))
        self.audit = AuditLog(data_dir)

    def subjects(self, *ids: Any) -> list[int | None]:
        return [self.hasher.key(str(i)) if i not in (None, "") else None for i in ids]

    def record(self, source: Source, req: ConsentRequest, gpc: bool) -> int:
        """Append the statement (for each id given), scoped to the source's controller;
        returns how many were written. With the public write key, the statement about a
        userId stops collection but may not change stored history."""
        unknown = [p for p in req.purposes if p not in self.registry]
        if unknown:
            raise errors.BadRequest(
                f"unknown purposes: {', '.join(unknown)}",
                {"unknown": unknown, "known": list(self.registry.purposes)},
                code="unknown_purpose")
        purposes = dict(req.purposes)
        if gpc:
            purposes.update(dict.fromkeys(GPC_WITHDRAWS, False))
        now = int(time.time() * 1000)
        user, anon = self.subjects(req.user_id, req.anonymous_id)
        statements = [Statement(now, source.id, s, purposes, req.policy_version,
                                req.channel or "api", source.scope,
                                FULL if source.server_key else UNLINKED if s == anon else NONE)
                      for s in (user, anon) if s is not None]
        self.limit_subjects(source, statements, now)
        self.state.record(statements)
        self.audit.append(f"source:{source.id}", "consent.recorded", {
            "purposes": purposes, "policy_version": req.policy_version,
            "channel": req.channel or "api", "statements": len(statements),
            "scope": source.scope, "key": "server" if source.server_key else "write"})
        return len(statements)

    def limit_subjects(self, source: Source, statements: list[Statement], now_ms: int) -> None:
        """At most :attr:`per_subject` statements per id and scope per minute (in this
        worker), so that the append-only ledger cannot be grown without bound: 429."""
        if self.per_subject <= 0:
            return
        window = RATE_WINDOW_MS
        recent = self._recent
        if len(recent) > MAX_RECENT:  # forget the oldest windows; memory stays bounded
            for k in [k for k, v in recent.items() if v[0] <= now_ms - window]:
                del recent[k]
        waits = []
        for st in statements:
            start, n = recent.get((st.where, st.subject), (now_ms, 0))
            if now_ms - start >= window:
                start, n = now_ms, 0
            if n >= self.per_subject:
                waits.append((start + window - now_ms) / 1000)
        if waits:
            raise errors.TooManyRequests(
                f"too many consent statements for this person through {source.name}"
                f" (at most {self.per_subject} a minute)", retry_after=retry_after(max(waits)),
                code="consent_rate_limited")
        for st in statements:
            start, n = recent.get((st.where, st.subject), (now_ms, 0))
            if now_ms - start >= window:
                start, n = now_ms, 0
            recent[(st.where, st.subject)] = (start, n + 1)

    def admit(self, source: Source, events: list[Event], gpc: bool, said: list[Said]) -> int:
        """Tag each event with the purposes it may be used for and take out those with
        none (in place); returns how many were taken out. What the events say about
        consent goes to the ledger first, scoped to the source's controller; through the
        public write key, what they say about a userId does not reach stored history.
        ``said``: the statements are added to it, for the caller to record those of the
        requests admitted together at once (:meth:`record_said`) before it stores any
        of their events.
        The caller has read what the ledger gained since the request arrived
        (``state.refresh(force=True)``: once for the requests admitted together,
        :meth:`aap.collect.app.Collector._not_stored_all`)."""
        if source.mode == CNIL:
            return _admit_measured(source, events)
        kept: list[Event] = []
        statements: list[Statement] = []
        # without a statement on the event or about its ids, the decision is the source's
        no_statement = {p: b for p, b in source.purposes
                        if b != Basis.CONSENT and not (gpc and p in GPC_WITHDRAWS)}
        scopes = source.scopes
        knows = self.state.knows
        key = self.hasher.key
        at_ms = int(events[0].received_at.timestamp() * 1000) if events else 0
        for ev in events:
            # the keyed hashes, kept on the event for the sealing that follows
            ev.user_key = u = key(ev.user_id) if ev.user_id else None
            ev.anonymous_key = a = key(ev.anonymous_id) if ev.anonymous_id else None
            ids = [u, a]
            own = (event_preferences(ev.context, self.registry.tcf) if "consent" in ev.context
                   else {})
            if not own and not gpc and not knows(scopes, ids):
                purposes = no_statement
            else:
                d = decide(source.id, source.purposes, self.state, ids, own, at_ms, gpc,
                           scopes, None if source.server_key else ({a: UNLINKED} if a else {}))
                if d.statements:
                    statements += d.statements
                    self.state.apply(d.statements)  # the next events of the request see them
                purposes = d.purposes
            if purposes:
                ev.purposes = dict(purposes)
                kept.append(ev)
        if statements:
            said.append(Said(source, statements))
        dropped = len(events) - len(kept)
        events[:] = kept
        return dropped

    def record_said(self, said: list[Said]) -> None:
        """What the events of requests admitted together said about consent: to the
        ledger in one transaction (its writers take turns, so one turn for all), and to
        the audit log one entry per source, scope and kind of key, counting the requests
        and statements."""
        statements = [st for one in said for st in one.statements]
        if not statements:
            return
        self.state.ledger.record(statements)
        entries: dict[tuple[str, str, str], tuple[set[str], int, int]] = {}
        for source, sts in said:
            k = (source.id, source.scope, "server" if source.server_key else "write")
            channels, n, requests = entries.get(k, (set(), 0, 0))
            entries[k] = (channels | {st.channel for st in sts}, n + len(sts), requests + 1)
        for (source_id, scope, key), (channels, n, requests) in entries.items():
            self.audit.append(f"source:{source_id}", "consent.recorded", {
                "channels": sorted(channels), "statements": n, "requests": requests,
                "scope": scope, "key": key})


class Said(NamedTuple):
    """What the events of one request said about consent (:meth:`Gate.admit`: never
    empty)."""

    source: Source
    statements: list[Statement]


def _admit_measured(source: Source, events: list[Event]) -> int:
    """Anonymous audience measurement (CNIL mode): no ids to hold a statement, a purpose
    exempt from consent; an event that carries an objection is not stored."""
    measured = [ev for ev in events if not opted_out(ev, source.purposes)]
    for ev in measured:
        ev.purposes = dict(source.purposes)
    objected = len(events) - len(measured)
    events[:] = measured
    return objected
