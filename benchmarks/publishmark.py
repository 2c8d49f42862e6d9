"""Micro-benchmark: the mark step of publishing (:mod:`aap.store.publish`), in place
against the copy it replaced.

    python -m benchmarks.publishmark [--events 20000] [--rounds 6]   (or: aap bench publishmark)

A batch's mark holds the warehouse's write lock alone (the processor's chunks wait), and
what it writes goes to DuckDB's WAL: every ``checkpoint_threshold`` (64 MB) of WAL, the
commit that passes it checkpoints the database, and every writer waits for that too
(1.2 to 1.8 s on the 2-core VM at 5,000 events/s in the freshness cluster, 2026-12-06).

Two warehouses with publishing on (their list on a SQLite file) get the same chunk of
``--events`` events each round, in turn, and mark it:

- **in place** (AAP now): ``Publisher._mark`` — the batch's number written into the hot
  table's column ``publish_batch``;
- **copy** (the baseline: what the mark did before, 2026-12-06): the same rows copied,
  every column, to a table ``hot_publishing`` with the batch's number, and deleted from
  the hot table, in one transaction.

Then each forgets the batch (deletes its rows). Printed: the median time of the mark and
of the forget, and the bytes the mark's commit added to the WAL, per event, for each, and
the ratios copy / in place; then how many events a 64 MB checkpoint then comes after (the
chunks' own WAL included, measured here too). The events are as wide as a web page view
(every text column filled, a 200-byte properties object). Checkpoints are off during the
measurement (``checkpoint_threshold`` 10 GB), so that none lands in a measured commit.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click
import pyarrow as pa

from aap.store import published, quarantine
from aap.store.filelist import SharedList
from aap.store.meta import open_meta
from aap.store.publish import JOB, SEQ, Publisher
from aap.store.schema import EVENT_ARROW_SCHEMA, EVENT_COLUMNS, PUBLISH_BATCH
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Chunk, Warehouse
from benchmarks.handover import chunk as stream_chunk

MODES = ("in place", "copy")
CHECKPOINT_MB = 64
"""The warehouse's ``checkpoint_threshold`` (:class:`aap.store.warehouse.Warehouse`)."""
PROPERTIES = json.dumps({"plan": "pro", "section": "pricing", "experiment": "hero-b",
                         "items": 3, "referrer_path": "/blog/how-we-count",
                         "screen": "1440x900", "note": "x" * 60})


def chunk(n: int, round_: int) -> Chunk:
    """:func:`benchmarks.handover.chunk`'s events (each of a new stream), every text
    column filled as a page view's would be."""
    c = stream_chunk(n, round_, round_ * n)
    t = c.events
    for i, (name, sql_type, typ) in enumerate(EVENT_COLUMNS):
        if name == "properties":
            value = PROPERTIES
        elif name in ("url", "referrer"):
            value = f"https://shop.example.com/{name}/spring-sale?utm_source=news&r={round_}"
        elif sql_type == "VARCHAR" and t.column(name).null_count == n:
            value = f"{name}-value-{round_ % 7}"
        else:
            continue
        t = t.set_column(i, name, pa.array([value] * n, typ))
    c.events = t.cast(EVENT_ARROW_SCHEMA)
    return c


def _wal(wh: Warehouse) -> int:
    path = Path(str(wh.path) + ".wal")
    return path.stat().st_size if path.exists() else 0


def _copy_mark(wh: Warehouse, seq: int) -> None:
    """The mark as it was (``Publisher._mark`` before 2026-12-06, statement for
    statement): every column of the hot rows copied to ``hot_publishing`` with the
    batch's number, then deleted from the hot table."""
    files = wh.files
    assert isinstance(files, SharedList)
    with wh.write_lock, files.gate.exclusive(), wh.transaction() as cur:
        quarantine.hot(cur, JOB)
        row = cur.execute(f"INSERT INTO hot_publishing SELECT $seq, * EXCLUDE"
                          f" ({PUBLISH_BATCH}) FROM events_raw", {"seq": seq}).fetchone()
        published.mark(cur, seq)
        if row and row[0]:
            cur.execute("DELETE FROM events_raw")
        cur.execute("INSERT INTO processor_state VALUES ($n, $v) ON CONFLICT (name)"
                    " DO UPDATE SET value = excluded.value", {"n": SEQ, "v": seq})


def _copy_forget(wh: Warehouse, seq: int) -> None:
    with wh.write_lock, wh.transaction() as cur:
        cur.execute("DELETE FROM hot_publishing WHERE seq = $seq", {"seq": seq})


def _mark(wh: Warehouse, seq: int) -> None:
    with wh.write_lock:
        got = Publisher(wh, 1)._mark({})
    assert got == seq, (got, seq)


def _forget(wh: Warehouse, seq: int) -> None:
    with wh.write_lock, wh.transaction() as cur:
        cur.execute(f"DELETE FROM events_raw WHERE {PUBLISH_BATCH} = $seq", {"seq": seq})


def _timed(fn: Callable[[Warehouse, int], None], wh: Warehouse, seq: int) -> tuple[float, int]:
    before = _wal(wh)
    t = time.perf_counter()
    fn(wh, seq)
    return time.perf_counter() - t, _wal(wh) - before


def run(events: int, rounds: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        whs: dict[str, Warehouse] = {}
        for mode in MODES:
            name = mode.replace(" ", "-")
            wh = Warehouse(tmp / name, tiers=TierStore(TierConfig(str(tmp / name / "tiers"))),
                           shared_list=open_meta(tmp / f"{name}-tiers.db", ""))
            wh.con.execute("SET checkpoint_threshold = '10GB'")
            whs[mode] = wh
        cols = ", ".join(f'"{n}" {t}' for n, t, _ in EVENT_COLUMNS)
        whs["copy"].con.execute(f"CREATE TABLE hot_publishing (seq BIGINT NOT NULL, {cols})")
        steps = {"in place": (_mark, _forget), "copy": (_copy_mark, _copy_forget)}
        got: dict[str, dict[str, list[float]]] = {
            m: {"mark_ms": [], "forget_ms": [], "wal_mark": [], "wal_chunk": []} for m in MODES}
        try:
            for r in range(rounds):
                c = chunk(events, r)
                for mode, wh in whs.items():
                    before = _wal(wh)
                    wh.write(c)
                    got[mode]["wal_chunk"].append((_wal(wh) - before) / events)
                    mark, forget = steps[mode]
                    s, wal = _timed(mark, wh, r + 1)
                    got[mode]["mark_ms"].append(s * 1000)
                    got[mode]["wal_mark"].append(wal / events)
                    s, _ = _timed(forget, wh, r + 1)
                    got[mode]["forget_ms"].append(s * 1000)
                    left = wh.con.execute("SELECT count(*) FROM events_raw").fetchone()
                    assert left == (0,), (mode, left)
        finally:
            for wh in whs.values():
                wh.close()
    return {m: {k: statistics.median(v[1:]) for k, v in got[m].items()} for m in MODES}


@click.command("publishmark")
@click.option("--events", default=20_000, show_default=True, help="Events per batch.")
@click.option("--rounds", default=6, show_default=True,
              help="Batches per warehouse (the first of each is not counted: warm-up).")
def main(events: int, rounds: int) -> None:
    """Publishing's mark step in place, against the copy it replaced (same run)."""
    from rich.console import Console

    console = Console()
    got = run(events, rounds)
    new, old = got["in place"], got["copy"]
    console.print(f"batch of {events:,} events ({rounds - 1} rounds, medians):")
    for mode in MODES:
        g = got[mode]
        label = "copy to hot_publishing (baseline)" if mode == "copy" else "in place (publish_batch)"
        console.print(f"  mark, {label:34} {g['mark_ms']:8.1f} ms  WAL {g['wal_mark']:7.1f}"
                      f" bytes/event  forget {g['forget_ms']:7.1f} ms")
    console.print(f"  ratio copy / in place: mark time {old['mark_ms'] / new['mark_ms']:.2f},"
                  f" mark WAL {old['wal_mark'] / new['wal_mark']:.2f},"
                  f" forget {old['forget_ms'] / new['forget_ms']:.2f}")
    for mode in MODES:
        g = got[mode]
        per = g["wal_chunk"] + g["wal_mark"]
        console.print(f"  a {CHECKPOINT_MB} MB checkpoint every {(CHECKPOINT_MB << 20) / per:,.0f}"
                      f" events, {mode} (chunk {g['wal_chunk']:.0f} + mark {g['wal_mark']:.0f}"
                      " WAL bytes/event)")


if __name__ == "__main__":
    main()
