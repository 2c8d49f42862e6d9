"""Publishing: the processor's hot rows leave for the tier store every few seconds as
batch files, listed on the shared-state database (``AAP_PUBLISH_SECONDS`` > 0).

One batch, ``seq`` = the last one's + 1 (kept in ``processor_state``), in four steps:

1. **mark**: in one DuckDB transaction, every hot row not marked yet gets the batch's
   number in ``events_raw.publish_batch`` (rows out of bounds are set aside first,
   :mod:`aap.store.quarantine`) — one column written, not the row copied: see
   :data:`aap.store.schema.PUBLISH_BATCH`;
2. **write**: one file per UTC day of the rows,
   ``warm/events/day=D/batch-<writer>-<seq>.parquet`` — a name fixed by (writer, seq,
   day), so writing it again replaces it;
3. **list**: in one transaction of the shared store, the files join the list and the
   batch is noted as this writer's last published one; nothing if it already was;
4. **forget**: the batch's rows leave ``events_raw``.

Steps 1 and 4 hold the warehouse's write lock alone. During steps 2 and 3 (most of a
batch's time) the publishing turn lets the processor's chunks in, and nothing else
(:mod:`aap.store.writelock`; why that is safe: :meth:`Publisher._list`).

Erasures recorded by other processors (:mod:`aap.store.erasures`) reach the hot rows first
(:meth:`Publisher.settle`), and step 3 refuses to list a batch when one was recorded
after that: the batch is cleaned and written again first.

A crash (or a failure) at any point leaves a batch marked in ``events_raw``; it is finished
from step 2 or 4 (whichever the shared store says) before anything else: at start-up,
before the next batch, and before any rewrite (erasure, withdrawal, retention) or profile
sweep, which hold the warehouse's write lock as the publisher does. So each row is in
exactly one of: the hot rows not marked, a batch not listed yet, a listed file. Queries
read the rows of batches not listed yet with the hot rows
(:class:`aap.store.filelist.Gate` keeps the two reads in step).

The tiering job folds a day's batch files into its warm file
(:func:`aap.store.tiering.compact_batches`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

from aap.datadir import DataDir
from aap.errors import one_line
from aap.store import handover, published, quarantine
from aap.store.erasures import ErasuresLost
from aap.store.filelist import MARKED, SharedList, Stale, TierFile, is_shared
from aap.store.meta import MetaDB, log_failure, open_meta, transient
from aap.store.schema import EVENT_ARROW_SCHEMA, EVENT_COLUMNS, PUBLISH_BATCH
from aap.store.tiering import BATCH_PREFIX
from aap.store.warehouse import Warehouse

logger = logging.getLogger("aap.publish")

JOB = "publishing"
SEQ = "publish_seq"
"""``processor_state`` row: the last batch marked."""

_COLUMNS = ", ".join("coalesce(o.person_id, e.person_id) AS person_id" if n == "person_id"
                     else f'e."{n}"' for n, _, _ in EVENT_COLUMNS)
"""The events' columns of a batch's rows, merges known now resolved (as a move to the warm
tier writes them)."""

BATCH_LEVEL = 1
"""zstd level of a batch file: it lives until the tiering job folds it (minutes), and is
written in the publishing turn, which every row of the batch waits for. Measured on a
batch of 71,488 events of the freshness cluster (2026-12-07): 44 ms of CPU and 613 KB at
level 1, 76 ms and 596 KB at level 6 (the warm tier's)."""
STALE_ATTEMPTS = 10
"""Times a batch is cleaned and written again because erasures keep being recorded while
it is listed; then :class:`Stale` is raised and the batch stays pending for the next turn."""

Step = Callable[[str], object]
"""Called after each step (``marked``, ``file``, ``written``, ``listed``, ``done``): the
tests stop a batch there."""


class Publisher:
    def __init__(self, wh: Warehouse, interval_s: float, *, step: Step | None = None) -> None:
        if not isinstance(wh.files, SharedList):
            raise ValueError("publishing needs the warehouse's list on the shared store")
        self.wh = wh
        self.files: SharedList = wh.files
        self.interval = interval_s
        self.step: Step = step or (lambda _: None)
        wh.settle = self.settle
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="aap-publish", daemon=True)
        self.folder = handover.Folder(self.files.db) if wh.handover else None
        """Folds the streams the listings staged (with the handover), once started."""
        self.published_rows = 0
        self.last_listed_at: float | None = None
        """When a batch of this writer was last listed (epoch seconds; None: not since start)."""
        self.stopped: str | None = None
        """Why publishing stopped for good (erasures lost here: :class:`ErasuresLost`),
        else None; the health answers say it."""

    # -- the steps --

    def settle(self) -> int:
        """With the write lock held: apply the erasures and the rectifications other
        processors recorded (:mod:`aap.store.erasures`, :mod:`aap.store.rectifications`),
        then finish every batch left marked.
        Returns the batches finished."""
        if self.wh.erasures is not None:
            self.wh.erasures.apply()
        if self.wh.rectifications is not None:  # (aap.store.rectifications)
            self.wh.rectifications.apply()
        pending = self._pending()
        for seq in pending:
            if self._finish(seq) < 0:
                break  # stale, and dropped with everything after it
        return len(pending)

    def _pending(self) -> list[int]:
        """The batches marked and not finished."""
        cur = self.wh.con.cursor()
        try:
            return sorted({int(r[0]) for r in cur.execute(MARKED).fetchall()}
                | set(published.pending(cur))
                | set(handover.pending(cur) if self.wh.handover else ()))
        finally:
            cur.close()

    def recover(self) -> int:
        """At start-up: a batch a crash left half published is finished (one that cannot
        be listed because erasures were lost here stays pending: the processor starts,
        and its publisher says why it publishes nothing)."""
        with self.wh.write_lock:
            try:
                n = self.settle()
            except ErasuresLost as exc:
                self._stopped(exc)
                return 0
            except Exception as exc:  # the tier store (S3) or the shared state away: the
                if not transient(exc, self.wh.tiers):  # processor starts all the same,
                    raise  # and the publisher's first turn finishes the batch
                logger.warning("publishing: a batch left by a stop is finished at the next"
                               " turn (the tier store or the shared state is away): %s",
                               one_line(exc))
                return 0
        if n:
            logger.info("publishing: %d batch(es) left by a stop finished", n)
        return n

    def publish_once(self) -> dict[str, int]:
        """One batch of every hot row (nothing when there is none). With the handover,
        the batch's streams are staged between the mark and the rest, without the write
        lock (:func:`aap.store.handover.stage_batch`): the processor writes meanwhile."""
        try:
            out = self._publish_once()
        except ErasuresLost as exc:
            self._stopped(exc)
            raise
        self.stopped = None
        return out

    def _stopped(self, exc: ErasuresLost) -> None:
        """Publishing stopped for good: said once in the log (not every turn), and kept
        for the health answers."""
        if self.stopped != str(exc):
            logger.error("publishing stopped: %s", exc)
        self.stopped = str(exc)

    def _publish_once(self) -> dict[str, int]:
        out = {"rows": 0, "files": 0, "finished": 0}
        with self.wh.write_lock:
            out["finished"] = self.settle()
            if self.wh.erasures is not None:  # nothing is marked that cannot be listed
                self.wh.erasures.check_lost()
            seq = self._mark(out)
            if not seq:
                return out
            self.step("marked")
        staged = handover.stage_batch(self.wh, seq) if self.wh.handover else None
        # held opened: the chunk being written goes on (steps 2 and 3 let chunks in anyway)
        self.wh.write_lock.acquire(opened=True)
        try:
            if seq not in self._pending():  # finished meanwhile by a rewrite's settle
                return out
            out["files"] = self._finish(seq, staged, opened=True)
        finally:
            self.wh.write_lock.release()
        if out["files"] < 0:
            out["dropped"] = out["rows"]
            return out
        self.published_rows += out["rows"]
        return out

    def _mark(self, out: dict[str, int]) -> int:
        """Step 1: the next batch's number, or 0 when there was nothing to mark."""
        seq = self.wh.get_state(SEQ) + 1
        with self.files.gate.exclusive(), self.wh.transaction() as cur:
            set_aside = quarantine.hot(cur, JOB)
            row = cur.execute(f"UPDATE events_raw SET {PUBLISH_BATCH} = $seq"
                              f" WHERE {PUBLISH_BATCH} IS NULL", {"seq": seq}).fetchone()
            out["rows"] = n = int(row[0]) if row else 0
            out["keys"] = keys = published.mark(cur, seq)
            if self.wh.handover:  # the log positions and streams go with the files
                keys += handover.mark(cur, seq)
            if n or keys:
                cur.execute("INSERT INTO processor_state VALUES ($n, $v) ON CONFLICT (name)"
                            " DO UPDATE SET value = excluded.value", {"n": SEQ, "v": seq})
        quarantine.report(JOB, quarantine.BAD_TIME, set_aside, "the hot table")
        return seq if n or keys else 0

    def _finish(self, seq: int, staged: bool | None = None, opened: bool = False) -> int:
        """Steps 2 to 4 of batch ``seq``, from where the shared store says it is. Returns
        the files listed, or -1 when the batch was stale (its log positions were
        published past by another processor, :mod:`aap.store.handover`): then it is
        dropped, with everything not published yet. ``staged``: whether the batch's
        streams were staged already, with some (None: not yet). ``opened``: the
        processor's chunks may be written during steps 2 and 3 (the publishing turn,
        which holds the lock opened from the start; a settle, which others call before
        they change rows, keeps them out)."""
        files: list[TierFile] = []
        if self.files.published() < seq:
            try:
                files = self._list(seq, staged, opened)
            except handover.Stale as exc:
                logger.warning("publishing: batch %d is stale (%s)", seq, exc)
                self.step("dropped")
                return -1
        if files:
            self.last_listed_at = time.time()
        if opened:  # step 4 alone (listed already, _list did not shut it)
            self.wh.write_lock.shut()
        self.step("listed")
        with self.wh.transaction() as cur:
            cur.execute(f"DELETE FROM events_raw WHERE {PUBLISH_BATCH} = $seq", {"seq": seq})
            published.forget(cur, seq)
            if self.wh.handover:
                handover.forget(cur, seq)
        if self.folder is not None and files:
            self.folder.listed()
        self.step("done")
        return len(files)

    def _list(self, seq: int, staged: bool | None, opened: bool = False) -> list[TierFile]:
        """Steps 2 and 3. The listing checks, in its transaction, that no erasure was
        recorded since the last one applied here; if one was, it is applied (to
        the batch's marked rows too) and the batch written again, and a file of the first
        writing that the second has no more rows for is deleted. With the handover, the
        log positions' compare-and-set runs in the same transaction
        (:class:`aap.store.handover.Stale` when another processor published past them).

        ``opened``: the write lock lets the processor's chunks in while the files are
        written and listed (:mod:`aap.store.writelock`). Nothing those steps read can
        change meanwhile but through a chunk: the batch's rows are marked, and chunks
        only add rows that are not; the tables' rows are read in a
        DuckDB snapshot, and a key a chunk changes is noted for the next batch; the
        erasures applied here (the listing's check) and the rectifications change only
        with the lock held alone (a chunk that would apply one waits). So the batch is
        listed as if every such chunk came after it. What a failed listing does next
        (drop the batch, apply an erasure) runs with the lock held alone again."""
        erasures = self.wh.erasures
        check = erasures.unchanged if erasures is not None else None
        if erasures is not None:  # erasures lost here: no file is written
            erasures.check_lost()
        positions = handover.listing(self.wh, seq, staged) if self.wh.handover else None
        written: set[str] = set()
        for attempt in range(STALE_ATTEMPTS):
            try:
                with self.wh.write_lock.opened() if opened else nullcontext():
                    files = self._write(seq)
                    for path in sorted(written - {f.path for f in files}):
                        self.wh.tiers.delete(path)
                    written = {f.path for f in files}
                    self.step("written")
                    self.files.publish(seq, files, check, positions)
                return files
            except handover.Stale:  # another processor published past its positions:
                handover.drop(self.wh, sorted(written))  # dropped, with everything
                raise                                    # not published yet
            except Stale:
                assert erasures is not None
                try:
                    erasures.check_lost()
                except ErasuresLost:  # found lost meanwhile: refused for good, and the
                    for path in sorted(written):  # files written are not left behind
                        self.wh.tiers.delete(path)
                    raise
                if attempt == STALE_ATTEMPTS - 1:
                    raise
                erasures.apply()
        raise AssertionError("unreachable")

    def name(self, seq: int) -> str:
        return f"{BATCH_PREFIX}{self.files.writer}-{seq}"

    def _write(self, seq: int) -> list[TierFile]:
        cur = self.wh.con.cursor()
        try:
            days = [r[0] for r in cur.execute(
                "SELECT DISTINCT CAST(timestamp AS DATE) FROM events_raw"
                f" WHERE {PUBLISH_BATCH} = $seq ORDER BY 1", {"seq": seq}).fetchall()]
            out = []
            for day in days:
                table = cur.sql(
                    f"SELECT {_COLUMNS} FROM events_raw e LEFT JOIN person_overrides o"
                    f" ON o.old_person_id = e.person_id WHERE e.{PUBLISH_BATCH} = $seq"
                    " AND e.timestamp >= $start AND e.timestamp < $end"
                    " ORDER BY event, person_id, timestamp",
                    params={"seq": seq, "start": day, "end": day + timedelta(days=1)}
                ).to_arrow_table().cast(EVENT_ARROW_SCHEMA)
                path, size = self.wh.tiers.write(table, f"day={day.isoformat()}",
                                                 name=self.name(seq), level=BATCH_LEVEL)
                out.append(TierFile(path, "warm", day.isoformat(), table.num_rows, size))
                self.step("file")
            for f in published.write(self.wh, seq, self.files.writer, self.name(seq)):
                out.append(f)
                self.step("file")
            return out
        finally:
            cur.close()

    # -- the thread --

    def start(self) -> None:
        logger.info("publishing every %g s as writer %s (`aap cluster writers`)",
                    self.interval, self.files.writer)
        self.thread.start()
        if self.folder is not None:
            self.folder.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=60)
        if self.folder is not None:
            self.folder.close()

    def _run(self) -> None:
        """A turn every ``interval`` seconds from the start of the last (not from its
        end: a batch's own time is not added to every row's wait), and at least a tenth
        of the interval after it ended."""
        took = 0.0
        while not self.stop.wait(max(self.interval - took, self.interval / 10)):
            began = time.monotonic()
            try:
                out: dict[str, Any] = self.publish_once()
            except ErasuresLost:  # said by publish_once, once
                pass
            except Exception as exc:  # the tier store or the shared state away: one line
                log_failure(logger, "publishing failed (or waits for the tier store); the"
                            " batch is finished at the next turn", exc, self.wh.tiers)
            else:
                if out["rows"] or out.get("keys") or out["finished"]:
                    logger.debug("publishing: %s", out)
            took = time.monotonic() - began


def shared_list(data_dir: Path, publish_seconds: float, meta_url: str) -> MetaDB | None:
    """The shared-state database the list of live files lives on when publishing is on
    (``publish_seconds`` > 0): PostgreSQL at ``meta_url``, else ``tiers.db`` under the
    data dir; ``None`` when it is off (the warehouse's own table)."""
    if publish_seconds <= 0:
        return None
    return open_meta(DataDir(data_dir).tier_list_db, meta_url)


UNSHARED = ("AAP_PUBLISH_SECONDS=0, but this warehouse published batch files and its list"
            " of live files is on the shared store: set AAP_PUBLISH_SECONDS again (turning"
            " publishing off is not supported yet)")


def refuse_unshared(wh: Warehouse) -> None:
    """Publishing is off, but its list moved to the shared store when it was on: the
    warehouse's own list would miss those files. (Moving it back is not done yet.)"""
    if not wh.files.shared and is_shared(wh.con):
        raise ValueError(UNSHARED)


def unshared_refusal(hot_db: Path) -> str | None:
    """:func:`refuse_unshared`'s message for the warehouse file ``hot_db``, read before a
    server starts (None: nothing to refuse, or the file is in use and the core says it)."""
    import duckdb

    if not hot_db.exists():
        return None
    try:
        con = duckdb.connect(str(hot_db), read_only=True)
    except duckdb.Error:
        return None
    try:
        return UNSHARED if is_shared(con) else None
    except duckdb.Error:
        return None
    finally:
        con.close()
