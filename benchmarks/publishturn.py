"""Micro-benchmark: publishing turns while the processor writes chunks back to back, with
the warehouse's write lock as it is and, as the baseline in the same run, as it was
before 9e03acd (2026-12-06).

    python -m benchmarks.publishturn [--events 2000] [--seconds 20]   (or: aap bench publishturn)

A row becomes visible to query nodes when the publishing turn after its chunk has
listed it (:mod:`aap.store.publish`), so a turn's length is part of every row's
freshness, and at 20,000 events/s on two cores the turns (1 s apart) took longer than
that. A turn waits for the lock twice and for the chunk that is in once more before its
last step; the processor's next chunk is usually waiting already (it is built while the
last one is written).

For each lock, a warehouse with publishing on (its list on a SQLite file: no server),
one thread writing chunks of ``--events`` page-view-wide events back to back (a second
thread builds the next one meanwhile, as the processor does), and the publisher taking
its turns as :class:`~aap.store.publish.Publisher` paces them (every second from the
start of the last, at least a tenth of it after its end), for ``--seconds``:

- **now** (:class:`aap.store.writelock.WriteLock`): a writer waiting goes before the chunks
  that come after it began to wait, and the publisher takes the lock for steps 2 and 3
  already opened to chunks (the chunk that is in goes on);
- **first come** (the baseline): whoever the lock's condition wakes first goes in (the
  waiting chunk, as often as not), and steps 2 and 3 wait for the chunk that is in, then
  let chunks in.

Printed for each: the turns' median and p95 length, the median waits of a turn (for the
lock at the mark, at steps 2-3, and for the last chunk before step 4), the chunks
written per second; then the ratios first come / now.
"""

from __future__ import annotations

import queue
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click

from aap.store.meta import open_meta
from aap.store.publish import Publisher
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Chunk, Warehouse
from aap.store.writelock import WriteLock
from benchmarks.common import percentile
from benchmarks.publishmark import chunk

MODES = ("now", "first come")
WAITS = ("mark", "steps 2-3", "before step 4")
INTERVAL_S = 1.0
MIN_TURNS = 3
"""Turns measured at least, past the window if they take longer (the figures need some)."""


class TimedLock(WriteLock):
    """The write lock, timing the publisher's waits for it (only the publisher acquires
    or shuts it here; the writer thread takes chunks)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: dict[str, float] = dict.fromkeys(WAITS, 0.0)

    def acquire(self, opened: bool = False) -> bool:
        t = time.perf_counter()
        self._take(opened)
        self.waits["steps 2-3" if opened else "mark"] += time.perf_counter() - t
        return True

    def _take(self, opened: bool) -> None:
        super().acquire(opened)

    def shut(self) -> None:
        t = time.perf_counter()
        super().shut()
        self.waits["before step 4"] += time.perf_counter() - t


class FirstComeLock(TimedLock):
    """The lock before 9e03acd: no order among waiters (the condition wakes them all and
    the first to run goes in), and no holding it opened from the start: the holder waits
    for the chunk that is in. (It reaches into :class:`WriteLock`'s state to be so.)"""

    def _take(self, opened: bool) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._held and not self._chunk)
            self._held, self._open = True, opened
            self._cond.notify_all()

    def _chunk_may_enter(self) -> bool:
        return not self._chunk and (not self._held or self._open)


def _run_one(tmp: Path, name: str, lock: TimedLock, events: int, seconds: float
             ) -> dict[str, Any]:
    wh = Warehouse(tmp / name, tiers=TierStore(TierConfig(str(tmp / name / "tiers"))),
                   shared_list=open_meta(tmp / f"{name}-tiers.db", ""))
    wh.write_lock = lock
    stop = threading.Event()
    built: queue.Queue[Chunk] = queue.Queue(maxsize=1)
    written = [0]
    failed: list[BaseException] = []

    def build() -> None:
        r = 0
        while not stop.is_set():
            c = chunk(events, r)
            c.position = {0: (r + 1) * events}
            while not stop.is_set():
                try:
                    built.put(c, timeout=0.1)
                    break
                except queue.Full:
                    continue
            r += 1

    def write() -> None:
        try:
            while not stop.is_set():
                try:
                    c = built.get(timeout=0.1)
                except queue.Empty:
                    continue
                wh.write(c)
                written[0] += 1
        except BaseException as exc:  # reported below
            failed.append(exc)
            stop.set()

    threads = [threading.Thread(target=build, daemon=True),
               threading.Thread(target=write, daemon=True)]
    pub = Publisher(wh, INTERVAL_S)
    turns: list[float] = []
    waits: dict[str, list[float]] = {w: [] for w in WAITS}
    rows = 0
    try:
        for t in threads:
            t.start()
        while written[0] < 2 and not failed:  # the writer is going
            time.sleep(0.05)
        chunks0, t0 = written[0], time.perf_counter()
        took = 0.0
        # the window, and at least MIN_TURNS turns however long they take (a busy CI
        # machine made 2 turns of 0.5 and 4.0 s in a short window)
        while (time.perf_counter() - t0 < seconds or len(turns) < MIN_TURNS) and not failed:
            if stop.wait(max(INTERVAL_S - took, INTERVAL_S / 10)):
                break
            lock.waits = dict.fromkeys(WAITS, 0.0)
            began = time.perf_counter()
            out = pub.publish_once()
            took = time.perf_counter() - began
            turns.append(took)
            rows += out["rows"]
            for w in WAITS:
                waits[w].append(lock.waits[w])
        wall = time.perf_counter() - t0
        chunks = written[0] - chunks0
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        wh.close()
    if failed:
        raise failed[0]
    assert rows > 0 and len(turns) >= MIN_TURNS, (rows, turns)
    return {"turns": len(turns), "rows": rows,
            "p50_ms": statistics.median(turns) * 1000,
            "p95_ms": percentile(sorted(t * 1000 for t in turns), 95),
            "waits_ms": {w: statistics.median(v) * 1000 for w, v in waits.items()},
            "chunks_per_s": chunks / wall}


def run(events: int, seconds: float) -> dict[str, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        locks: dict[str, TimedLock] = {"now": TimedLock(), "first come": FirstComeLock()}
        return {mode: _run_one(tmp, mode.replace(" ", "-"), locks[mode], events, seconds)
                for mode in MODES}


@click.command("publishturn")
@click.option("--events", default=2_000, show_default=True, help="Events per chunk.")
@click.option("--seconds", default=20.0, show_default=True,
              help="Seconds of publishing turns per lock.")
def main(events: int, seconds: float) -> None:
    """Publishing turns beside a busy chunk writer: the write lock now and before."""
    from rich.console import Console

    console = Console()
    got = run(events, seconds)
    console.print(f"chunks of {events:,} events back to back, a publishing turn every"
                  f" {INTERVAL_S:g} s, {seconds:g} s each:")
    for mode in MODES:
        g = got[mode]
        label = "first come (baseline)" if mode == "first come" else "now"
        waits = ", ".join(f"{w} {g['waits_ms'][w]:.1f}" for w in WAITS)
        console.print(f"  {label:22} turn p50 {g['p50_ms']:7.1f} ms  p95 {g['p95_ms']:7.1f} ms"
                      f"  ({g['turns']} turns, {g['rows']:,} rows)  waits p50 ms: {waits}"
                      f"  chunks/s {g['chunks_per_s']:.2f}")
    now, old = got["now"], got["first come"]
    console.print(f"  ratio first come / now: turn p50 {old['p50_ms'] / now['p50_ms']:.2f},"
                  f" turn p95 {old['p95_ms'] / now['p95_ms']:.2f},"
                  f" chunks/s {old['chunks_per_s'] / now['chunks_per_s']:.2f}")


if __name__ == "__main__":
    main()
