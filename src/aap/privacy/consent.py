"""The consent ledger, and the decision it feeds: for which purposes may an event be used?

Statements reach the ledger from ``POST /v1/consent``, from the consent an event carries
(``context.consent.categoryPreferences``, when it differs from what the ledger says) and
from ``Sec-GPC: 1``. Each says: this subject (a userId or anonymousId, kept as a keyed
hash, never raw), at this time, through this channel, under this policy version, grants
or withdraws these purposes. The ledger is append-only (triggers refuse updates and
deletes, on SQLite and on PostgreSQL) and kept as proof; it lives where the other shared
state does (:mod:`aap.store.meta`: a file under the data dir, or PostgreSQL), and every
reader sees its statements in one order (:class:`ConsentLedger`).

Consent is given to a controller: each statement is **scoped** to the source it came
through, or to that source's controller group (:attr:`aap.sources.Source.scope`), and
governs only the events of the sources in that scope. Statements recorded before
statements had scopes (no ``scope``) are scoped to the source they were sent to.

A statement may **change stored history** (take purposes off events already in the log
or the warehouse, erasing those left with none) only when it was made with the source's
server key or with a subject token (``history`` :data:`FULL`), or about an
``anonymousId`` (which only that browser knows; :data:`UNLINKED`: the events carrying
it in the log, and the stored events of its person as long as that person is not
identified — a public key can link any anonymousId to a userId with an identify call);
a statement about a ``userId`` made with a public write key stops collection at once
but leaves what is stored alone (:data:`NONE`), because anyone can send one.

The most recent statement about a purpose wins, whichever id of the person it was made
for. A purpose on the basis of consent needs a grant (opt-in); other bases need none,
but a "no" from the person counts as an objection (Art. 21) and is honoured too; GPC
withdraws the purposes in :data:`GPC_WITHDRAWS` whatever their basis.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from aap.datadir import DataDir
from aap.privacy import tcf
from aap.privacy.purposes import GPC_WITHDRAWS, Basis
from aap.store.meta import POSTGRESQL, MetaDB, Tx, open_meta
from aap.store.migrations import Schema, unversioned_columns

_SCHEMA = """
CREATE TABLE IF NOT EXISTS statements (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    subject INTEGER NOT NULL,
    purposes TEXT NOT NULL,
    policy_version TEXT,
    channel TEXT NOT NULL,
    scope TEXT,
    history INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS statements_subject ON statements (subject, seq);
CREATE TRIGGER IF NOT EXISTS statements_no_update BEFORE UPDATE ON statements
    BEGIN SELECT RAISE(ABORT, 'the consent ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS statements_no_delete BEFORE DELETE ON statements
    BEGIN SELECT RAISE(ABORT, 'the consent ledger is append-only'); END;
"""

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS statements (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    source TEXT NOT NULL,
    subject BIGINT NOT NULL,
    purposes TEXT NOT NULL,
    policy_version TEXT,
    channel TEXT NOT NULL,
    scope TEXT,
    history INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS statements_subject ON statements (subject, seq);
CREATE TABLE IF NOT EXISTS statements_ledger (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    id TEXT NOT NULL
);
INSERT INTO statements_ledger VALUES (1, CAST(gen_random_uuid() AS TEXT))
    ON CONFLICT (one) DO NOTHING;
CREATE OR REPLACE FUNCTION aap_statements_append_only() RETURNS trigger LANGUAGE plpgsql
    AS 'BEGIN RAISE EXCEPTION ''the consent ledger is append-only''; END';
CREATE OR REPLACE TRIGGER statements_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON statements
    FOR EACH STATEMENT EXECUTE FUNCTION aap_statements_append_only();
"""
"""The same on PostgreSQL (14 or later: ``CREATE OR REPLACE TRIGGER``), and the ledger's
id (:attr:`ConsentLedger.id`) made with it; the function's body is quoted with ``'``
rather than ``$$`` so that the script splits into its statements
(:func:`aap.store.migrations.statements`)."""


NONE, FULL, UNLINKED = 0, 1, 2
"""What a statement may change of stored history (the ledger's ``history`` column)."""

_ADDED = (("scope", "TEXT"), ("history", "INTEGER NOT NULL DEFAULT 1"))
"""Columns added after the first release, before schema versions (older rows: scope of
their source, history)."""

SCHEMA = Schema("statements", _SCHEMA, postgres=_PG_SCHEMA,
                steps=(unversioned_columns("statements", _ADDED),))
"""The ledger's schema versions (:mod:`aap.store.migrations`)."""


class Statement(NamedTuple):
    at_ms: int
    source: str
    subject: int
    """Keyed hash of the userId or anonymousId (:class:`aap.privacy.ids.IdHasher`)."""
    purposes: dict[str, bool]
    policy_version: str | None
    channel: str
    """``api``, ``event``, ``gpc`` or what the caller named (e.g. ``banner``)."""
    scope: str = ""
    """The source id or ``controller:GROUP`` the statement is given to (empty: the source)."""
    history: int = FULL
    """What the statement may change of stored history: :data:`NONE`, :data:`FULL` or
    :data:`UNLINKED` (see the module's docstring)."""

    @property
    def where(self) -> str:
        """The scope the statement applies to."""
        return self.scope or self.source


class ConsentLedger:
    """The ledger's statements, shared by every process: ``DATA_DIR/privacy/consent.db``
    (SQLite, the default), or the ``statements`` table of the PostgreSQL database of
    ``AAP_META_URL`` (:mod:`aap.store.meta`). Written by collectors and the rights
    requests, read by everyone.

    **Order.** Readers follow the ledger by ``seq`` (:meth:`since`), so a statement may
    never become visible after one with a higher ``seq``: a reader that has seen the
    higher one would skip it for good (a withdrawal never applied). SQLite has one writer
    at a time. On PostgreSQL a ``seq`` is drawn at insert and becomes visible at commit,
    so writers take turns on the table (:meth:`aap.store.meta.Tx.lock`, before the
    ``seq`` is drawn, until the commit): ``seq`` order is commit order, and a reader that
    sees a statement sees every one before it. Gaps in ``seq`` (a transaction refused and
    run again) are harmless: no statement is ever given a lower ``seq`` later."""

    id = ""
    """Which ledger this is, for a position in it kept elsewhere (the processor's): empty
    for the file under the data dir (as before ids existed), a random id made with the
    tables on PostgreSQL, so that a position in one ledger is never taken for a position
    in another (a data dir moved to PostgreSQL starts a new ledger, from ``seq`` 1)."""

    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        """``url``: the shared-state database (``None``: ``AAP_META_URL``; empty: the
        SQLite file under the data dir)."""
        paths = DataDir(data_dir)
        self.path = paths.consent_db
        paths.privacy.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = open_meta(self.path, url, pragmas=_PRAGMAS)
        self._db.migrate(SCHEMA)
        if self._db.dialect == POSTGRESQL:
            row = self._db.fetchone("SELECT id FROM statements_ledger")
            assert row is not None, "the ledger's id is made with its tables"
            self.id = str(row[0])

    @property
    def db(self) -> MetaDB:
        return self._db

    def record(self, statements: Sequence[Statement]) -> None:
        """Append durably, in one transaction, after every statement recorded before."""
        if not statements:
            return
        # int(history): PostgreSQL takes no boolean for an integer column, as SQLite does
        rows = [(s.at_ms, s.source, s.subject, json.dumps(s.purposes, sort_keys=True),
                 s.policy_version, s.channel, s.where, int(s.history)) for s in statements]

        def append(tx: Tx) -> None:
            tx.lock("statements")  # seq order = commit order (see the class's doc)
            tx.executemany(
                "INSERT INTO statements (at_ms, source, subject, purposes, policy_version,"
                " channel, scope, history) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

        self._db.write(append)

    def since(self, seq: int) -> list[tuple[int, Statement]]:
        """The statements after ``seq``, in order."""
        rows = self._db.fetchall(
            f"SELECT seq, {_COLUMNS} FROM statements WHERE seq > ? ORDER BY seq", (seq,))
        return [(int(r[0]), _statement(r[1:])) for r in rows]

    def history(self, subjects: Iterable[int]) -> list[Statement]:
        """Every statement about these subjects, in order."""
        keys = sorted(set(subjects))
        rows: list[tuple[Any, ...]] = []
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            rows += self._db.fetchall(
                f"SELECT seq, {_COLUMNS} FROM statements"
                f" WHERE subject IN ({','.join('?' * len(part))})", part)
        return [_statement(r[1:]) for r in sorted(rows, key=lambda r: int(r[0]))]

    def by_day(self, start_ms: int, end_ms: int, source: str | None
               ) -> list[tuple[str, str, str, int, int, int]]:
        """Statements per day (UTC), purpose and source made in ``[start_ms, end_ms)``
        (of ``source`` only if given): (day, purpose, source, grants, refusals, withdrawals),
        a refusal a "no" with no grant before it in its scope, a withdrawal a "no" after a
        grant."""
        sql = _BY_DAY_PG if self._db.dialect == POSTGRESQL else _BY_DAY
        rows = self._db.fetchall(sql, (start_ms, end_ms, source, source))
        return sorted((str(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), int(r[5]))
                      for r in rows)

    def close(self) -> None:
        self._db.close()


_PRAGMAS = ("PRAGMA synchronous=FULL",)
_BY_DAY_T = """
WITH s AS (
    SELECT st.seq, st.at_ms, st.source, coalesce(st.scope, st.source) AS sc, st.subject,
           j.key AS purpose, {granted} AS granted
    FROM statements st, {each} j
), t AS (
    SELECT *, lag(granted) OVER (PARTITION BY sc, subject, purpose ORDER BY seq) AS prev
    FROM s
)
SELECT {day} AS day, purpose, source, count(*) FILTER (WHERE granted = 1),
       count(*) FILTER (WHERE granted = 0 AND coalesce(prev, 0) = 0),
       count(*) FILTER (WHERE granted = 0 AND prev = 1)
FROM t WHERE at_ms >= ? AND at_ms < ? AND (CAST(? AS TEXT) IS NULL OR source = ?)
GROUP BY 1, 2, 3
"""
_BY_DAY = _BY_DAY_T.format(granted="j.value", each="json_each(st.purposes)",
                           day="date(at_ms / 1000, 'unixepoch')")
_BY_DAY_PG = _BY_DAY_T.format(
    granted="CAST(CAST(j.value AS BOOLEAN) AS INTEGER)",
    each="jsonb_each_text(CAST(st.purposes AS JSONB))",
    day="to_char(to_timestamp(at_ms / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')")


_COLUMNS = "at_ms, source, subject, purposes, policy_version, channel, scope, history"


def _statement(r: Sequence[Any]) -> Statement:
    return Statement(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6] or "", int(r[7]))


Key = tuple[str, int]
"""(scope, subject)."""


class ConsentState:
    """The latest statement per subject and purpose, kept current by reading what the
    ledger gained since the last look (at most every ``interval`` seconds, or when asked)."""

    def __init__(self, ledger: ConsentLedger, interval: float = 0.2) -> None:
        self.ledger = ledger
        self.interval = interval
        self.latest: dict[Key, dict[str, tuple[bool, int]]] = {}
        """(scope, subject) → purpose → (granted, at_ms): what the collector decides by."""
        self.binding: dict[Key, dict[str, tuple[bool, int]]] = {}
        """The same, from the statements that may change stored history (and every grant)."""
        self.withdrawn: set[Key] = set()
        """Scoped subjects with a withdrawal that reaches stored history."""
        self._seq = 0
        self._checked = 0.0
        self._lock = threading.Lock()

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.interval:
            return
        with self._lock:
            for seq, st in self.ledger.since(self._seq):
                self._apply(st)
                self._seq = seq
            self._checked = now

    def _apply(self, st: Statement) -> None:
        key = (st.where, st.subject)
        cur = self.latest.setdefault(key, {})
        for purpose, granted in st.purposes.items():
            old = cur.get(purpose)
            if old is None or st.at_ms >= old[1]:
                cur[purpose] = (bool(granted), st.at_ms)
            if not (granted or st.history):
                continue  # a "no" that may not reach history: collection stops, that is all
            bound = self.binding.setdefault(key, {})
            old = bound.get(purpose)
            if old is None or st.at_ms >= old[1]:
                bound[purpose] = (bool(granted), st.at_ms)
                if not granted:
                    self.withdrawn.add(key)

    def record(self, statements: Sequence[Statement]) -> None:
        """Append to the ledger and apply at once (other processes see it on refresh)."""
        self.ledger.record(statements)
        self.apply(statements)

    def apply(self, statements: Sequence[Statement]) -> None:
        """Apply statements here only (the caller appends them to the ledger)."""
        with self._lock:
            for st in statements:
                self._apply(st)

    def of(self, scopes: Sequence[str], subjects: Iterable[int | None], purpose: str,
           history: bool = False) -> tuple[bool, int] | None:
        """The most recent statement about ``purpose`` for any of these ids, in any of these
        scopes; ``history``: only among the statements that may change stored history."""
        view = self.binding if history else self.latest
        best: tuple[bool, int] | None = None
        for s in subjects:
            if s is None:
                continue
            for scope in scopes:
                got = view.get((scope, s), {}).get(purpose)
                if got is not None and (best is None or got[1] > best[1]
                                        or (got[1] == best[1] and not got[0])):
                    best = got  # at the same moment a "no" for one id wins over a "yes"
        return best

    def knows(self, scopes: Sequence[str], subjects: Iterable[int | None]) -> bool:
        """Whether any statement was made about these ids in these scopes."""
        latest = self.latest
        return any((sc, s) in latest for s in subjects if s is not None for sc in scopes)


def event_preferences(context: dict[str, Any], tcf_map: dict[str, tuple[int, ...]] | None = None
                      ) -> dict[str, bool]:
    """Purpose → granted, from ``context.consent``: an IAB TCF v2 ``tcString`` (mapped to
    our purposes by ``tcf_map``; an undecodable string says nothing), then
    ``categoryPreferences`` (booleans only), which wins where both speak."""
    consent = context.get("consent")
    if not isinstance(consent, dict):
        return {}
    out: dict[str, bool] = {}
    tc = consent.get("tcString")
    if tcf_map and isinstance(tc, str) and tc:
        try:
            out.update(tcf.preferences(tc, tcf_map))
        except tcf.TCFError:
            pass
    prefs = consent.get("categoryPreferences")
    if isinstance(prefs, dict):
        out.update({k: v for k, v in prefs.items() if isinstance(k, str) and isinstance(v, bool)})
    return out


class Decision(NamedTuple):
    purposes: dict[str, str]
    """Purpose → lawful basis, for the purposes the event may be used for."""
    statements: list[Statement]
    """What to add to the ledger (the event's own consent where it changes the state, GPC)."""


StateOf = Callable[[list[int], str], tuple[bool, int] | None]
"""The latest statement about a purpose for any of the ids (in the scopes at hand)."""


def decide(source_id: str, source_purposes: Sequence[tuple[str, str]], state: ConsentState,
           subjects: Sequence[int | None], own: dict[str, bool], at_ms: int, gpc: bool,
           scopes: Sequence[str] = (), history: Mapping[int, int] | None = None) -> Decision:
    """For which of its source's purposes may this event be used?

    ``own``: the consent the event carries (a statement made at ``at_ms``); ``subjects``:
    keyed hashes of its userId and anonymousId; ``scopes``: the scopes that govern the
    source's events, the last one the scope its new statements get (default: the source
    alone); ``history``: what the new statements about each id may change of stored
    history (ids not in it: :data:`NONE`; default: :data:`FULL` for all)."""
    ids = [s for s in subjects if s is not None]
    scopes = tuple(scopes) or (source_id,)
    state_of = functools.partial(state.of, scopes)
    own_changes, gpc_changes = _changes(state_of, ids, own, gpc)
    statements = [Statement(at_ms, source_id, s, part, None, channel, scopes[-1],
                            FULL if history is None else history.get(s, NONE))
                  for part, channel in ((own_changes, "event"), (gpc_changes, "gpc")) if part
                  for s in ids]
    return Decision(_allowed(state_of, ids, source_purposes, own, gpc), statements)


def _changes(state_of: StateOf, ids: list[int], own: dict[str, bool], gpc: bool
             ) -> tuple[dict[str, bool], dict[str, bool]]:
    """What the event's own consent and GPC change of the state (purpose → granted)."""
    own_changes: dict[str, bool] = {}
    for purpose, granted in own.items():
        if gpc and purpose in GPC_WITHDRAWS:
            continue  # GPC says no, whatever the page's banner said
        cur = state_of(ids, purpose)
        if cur is None or cur[0] != granted:
            own_changes[purpose] = granted
    gpc_changes: dict[str, bool] = {}
    if gpc:
        for purpose in GPC_WITHDRAWS:
            cur = state_of(ids, purpose)
            if cur is None or cur[0]:
                gpc_changes[purpose] = False
    return own_changes, gpc_changes


def _allowed(state_of: StateOf, ids: list[int], source_purposes: Sequence[tuple[str, str]],
             own: dict[str, bool], gpc: bool) -> dict[str, str]:
    """The source's purposes the event may be used for, with their lawful basis."""
    allowed: dict[str, str] = {}
    for purpose, basis in source_purposes:
        if gpc and purpose in GPC_WITHDRAWS:
            continue
        if purpose in own:
            said: bool | None = own[purpose]
        else:
            cur = state_of(ids, purpose)
            said = None if cur is None else cur[0]
        # consent needs a yes; other bases stand unless the person said no (an objection)
        if said or (said is None and basis != Basis.CONSENT):
            allowed[purpose] = basis
    return allowed
