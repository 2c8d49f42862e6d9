"""Data-subject rights, run in the core process (which owns the warehouse).

**Access and portability** (Art. 15, 20): :meth:`Rights.access` writes one zip with
what AAP holds about the person, opened for them: their raw ids (opened from the
keystore), their profile, rectified personal traits, events, sessions, orders and
consent history from every tier, the events still in the durable log with everything
sealed in them opened (:meth:`aap.privacy.sealing.Sealer.unseal`), and the purposes,
recipients and retention, as JSON and CSV.

**Erasure** (GDPR Art. 17) of the person behind a userId or anonymousId:

1. the person is found through the keyed hash of the id, with every person merged into
   them and every id they used;
2. the data keys of all those ids are destroyed (crypto-shredding: every sealed copy,
   in the log and in backups, becomes unreadable at once), and the ids join the
   suppression list, so late events are not stored (the collector and the processor
   drop them, counted as ``erased_subject``);
3. the person's rows are physically removed from the hot tables and from every warm and
   cold file that held any (rewritten without them; the old files deleted); with
   publishing on, the erasure is first recorded on the shared store, and every
   processor removes the rows it holds hot (:mod:`aap.store.erasures`);
4. derived results go too: the query cache's copies of their rows, their ids in static
   cohorts, their rectified personal traits and their sealed access exports;
5. a receipt says what was removed where and when, with a SHA-256 digest of itself, and
   the audit log records it.

**Rectification** (Art. 16), **restriction** (Art. 18) and **objection** (Art. 21): see
:meth:`Rights.rectify_keys` and :meth:`Rights.flag_keys`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import secrets
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec

from aap.datadir import DataDir
from aap.events import Event, decode_events
from aap.log.base import Log, scan
from aap.privacy import exports, removal, subjects
from aap.privacy.audit import AuditLog
from aap.privacy.consent import FULL, ConsentLedger, Statement
from aap.privacy.ids import IdHasher
from aap.privacy.keystore import Keystore
from aap.privacy.purposes import Registry
from aap.privacy.scrub import is_personal_trait, redact
from aap.privacy.sealing import Sealer
from aap.query.cohorts import Cohorts
from aap.store.tiers import read_again
from aap.store.warehouse import Warehouse

if TYPE_CHECKING:
    from aap.store.identities import SharedIdentities

Scope = tuple[str, tuple[str, ...]]
"""A self-service request's scope (a source id or ``controller:GROUP``) and the ids of
the sources in it."""


_ERASED_WHERE: dict[str, str] = {
    "log": "sealed copies unreadable (data keys destroyed); records expire with the log's"
           " retention",
    "hot": "rows deleted", "warm": "files rewritten without the rows",
    "cold": "archives rewritten without the rows",
    "retired": "tier files in their grace period after tiering, holding any of the rows,"
               " deleted at once",
    "query_cache": "copied rows deleted in the same commit",
    "cohorts": "ids taken out of every static cohort; behavioural cohorts are evaluated at"
               " query time over what is left",
    "personal_traits": "rectified values deleted with the data keys",
    "access_exports": "sealed exports in the data dir deleted (copies already handed out"
                      " are outside AAP)"}
"""Where a full erasure reaches (its receipt's ``where``)."""


class Reached(NamedTuple):
    """What an erasure's runs found and did so far (:class:`Reach`)."""

    persons: set[int]
    keys: set[int]
    destroyed: int = 0
    """Data keys destroyed: a run again finds them gone, and its receipt counts them."""
    runs: int = 0
    """Runs started (a run again: every earlier one was interrupted)."""


class Reach(Protocol):
    """Where an erasure keeps what it found (a privacy request's row: see
    :meth:`Rights.erase_keys`)."""

    def found(self) -> Reached:
        """What the earlier runs found and did (empty, 0: none ran)."""
        ...

    def keep(self, reached: Reached) -> None:
        """Kept before the run erases anything, and once the keys are destroyed (raises
        if it cannot be)."""
        ...


class Rights:
    def __init__(self, data_dir: Path, warehouse: Warehouse, keystore: Keystore,
                 hasher: IdHasher, audit: AuditLog, log: Log | None = None) -> None:
        self.log = log
        """The durable log, whose records the access export opens (none: not read)."""
        self.sealer = Sealer(data_dir, hasher=hasher, keystore=keystore)
        self.dir = DataDir(data_dir).receipts
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.exports = DataDir(data_dir).exports
        self.exports.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.registry = Registry.for_data_dir(data_dir)
        self.ledger = ConsentLedger(data_dir)
        self.wh = warehouse
        self.keystore = keystore
        self.hasher = hasher
        self.audit = audit
        self.cohorts = Cohorts(data_dir)
        self.identities: SharedIdentities | None = None
        """Set by the core when identities are shared (``AAP_META_URL``): an erasure
        reaches the persons and links held there too."""
        self.after_erasure: Callable[[], None] | None = None
        """Set by the core: brings derived copies (the query cache) up to date and
        checkpoints the warehouse, before the receipt is handed out."""

    def subject_keys(self, user_ids: list[str], anonymous_ids: list[str]) -> list[int]:
        if not user_ids and not anonymous_ids:
            raise ValueError("name at least one userId or anonymousId")
        return [self.hasher.key(x) for x in (*user_ids, *anonymous_ids)]

    def erase(self, user_ids: list[str], anonymous_ids: list[str], actor: str = "privacy"
              ) -> dict[str, Any]:
        """Erase the persons behind these ids; returns the receipt."""
        return self.erase_keys(self.subject_keys(user_ids, anonymous_ids),
                               {"userIds": len(user_ids), "anonymousIds": len(anonymous_ids)},
                               actor)

    def closure(self, keys: list[int]) -> tuple[set[int], set[int]]:
        """The persons of these ids, with every person merged into them, and all their
        ids: this warehouse's, and with the shared identities (several processors) those
        of the shared store too, where a person whose events another processor holds is
        found."""
        persons, all_keys = subjects.person_closure(self.wh, keys)
        if self.identities is not None:
            shared_persons, shared_keys = self.identities.closure(all_keys)
            persons, all_keys = persons | shared_persons, all_keys | shared_keys
        return persons, all_keys

    def _reached(self, keys: list[int], reach: Reach | None) -> Reached:
        """The closure of the ids, with what the earlier runs of the erasure found (and
        what they did: :class:`Reached`)."""
        known = reach.found() if reach is not None else Reached(set(), set())
        persons, all_keys = self.closure(sorted(set(keys) | known.keys))
        return known._replace(persons=persons | known.persons, keys=all_keys | known.keys)

    def _destroy(self, reached: Reached, reach: Reach | None) -> int:
        """Crypto-shreds the keys, what was reached kept first (a run again reaches as
        far); returns how many keys every run destroyed: the receipt counts them all (and
        ``interrupted_runs``, how many ran before: the rows they removed are not in its
        ``removed``)."""
        now = reached._replace(runs=reached.runs + 1)
        if reach is not None:
            reach.keep(now)
        destroyed = reached.destroyed + self.keystore.destroy(reached.keys)
        if reach is not None and destroyed > reached.destroyed:
            reach.keep(now._replace(destroyed=destroyed))
        return destroyed

    def erase_keys(self, keys: list[int], requested: dict[str, Any], actor: str,
                   scope: Scope | None = None, reach: Reach | None = None) -> dict[str, Any]:
        """Erase the persons behind these ids; with ``scope`` (a self-service request,
        filed through one controller's source), only what that controller holds: when
        other sources hold events of the person too, see :meth:`_erase_in`.

        ``reach``: what an earlier run of the same erasure found (persons, ids), and where
        this run keeps what it finds before it erases anything. An erasure interrupted
        (S3 or PostgreSQL away, a crash) is run again from the start, and by then its
        first run may have erased the links that lead to the persons (the identities,
        here or, through the erasures' record, on every processor): without what that run
        found, the second would find nobody and leave the rows in the tier files."""
        t0 = time.perf_counter()
        started = datetime.now(UTC)
        known = self._reached(keys, reach)
        persons, all_keys = known.persons, known.keys
        if scope is not None and persons and not subjects.sources_of(self.wh, persons) <= set(scope[1]):
            return self._erase_in(keys, persons, requested, actor, scope, started, t0)
        destroyed = self._destroy(known, reach)
        # publishing on: recorded for every processor's hot rows first (and applied to
        # this warehouse's), before the files are rewritten (aap.store.erasures)
        spread = (self.wh.erasures.record(persons, all_keys)
                  if self.wh.erasures is not None else {})
        # with the shared identities, ``persons`` already holds what they give the ids
        shared = None if self.identities is not None else subjects.shared_persons(self.wh,
                                                                                    all_keys)
        removed = removal.erase_persons(self.wh, persons, all_keys, shared=shared)
        for name, n in spread.items():  # the hot rows the record's application deleted
            removed[name] = removed.get(name, 0) + n
        derived = {**self.cohorts.forget(all_keys),
                   "query_cache_rows": removed.pop("query_cache_rows", 0),
                   "query_cache_rollup_rows": removed.pop("query_cache_rollup_rows", 0),
                   "query_cache_sessions_rows": removed.pop("query_cache_sessions_rows", 0),
                   "query_cache_pages_rows": removed.pop("query_cache_pages_rows", 0),
                   "access_exports_deleted": exports.delete_for(self.exports, all_keys)}
        if self.identities is not None:
            derived["shared_identity_rows"] = self.identities.erase(persons, all_keys)
        if self.after_erasure is not None:
            self.after_erasure()
        receipt: dict[str, Any] = {
            "id": "er_" + secrets.token_hex(8),
            "type": "erasure",
            "requested": requested,
            "started_at": started.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "seconds": round(time.perf_counter() - t0, 3),
            "persons": len(persons),
            "identifiers_suppressed": len(all_keys),
            "data_keys_destroyed": destroyed,
            "removed": removed,
            "derived": derived,
            "where": dict(_ERASED_WHERE),
        }
        if known.runs:
            receipt["interrupted_runs"] = known.runs
        if self.wh.erasures is not None:
            receipt["where"]["other_processors"] = (
                "recorded on the shared store: every processor deletes the rows it holds"
                " hot before it publishes again, and drops later events of the ids")
        return self._file_receipt(receipt, actor, {"identifiers": len(all_keys)})

    def _erase_in(self, keys: list[int], persons: set[int], requested: dict[str, Any],
                  actor: str, scope: Scope, started: datetime, t0: float) -> dict[str, Any]:
        """Erasure scoped to one controller, whose sources are not the only ones holding
        the person's events: their events and orders **of the scope's sources** are
        removed from every tier; the data keys, the profile and the other controllers'
        data stay; and a withdrawal of every purpose is recorded for the ids in the scope
        (channel ``erasure``), so that the scope's sources collect nothing more of them
        until the person grants again."""
        name, sources = scope
        removed = removal.erase_persons_in(self.wh, persons, list(sources))
        now_ms = int(time.time() * 1000)
        self.ledger.record([Statement(now_ms, name, k, dict.fromkeys(self.registry.purposes,
                                                                    False),
                                      None, "erasure", name, FULL) for k in keys])
        if self.after_erasure is not None:
            self.after_erasure()
        receipt: dict[str, Any] = {
            "id": "er_" + secrets.token_hex(8),
            "type": "erasure",
            "requested": requested,
            "scope": name,
            "sources": sorted(sources),
            "started_at": started.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "seconds": round(time.perf_counter() - t0, 3),
            "persons": len(persons),
            "identifiers_suppressed": 0,
            "data_keys_destroyed": 0,
            "removed": removed,
            "where": {"hot": "rows of the scope's sources deleted",
                      "warm": "files rewritten without those rows",
                      "cold": "archives rewritten without those rows",
                      "consent": "every purpose withdrawn for the ids in this scope",
                      "kept": "the profile, the data keys and what other controllers'"
                              " sources hold are not this scope's to erase"},
        }
        return self._file_receipt(receipt, actor, {"scope": name})

    def _file_receipt(self, receipt: dict[str, Any], actor: str, audited: dict[str, Any]
                      ) -> dict[str, Any]:
        """Seal an erasure receipt with its SHA-256 digest, keep it (0600) in the receipts
        directory and record it in the audit log."""
        receipt["digest"] = hashlib.sha256(
            json.dumps(receipt, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        path = self.dir / f"{receipt['id']}.json"
        path.write_text(json.dumps(receipt, indent=1) + "\n")
        path.chmod(0o600)
        self.audit.append(actor, "privacy.erasure", {
            "receipt": receipt["id"], "digest": receipt["digest"],
            "persons": receipt["persons"], **audited})
        return receipt

    def access(self, user_ids: list[str], anonymous_ids: list[str], actor: str = "privacy"
               ) -> dict[str, Any]:
        """Everything about the person (Art. 15, 20): profile, events and sessions from
        every tier, consent history, and the purposes, recipients and retention, as JSON
        and CSV in one zip, kept sealed under the person's key
        (``DATA_DIR/privacy/exports/<id>.zip.sealed``, see :mod:`aap.privacy.exports`)."""
        return self.access_keys(self.subject_keys(user_ids, anonymous_ids),
                                {"userIds": user_ids, "anonymousIds": anonymous_ids}, actor)

    def access_keys(self, keys: list[int], named: dict[str, Any], actor: str,
                    scope: Scope | None = None) -> dict[str, Any]:
        """With ``scope`` (a self-service request): the events, orders and consent
        statements of the scope's sources; the profile and personal traits only when no
        other source holds events of the person."""
        t0 = time.perf_counter()
        # every processor's persons: their events are in the published files it reads
        persons, all_keys = self.closure(keys)
        within = list(scope[1]) if scope is not None else []
        whole = scope is None or subjects.sources_of(self.wh, persons) <= set(within)

        def read() -> dict[str, Any]:  # made again on a file an erasure replaced meanwhile
            with self.wh.snapshot() as cur:
                return _person_tables(cur, sorted(persons) or [0], scope, within, whole)
        tables = read_again(read)
        consent = [{"at": datetime.fromtimestamp(s.at_ms / 1000, UTC).isoformat(),
                    "purposes": s.purposes, "policy_version": s.policy_version,
                    "channel": s.channel} for s in self.ledger.history(sorted(all_keys))
                   if scope is None or s.where == scope[0] or s.where in within]
        purposes = [msgspec.to_builtins(p) for p in self.registry.purposes.values()]
        personal = self.keystore.personal_traits(all_keys) if whole else {}
        logged = self.logged_events(all_keys, sources=None if scope is None else set(within))
        identifiers = self.identifiers(keys, named, all_keys, logged)
        export_id = "ac_" + secrets.token_hex(8)
        zipped = _export_zip({"identifiers": identifiers, "personal_traits": personal,
                              "log_events": logged}, tables, consent, purposes)
        # sealed at rest under one of the person's keys, named ones first (the zip holds
        # their raw ids and personal traits in plain text)
        path = exports.write(self.keystore, self.exports, export_id,
                             dict.fromkeys([*keys, *sorted(all_keys)]), zipped)
        summary = {"id": export_id, "type": "access", "path": str(path) if path else None,
                   "persons": len(persons), "events": len(tables["events"][1]),
                   "sessions": len(tables["sessions"][1]), "orders": len(tables["orders"][1]),
                   "consent_statements": len(consent), "personal_traits": len(personal),
                   "identifiers": sum(len(v) for v in identifiers.values()),
                   "log_events": len(logged),
                   "restricted": subjects.is_flagged(
                       self.wh, persons | subjects.shared_persons(self.wh, keys), "restricted"),
                   "seconds": round(time.perf_counter() - t0, 3)}
        if path is None:
            summary["note"] = "the identifiers were erased: nothing is kept about them"
        self.audit.append(actor, "privacy.access", {k: v for k, v in summary.items()
                                                    if k != "path"})
        return summary

    def logged_events(self, keys: set[int], sources: set[str] | None = None
                      ) -> list[dict[str, Any]]:
        """The person's events still in the durable log (of ``sources`` only, when given:
        a request scoped to a controller), opened: raw ids, and the personal traits,
        properties and context fields sealed in them (where the keys still exist), as
        received; the sealed blobs themselves are left out."""
        if self.log is None or not keys:
            return []
        out: list[dict[str, Any]] = []
        for rec in scan(self.log):
            for ev in decode_events(rec.payload):
                if self._owned(ev, keys) and (sources is None or ev.source in sources):
                    ev = self.sealer.unseal(ev)
                    ev.sealed = {}
                    out.append(msgspec.to_builtins(ev))
        return out

    def _owned(self, ev: Event, keys: set[int]) -> bool:
        for raw, key in ((ev.user_id, ev.user_key), (ev.anonymous_id, ev.anonymous_key),
                         (ev.previous_id, ev.previous_key)):
            if key is None and raw is not None:  # written unsealed (tools, tests)
                key = self.hasher.key(raw)
            if key in keys:
                return True
        return False

    def identifiers(self, keys: list[int], named: dict[str, Any], all_keys: set[int],
                    logged: list[dict[str, Any]]) -> dict[str, list[str]]:
        """The person's raw ids held by AAP (opened from the keystore), by kind: the
        kind the request named, else the field an event of theirs carried it in."""
        kinds: dict[int, str] = {}
        for ev in logged:
            for field, kind in (("userId", "userIds"), ("previousId", "userIds"),
                                ("anonymousId", "anonymousIds")):
                if ev.get(field) is not None:
                    kinds.setdefault(self.hasher.key(ev[field]), kind)
        users = named.get("userIds", [None] if named.get("userId") is True else [])
        anons = named.get("anonymousIds", [None] if named.get("anonymousId") is True else [])
        if isinstance(users, list) and isinstance(anons, list) and \
                len(users) + len(anons) == len(keys):
            for k, kind in zip(keys, ["userIds"] * len(users) + ["anonymousIds"] * len(anons),
                               strict=True):
                kinds[k] = kind
        out: dict[str, list[str]] = {"userIds": [], "anonymousIds": [], "other": []}
        for k in dict.fromkeys([*keys, *sorted(all_keys)]):
            raw = self.keystore.identifier(k)
            if raw is not None:
                out[kinds.get(k, "other")].append(raw)
        return out

    def rectify_keys(self, keys: list[int], traits: dict[str, Any], actor: str
                     ) -> dict[str, Any]:
        """Art. 16. Traits that are not personal by name are merged into the profile
        (``persons.traits``, the one place traits are kept: every query and tier reads
        them from there at once; with several processors, each one's profiles, through
        the shared record of :mod:`aap.store.rectifications`). Personal traits (email,
        name, phone, …), which the collector seals and no table keeps in clear, are kept
        sealed under each of the person's data keys in the keystore, and the access
        export shows them. ``null`` removes a trait."""
        if not traits:
            raise ValueError("a rectification needs traits")
        personal = {k: v for k, v in traits.items() if is_personal_trait(k, v)}
        plain = {k: v for k, v in traits.items() if k not in personal}
        # with several processors: the persons and ids the shared identities know too
        # (access and erasure find them alike), and every processor's profiles
        persons, all_keys = self.closure(keys)
        n = subjects.rectify_traits(self.wh, persons, plain) if plain else len(persons)
        kept = (self.keystore.rectify_personal_traits(all_keys, personal)
                if personal and persons else {})
        # the audit log names the traits, never their values (nor an address used as a name)
        names = sorted({redact(k) for k in personal})
        self.audit.append(actor, "privacy.rectification", {
            "persons": n, "traits": sorted(plain), "personal_traits": names})
        return {"type": "rectification", "persons": n, "traits": sorted(plain),
                "personal_traits": names, "personal_traits_kept": len(kept)}

    def flag_keys(self, keys: list[int], kind: str, actor: str, lift: bool = False
                  ) -> dict[str, Any]:
        """Art. 18 (``restriction``: kept, out of every query and of further processing)
        and Art. 21 (``objection``: out of profiling). ``lift`` lifts a restriction (Art.
        18(3): tell the person first) or records that the objection was withdrawn."""
        flag = {"restriction": "restricted", "objection": "objected"}[kind]
        persons, _ = self.closure(keys)  # as access and erasure find them
        if self.identities is None:  # the shared flags' own look-up (AAP_META_URL)
            persons |= subjects.shared_persons(self.wh, keys)
        if lift:
            n = subjects.unflag_persons(self.wh, persons, flag)
            self.audit.append(actor, f"privacy.{kind}_lifted", {"persons": len(persons)})
            return {"type": kind, "lifted": True, "persons": len(persons), "flags_removed": n}
        n = subjects.flag_persons(self.wh, persons, flag)
        self.audit.append(actor, f"privacy.{kind}", {"persons": n})
        return {"type": kind, "persons": n}


_SESSIONS = """
SELECT session_id, any_value(person_id) AS person_id, min(timestamp) AS started_at,
       max(timestamp) AS ended_at, count(*) AS events,
       count(*) FILTER (WHERE type IN ('page', 'screen')) AS views,
       arg_min(path, timestamp) AS entry_path, arg_max(path, timestamp) AS exit_path,
       arg_min(referrer_domain, timestamp) AS referrer_domain,
       arg_min(utm_campaign, timestamp) AS utm_campaign
FROM person_events GROUP BY session_id ORDER BY started_at
"""
"""The ``sessions`` view's columns, over the person's events only."""

_EXPORT_README = """Your data, as kept by this AAP installation (GDPR Art. 15 and 20).

identifiers.json   your ids as we hold them: userIds, anonymousIds (and "other": ids
                   of yours whose kind no event we still hold shows)
profile.json/.csv  your profile: first and last seen, traits
personal_traits.json  personal traits (email, name, ...) as you had them corrected; we
                   keep these only encrypted under a key of your own
events.json/.csv   every event of yours, from every storage tier
log_events.json    every event of yours still in the durable log, as it was received,
                   with what we keep encrypted in it opened: your ids, and the
                   personal traits and properties you sent
sessions.json/.csv your visits
orders.json/.csv   your orders
consent.json/.csv  every consent statement you made, when, through which channel, under
                   which policy version
purposes.json      why your data is processed, on which lawful basis, who receives it,
                   which enrichments are used, and how long it is kept
"""


Table = tuple[list[str], list[tuple[Any, ...]]]
"""A table's column names and rows."""


def _person_tables(cur: Any, ids: list[int], scope: Scope | None, within: list[str],
                   whole: bool) -> dict[str, Table]:
    """The person's profile (only when ``whole``), events, sessions and orders (of the
    sources ``within``, with a ``scope``)."""
    marks = ",".join("?" * len(ids))
    where = ""
    if scope is not None:
        where = f" AND e.source IN ({','.join('?' * len(within)) or 'NULL'})"
    # one scan of the tiers for the person's events (all tiers, merges resolved,
    # and also while restricted: Art. 18 limits our processing, not the person's
    # right to see their data); their sessions are computed from those rows (the
    # sessions view would group every event of the store)
    cur.execute(f"CREATE TEMP TABLE person_events AS"
                f" SELECT e.* REPLACE (coalesce(o.person_id, e.person_id) AS person_id)"
                f" FROM events_all e LEFT JOIN person_overrides o"
                f" ON o.old_person_id = e.person_id WHERE e.person_id IN ({marks})"
                f"{where} ORDER BY timestamp, message_id", ids + within)
    tables: dict[str, Table] = {}
    for name, sql, params in (
        ("profile", f"SELECT * FROM persons WHERE person_id IN ({marks})"
                    + ("" if whole else " AND false"), ids),
        ("events", "SELECT * FROM person_events", []),
        ("sessions", _SESSIONS, []),
        ("orders", f"SELECT * FROM orders_resolved e WHERE person_id IN ({marks})"
                   f"{where} ORDER BY timestamp", ids + within),
    ):
        res = cur.execute(sql, params)
        tables[name] = ([d[0] for d in res.description], res.fetchall())
    cur.execute("DROP TABLE person_events")
    return tables


def _export_zip(documents: dict[str, Any], tables: dict[str, Table],
                consent: list[dict[str, Any]], purposes: list[Any]) -> bytes:
    """The access export: a README, ``documents`` as JSON, each table as JSON and CSV,
    the consent history as JSON and CSV and the purposes as JSON."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("README.txt", _EXPORT_README)
        for name, doc in documents.items():
            z.writestr(f"{name}.json", _json(doc))
        for name, (cols, rows) in tables.items():
            z.writestr(f"{name}.json", _json([dict(zip(cols, r, strict=True)) for r in rows]))
            z.writestr(f"{name}.csv", _csv(cols, rows))
        z.writestr("consent.json", _json(consent))
        z.writestr("consent.csv", _csv(["at", "purposes", "policy_version", "channel"],
                                       [tuple(c.values()) for c in consent]))
        z.writestr("purposes.json", _json(purposes))
    return buf.getvalue()


def _default(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def _json(value: Any) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False, default=_default)


def _csv(cols: list[str], rows: list[tuple[Any, ...]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        w.writerow([json.dumps(v, default=_default, ensure_ascii=False)
                    if isinstance(v, dict | list) else _default(v) if v is not None
                    and not isinstance(v, str | int | float | bool) else v for v in r])
    return buf.getvalue()
