"""Privacy benchmark: access and erasure in a store of 10 million events.

The store is made by the query benchmark's deterministic generator
(:mod:`aap.testing.query_data`; 10M events of 250k persons over 90 days, loaded through
the warehouse's write path and the tiering operations, so the events sit in the hot,
warm and cold tiers as they would after 90 days of traffic). Each person gets an id in
``person_ids`` (the keyed hash of ``user-<n>``), as the processor would have written.

Measured, with the core's own code (:class:`aap.privacy.rights.Rights`) on the store:

- **access** of a person with exactly 10,000 events spread over the 90 days (added to the
  generated traffic, so in the hot, warm and cold tiers; target ≤ 5 s);
- **erasure** of that person (target ≤ 10 s);
- **erasure of 1,000 persons** in one batch (target ≤ 60 s);

and, in the same run, the baseline: a plain DuckDB count of that person's events over
the same tiers (the scan no operation can avoid), with the ratios.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from aap.datadir import DataDir
from aap.privacy.audit import AuditLog
from aap.privacy.ids import IdHasher
from aap.privacy.keystore import Keystore
from aap.privacy.rights import Rights
from aap.store.schema import EVENT_ARROW_SCHEMA
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse
from benchmarks.common import verdict

PARAMS = {"events": 10_000_000, "persons": 250_000, "days": 90, "seed": 7, "heavy": 10_000}
HEAVY = 15_000_000
"""The measured person: ``heavy`` events spread evenly over every day of the store (so
they sit in the hot, warm and cold tiers), added to the generator's traffic; the
generator's most active person has about a third of that."""


def _add_heavy(data: Any, events: int) -> None:
    """Add person ``HEAVY`` with exactly ``events`` events, spread over the days."""
    days = len(data.days)
    start = 0
    for d, (day, table) in enumerate(data.days):
        n = events // days + (1 if d < events % days else 0)
        ts = [day + timedelta(seconds=int(i * 86_000 / max(n, 1)) + 60) for i in range(n)]
        cols = {"message_id": pa.array([f"heavy-{start + i}" for i in range(n)]),
                "source": pa.array(["src_bench"] * n), "type": pa.array(["track"] * n),
                "event": pa.array(["Product Viewed"] * n), "timestamp": pa.array(ts),
                "sent_at": pa.array(ts), "received_at": pa.array(ts),
                "person_id": pa.array([HEAVY] * n, pa.int64()),
                "session_id": pa.array([f"heavy-s{d}"] * n)}
        extra = pa.table({f.name: cols[f.name].cast(f.type) if f.name in cols
                          else pa.nulls(n, f.type) for f in EVENT_ARROW_SCHEMA},
                         schema=EVENT_ARROW_SCHEMA)
        data.days[d] = (day, pa.concat_tables([table, extra]))
        start += n
    first, last = data.days[0][0], data.days[-1][0] + timedelta(hours=23)
    data.persons.append((HEAVY, first, last, True, '{"plan": "pro"}'))
    data.total_events += events


def prepare(data_dir: Path, scale: float, console: Console) -> None:
    from aap.testing.query_data import generate, load

    params = {**PARAMS, "events": int(PARAMS["events"] * scale),
              "persons": max(1000, int(PARAMS["persons"] * scale))}
    marker = data_dir / "bench-privacy.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        console.print(f"reusing the store in {data_dir}")
        return
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    data = generate(params["events"], params["persons"], params["days"], params["seed"])
    _add_heavy(data, params["heavy"])
    stats = load(data_dir, data, log=lambda *_: None)
    console.print(f"store: {data.total_events:,} events of {len(data.persons):,} persons in "
                  f"{time.perf_counter() - t0:.0f} s — " + ", ".join(
                      f"{t} {rows:,} rows" + (f" in {files} files" if t != "hot" else "")
                      for t, (files, rows, _) in stats.items()))
    del data
    wh = _warehouse(data_dir)
    try:
        hasher = IdHasher.for_data_dir(data_dir)
        pids = [int(r[0]) for r in wh.con.execute("SELECT person_id FROM persons").fetchall()]
        ids = pa.table({"id_key": pa.array([hasher.key(f"user-{p}") for p in pids], pa.int64()),
                        "person_id": pa.array(pids, pa.int64())})
        with wh.transaction() as cur:
            cur.register("ids", ids)
            cur.execute("INSERT INTO person_ids SELECT * FROM ids ON CONFLICT DO NOTHING")
            cur.unregister("ids")
    finally:
        wh.close()
    marker.write_text(json.dumps(params))


def _warehouse(data_dir: Path) -> Warehouse:
    return Warehouse(DataDir(data_dir).warehouse, tiers=TierStore(TierConfig(str(DataDir(data_dir).tiers))))


def _count(wh: Warehouse, person: int) -> int:
    with wh.snapshot() as cur:
        return int(cur.execute("SELECT count(*) FROM events WHERE person_id = ?", [person]
                               ).fetchone()[0])  # type: ignore[index]


def run(scale: float = 1.0, data_dir: Path | None = None, batch: int = 1000) -> dict[str, Any]:
    console = Console()
    base = data_dir or Path(tempfile.mkdtemp(prefix="aap-bench-privacy-"))
    prepare(base, scale, console)
    work = Path(tempfile.mkdtemp(prefix="aap-bench-privacy-run-"))
    try:
        # erasure changes the store: work on a copy (tier files are listed by full path)
        shutil.copytree(base, work / "data")
        data = work / "data"
        wh = _warehouse(data)
        with wh.transaction() as cur:
            cur.execute("UPDATE tier_files SET path = replace(path, ?, ?)",
                        [str(DataDir(base).tiers), str(DataDir(data).tiers)])
        rights = Rights(data, wh, Keystore(data), IdHasher.for_data_dir(data), AuditLog(data))
        person = HEAVY
        with wh.snapshot() as cur:
            n = int(cur.execute("SELECT count(*) FROM events WHERE person_id = ?", [person]
                                ).fetchone()[0])  # type: ignore[index]
            assert n == PARAMS["heavy"], f"the measured person has {n} events"
            batch_ids = [int(r[0]) for r in cur.execute(
                "SELECT person_id FROM persons WHERE person_id <> ? ORDER BY hash(person_id)"
                " LIMIT ?", [person, batch]).fetchall()]
            total = int(cur.execute("SELECT count(*) FROM events").fetchone()[0])  # type: ignore[index]
        t0 = time.perf_counter()
        assert _count(wh, person) == n
        scan_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = rights.access([f"user-{person}"], [], actor="bench")
        access_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        receipt = rights.erase([f"user-{person}"], [], actor="bench")
        erase_s = time.perf_counter() - t0
        assert _count(wh, person) == 0
        t0 = time.perf_counter()
        batch_receipt = rights.erase([f"user-{p}" for p in batch_ids], [], actor="bench")
        batch_s = time.perf_counter() - t0
        wh.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {"events": total, "person_events": n, "scan_s": scan_s, "access_s": access_s,
           "access_events": summary["events"], "erase_s": erase_s, "erase_removed": receipt["removed"],
           "batch": batch, "batch_s": batch_s, "batch_removed": batch_receipt["removed"]}
    t = Table(title=f"Privacy operations on {total:,} events (hot, warm and cold tiers)")
    for col in ("operation", "seconds", "vs the plain scan", "target", "result"):
        t.add_column(col)

    def row(name: str, s: float, target: float) -> None:
        t.add_row(name, f"{s:.2f}", f"{s / scan_s:.1f}x" if scan_s else "-", f"<= {target:g} s",
                  verdict(s <= target))

    t.add_row(f"baseline: count one person's events ({n:,})", f"{scan_s:.2f}", "1x", "", "")
    row(f"access: zip of {summary['events']:,} events", access_s, 5)
    rm = receipt["removed"]
    row(f"erasure of that person (rows: hot {rm['hot_events']:,}, warm {rm['warm_rows']:,},"
        f" cold {rm['cold_rows']:,}; {rm['warm_files_rewritten']} warm,"
        f" {rm['cold_files_rewritten']} cold files rewritten)", erase_s, 10)
    row(f"erasure of {batch:,} persons in one request", batch_s, 60)
    console.print(t)
    console.print(f"machine: {platform.machine()}, {platform.python_implementation()} "
                  f"{platform.python_version()}; store in {base}")
    return out


@click.command("privacy")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Fraction of 10M events / 250k persons.")
@click.option("--data-dir", "store", type=click.Path(path_type=Path), default=None,
              help="Keep the generated store here and reuse it next time.")
@click.option("--batch", type=int, default=1000, show_default=True,
              help="Persons in the batch erasure.")
def main(scale: float, store: Path | None, batch: int) -> None:
    """Access and erasure in a 10M-event store, against a plain scan."""
    run(scale=scale, data_dir=store, batch=batch)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="python -m benchmarks.privacy")
