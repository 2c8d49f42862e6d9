"""An import: rows → messages → the collector's one ingestion path, in large batches.

The import runs in its own processes against the data dir, whether the server runs or
not: one reads the input; each of its workers (spawned processes, one per core by
default) builds the collector (:class:`aap.collect.app.Collector`) and hands each batch
to :meth:`~aap.collect.app.Collector.accept_batch`, as the HTTP and WebSocket endpoints
do — the source's rate limit, validation, IP truncation, the consent gate, scrubbing
and sealing, then the durable append (the log takes appends from several processes).
Back-pressure and the rate limit make it wait, not fail.

It imports for one declared purpose on one lawful basis, which the source must declare:
the events are tagged with that purpose only, and the consent gate decides each one.
After each durable append the input position is written to the import's ledger
(``DATA_DIR/imports/ID.json``: counts and a position, no data); a re-run skips what the
ledger says is stored, and the message ids derived from the rows make any batch that
was appended again after a ``kill -9`` a duplicate the processor drops.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec.structs

from aap import errors
from aap.asgi import Connection
from aap.collect.app import Collector
from aap.collect.segment import Parsed, Rejection, WireMessage
from aap.datadir import DataDir
from aap.imports.convert import Recipe, Row, too_large
from aap.imports.readers import ArrowRows, Input, rows_of
from aap.lifecycle import PARENT_ENV, die_with_parent
from aap.settings import Settings
from aap.sources import Source, Sources

Progress = Callable[[int], None]


class Refused(ValueError):
    """The import may not run (no purpose, a purpose the source does not declare, …)."""


@dataclass
class Report:
    rows: int = 0
    """Rows read in this run (those the ledger says were stored before are not read)."""
    stored: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    """Rows not stored, by reason (invalid rows, no lawful basis, erased subjects, …)."""
    duplicates: int = 0
    """Rows skipped as already imported (by an earlier run of the same import)."""

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "stored": self.stored, "refused": dict(self.refused),
                "skipped_duplicates": self.duplicates}


def import_source(data_dir: Path, name: str, purpose: str | None, basis: str | None
                  ) -> Source:
    """The source to import into, restricted to the import's purpose and basis; refused
    unless both are given, the source declares them, and it is historical."""
    if not purpose or not basis:
        raise Refused("an import needs a declared purpose and lawful basis: give --purpose"
                      " and --basis (one the source declares; see `aap sources list`)")
    reg = Sources(data_dir)
    try:
        src = reg.by_name(name)
    finally:
        reg.close()
    if src is None:
        raise Refused(f"no source named {name!r}")
    declared = dict(src.purposes)
    if purpose not in declared:
        raise Refused(f"source {name} does not declare the purpose {purpose!r} (it declares "
                      + ", ".join(f"{p} on {b}" for p, b in declared.items()) + ")")
    if declared[purpose] != basis:
        raise Refused(f"source {name} declares {purpose} on the basis {declared[purpose]!r},"
                      f" not {basis!r}")
    if not src.historical:
        raise Refused(f"source {name} is not historical: imported times are kept as they"
                      " were; create a source for the import with `aap sources create NAME"
                      " --historical`")
    return msgspec.structs.replace(src, purposes=((purpose, basis),))


class Ledger:
    """An import's last durable input position and counts (no row data)."""

    def __init__(self, data_dir: Path, identity: str) -> None:
        self.id = hashlib.sha256(identity.encode()).hexdigest()[:24]
        self.path = DataDir(data_dir).imports / f"{self.id}.json"
        self.state: dict[str, Any] = {"position": 0, "done": False, "stored": 0}
        if self.path.exists():
            self.state.update(json.loads(self.path.read_text()))

    @property
    def position(self) -> int:
        return int(self.state["position"])

    def save(self, position: int, stored: int, done: bool = False) -> None:
        self.state.update(position=position, stored=self.state["stored"] + stored, done=done)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(self.state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def identity(source: Source, inp: Input, mapping_text: str) -> str:
    """What makes two runs the same import: the source, purpose, input and mapping."""
    return json.dumps([source.id, list(source.purposes), inp.name, mapping_text])


def run(settings: Settings, source: Source, inp: Input, recipe: Recipe, ledger: Ledger,
        *, batch_size: int = 10_000, progress: Progress | None = None,
        workers: int | None = None) -> Report:
    """Import ``inp`` from the ledger's position. One process reads; ``workers`` processes
    (default: the cores, at most :data:`MAX_DEFAULT_WORKERS`, or this process alone for
    an input known to have at most :data:`SMALL` rows left; 1: this process alone)
    convert, seal and append the batches. The ledger advances over the batches in input
    order, each once it and every batch before it are durable."""
    n = workers or min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)
    if workers is None and inp.total is not None and inp.total - ledger.position <= SMALL:
        n = 1  # starting a worker (about a second) costs more than it saves
    # from the last durable position: rows added to the input since are imported too
    report = Report(duplicates=ledger.position)
    batches = inp.batches(ledger.position, batch_size)
    if n == 1:
        batcher = Batcher(settings, source, recipe)
        try:
            for position, rows in batches:
                _record(report, ledger, position, batcher.take(rows), progress)
        finally:
            batcher.close()
    else:
        os.environ[PARENT_ENV] = str(os.getpid())  # the workers die with this process
        pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(settings, source, recipe))
        try:
            pending: deque[tuple[int, Future[Outcome]]] = deque()
            for position, rows in batches:
                pending.append((position, pool.submit(_work, rows)))
                if len(pending) >= 2 * n:  # a bounded read-ahead: memory stays flat
                    _record(report, ledger, *_first(pending), progress)
            while pending:
                _record(report, ledger, *_first(pending), progress)
        finally:
            pool.shutdown(cancel_futures=True)
    ledger.save(ledger.position, 0, done=True)
    return report


MAX_DEFAULT_WORKERS = 4
SMALL = 50_000
"""Rows left below which an import runs in one process unless ``workers`` is given."""


@dataclass
class Outcome:
    """What became of one batch of rows."""

    rows: int
    stored: int
    refused: Counter[str]


def _first(pending: deque[tuple[int, Future[Outcome]]]) -> tuple[int, Outcome]:
    position, fut = pending.popleft()
    return position, fut.result()


def _record(report: Report, ledger: Ledger, position: int, out: Outcome,
            progress: Progress | None) -> None:
    report.rows += out.rows
    report.stored += out.stored
    report.refused.update(out.refused)
    ledger.save(position, out.stored)
    if progress is not None:
        progress(out.rows)


class Batcher:
    """Rows → messages → the collector's ingestion path, one batch at a time (in the
    importing process, or in each of its workers)."""

    def __init__(self, settings: Settings, source: Source, recipe: Recipe) -> None:
        self.source = source
        self.convert = recipe.build()
        self.limit = settings.collector.max_event_bytes
        self.loop = asyncio.new_event_loop()
        self.collector = Collector(settings)
        self.conn = Connection({"type": "http", "path": "/import", "headers": [],
                                "client": None})

    def take(self, batch: list[Row | Rejection] | ArrowRows) -> Outcome:
        rows = rows_of(batch)
        out = Outcome(len(rows), 0, Counter())
        messages: list[tuple[int, WireMessage]] = []
        for i, row in enumerate(rows):
            m = row if isinstance(row, Rejection) else (
                too_large(row, self.limit) or self.convert(row))
            if isinstance(m, Rejection):
                out.refused[m.reason] += 1
            else:
                messages.append((i, m))
        if messages:
            self.loop.run_until_complete(_accept(self.collector, self.conn, self.source,
                                                 messages, out))
        return out

    def close(self) -> None:
        try:
            self.collector.close()
        finally:
            self.loop.close()


_batcher: Batcher | None = None


def _start_worker(settings: Settings, source: Source, recipe: Recipe) -> None:
    global _batcher
    # the import killed (kill -9): its workers go too; an append half done is atomic,
    # and a batch appended but not in the ledger is appended again, a duplicate
    die_with_parent()
    _batcher = Batcher(settings, source, recipe)
    atexit.register(_batcher.close)


def _work(rows: list[Row | Rejection] | ArrowRows) -> Outcome:
    assert _batcher is not None, "the worker was not started"
    return _batcher.take(rows)


async def _accept(collector: Collector, conn: Connection, source: Source,
                  messages: list[tuple[int, WireMessage]], out: Outcome) -> None:
    """Hand a batch to the collector's ingestion path, waiting out back-pressure and the
    source's rate limit; counts what was stored and refused."""
    while True:
        try:
            await collector.check_health()
            answer = await collector.accept_batch(conn, source, Parsed(messages, [], None), None)
        except (errors.TooManyRequests, errors.ServiceUnavailable) as exc:
            await asyncio.sleep(max(0.05, min(float(exc.retry_after), 5.0)))
            continue
        except errors.BadRequest as exc:  # no event of the batch is valid
            if exc.code != "invalid_events":
                raise
            answer = {"accepted": 0, "rejected": exc.detail}
        break
    out.stored += int(answer["accepted"])
    out.refused.update(answer.get("not_stored", {}))
    out.refused.update(r["reason"] for r in answer.get("rejected", []))
