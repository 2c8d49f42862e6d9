"""The operator's SQL on the warehouse (``Warehouse.query``, behind ``/internal/sql``):
single SELECTs run on pooled cursors; nothing a statement does to its cursor reaches the
queries after it."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse

from .test_tiers import DAYS, PER_DAY, count, load


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    return load(tmp_path, TierStore(TierConfig(str(tmp_path / "tiers"))))[0]


def test_a_statement_that_changes_its_cursor_does_not_reach_later_queries(wh: Warehouse) -> None:
    total = DAYS * PER_DAY
    assert count(wh) == total  # a pooled cursor now exists
    wh.query("CREATE OR REPLACE TEMP VIEW events AS SELECT 1 AS x")
    wh.query("SET TimeZone = 'Asia/Tokyo'")
    assert count(wh) == total
    assert wh.query("SELECT current_setting('TimeZone')")[1][0][0] != "Asia/Tokyo"


def test_a_failed_query_leaves_the_pool_usable(wh: Warehouse) -> None:
    for _ in range(3):
        with pytest.raises(duckdb.Error):
            wh.query("SELECT no_such_column FROM events")
        assert count(wh) == DAYS * PER_DAY
    assert len(wh._readers.idle) == 1  # the good cursor came back; failed ones did not


def test_writes_still_commit(wh: Warehouse) -> None:
    wh.query("DELETE FROM events_raw WHERE event = 'E0'")
    assert count(wh) == DAYS * PER_DAY * 2 // 3


def test_the_processors_state_is_read_while_another_thread_uses_the_connection(
        tmp_path: Path) -> None:
    """The processor's thread reads its state (``get_state``: the consent ledger's
    position) while the publisher's thread has a statement running on the warehouse's
    connection: it reads on a cursor of its own (on the shared connection, DuckDB refused
    with "connection is busy", and withdrawals waited for the next try)."""
    import threading

    wh = Warehouse(tmp_path / "wh")
    wh.set_state("seen", 7)
    started, release = threading.Event(), threading.Event()

    def block() -> int:
        started.set()
        release.wait(60)
        return 1

    wh.con.create_function("block_here", block, [], "INTEGER")  # type: ignore[arg-type]
    busy = threading.Thread(target=lambda: wh.con.execute("SELECT block_here()").fetchall())
    busy.start()
    try:
        assert started.wait(60)
        assert wh.get_state("seen") == 7
    finally:
        release.set()
        busy.join(60)
        wh.close()
