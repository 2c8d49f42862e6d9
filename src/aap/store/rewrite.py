"""One primitive that changes stored events in place, in every tier.

What changes is not decided here: the privacy package (:mod:`aap.privacy.removal`)
builds a :class:`Change` — which files may hold the rows, what becomes of a file's
rows, what the statements on the hot tables are — and :func:`rewrite` applies it in one
transaction: each warm and cold file it changes is replaced by its new version, and the
old files are deleted once committed.

Statements take named parameters (``$name``): a change gives one dict, and :func:`bind`
passes each statement the names it uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, cast

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from aap.store import quarantine
from aap.store.filelist import EVENT_TIERS, Moved, SharedList, TierFile, reading
from aap.store.warehouse import Warehouse

FileRows = tuple[pa.Table, int] | None
"""A file's rows after the change and how many rows were hit; None: nothing changes."""

REWRITE_THREADS = 2
COLD_REWRITE_LEVEL = 6
"""Archives are rewritten at a fast zstd level: still compressed, still cold."""

_NAME = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def bind(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters ``sql`` names (DuckDB refuses any it does not use)."""
    return {n: params[n] for n in dict.fromkeys(_NAME.findall(sql))}


class Hot:
    """The hot tables inside a rewrite's transaction: ``hot(sql, params)`` runs a
    statement and returns its row count (or first value); :meth:`rows` its rows."""

    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self.cur = cur

    def __call__(self, sql: str, params: dict[str, Any]) -> int:
        row = self.cur.execute(sql, bind(sql, params)).fetchone()
        return int(row[0]) if row else 0

    def rows(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return self.cur.execute(sql, bind(sql, params)).fetchall()


@dataclass(frozen=True)
class Change:
    """What one rewrite does, built by the privacy package."""

    job: str
    """``erasure``, ``withdrawal`` or ``retention``: a retention run skips a file that
    fails and reports it; the others fail whole (they must not report done with a file
    left as it was)."""
    touches: Callable[[str, str, str], bool]
    """(path, tier, part) → whether the file may hold rows to change (only those are read
    whole)."""
    in_file: Callable[[pa.Table, str], FileRows]
    """(a file's rows, its tier) → its new rows."""
    hot: Callable[[Hot], None]
    """Changes the hot tables, inside the rewrite's transaction."""


@dataclass
class _Rewritten:
    path: str
    tier: str
    part: str
    hit: int
    new_path: str | None
    rows: int
    size: int


@dataclass
class _Run:
    new: list[str] = field(default_factory=list)
    old: list[str] = field(default_factory=list)
    set_aside: list[tuple[str, str, pa.Table]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    listed: bool = False
    """The new files are in the list (the shared list commits before DuckDB does)."""


def rewrite(wh: Warehouse, change: Change, out: dict[str, Any]) -> None:
    """In one transaction: ``change.hot`` changes the hot tables; each warm and cold file
    that ``change.in_file`` changes is replaced by its new version. Old files are deleted
    once committed; ``out`` counts rows and files per tier.

    Rows of a file it rewrites whose time is out of bounds go to ``quarantined_events``
    in the same commit (:mod:`aap.store.quarantine`). With the shared list (publishing
    on), a file folded by the tiering job or rewritten by another processor meanwhile
    (:class:`Moved`) makes it start again, up to :data:`MOVED_ATTEMPTS` times."""
    for attempt in range(MOVED_ATTEMPTS if wh.files.shared else 1):
        try:
            _rewrite(wh, change, out)
            return
        except Moved:
            if attempt == MOVED_ATTEMPTS - 1 or not wh.files.shared:
                raise


MOVED_ATTEMPTS = 3


def _rewrite(wh: Warehouse, change: Change, out: dict[str, Any]) -> None:
    run = _Run()
    try:
        with wh.write_lock:
            wh.settle()  # a batch half published is finished first: its rows are reached
            files = [(f.path, f.tier, f.part) for f in wh.files.files()
                     if f.tier in EVENT_TIERS]  # the tables' files: published.drop_persons
            with ThreadPoolExecutor(REWRITE_THREADS, thread_name_prefix="aap-rewrite") as pool:
                try:
                    done = [r for r in pool.map(lambda f: _guarded(wh, change, run, *f),
                                                files) if r is not None]
                except FileNotFoundError:
                    _gone_meanwhile(wh, files)
                    raise
            with wh.transaction() as cur:
                _commit(wh, cur, change, run, done, out)
    except BaseException:
        if not run.listed:
            for path in run.new:  # not committed: the rewritten files go again
                wh.tiers.delete(path)
        raise
    for path in run.old:  # committed: the new versions are the live ones
        wh.tiers.delete(path)
    _report(change.job, run, out)


def _gone_meanwhile(wh: Warehouse, files: list[tuple[str, str, str]]) -> None:
    """A file listed was not found: if it is no longer listed, another processor (an
    erasure or a withdrawal it ran) rewrote it since the list was read, and this rewrite
    starts again from the list as it is now (:class:`Moved`); a file still listed and
    gone is lost, and the error says so."""
    if wh.files.shared and {p for p, _, _ in files} - {f.path for f in wh.files.files()}:
        raise Moved from None


def _guarded(wh: Warehouse, change: Change, run: _Run, path: str, tier: str, part: str
             ) -> _Rewritten | None:
    """A file a retention run fails on is skipped and reported; but one that another
    processor moved meanwhile (no longer listed: folded, archived, rewritten) makes the
    rewrite start again from the list (:class:`Moved`): its rows are in another file."""
    moved: AbstractContextManager[None] = (reading(wh.files, [path]) if wh.files.shared
                                           else nullcontext())
    try:
        with moved:
            return _rewrite_file(wh, change, run, path, tier, part)
    except Moved:
        raise
    except Exception as exc:
        if change.job != "retention":
            raise
        run.skipped.append(f"{tier} {part} ({type(exc).__name__})")
        return None


def _touched(change: Change, path: str, tier: str, part: str) -> bool:
    try:
        return change.touches(path, tier, part)
    except (ValueError, OverflowError, pa.ArrowException):
        return True  # a value it cannot compare: read the file whole


def _rewrite_file(wh: Warehouse, change: Change, run: _Run, path: str, tier: str, part: str
                  ) -> _Rewritten | None:
    """The file's new version, written as its rows are read (a batch at a time: a
    month's archive is not read whole); None, and no new file, when nothing in it
    changes."""
    if not _touched(change, path, tier, part):
        return None  # nothing to change in it: the file stays as it is
    hit, changes = 0, 0  # rows hit (erased), batches changed (a retention may only
    bad: list[pa.Table] = []  # take purposes off rows: none hit, the file changed)

    def kept() -> Iterator[pa.RecordBatch]:
        nonlocal hit, changes
        for batch in wh.tiers.scan(path):
            table, out_of_bounds = quarantine.split(pa.Table.from_batches([batch]))
            if out_of_bounds is not None:
                bad.append(out_of_bounds)
            changed = change.in_file(table, tier)
            if changed is not None:
                table, n = changed
                hit, changes = hit + n, changes + 1
            yield from table.to_batches()

    directory = f"day={part}" if tier == "warm" else f"month={part}"
    new_path, size, rows = wh.tiers.write_batches(
        kept(), directory, cold=tier == "cold",
        level=COLD_REWRITE_LEVEL if tier == "cold" else None)
    if not (changes or bad):  # nothing in it changes: the file stays as it is
        wh.tiers.delete(new_path)
        return None
    if bad:
        run.set_aside.append((tier, part, pa.concat_tables(bad)))
    if not rows:  # every row goes: no new file
        wh.tiers.delete(new_path)
        return _Rewritten(path, tier, part, hit, None, 0, 0)
    run.new.append(new_path)  # deleted again if the rewrite fails
    return _Rewritten(path, tier, part, hit, new_path, rows, size)


def _commit(wh: Warehouse, cur: duckdb.DuckDBPyConnection, change: Change, run: _Run,
            done: list[_Rewritten], out: dict[str, Any]) -> None:
    for _, _, bad in run.set_aside:
        quarantine.keep(cur, bad, change.job)

    count = Hot(cur)
    change.hot(count)
    if done:  # refused (Moved) if a tiering move took one of them meanwhile: rows would
        # be in two files; last, so that the shared list commits only with the rest
        wh.files.swap(cur, [r.path for r in done],
                      [TierFile(r.new_path, r.tier, r.part, r.rows, r.size)
                       for r in done if r.new_path is not None], None)
        run.old.extend(r.path for r in done)
        run.listed = wh.files.shared
    for r in done:
        out[f"{r.tier}_rows"] += r.hit
        out[f"{r.tier}_files_rewritten"] += 1


def _report(job: str, run: _Run, out: dict[str, Any]) -> None:
    for tier, part, bad in run.set_aside:
        quarantine.report(job, quarantine.BAD_TIME, bad.num_rows, f"{tier} {part}")
    for where in run.skipped:
        quarantine.report(job, quarantine.FAILED, 1, where)
    if run.set_aside or run.skipped:
        out["quarantined"] = sum(b.num_rows for _, _, b in run.set_aside)
        out["files_skipped"] = len(run.skipped)


def holds_persons(wh: Warehouse, persons: pa.Array) -> Callable[[str, str, str], bool]:
    """A :attr:`Change.touches`: the file holds a row of one of ``persons``."""
    def holds(path: str, tier: str, part: str) -> bool:
        people = wh.tiers.read([path], ["person_id"]).column("person_id")
        return bool(pc.any(pc.is_in(people, value_set=persons)).as_py())
    return holds


def rewrite_tables(wh: Warehouse, persons: Iterable[int], own: bool = False) -> int:
    """Publishing on, after a change of these persons' rows in the local tables (erasure,
    rectification, retention): every published file of ``persons``, ``orders`` and
    ``order_items`` holding a row of theirs (``own``: a row this writer published: the
    other processors' rows of them are theirs, as with retention, which every processor
    runs on its own rows) is written again without them, and their
    rows as the local tables now hold them (none after an erasure) are written to one
    new file per table; all swapped on the list in one transaction, the old files
    deleted at once. A file folded or rewritten meanwhile by another processor
    (:class:`Moved`) makes it start again, up to :data:`MOVED_ATTEMPTS` times. Returns
    the files rewritten (not counting the new ones)."""
    people = sorted({int(p) for p in persons})
    if not wh.files.shared or not people:
        return 0
    for attempt in range(MOVED_ATTEMPTS):
        try:
            return _rewrite_tables(wh, people, own)
        except Moved:
            if attempt == MOVED_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _rewrite_tables(wh: Warehouse, people: list[int], own: bool) -> int:
    from aap.store import published

    value_set = pa.array(people, pa.int64())
    shared = cast(SharedList, wh.files)
    with wh.write_lock:
        wh.settle()  # a batch half published is listed first: its files are reached
        done = published.drop_persons(wh, value_set, shared.writer if own else None)
        new = [n for _, n in done if n is not None]
        try:
            new += published.write_person_rows(wh, people, shared.writer, shared.published())
            with wh.transaction() as cur:
                wh.files.swap(cur, [old for old, _ in done], new, None)
        except BaseException:
            for f in new:
                wh.tiers.delete(f.path)
            raise
    for old, _ in done:
        wh.tiers.delete(old)
    return len(done)


def purge_trash(wh: Warehouse, persons: pa.Array) -> int:
    """Files retired by tiering or retention stay on disk for a grace period (queries
    may still read them); those holding rows of ``persons`` go now: an erasure does
    not wait for the grace period."""
    with wh.write_lock:
        paths = wh.files.trash()
        hits = []
        for path in paths:
            try:
                people = wh.tiers.read([path], ["person_id"]).column("person_id")
            except (OSError, pa.ArrowException):
                continue  # already gone
            if pc.any(pc.is_in(people, value_set=persons)).as_py():
                hits.append(path)
        for path in hits:
            wh.tiers.delete(path)
            wh.files.forget(path)
    return len(hits)
