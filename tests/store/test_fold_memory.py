"""A fold of a day's (or a month's) files needs a row group's memory, not the day's: DuckDB
sorts the rows, spilling past its memory limit, and the new file is written batch by
batch. Measured in child processes (peak RSS), on files larger than the limit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

MAKE = r"""
import sys, os
from datetime import datetime, timedelta
from pathlib import Path
import pyarrow as pa
from aap.store.filelist import TierFile
from aap.store.schema import EVENT_ARROW_SCHEMA
from aap.store.warehouse import Warehouse

wh = Warehouse(Path(sys.argv[1]), memory_limit="128MB")
files, rows = int(sys.argv[2]), int(sys.argv[3])
start = datetime(2026, 9, 28)
for f in range(files):
    n = rows
    noise = os.urandom(n * 80).hex()  # incompressible: the file's size is its rows'
    cols = {c.name: pa.nulls(n, c.type) for c in EVENT_ARROW_SCHEMA}
    cols.update({
        "message_id": pa.array([f"m{f}-{i}" for i in range(n)]),
        "source": pa.array(["s"] * n),
        "event": pa.array([f"e{(i * 7 + f) % 13}" for i in range(n)]),
        "timestamp": pa.array([start + timedelta(seconds=(i * 37 + f) % 86_000)
                               for i in range(n)], pa.timestamp("us")),
        "person_id": pa.array([(i * 31 + f) % 50_000 for i in range(n)], pa.int64()),
        "properties": pa.array([noise[i * 160:(i + 1) * 160] for i in range(n)])})
    table = pa.table(cols, schema=EVENT_ARROW_SCHEMA)
    path, size = wh.tiers.write(table, "day=2026-09-28", name=f"batch-w-{f}")
    with wh.transaction() as cur:
        wh.files.swap(cur, [], [TierFile(path, "warm", "2026-09-28", n, size)], None)
wh.close()
"""

FOLD = r"""
import json, resource, sys
from datetime import date, timedelta
from pathlib import Path
import pyarrow.parquet as pq
from aap.store import tiering
from aap.store.warehouse import Warehouse

wh = Warehouse(Path(sys.argv[1]), memory_limit="128MB")
paths = [f.path for f in wh.files.files()]
arrow = sum(pq.read_metadata(p).num_rows for p in paths)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
folded = tiering.compact_batches(wh, "2026-09-28", timedelta(0), today=date(2026, 9, 30))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
(f,) = wh.files.files()
t = pq.read_table(f.path, columns=["event", "person_id", "timestamp"])
keys = list(zip(t.column("event").to_pylist(), t.column("person_id").to_pylist(),
                t.column("timestamp").to_pylist()))
print(json.dumps({"rows": arrow, "folded": folded, "file_rows": t.num_rows,
                  "sorted": keys == sorted(keys), "grew": peak - before,
                  "row_groups": pq.read_metadata(f.path).num_row_groups}))
"""


@pytest.mark.slow
def test_a_day_larger_than_memory_folds_in_a_row_groups_memory(tmp_path: Path) -> None:
    files, rows = 8, 250_000  # 2M rows of ~250 bytes in Arrow: ~500 MB, 4x DuckDB's limit
    wh = tmp_path / "wh"
    subprocess.run([sys.executable, "-c", MAKE, str(wh), str(files), str(rows)], check=True,
                   timeout=600)
    out = subprocess.run([sys.executable, "-c", FOLD, str(wh)], timeout=900,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["rows"] == r["folded"] == r["file_rows"] == files * rows
    assert r["sorted"]  # event, person, time: as every tier file
    assert r["row_groups"] == -(-files * rows // 256_000)
    # the whole day in Arrow is ~500 MB (and was read whole, then sorted into a copy, by
    # the fold before): now DuckDB's 128 MB, a 256,000-row batch and the writer's buffers
    assert r["grew"] < 900 * 2**20, r


def test_a_fold_reads_files_older_than_a_column_and_keeps_their_rows(tmp_path: Path) -> None:
    """A file written before a column existed folds with newer ones: the column is null
    in its rows (as pyarrow's dataset read them), and the folded file has every column."""
    from datetime import date, datetime, timedelta

    import pyarrow as pa
    import pyarrow.parquet as pq

    from aap.store import tiering
    from aap.store.filelist import TierFile
    from aap.store.schema import EVENT_ARROW_SCHEMA
    from aap.store.warehouse import Warehouse

    wh = Warehouse(tmp_path / "wh")

    def table(n: int, first: int) -> pa.Table:
        cols = {c.name: pa.nulls(n, c.type) for c in EVENT_ARROW_SCHEMA}
        cols.update({"message_id": pa.array([f"m{first + i}" for i in range(n)]),
                     "event": pa.array(["b" if i % 2 else "a" for i in range(n)]),
                     "timestamp": pa.array([datetime(2026, 9, 28) + timedelta(minutes=first + i)
                                            for i in range(n)], pa.timestamp("us")),
                     "person_id": pa.array([first + i for i in range(n)], pa.int64()),
                     "dnt": pa.array([True] * n), "purposes": pa.array([["analytics"]] * n)})
        return pa.table(cols, schema=EVENT_ARROW_SCHEMA)

    new_path, new_size = wh.tiers.write(table(4, 100), "day=2026-09-28", name="batch-w-2")
    old = table(3, 0).drop_columns(["dnt", "purposes"])  # an older version's file
    old_path = wh.tiers.path("day=2026-09-28", "batch-w-1")
    pq.write_table(old, old_path)
    with wh.transaction() as cur:
        wh.files.swap(cur, [], [TierFile(new_path, "warm", "2026-09-28", 4, new_size),
                                TierFile(old_path, "warm", "2026-09-28", 3, 1)], None)
    assert tiering.compact_batches(wh, "2026-09-28", timedelta(0), today=date(2026, 9, 30)) == 7
    (f,) = wh.files.files()
    got = pq.read_table(f.path)
    assert got.schema == EVENT_ARROW_SCHEMA
    rows = sorted(zip(got.column("person_id").to_pylist(), got.column("dnt").to_pylist(),
                      got.column("purposes").to_pylist(), strict=True))
    assert rows == [(0, None, None), (1, None, None), (2, None, None)] + [
        (p, True, ["analytics"]) for p in range(100, 104)]
    assert got.column("event").to_pylist() == sorted(got.column("event").to_pylist())
    # a day of files that all lack the columns
    for k in (1, 2):
        path = wh.tiers.path("day=2026-09-27", f"batch-w-{k}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table(2, 10 * k).drop_columns(["dnt", "purposes"]), path)
        with wh.transaction() as cur:
            wh.files.swap(cur, [], [TierFile(path, "warm", "2026-09-27", 2, 1)], None)
    assert tiering.compact_batches(wh, "2026-09-27", timedelta(0), today=date(2026, 9, 30)) == 4
    (f,) = [f for f in wh.files.files() if f.part == "2026-09-27"]
    got = pq.read_table(f.path)
    assert got.schema == EVENT_ARROW_SCHEMA and got.num_rows == 4
    assert got.column("dnt").null_count == got.column("purposes").null_count == 4
    wh.close()


def test_a_tier_root_that_looks_like_a_pattern_folds_its_own_files(tmp_path: Path) -> None:
    """DuckDB reads a path as a glob pattern: the files of a tier root with ``[`` in its
    name are read through links in the fold's scratch directory, never matching a
    neighbour's files."""
    from datetime import date, timedelta

    from aap.store import tiering
    from aap.store.tiers import TierConfig, TierStore
    from aap.store.warehouse import Chunk, Warehouse
    from tests.query.test_cache import events

    for name in ("a", "b"):  # "[ab]" would match both as a pattern
        (tmp_path / name).mkdir()
    wh = Warehouse(tmp_path / "wh", tiers=TierStore(TierConfig(str(tmp_path / "[ab]"))))
    wh.write(Chunk(events=events(1, 6), position=1, next_person=1000))
    day = date(2026, 9, 28)
    tiering.move_day_to_warm(wh, day)
    wh.write(Chunk(events=events(1, 6).slice(0, 3), position=2, next_person=1000))
    tiering.move_day_to_warm(wh, day)
    import pyarrow.parquet as pq

    for f in wh.files.files():  # a neighbour's files where the pattern would find them
        assert "[ab]" in f.path
        other = Path(f.path.replace("[ab]", "a"))
        other.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pq.read_table(f.path).slice(0, 1), other)
    assert tiering.compact_batches(wh, day.isoformat(), timedelta(0),
                                   today=day + timedelta(days=2)) == 9
    (f,) = wh.files.files()
    assert f.rows == 9 and "[ab]" in f.path
    wh.close()


S3_WAREHOUSE = """
import os
from aap.store.tiers import TierConfig, TierStore
wh = Warehouse(Path(sys.argv[1]), memory_limit="128MB", tiers=TierStore(TierConfig(
    os.environ["FOLD_TIERS"], s3_endpoint=os.environ["FOLD_S3"], s3_access_key="test",
    s3_secret_key="test")))
"""


@pytest.mark.slow
def test_a_day_on_s3_larger_than_memory_folds_in_a_row_groups_memory(tmp_path: Path) -> None:
    """Files on S3 are copied (streamed) into the fold's scratch directory and sorted
    there like local files: not read into memory; the copies are gone after."""
    import os

    from tests.store.test_tiers import moto_with

    server, endpoint = moto_with("aap-fold")
    try:
        env = {**os.environ, "FOLD_TIERS": "s3://aap-fold/t", "FOLD_S3": endpoint}
        local = 'wh = Warehouse(Path(sys.argv[1]), memory_limit="128MB")\n'
        assert local in MAKE and local in FOLD
        make, fold = (s.replace(local, S3_WAREHOUSE) for s in (MAKE, FOLD))
        fold = fold.replace("pq.read_metadata(p)", "pq.read_metadata(wh.tiers.fs.open_input_file(p))")
        fold = fold.replace("pq.read_table(f.path,", "pq.read_table(f.path, filesystem=wh.tiers.fs,")
        fold = fold.replace("pq.read_metadata(f.path)",
                            "pq.read_metadata(wh.tiers.fs.open_input_file(f.path))")
        files, rows = 8, 250_000
        wh = tmp_path / "wh"
        subprocess.run([sys.executable, "-c", make, str(wh), str(files), str(rows)],
                       check=True, timeout=600, env=env)
        out = subprocess.run([sys.executable, "-c", fold, str(wh)], timeout=900, env=env,
                             capture_output=True, text=True)
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["rows"] == r["folded"] == r["file_rows"] == files * rows
    assert r["sorted"] and r["row_groups"] == -(-files * rows // 256_000)
    # read whole from S3 (as before 2026-12-07), a day of 2M rows grew the fold by 1.78 GB
    assert r["grew"] < 900 * 2**20, r
    assert not list(tmp_path.rglob("*.parquet"))  # the scratch copies went
