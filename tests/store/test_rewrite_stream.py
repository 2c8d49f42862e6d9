"""A rewrite (erasure, withdrawal, retention) reads a tier file a batch at a time and
writes its new version as it reads: what it hits, changes, sets aside and keeps is the
same as if it had read the file whole, and the file stays as it is when nothing in it
changes. The change's rules here are plain functions through the real primitive."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from aap.store import rewrite as rw
from aap.store import tiers
from aap.store.filelist import TierFile
from aap.store.schema import EVENT_ARROW_SCHEMA
from aap.store.warehouse import Warehouse

DAY = "2026-09-28"


def warm_file(wh: Warehouse, n: int, bad: tuple[int, ...] = ()) -> str:
    """A listed warm file of ``n`` rows (person ``i``, event ``e{i}``); rows in ``bad``
    carry a time out of bounds (year 9999)."""
    cols = {c.name: pa.nulls(n, c.type) for c in EVENT_ARROW_SCHEMA}
    cols.update({
        "message_id": pa.array([f"m{i}" for i in range(n)]),
        "event": pa.array([f"e{i}" for i in range(n)]),
        "source": pa.array(["s"] * n),
        "timestamp": pa.array([datetime(9999, 1, 1) if i in bad
                               else datetime(2026, 9, 28) + timedelta(minutes=i)
                               for i in range(n)], pa.timestamp("us")),
        "person_id": pa.array(range(n), pa.int64()),
        "purposes": pa.array([["analytics", "ads"]] * n)})
    path, size = wh.tiers.write(pa.table(cols, schema=EVENT_ARROW_SCHEMA), f"day={DAY}")
    with wh.transaction() as cur:
        wh.files.swap(cur, [], [TierFile(path, "warm", DAY, n, size)], None)
    return path


def run(wh: Warehouse, in_file: Callable[[pa.Table, str], rw.FileRows],
        job: str = "erasure") -> dict[str, Any]:
    out = {"warm_rows": 0, "warm_files_rewritten": 0, "cold_rows": 0,
           "cold_files_rewritten": 0}
    rw.rewrite(wh, rw.Change(job, lambda *_: True, in_file, lambda _: None), out)
    return out


def stored(wh: Warehouse) -> list[Path]:
    return sorted(Path(wh.tiers.root).rglob("*.parquet"))


@pytest.fixture
def wh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    monkeypatch.setattr(tiers, "SCAN_ROWS", 3)  # a file of 10 rows is read in batches
    monkeypatch.setitem(tiers.ROW_GROUP_ROWS, False, 4)
    w = Warehouse(tmp_path / "wh")
    yield w
    w.close()


def test_rows_hit_in_one_batch_go_and_the_rest_keep_their_order(wh: Warehouse) -> None:
    warm_file(wh, 10, bad=(1,))
    batches: list[int] = []

    def erase(table: pa.Table, tier: str) -> rw.FileRows:
        batches.append(table.num_rows)
        mask = pc.is_in(table.column("person_id"), pa.array([7, 8], pa.int64()))
        hit = int(pc.sum(mask).as_py() or 0)
        return (table.filter(pc.invert(mask)), hit) if hit else None

    out = run(wh, erase)
    # batch by batch (at most SCAN_ROWS, within the file's row groups of 4); row 1 set
    # aside before the change sees its batch
    assert len(batches) > 3 and max(batches) <= 3 and sum(batches) == 9
    assert out["warm_rows"] == 2 and out["warm_files_rewritten"] == 1
    assert out["quarantined"] == 1
    (f,) = wh.files.files()
    got = pq.read_table(f.path)
    assert got.column("person_id").to_pylist() == [0, 2, 3, 4, 5, 6, 9]
    assert f.rows == 7 and got.schema == EVENT_ARROW_SCHEMA
    assert pq.read_metadata(f.path).num_row_groups == 2  # groups of 4 from batches of 3
    assert wh.query("SELECT person_id FROM quarantined_events")[1] == [(1,)]
    assert stored(wh) == [Path(f.path)]  # the old file deleted, no other left


def test_a_change_that_hits_no_row_still_rewrites_the_file(wh: Warehouse) -> None:
    """A retention may take an expired purpose off rows and erase none: the file
    changes though no row is hit."""
    old = warm_file(wh, 10)

    def strip(table: pa.Table, tier: str) -> rw.FileRows:
        if not pc.any(pc.less(table.column("person_id"), 2)).as_py():
            return None
        return table.set_column(table.schema.get_field_index("purposes"), "purposes",
                                pa.array([["analytics"]] * table.num_rows)), 0

    out = run(wh, strip, "retention")
    assert out["warm_rows"] == 0 and out["warm_files_rewritten"] == 1
    (f,) = wh.files.files()
    assert f.path != old
    got = pq.read_table(f.path)
    assert got.column("person_id").to_pylist() == list(range(10))
    assert got.column("purposes").to_pylist() == [["analytics"]] * 3 + [
        ["analytics", "ads"]] * 7  # the first batch changed, the others as they were
    assert stored(wh) == [Path(f.path)]


def test_a_file_nothing_changes_in_stays_and_leaves_no_new_file(wh: Warehouse) -> None:
    path = warm_file(wh, 10)
    out = run(wh, lambda table, tier: None, "withdrawal")
    assert out["warm_files_rewritten"] == 0
    assert [f.path for f in wh.files.files()] == [path]
    assert stored(wh) == [Path(path)]


def test_a_file_whose_rows_all_go_is_unlisted_and_deleted(wh: Warehouse) -> None:
    warm_file(wh, 10)
    out = run(wh, lambda table, tier: (table.slice(0, 0), table.num_rows))
    assert out["warm_rows"] == 10 and out["warm_files_rewritten"] == 1
    assert wh.files.files() == [] and stored(wh) == []


def test_a_failed_rewrite_leaves_the_file_and_no_half_written_one(wh: Warehouse) -> None:
    path = warm_file(wh, 10)
    seen = []

    def fails_late(table: pa.Table, tier: str) -> rw.FileRows:
        seen.append(table.num_rows)
        if len(seen) == 3:  # after two batches were written
            raise ValueError("no")
        return table.slice(1), 1

    with pytest.raises(ValueError):
        run(wh, fails_late)
    assert [f.path for f in wh.files.files()] == [path]
    assert stored(wh) == [Path(path)]
    assert pq.read_table(path).num_rows == 10


ERASE = r"""
import json, resource, sys
from pathlib import Path
import pyarrow.parquet as pq
from aap.privacy import removal
from aap.store.warehouse import Warehouse

wh = Warehouse(Path(sys.argv[1]), memory_limit="128MB")
(before_file,) = wh.files.files()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out = removal.erase_persons(wh, {7, 49_999})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
(f,) = wh.files.files()
people = pq.read_table(f.path, columns=["person_id"]).column("person_id").to_pylist()
print(json.dumps({"rows": before_file.rows, "erased": out["warm_rows"], "file_rows": len(people),
                  "listed_rows": f.rows, "left": sorted({7, 49_999} & set(people)),
                  "grew": peak - before}))
"""


@pytest.mark.slow
def test_an_erasure_rewrites_a_file_larger_than_memory_in_a_batchs_memory(
        tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.store.test_fold_memory import MAKE

    wh = tmp_path / "wh"  # one file of 2M rows of ~250 bytes: ~500 MB in Arrow
    subprocess.run([sys.executable, "-c", MAKE, str(wh), "1", "2000000"], check=True,
                   timeout=600)
    done = subprocess.run([sys.executable, "-c", ERASE, str(wh)], timeout=900,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["erased"] == 80  # persons 7 and 49,999: 40 rows each of the 2M
    assert r["file_rows"] == r["listed_rows"] == r["rows"] - 80 and r["left"] == []
    # read whole (as before) the file and its filtered copy grew the process by 1.5 GB;
    # batch by batch 0.31 GB (a row group held for the writer, the allocator's slack)
    assert r["grew"] < 500 * 2**20, r
