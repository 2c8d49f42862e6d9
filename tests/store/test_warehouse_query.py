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
