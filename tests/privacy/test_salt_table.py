"""The CNIL mode's daily salts shared by every collector (``AAP_META_URL``,
:mod:`aap.privacy.salt_table`): collectors on different data dirs racing for a day's
salt all end with the one the first writer stored (the files, without the setting, do
the same for the workers of one data dir); a salt 48 hours past its day's start is
deleted, from the table's files too, and the next day gets a new one; `aap privacy check
--cnil` names a shared salt left past its 48 hours."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg
import pytest

from aap.privacy.cnil import DailySalts
from aap.privacy.salt_table import SaltTable
from tests.pg import Cluster, new_database
from tests.privacy.test_cnil import Clock

RACERS = 8


def salts_of(tmp_path: Path, url: str, n: int, clock: Clock) -> list[DailySalts]:
    """``n`` collectors' salts: each on its own data dir when the salts are shared; on one
    data dir (one deployment's workers) when they are files."""
    return [DailySalts(tmp_path / (f"dir{i}" if url else "dir"), clock, url=url)
            for i in range(n)]


def race(salts: list[DailySalts]) -> list[bytes]:
    """Every ``today()`` at once (threads released together); returns what each got."""
    start = threading.Barrier(len(salts))
    got: list[bytes] = [b""] * len(salts)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait(timeout=60)
            got[i] = salts[i].today()
        except BaseException as exc:  # reported below, with the thread's result
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(salts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return got


def test_collectors_racing_for_a_day_share_the_first_writers_salt(
        tmp_path: Path, meta_url: str) -> None:
    clock = Clock(datetime(2026, 11, 27, 0, 0, 1, tzinfo=UTC))
    for day in range(3):  # three days, three races
        clock.t = clock.t.replace(day=27 + day)
        salts = salts_of(tmp_path, meta_url, RACERS, clock)
        got = race(salts)
        assert len(set(got)) == 1 and len(got[0]) == 32, [g.hex()[:8] for g in got]
        # a collector that comes later (a restart, a new pod) reads the same one
        assert salts_of(tmp_path, meta_url, 1, clock)[0].today() == got[0]
    # one salt a day (the 27th's went at 00:00 on the 29th, 48 hours after it began)
    one = salts_of(tmp_path, meta_url, 1, clock)[0]
    kept = [date(2026, 11, 28), date(2026, 11, 29)]
    if meta_url:  # rows of the shared table, nothing under the data dirs
        table = one.table
        assert table is not None and table.days() == kept
        assert not any((tmp_path / f"dir{i}").exists() for i in range(RACERS))
    else:
        assert [d for d, _ in one.on_disk()] == kept


def table_file_bytes(cluster: Cluster, url: str) -> bytes:
    """The bytes of the ``cnil_salts`` table's file on the server's disk."""
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("CHECKPOINT")  # the pages leave shared buffers for the file
        rel = con.execute("SELECT pg_relation_filepath('cnil_salts')").fetchone()
    assert rel is not None
    return (cluster.data / str(rel[0])).read_bytes()


def test_a_salt_goes_48_hours_after_its_day_began_and_its_bytes_leave_the_table(
        tmp_path: Path, pg: Cluster) -> None:
    url = new_database(pg.url)
    clock = Clock(datetime(2026, 11, 27, 0, 5, tzinfo=UTC))
    a, b = (DailySalts(tmp_path / name, clock, url=url) for name in ("a", "b"))
    day1 = a.today()
    assert b.today() == day1
    table = a.table
    assert table is not None
    assert day1 in table_file_bytes(pg, url)  # the test can see a salt there
    clock.t = datetime(2026, 11, 28, 0, 0, 1, tzinfo=UTC)
    day2 = b.today()
    assert day2 != day1 and a.today() == day2  # a new day, a new salt
    clock.t = datetime(2026, 11, 28, 23, 59, 59, tzinfo=UTC)  # 47:59:59 after day 1 began
    assert a.purge() == 0 and table.days() == [date(2026, 11, 27), date(2026, 11, 28)]
    clock.t = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)  # 48 hours: day 1's salt goes
    day3 = b.today()  # the day changes: this collector deletes it
    assert table.days() == [date(2026, 11, 28), date(2026, 11, 29)]
    assert table.expired(clock.t) == []
    data = table_file_bytes(pg, url)
    assert day1 not in data and day2 in data and day3 in data
    # the core's retention job deletes them too (a collector may not see the day change)
    core = DailySalts(tmp_path / "core", url=url)
    assert core.purge(datetime(2026, 12, 1, tzinfo=UTC)) == 2 and table.days() == []
    assert day2 not in table_file_bytes(pg, url)


@pytest.mark.slow
def test_the_check_names_a_shared_salt_left_past_48_hours(tmp_path: Path, pg: Cluster) -> None:
    url = new_database(pg.url)
    env = {**os.environ, "AAP_META_URL": url}
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "aap", "sources", "create", "site", "--mode", "cnil",
                    "--data-dir", str(data)], check=True, env=env, capture_output=True,
                   timeout=120)

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aap", "privacy", "check", "--cnil",
                               "--data-dir", str(data)], env=env, capture_output=True,
                              text=True, timeout=120)

    today = datetime.now(UTC).date()
    table = SaltTable(url)
    table.load_or_create(today)
    ok = check()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS  salts_deleted_after_48h" in ok.stdout
    assert "1 shared salts in table cnil_salts on postgresql://127.0.0.1" in ok.stdout
    table.load_or_create(date(2026, 1, 2))  # a salt nobody deleted
    failed = check()
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "FAIL  salts_deleted_after_48h" in failed.stdout
    assert "2 shared salts in table cnil_salts" in failed.stdout
    assert "1 older than 48 h: 2026-01-02" in failed.stdout
    assert "condition(s) not met" in failed.stderr


def test_a_collector_answers_503_while_the_shared_salts_cannot_be_reached(
        tmp_path: Path) -> None:
    from aap.privacy.salt_table import SaltsUnavailable

    url = "postgresql://aap:pw@127.0.0.1:9/aap?connect_timeout=2"  # nothing listens on 9
    salts = DailySalts(tmp_path, url=url)
    with pytest.raises(SaltsUnavailable) as caught:
        salts.today()
    assert caught.value.status == 503 and "cannot be reached" in caught.value.message
    assert "pw" not in caught.value.message
    assert not salts.dir.exists()  # no salt of its own instead
