"""What erasure, withdrawal and retention remove: the predicates (which rows, what
change) that :func:`aap.store.rewrite.rewrite` applies to the hot tables and to every
warm and cold file.

- :func:`erase_persons` (Art. 17) removes a person's rows everywhere;
  :func:`erase_persons_in` only those of some sources (a self-service erasure scoped to
  one controller);
- :func:`strip_purpose` (a consent withdrawal) takes one purpose off a person's events
  and erases those left with none;
- :func:`expire` (retention, :mod:`aap.privacy.retention`) takes each purpose off the
  events older than its cutoff, and erases what is older than every cutoff;
- :func:`drop_orphans` sweeps the profiles of persons with no event left.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from aap.store import quarantine
from aap.store.filelist import EVENT_TIERS, Moved, reading
from aap.store.rewrite import (
    MOVED_ATTEMPTS,
    Change,
    FileRows,
    Hot,
    bind,
    holds_persons,
    purge_trash,
    rewrite,
    rewrite_tables,
)
from aap.store.schema import EVENT_ARROW_SCHEMA
from aap.store.tiers import read_again
from aap.store.warehouse import Warehouse

Forget = Callable[[list[int]], object]
"""Called with the keyed hashes of the ids of persons left with no event (the keystore
drops what it keeps of them)."""

_FILE_COUNTS = {"warm_rows": 0, "warm_files_rewritten": 0, "cold_rows": 0,
                "cold_files_rewritten": 0}


def _persons_param(persons: set[int]) -> dict[str, Any]:
    return {"persons": sorted(persons)}


def _filter_out(mask: pa.ChunkedArray | pa.Array, table: pa.Table) -> FileRows:
    """The table without the rows of ``mask`` (None if it has none)."""
    hit = int(pc.sum(mask).as_py() or 0)
    return (table.filter(pc.invert(mask)), hit) if hit else None


def _sql_rows(table: pa.Table, hit_sql: str, kept_sql: str, params: dict[str, Any]
              ) -> FileRows:
    """A file's rows changed by SQL on the table ``t``: ``hit_sql`` counts the rows that
    change, ``kept_sql`` selects the new rows."""
    con = duckdb.connect()
    try:
        con.register("t", table)
        hit = int(con.execute(hit_sql, bind(hit_sql, params)).fetchall()[0][0])
        if not hit:
            return None
        # (counts are fetched whole: a relation may follow on this connection)
        kept = con.sql(kept_sql, params=bind(kept_sql, params)).to_arrow_table()
        assert kept is not None
        return kept.cast(EVENT_ARROW_SCHEMA), hit
    finally:
        con.close()


# -- erasure --

_PERSON = "list_contains($persons, person_id)"


def erase_hot(out: dict[str, Any], params: dict[str, Any]) -> Callable[[Hot], None]:
    """The persons' rows deleted from the hot tables (``$persons``; ``$keys``: the keyed
    ids whose device streams go too), counted in ``out``: an erasure here, and one
    recorded elsewhere applied to this warehouse (:mod:`aap.store.erasures`)."""
    def hot(count: Hot) -> None:
        # their open device streams (keyed ids, as person_ids'): before the ids go
        out["session_streams"] = count(
            "DELETE FROM session_streams WHERE list_contains($keys, stream_key) OR stream_key"
            f" IN (SELECT id_key FROM person_ids WHERE {_PERSON})", params)
        out["hot_events"] = count(f"DELETE FROM events_raw WHERE {_PERSON}", params)
        out["quarantined_events"] = count(
            f"DELETE FROM quarantined_events WHERE {_PERSON}", params)
        # the query cache's copies of their warm and cold rows go in the same commit
        for table, key in (("query_cache", "query_cache_rows"),
                           ("query_cache_rollup", "query_cache_rollup_rows"),
                           ("query_cache_sessions", "query_cache_sessions_rows"),
                           ("query_cache_pages", "query_cache_pages_rows")):
            if count("SELECT count(*) FROM duckdb_tables() WHERE table_name = $table",
                     {"table": table}):
                out[key] = count(f"DELETE FROM {table} WHERE {_PERSON}", params)
        out["order_items"] = count(
            f"DELETE FROM order_items WHERE message_id IN (SELECT message_id FROM orders"
            f" WHERE {_PERSON})", params)
        out["orders"] = count(f"DELETE FROM orders WHERE {_PERSON}", params)
        out["persons"] = count(f"DELETE FROM persons WHERE {_PERSON}", params)
        out["ids"] = count(f"DELETE FROM person_ids WHERE {_PERSON}", params)
        out["merges"] = count("DELETE FROM person_overrides WHERE list_contains($persons,"
                              " old_person_id) OR list_contains($persons, person_id)", params)
        out["flags"] = count(f"DELETE FROM person_flags WHERE {_PERSON}", params)
    return hot


def erase_persons(wh: Warehouse, persons: set[int], keys: Iterable[int] = (),
                  shared: set[int] | None = None) -> dict[str, int]:
    """Physically remove the persons' rows from the hot tables and from every warm and
    cold file (rewritten without them; the old files are deleted at once), and their
    flags and rectifications from the shared store too when there is one
    (``shared_flags``, ``shared_rectifications``: the rows deleted there, merges the
    shared identities know included). Returns what was
    removed where. ``keys``: the keyed hashes of their ids, also those this warehouse has
    not linked (shared identities): their session streams go too. ``shared``: the
    persons the shared identities give the ids (their flags go from the shared store
    too)."""
    out = {"hot_events": 0, **_FILE_COUNTS, "persons": 0, "ids": 0, "merges": 0, "orders": 0,
           "order_items": 0, "query_cache_rows": 0, "flags": 0, "session_streams": 0,
           "retired_files_deleted": 0}
    if wh.flags is not None:  # the record of the flags is shared (AAP_META_URL): first
        out["shared_flags"] = wh.flags.erase(persons | (shared or set()))
    if wh.rectifications is not None:  # and so is the record of rectifications
        out["shared_rectifications"] = wh.rectifications.erase(persons | (shared or set()))
    if not persons:
        return out
    value_set = pa.array(sorted(persons), pa.int64())

    def in_file(table: pa.Table, tier: str) -> FileRows:
        return _filter_out(pc.is_in(table.column("person_id"), value_set=value_set), table)

    params = {**_persons_param(persons), "keys": sorted(keys)}
    rewrite(wh, Change("erasure", holds_persons(wh, value_set), in_file,
                       erase_hot(out, params)), out)
    if wh.files.shared:  # publishing: the published persons/orders/order_items files too
        out["table_files_rewritten"] = rewrite_tables(wh, persons)
    out["retired_files_deleted"] = purge_trash(wh, value_set)
    return out


def erase_persons_in(wh: Warehouse, persons: set[int], sources: list[str]) -> dict[str, int]:
    """Physically remove the persons' events and orders **of these sources** from the
    hot tables and from every warm and cold file (a self-service erasure scoped to one
    controller); their profile, ids and what other sources sent stay."""
    out = {"hot_events": 0, **_FILE_COUNTS, "orders": 0, "order_items": 0,
           "retired_files_deleted": 0}
    if not persons or not sources:
        return out
    cond = f"{_PERSON} AND list_contains($sources, source)"
    params = {**_persons_param(persons), "sources": list(sources)}
    value_set = pa.array(sorted(persons), pa.int64())
    source_set = pa.array(sources, pa.string())

    def hot(count: Hot) -> None:
        out["hot_events"] = count(f"DELETE FROM events_raw WHERE {cond}", params)
        out["order_items"] = count(
            f"DELETE FROM order_items WHERE message_id IN (SELECT message_id FROM orders"
            f" WHERE {cond})", params)
        out["orders"] = count(f"DELETE FROM orders WHERE {cond}", params)
        out["quarantined_events"] = count(f"DELETE FROM quarantined_events WHERE {cond}",
                                          params)

    def in_file(table: pa.Table, tier: str) -> FileRows:
        return _filter_out(pc.and_(pc.is_in(table.column("person_id"), value_set=value_set),
                                   pc.is_in(table.column("source"), value_set=source_set)),
                           table)

    rewrite(wh, Change("erasure", holds_persons(wh, value_set), in_file, hot), out)
    if wh.files.shared:  # publishing: their orders of these sources in published files
        out["table_files_rewritten"] = rewrite_tables(wh, persons)
    out["retired_files_deleted"] = purge_trash(wh, value_set)
    return out


# -- withdrawal --

def _withdrawn(persons: set[int], purpose: str, sources: list[str] | None,
               before_ms: int | None) -> tuple[str, dict[str, Any]]:
    """The events a withdrawal reaches: the condition and its parameters."""
    mine = f"{_PERSON} AND list_contains(purposes, $purpose)"
    params: dict[str, Any] = {**_persons_param(persons), "purpose": purpose}
    if sources is not None:
        mine += " AND list_contains($sources, source)"
        params["sources"] = list(sources)
    if before_ms is not None:
        mine += " AND epoch_ms(received_at) < $before_ms"
        params["before_ms"] = before_ms
    return mine, params


_WITHOUT = "list_filter(purposes, lambda x: x <> $purpose)"


def strip_purpose(wh: Warehouse, persons: set[int], purpose: str,
                  sources: list[str] | None = None, before_ms: int | None = None
                  ) -> dict[str, int]:
    """Take ``purpose`` off the persons' events in every tier (only the events of
    ``sources``, when given: a withdrawal is scoped to its controller; only those
    received before ``before_ms``, when given: what came after the withdrawal was
    admitted by the collector on a later statement); erase the events left with no
    purpose (Art. 17(1)(b)). Events stored before purposes existed (no purpose list)
    are left alone."""
    out = {"hot_changed": 0, "hot_erased": 0, **_FILE_COUNTS}
    if not persons or sources == []:
        return out
    mine, params = _withdrawn(persons, purpose, sources, before_ms)

    def hot(count: Hot) -> None:
        out["hot_erased"] = count(f"DELETE FROM events_raw WHERE {mine} AND len(purposes) = 1",
                                  params)
        count(f"DELETE FROM quarantined_events WHERE {mine}", params)
        out["hot_changed"] = count(
            f"UPDATE events_raw SET purposes = {_WITHOUT} WHERE {mine}", params)

    def in_file(table: pa.Table, tier: str) -> FileRows:
        return _sql_rows(
            table, f"SELECT count(*) FROM t WHERE {mine}",
            f"SELECT * REPLACE (CASE WHEN {mine} THEN {_WITHOUT} ELSE purposes END AS purposes)"
            f" FROM t WHERE NOT ({mine} AND len(purposes) = 1)", params)

    rewrite(wh, Change("withdrawal", holds_persons(wh, pa.array(sorted(persons), pa.int64())),
                       in_file, hot), out)
    return out


# -- retention --

@dataclass
class _Expiry:
    """One retention run: ``cutoffs[purpose][tier]`` and ``everything``, and what it
    erased from the files (filled by the file rewrites, which run in threads)."""

    cutoffs: dict[str, dict[str, datetime]]
    everything: datetime
    erased_ids: list[str] = field(default_factory=list)
    erased_persons: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def oldest_cutoff(self, tier: str) -> datetime:
        return max([self.everything, *(c[tier] for c in self.cutoffs.values())])

    def strictest(self) -> datetime:
        return max([self.everything, *(c for p in self.cutoffs.values() for c in p.values())])

    def expr(self, tier: str) -> tuple[str, str, dict[str, Any]]:
        """(new purposes, erase condition, their parameters) for rows of ``tier``."""
        terms: list[str] = []
        params: dict[str, Any] = {"everything": self.everything}
        for i, (purpose, by_tier) in enumerate(sorted(self.cutoffs.items())):
            terms.append(f"(x = $purpose_{i} AND timestamp < $cutoff_{i})")
            params[f"purpose_{i}"], params[f"cutoff_{i}"] = purpose, by_tier[tier]
        keep = f"list_filter(purposes, lambda x: NOT ({' OR '.join(terms)}))" if terms \
            else "purposes"
        gone = (f"coalesce(timestamp < $everything OR (coalesce(len(purposes), 0) > 0"
                f" AND len({keep}) = 0), false)")
        return keep, gone, params

    def touches(self, tiers_read: Callable[[str], pa.ChunkedArray]
                ) -> Callable[[str, str, str], bool]:
        def touches(path: str, tier: str, part: str) -> bool:
            limit = self.oldest_cutoff(tier)
            start = date.fromisoformat(part if tier == "warm" else part + "-01")
            if datetime.combine(start, datetime.min.time()) >= limit:
                return False  # the partition starts after every cutoff
            first = pc.min(tiers_read(path).cast(pa.timestamp("us")))
            return bool(first.is_valid and pc.less(
                first, pa.scalar(limit, pa.timestamp("us"))).as_py())
        return touches

    def in_file(self, table: pa.Table, tier: str) -> FileRows:
        keep, gone, params = self.expr(tier)
        con = duckdb.connect()
        try:
            con.register("t", table)
            changed = f"({gone} OR len(purposes) <> len({keep}))"
            sql = f"SELECT message_id, person_id FROM t WHERE {gone}"
            erased = con.execute(sql, bind(sql, params)).fetchall()
            sql = f"SELECT count(*) FROM t WHERE {changed}"
            if not int(con.execute(sql, bind(sql, params)).fetchall()[0][0]):
                return None
            sql = f"SELECT * REPLACE ({keep} AS purposes) FROM t WHERE NOT {gone}"
            kept = con.sql(sql, params=bind(sql, params)).to_arrow_table()
            assert kept is not None
        finally:
            con.close()
        with self.lock:
            self.erased_ids.extend(r[0] for r in erased)
            self.erased_persons.update(int(r[1]) for r in erased if r[1] is not None)
        return kept.cast(EVENT_ARROW_SCHEMA), len(erased)

    def hot(self, out: dict[str, Any]) -> Callable[[Hot], None]:
        def hot(count: Hot) -> None:
            keep, gone, params = self.expr("hot")
            params.update(hot_limit=self.oldest_cutoff("hot"), erased_ids=self.erased_ids,
                          strictest=self.strictest())
            # Only hot rows older than the latest cutoff can change: the first condition
            # lets DuckDB skip the row groups of recent days. Their persons are noted in
            # this transaction (a chunk committed just before is seen).
            self.erased_persons.update(int(r[0]) for r in count.rows(
                f"SELECT DISTINCT person_id FROM events_raw WHERE timestamp < $hot_limit"
                f" AND {gone}", params) if r[0] is not None)
            doomed = (f"(SELECT message_id FROM events_raw WHERE timestamp < $hot_limit"
                      f" AND {gone}) OR list_contains($erased_ids, message_id)")
            # and the persons of the orders that go (by their own time too: another
            # processor's run may have erased their events), whose published orders
            # are rewritten
            self.erased_persons.update(int(r[0]) for r in count.rows(
                f"SELECT DISTINCT person_id FROM orders WHERE message_id IN {doomed}"
                f" OR timestamp < $everything", params) if r[0] is not None)
            count(f"DELETE FROM order_items WHERE message_id IN {doomed}", params)
            out["orders"] = count(f"DELETE FROM orders WHERE message_id IN {doomed}"
                                  f" OR timestamp < $everything", params)
            out["hot_erased"] = count(
                f"DELETE FROM events_raw WHERE timestamp < $hot_limit AND {gone}", params)
            # set-aside rows are kept no longer than the shortest retention of any purpose,
            # counted from when they were set aside (their own time is what was wrong)
            out["quarantined_expired"] = count(
                "DELETE FROM quarantined_events WHERE quarantined_at < $strictest", params)
            if self.cutoffs:
                out["hot_changed"] = count(
                    f"UPDATE events_raw SET purposes = {keep}"
                    f" WHERE timestamp < $hot_limit AND len(purposes) <> len({keep})", params)
        return hot


def expire(wh: Warehouse, cutoffs: dict[str, dict[str, datetime]], everything: datetime,
           forget: Forget | None = None) -> dict[str, Any]:
    """Retention (see :mod:`aap.privacy.retention`): in each tier, take each purpose
    off the events older than its cutoff for that tier (``cutoffs[purpose][tier]``),
    erase the events left with no purpose (as a withdrawal does, Art. 17(1)(a)), and
    erase every event older than ``everything`` whatever its purposes, with the
    orders made from erased events. Only files that can hold such rows are read.
    ``forget``: see :data:`Forget`."""
    out: dict[str, Any] = {"hot_changed": 0, "hot_erased": 0, **_FILE_COUNTS, "orders": 0}
    run = _Expiry(cutoffs, everything)

    def first_times(path: str) -> pa.ChunkedArray:
        return wh.tiers.read([path], ["timestamp"]).column("timestamp")

    rewrite(wh, Change("retention", run.touches(first_times), run.in_file, run.hot(out)), out)
    # publishing: the published orders of persons with erased events, as they are now
    if wh.files.shared:  # this writer's rows: each processor's retention does its own
        out["table_files_rewritten"] = rewrite_tables(wh, run.erased_persons, own=True)
    out["persons_erased"], keys = drop_persons_without_events(wh, run.erased_persons)
    out["ids_forgotten"] = len(keys)
    if keys and forget is not None:
        forget(keys)
    return out


# -- persons left with no event --

def drop_orphans(wh: Warehouse, forget: Forget | None = None) -> dict[str, int]:
    """Profiles, ids, merges and flags of persons with no event left in any tier
    (after whole cold archives were dropped, say): a sweep over every stored event's
    person. ``forget`` as for :func:`expire`."""
    def read() -> list[tuple[Any, ...]]:
        with wh.snapshot() as cur:
            return cur.execute("""
                WITH live AS (SELECT DISTINCT coalesce(o.person_id, e.person_id) AS p
                              FROM events_all e
                              LEFT JOIN person_overrides o ON o.old_person_id = e.person_id)
                SELECT person_id FROM persons WHERE person_id NOT IN (SELECT p FROM live)
            """).fetchall()
    rows = read_again(read)
    n, keys = drop_persons_without_events(wh, {int(r[0]) for r in rows})
    if keys and forget is not None:
        forget(keys)
    return {"persons_erased": n, "ids_forgotten": len(keys)}


def _group(cur: duckdb.DuckDBPyConnection, persons: set[int]) -> tuple[set[int], set[int]]:
    """(the persons as merges resolve them, those with every person merged into them)."""
    cur.register("cand", pa.table({"p": pa.array(sorted(persons), pa.int64())}))
    resolved = {int(r[0]) for r in cur.execute(
        "SELECT coalesce(o.person_id, c.p) FROM cand c"
        " LEFT JOIN person_overrides o ON o.old_person_id = c.p").fetchall()}
    cur.unregister("cand")
    return resolved, resolved | {int(r[0]) for r in cur.execute(
        "SELECT old_person_id FROM person_overrides WHERE list_contains($persons, person_id)",
        {"persons": sorted(resolved)}).fetchall()}


def _live(wh: Warehouse, cur: duckdb.DuckDBPyConnection, group: set[int]) -> set[int]:
    """The persons of ``group`` with an event left in any tier. A file another processor
    moved meanwhile (folded, archived, rewritten: no longer listed) makes it read the
    list again, up to :data:`MOVED_ATTEMPTS` times; then none of them is dropped."""
    for _ in range(MOVED_ATTEMPTS):
        try:
            return _live_in_list(wh, cur, group)
        except Moved:
            continue
    quarantine.report("retention", quarantine.FAILED, 1,
                      "the list of files (it kept moving): no profile dropped")
    return set(group)


def _live_in_list(wh: Warehouse, cur: duckdb.DuckDBPyConnection, group: set[int]
                  ) -> set[int]:
    live = {int(r[0]) for r in cur.execute(
        "SELECT DISTINCT person_id FROM events_raw WHERE list_contains($persons, person_id)",
        {"persons": sorted(group)}).fetchall()}
    values = pa.array(sorted(group), pa.int64())
    for path, part in ((f.path, f.part) for f in wh.files.files(cur)
                       if f.tier in EVENT_TIERS):
        try:
            with reading(wh.files, [path]):
                col = wh.tiers.read([path], ["person_id"]).column("person_id")
        except (OSError, pa.ArrowException) as exc:
            # a file it cannot read may hold any of them: none is dropped this time
            quarantine.report("retention", quarantine.FAILED, 1,
                              f"{part} ({type(exc).__name__}): no profile dropped")
            live.update(group)
            continue
        hits = pc.filter(col, pc.is_in(col, value_set=values))
        live.update(int(x) for x in pc.unique(hits).to_pylist())
    return live


def _delete_members(cur: duckdb.DuckDBPyConnection, members: list[int], flags: bool = True
                    ) -> list[int]:
    """Delete the ids (keyed hashes), merges, flags (unless ``flags`` is false: the table
    mirrors the shared flags, which stay), set-aside rows and session streams of
    ``members``; returns the keyed hashes of the ids."""
    params = {"persons": members}
    keys = [int(r[0]) for r in cur.execute(
        "SELECT id_key FROM person_ids WHERE list_contains($persons, person_id)",
        params).fetchall()]
    cur.execute("DELETE FROM session_streams WHERE list_contains($keys, stream_key)",
                {"keys": keys})
    cur.execute("DELETE FROM person_ids WHERE list_contains($persons, person_id)", params)
    cur.execute("DELETE FROM person_overrides WHERE list_contains($persons, old_person_id)",
                params)
    if flags:
        cur.execute("DELETE FROM person_flags WHERE list_contains($persons, person_id)",
                    params)
    # and their set-aside rows: no id would reach them any more
    cur.execute("DELETE FROM quarantined_events WHERE list_contains($persons, person_id)",
                params)
    return keys


def drop_persons_without_events(wh: Warehouse, persons: set[int]) -> tuple[int, list[int]]:
    """Profiles (traits, first and last seen) of persons none of whose events is left
    in any tier go too: they were made from expired events; and so do their ids,
    merges and flags. Returns how many profiles went, and the keyed hashes of the
    ids that went."""
    if not persons:
        return 0, []
    with wh.write_lock:
        wh.settle()  # a batch half published: its rows are then in a listed file
        n, keys, dead = _drop_dead(wh, persons)
    # publishing: the published profiles and orders of those dropped, every writer's
    # (they have no event left anywhere); the others' rows stay
    rewrite_tables(wh, dead)
    return n, keys


def _drop_dead(wh: Warehouse, persons: set[int]) -> tuple[int, list[int], set[int]]:
    with wh.transaction() as cur:
        resolved, group = _group(cur, persons)
        live = _live(wh, cur, group)
        over = dict(cur.execute("SELECT old_person_id, person_id FROM person_overrides"
                                " WHERE list_contains($persons, old_person_id)",
                                {"persons": sorted(group)}).fetchall())
        live = {over.get(p, p) for p in live}
        dead = sorted(resolved - live)
        if not dead:
            return 0, [], set()
        row = cur.execute("DELETE FROM persons WHERE list_contains($persons, person_id)",
                          {"persons": dead}).fetchone()
        # Their ids (keyed hashes) and merges go too: a returning id is a new person.
        gone = set(dead)
        # with AAP_META_URL, the person may hold events in another warehouse: their
        # flags stay in the shared store, and so in its mirror here
        members = sorted(p for p in group if over.get(p, p) in gone)
        keys = _delete_members(cur, members, flags=wh.flags is None)
    return (int(row[0]) if row else 0), keys, gone | set(members)
