"""Micro-benchmark: what the handover (:mod:`aap.store.handover`) adds to a publishing
batch under the warehouse's write lock, and what a fold of the staged streams costs.

    python -m benchmarks.handover [--events 20000] [--rounds 6]   (or: aap bench handover)

Two warehouses publish to one shared list on a PostgreSQL of tests/pg.py (started here):
one with the handover on (several processors: positions compared and set, the batch's
changed streams staged), one without (one processor: the baseline). Each round writes
``--events`` events, each of a new device stream (the freshness benchmark's worst case:
every visitor new), to each warehouse in turn, and measures how long ``publish_once``
holds the write lock alone (the processor's chunks wait for it; they may be written while
the batch's files are written and listed, :mod:`aap.store.writelock`). Printed: the
median batch's lock time with and without the handover, the difference (what the
handover adds per batch) and their ratio, the time the batch let chunks in (its files
written and listed) and the share of the batch's time it kept them out; then the fold
of every staged row (on its own thread in a processor, not under the write lock).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import click
import pyarrow as pa

from aap.store import handover
from aap.store.meta import open_meta
from aap.store.publish import Publisher
from aap.store.schema import EVENT_ARROW_SCHEMA, EVENT_COLUMNS
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Chunk, Warehouse
from aap.store.writelock import WriteLock

T0 = datetime(2026, 3, 1, 9)


def chunk(n: int, round_: int, position: int) -> Chunk:
    """``n`` events of ``n`` new streams (partition 0, log positions ``position`` on)."""
    keys = [round_ * 10_000_000 + i for i in range(n)]
    times = [T0 + timedelta(milliseconds=i) for i in range(n)]
    cols = {name: pa.nulls(n, t) for name, _, t in EVENT_COLUMNS}
    cols.update({
        "message_id": pa.array([f"r{round_}-{i}" for i in range(n)], pa.string()),
        "source": pa.array(["src"] * n, pa.string()),
        "type": pa.array(["track"] * n, pa.string()),
        "event": pa.array(["Page Viewed"] * n, pa.string()),
        "timestamp": pa.array(times, pa.timestamp("us")),
        "received_at": pa.array(times, pa.timestamp("us")),
        "person_id": pa.array(keys, pa.int64()),
        "session_id": pa.array([f"s{k}" for k in keys], pa.string()),
        "properties": pa.array(["{}"] * n, pa.string()),
        "purposes": pa.array([["analytics"]] * n, pa.list_(pa.string()))})
    table = pa.table({name: cols[name].cast(t) for name, _, t in EVENT_COLUMNS},
                     schema=EVENT_ARROW_SCHEMA)
    streams = pa.table({
        "stream_key": pa.array(keys, pa.int64()),
        "last_ts": pa.array(times, pa.timestamp("us")),
        "session_id": pa.array([f"s{k}" for k in keys], pa.string()),
        "seen_ms": pa.array(list(range(n)), pa.int64()),
        "log_partition": pa.array([0] * n, pa.int32())})
    return Chunk(events=table, position={0: position + n}, next_person=max(keys) + 1,
                 streams=streams)


class HeldLock(WriteLock):
    """The warehouse's write lock, counting the time a holder keeps chunks out (held and
    not opened to them: :mod:`aap.store.writelock`)."""

    def __init__(self) -> None:
        super().__init__()
        self.held = 0.0
        self.open = 0.0
        """Time the holder let chunks in (the batch's files written and listed)."""
        self._since = 0.0
        self._opened = False

    def _count(self, opened: bool) -> None:
        """The time since the last change goes to the state it was in; now ``opened``."""
        now = time.perf_counter()
        if self._opened:
            self.open += now - self._since
        else:
            self.held += now - self._since
        self._since, self._opened = now, opened

    def acquire(self, opened: bool = False) -> bool:
        super().acquire(opened)
        self._since, self._opened = time.perf_counter(), opened
        return True

    def release(self) -> None:
        self._count(False)
        super().release()

    @contextmanager
    def opened(self) -> Iterator[None]:
        self._count(True)
        with super().opened():  # its end shuts the lock (below)
            yield

    def shut(self) -> None:
        super().shut()
        self._count(False)  # the wait for the chunk that was in: still open


def _warehouse(tmp: Path, name: str, meta_url: str, on: bool) -> Warehouse:
    wh = Warehouse(tmp / name, tiers=TierStore(TierConfig(str(tmp / "tiers"))),
                   shared_list=open_meta(tmp / "tiers.db", meta_url))
    if on:
        handover.enable(wh)
    wh.write_lock = HeldLock()
    return wh


def run(meta_url: str, events: int, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        whs = {"off": _warehouse(tmp, "off", meta_url, False),
               "on": _warehouse(tmp, "on", meta_url, True)}
        ms: dict[str, list[float]] = {"off": [], "on": []}
        opened: list[float] = []
        try:
            for r in range(rounds):
                for mode, wh in whs.items():
                    lock = wh.write_lock
                    assert isinstance(lock, HeldLock)
                    wh.write(chunk(events, r, r * events))
                    lock.held = lock.open = 0.0
                    out = Publisher(wh, 1).publish_once()
                    ms[mode].append(lock.held * 1000)
                    if mode == "on":
                        opened.append(lock.open * 1000)
                    assert out["files"] >= 1, out
            db = whs["on"].files.db
            staged = int(db.fetchall("SELECT count(*) FROM log_stream_rows")[0][0])
            t = time.perf_counter()
            handover.fold(db)
            fold_s = time.perf_counter() - t
            streams = len(handover.shared(db)[1])
        finally:
            for wh in whs.values():
                wh.close()
    assert streams == events * rounds, (streams, events * rounds)
    off, on = statistics.median(ms["off"][1:]), statistics.median(ms["on"][1:])
    return {"off_ms": off, "on_ms": on, "added_ms": on - off, "ratio": on / off,
            "open_ms": statistics.median(opened[1:]), "fold_s": fold_s, "staged": staged}


@click.command("handover")
@click.option("--events", default=20_000, show_default=True,
              help="Events (each a new stream) per batch.")
@click.option("--rounds", default=6, show_default=True,
              help="Batches per warehouse (the first of each is not counted: warm-up).")
def main(events: int, rounds: int) -> None:
    """The write lock a batch holds with and without the handover, and a fold."""
    from rich.console import Console
    from tests.pg import postgres_server

    console = Console()
    with postgres_server() as meta_url:
        got = run(meta_url, events, rounds)
    console.print(f"batch of {events:,} events, each a new stream ({rounds - 1} rounds,"
                  " medians):")
    console.print(f"  write lock held without the handover (baseline): {got['off_ms']:8.1f} ms")
    console.print(f"  write lock held with the handover:               {got['on_ms']:8.1f} ms")
    console.print(f"  added by the handover per batch:                 {got['added_ms']:8.1f} ms"
                  f"  (ratio {got['ratio']:.2f})")
    kept = got["on_ms"] / (got["on_ms"] + got["open_ms"])
    console.print(f"  the batch's files written and listed, chunks let in: {got['open_ms']:8.1f} ms"
                  f"  (chunks kept out {kept:.0%} of the batch's time)")
    console.print(f"fold of {got['staged']:,} staged stream rows: {got['fold_s']:.2f} s"
                  " (its own thread)")


if __name__ == "__main__":
    main()
