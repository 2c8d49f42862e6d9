"""An erasure run by one processor reaches every processor's hot rows (publishing on,
:mod:`aap.store.erasures`). Two processors, each with its own data dir (warehouse,
keystore), log and publisher, share the list of live files, the tier store and the
identities (PostgreSQL, or SQLite files under ``meta/``). Ana's rows are held hot by B;
her erasure runs through A; B publishes afterwards. Then no byte of hers is in any file
under either data dir, the tier store or the shared-state files, no row of hers (nor
her keyed ids outside the keystore's suppression list) in PostgreSQL, a reader over the
list sees none of her events, and her later events at B are not stored. The moments
the erasure can meet B's rows at: hot; a chunk built before B learned of the erasure
and written after B applied it; a batch marked before the erasure and listed after;
B stopped. Runs on both engines of the shared state (PostgreSQL: marked ``slow``)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from aap.api.admin import HealthParts, health
from aap.events import Event
from aap.log.sqlite import SQLiteLog
from aap.privacy.audit import AuditLog
from aap.privacy.keystore import Keystore
from aap.privacy.rights import Reached, Rights
from aap.process.processor import Processor
from aap.store import erasures, filelist
from aap.store.identities import SharedIdentities
from aap.store.meta import open_meta
from aap.store.publish import Publisher
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Chunk, Warehouse
from tests.pg import Cluster as PgCluster
from tests.pg import fresh_database
from tests.privacy.test_ip_canary import scan
from tests.process.test_processor import drain, ev
from tests.process.test_shared_identities import HASHER, append

GONE = "gone-mark-of-ana-5d1e"
GONE_TRAIT = "gone-trait-of-ana-77c0"
GONE_ORDER = "gone-order-of-ana-2b9a"
KEPT = "kept-mark-of-bo-c4f3"
ANA = ("ana-anon", "ana-user")


def key(raw: str) -> int:
    return HASHER.key(raw)


class Node:
    """One processor: its data dir (warehouse and keystore), its log (outside the data
    dir: the log's records expire with its retention), its publisher and its
    application of the shared record of erasures, wired as the core wires them."""

    def __init__(self, tmp: Path, name: str, meta_url: str) -> None:
        self.tmp, self.name, self.url = tmp, name, meta_url
        self.data = tmp / name
        self.data.mkdir(exist_ok=True)
        self.log = SQLiteLog(tmp / "logs" / name)
        self.keystore = Keystore(self.data, url=meta_url)
        self.identities = SharedIdentities(tmp / "meta", meta_url)
        self.open()

    def open(self) -> None:
        self.wh = Warehouse(self.data / "warehouse",
                            tiers=TierStore(TierConfig(str(self.tmp / "tiers"))),
                            shared_list=open_meta(self.tmp / "meta" / "tiers.db", self.url))
        mirror = erasures.attach(self.wh)
        assert mirror is not None
        erasures.connect(mirror, self.keystore, self.identities)
        self.pub = Publisher(self.wh, 1)
        self.pub.recover()
        self.proc = Processor(self.log, self.wh, HASHER, chunk_records=1,
                              identities=self.identities,
                              destroyed=self.keystore.refresh_destroyed)

    def close(self) -> None:
        self.proc.close()
        self.wh.close()

    def messages(self) -> set[str]:
        """Message ids of every event this warehouse holds or has listed."""
        return {r[0] for r in self.wh.query("SELECT message_id FROM events_all")[1]}


def ana_events(first: int) -> list[Event]:
    """Ana browsing (a property marked), logging in (a trait marked) and ordering (an
    order id marked), from message ``first`` on."""
    return [
        ev(first, anonymous_id="ana-anon", properties={"note": GONE}),
        ev(first + 1, type="identify", event=None, user_id="ana-user", anonymous_id="ana-anon",
           traits={"plan": GONE_TRAIT}),
        ev(first + 2, user_id="ana-user", anonymous_id="ana-anon", event="Order Completed",
           properties={"note": GONE, "order_id": GONE_ORDER, "revenue": 12,
                       "products": [{"product_id": "p1", "name": "Tea", "price": 12}]}),
    ]


def bo_events(first: int) -> list[Event]:
    return [ev(first, anonymous_id="bo-anon", properties={"note": KEPT}),
            ev(first + 1, user_id="bo-user", anonymous_id="bo-anon", event="Order Completed",
               properties={"note": KEPT, "order_id": "kept-order", "revenue": 5,
                           "products": [{"product_id": "p2", "name": "Cup", "price": 5}]})]


def feed(node: Node, events: list[Event]) -> None:
    for e in events:
        append(node.log, e)
    drain(node.proc)


def two_processors(tmp: Path, meta_url: str) -> tuple[Node, Node, Rights]:
    """A (Cy's event) and B (Bo's, and Ana's first ones: hot, not published), and the
    rights run through A."""
    (tmp / "meta").mkdir()
    (tmp / "logs").mkdir()
    a, b = Node(tmp, "a", meta_url), Node(tmp, "b", meta_url)
    rights = Rights(a.data, a.wh, a.keystore, HASHER, AuditLog(a.data, url=meta_url))
    rights.identities = a.identities
    feed(a, [ev(1, anonymous_id="cy-anon", properties={"note": KEPT})])
    feed(b, bo_events(10) + ana_events(20))
    return a, b, rights


@pytest.mark.parametrize("moment", ["hot", "chunk", "listing", "stopped"])
def test_an_erasure_through_one_processor_reaches_the_others_rows(
        tmp_path: Path, meta_url: str, moment: str) -> None:
    a, b, rights = two_processors(tmp_path, meta_url)
    receipts: list[dict[str, Any]] = []

    def erase() -> None:
        receipts.append(rights.erase_keys([key("ana-user")], {"userIds": 1}, "test"))

    # A: Cy; B: Bo, and Ana's first events, published (in listed files)
    a.pub.publish_once()
    b.pub.publish_once()
    # then more of Ana's events, which B holds hot (not published)
    feed(b, ana_events(30))
    assert {"m30", "m31", "m32"} <= b.messages()
    assert b.wh.query("SELECT count(*) FROM events_raw WHERE message_id LIKE 'm3%'")[1] == [(3,)]
    if moment == "hot":
        erase()
    elif moment == "chunk":
        # a chunk B built before the erasure reached it, written after B applied it
        real = b.wh.write

        def write(chunk: Chunk) -> None:
            if "m40" in chunk.events.column("message_id").to_pylist() and not receipts:
                erase()
                with b.wh.write_lock:
                    b.pub.settle()  # B applies the erasure (as before its next batch)
            real(chunk)

        b.wh.write = write  # type: ignore[method-assign]
        feed(b, [ev(40, user_id="ana-user", properties={"note": GONE})])
        assert receipts
    elif moment == "listing":
        # a batch B marked before the erasure, listed after it
        b.pub.step = lambda step: erase() if step == "written" and not receipts else None
    else:  # B stopped meanwhile: its start-up applies the erasure
        b.close()
        erase()
        b.open()
        assert b.wh.query("SELECT count(*) FROM events_raw WHERE message_id LIKE 'm3%'"
                          )[1] == [(0,)]  # gone before any batch
    b.pub.publish_once()
    assert receipts
    [receipt] = receipts
    assert receipt["where"]["other_processors"]
    # Ana comes back to B: not stored (suppressed), and nothing of her is published
    feed(b, [ev(50, user_id="ana-user", anonymous_id="ana-anon", properties={"note": GONE})])
    assert "m50" not in b.messages()
    assert b.proc.dropped.get("erased_subject", 0) >= 1
    a.pub.publish_once()
    b.pub.publish_once()

    # a reader over the list: Bo and Cy, nothing of Ana
    reader = Warehouse(tmp_path / "reader", tiers=TierStore(TierConfig(str(tmp_path / "tiers"))),
                       shared_list=open_meta(tmp_path / "meta" / "tiers.db", meta_url))
    seen = reader.query("SELECT message_id, properties->>'note' FROM events_all")[1]
    assert {m for m, _ in seen} == {"m1", "m10", "m11"}
    assert {n for _, n in seen} == {KEPT}
    assert reader.query("SELECT count(*) FROM orders")[1] == [(1,)]
    assert reader.query("SELECT count(*) FROM persons WHERE CAST(traits AS VARCHAR)"
                        " LIKE '%gone%'")[1] == [(0,)]
    # every writer applied the erasure: the record is pruned
    assert a.wh.erasures is not None and b.wh.erasures is not None
    assert a.wh.erasures.applied == b.wh.erasures.applied == 1
    assert erasures.SharedErasures(reader.files.db).since(0) == []  # type: ignore[attr-defined]
    reader.close()
    for node in (a, b):
        node.close()
    check_nothing_left(tmp_path, meta_url)


class Kept:
    """Where an erasure keeps what it found (a privacy request's row does it in the
    core: :class:`aap.privacy.rights.Reach`)."""

    def __init__(self) -> None:
        self.reached = Reached(set(), set())

    def found(self) -> Reached:
        return self.reached

    def keep(self, reached: Reached) -> None:
        self.reached = reached


def test_an_erasure_interrupted_after_it_was_recorded_reaches_every_row_run_again(
        tmp_path: Path, meta_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first run records the erasure and then fails on the tier files (S3 away, say);
    B applies the record meanwhile, which erases Ana's shared identities, so her ids lead
    to nobody any more. Run again with what the first run kept, the erasure still reaches
    her published rows, and nothing of hers is left anywhere."""
    from aap.privacy import removal

    a, b, rights = two_processors(tmp_path, meta_url)
    a.pub.publish_once()
    b.pub.publish_once()  # Ana's events in listed files
    real = removal.erase_persons

    def away(*args: Any, **kwargs: Any) -> dict[str, int]:
        raise OSError("AWS Error NETWORK_CONNECTION: the tier store does not answer")

    rights.keystore.keys_for([key(raw) for raw in ANA])  # her data keys (sealing makes them)
    kept = Kept()
    monkeypatch.setattr(removal, "erase_persons", away)
    with pytest.raises(OSError):
        rights.erase_keys([key("ana-user")], {"userIds": 1}, "test", reach=kept)
    monkeypatch.setattr(removal, "erase_persons", real)
    assert kept.reached.persons, "the first run kept what it found"
    first = kept.reached.destroyed
    assert first == len(ANA) and kept.reached.runs == 1, kept.reached  # her keys went then
    b.pub.publish_once()  # B applies the record: her shared identities are erased
    assert a.identities.closure([key("ana-user")])[0] == set()  # her id leads to nobody
    receipt = rights.erase_keys([key("ana-user")], {"userIds": 1}, "test", reach=kept)
    assert receipt["persons"] >= 1 and receipt["removed"]["warm_rows"] >= 3, receipt
    # the receipt counts the keys the interrupted run destroyed (this run found none left)
    assert receipt["data_keys_destroyed"] == first and receipt["interrupted_runs"] == 1, receipt
    a.pub.publish_once()
    b.pub.publish_once()
    reader = Warehouse(tmp_path / "reader", tiers=TierStore(TierConfig(str(tmp_path / "tiers"))),
                       shared_list=open_meta(tmp_path / "meta" / "tiers.db", meta_url))
    assert {r[0] for r in reader.query("SELECT message_id FROM events_all")[1]} == {
        "m1", "m10", "m11"}
    assert reader.query("SELECT count(*) FROM orders")[1] == [(1,)]
    reader.close()
    for node in (a, b):
        node.close()
    check_nothing_left(tmp_path, meta_url)


def check_nothing_left(tmp: Path, meta_url: str) -> None:
    """No byte of Ana's marks in any file under the data dirs, the tier store or the
    shared-state files, nor in their rows decoded; her keyed ids in no row but the
    keystores' suppression lists (``destroyed``); Bo's marks are there (the scans see).
    The warehouses' DuckDB files are read row by row only: DuckDB keeps a deleted row's
    bytes in the file's blocks until it reuses them (for any erasure: README, "Storage:
    batch files on the shared list")."""
    roots = [tmp / "a", tmp / "b", tmp / "tiers", tmp / "meta"]
    for mark in (GONE, GONE_TRAIT, GONE_ORDER):
        assert [f for root in roots for f in scan(root, mark.encode())
                if not f.endswith(".duckdb")] == [], mark
    assert [f for root in roots for f in scan(root, b"kept-order")
            if f.endswith(".parquet")], "the scan sees the published rows"
    text = rows_text(tmp, meta_url)
    assert KEPT in text and "kept-order" in text
    for mark in (GONE, GONE_TRAIT, GONE_ORDER):
        assert mark not in text, mark
    for raw in ANA:
        assert str(key(raw)) not in text, raw


def rows_text(tmp: Path, meta_url: str) -> str:
    """Every row, as text: of each warehouse's tables, each Parquet file, each SQLite file
    of the shared state and the keystores, and PostgreSQL's tables — except the
    keystores' ``destroyed`` (the suppression list, which keeps the erased keyed ids)."""
    parts = []
    for hot in tmp.rglob("hot.duckdb"):
        con = duckdb.connect(str(hot), read_only=True)
        try:
            for (table,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
                parts.append(repr(con.execute(f'SELECT * FROM "{table}"').fetchall()))
        finally:
            con.close()
    for f in (tmp / "tiers").rglob("*.parquet"):
        parts.append(repr(pq.read_table(f).to_pylist()))
    for db in [*tmp.rglob("*.db")]:
        if "logs" in db.parts:
            continue
        con = sqlite3.connect(db)
        try:
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                if table != "destroyed":
                    parts.append(repr(con.execute(f'SELECT * FROM "{table}"').fetchall()))
        finally:
            con.close()
    if meta_url:
        from tests.pg import every_row

        parts.extend(repr(rows) for table, rows in every_row(meta_url) if table != "destroyed")
    return "\n".join(parts)


def test_the_record_is_kept_until_every_registered_writer_applied_it(
        tmp_path: Path, meta_url: str) -> None:
    """A writer that registered (started) and has not applied an erasure yet holds its row
    back; once it applies it, the row goes. Numbers keep growing after a prune."""
    db = open_meta(tmp_path / "tiers.db", meta_url)
    store = erasures.SharedErasures(db)
    store.applied("w1", 0)
    store.applied("w2", 0)
    assert store.append({7}, {70, 71}) == 1
    assert store.append(set(), {80}) == 2
    assert [(e.seq, e.persons, e.keys) for e in store.since(0)] == [
        (1, frozenset({7}), frozenset({70, 71})), (2, frozenset(), frozenset({80}))]
    assert store.applied("w1", 2) == 0  # w2 has applied none
    assert [e.seq for e in store.since(0)] == [1, 2]
    assert store.applied("w2", 1) == 1
    assert [e.seq for e in store.since(0)] == [2]
    assert store.applied("w2", 2) == 1
    assert store.since(0) == [] and store.position() == 2
    assert store.append({9}, {90}) == 3
    db.close()


def test_a_retired_writer_no_longer_holds_the_record_back(tmp_path: Path, meta_url: str) -> None:
    """Retiring a writer (gone for good) deletes its row of ``erasure_appliers`` and the
    rows every other writer applied; an unknown writer is refused."""
    db = open_meta(tmp_path / "tiers.db", meta_url)
    db.migrate(filelist.SCHEMA)
    store = erasures.SharedErasures(db)
    store.applied("w1", 0)
    store.applied("w2", 0)
    store.append({7}, {70})
    store.append({8}, {80})
    assert store.applied("w1", 2) == 0  # w2 holds both back
    assert [(w.writer, w.applied, w.published) for w in store.writers()] == [
        ("w1", 2, 0), ("w2", 0, 0)]
    assert store.retire("w2") == 2
    assert store.read(0) == (2, [])
    assert [w.writer for w in store.writers()] == ["w1"]
    with pytest.raises(erasures.UnknownWriter):
        store.retire("w2")
    assert store.append({9}, {90}) == 3  # numbers go on
    assert store.read(0)[0] == 3 and [e.seq for e in store.since(0)] == [3]
    db.close()


def test_a_retired_writer_that_comes_back_lists_nothing_of_those_erased_meanwhile(
        tmp_path: Path, meta_url: str) -> None:
    """B holds Ana's rows hot and stops; Ana is erased through A; B is retired, so the
    record's row goes (A applied it); then B comes back. Its hot rows must not be listed
    with Ana's in them: with the keystore on PostgreSQL the gap in the record is applied
    as every destroyed id (Ana's rows go, Bo's are published); with SQLite files nothing
    names Ana there, so B publishes nothing and keeps its rows. A new writer that starts
    after the prune (C, nobody in its tables) is not held up."""
    a, b, rights = two_processors(tmp_path, meta_url)  # Ana hot on B, not published
    gone_writer = b.wh.files.writer  # type: ignore[attr-defined]

    def stop_after_mark(step: str) -> None:
        if step == "marked":
            raise RuntimeError("stopped after the mark")

    b.pub.step = stop_after_mark  # B stops with its rows marked for a batch
    with pytest.raises(RuntimeError, match="after the mark"):
        b.pub.publish_once()
    b.close()
    rights.erase_keys([key("ana-user")], {"userIds": 1}, "test")
    record = erasures.SharedErasures(a.wh.files.db)  # type: ignore[attr-defined]
    assert [e.seq for e in record.since(0)] == [1]  # B holds it back
    assert record.retire(gone_writer) == 1  # A applied it: pruned
    assert record.read(0) == (1, [])
    c = Node(tmp_path, "c", meta_url)  # a new writer, after the prune
    feed(c, [ev(60, anonymous_id="dee-anon", properties={"note": KEPT})])
    c.pub.publish_once()
    b.open()
    a.pub.publish_once()
    hot_b = {r[0] for r in b.wh.query("SELECT message_id FROM events_raw")[1]}
    if meta_url:  # Ana's m20 to m22 left B at its start, the marked batch was listed
        assert hot_b == set()
        b.pub.publish_once()
        want = {"m1", "m10", "m11", "m60"}
    else:  # B started; its marked batch stays pending, and nothing is written or listed
        assert hot_b == {"m10", "m11", "m20", "m21", "m22"}
        with pytest.raises(erasures.ErasuresLost, match="retired"):
            b.pub.publish_once()
        assert b.wh.query("SELECT count(*) FROM events_raw WHERE publish_batch IS NOT NULL"
                          )[1] == [(5,)]  # kept, still marked
        assert scan(tmp_path / "tiers", GONE.encode()) == []
        want = {"m1", "m60"}
    # the operator's health answer says whether B's publishing stopped, and why
    publishing = health(HealthParts(b.data, b.log, b.wh, b.proc, lambda: True, 1,
                                    time.time(), b.pub))["publishing"]
    if meta_url:
        assert publishing["stopped"] is None and publishing["last_listed_at"] is not None
    else:
        assert "retired" in publishing["stopped"] and publishing["last_listed_at"] is None
    reader = Warehouse(tmp_path / "reader", tiers=TierStore(TierConfig(str(tmp_path / "tiers"))),
                       shared_list=open_meta(tmp_path / "meta" / "tiers.db", meta_url))
    seen = reader.query("SELECT message_id, properties->>'note' FROM events_all")[1]
    assert {m for m, _ in seen} == want
    assert {n for _, n in seen} == {KEPT}
    reader.close()
    for node in (a, b, c):
        node.close()
    if meta_url:
        check_nothing_left(tmp_path, meta_url)


@pytest.mark.slow
def test_a_gap_read_before_the_keystore_is_connected_is_applied_once_it_is(
        tmp_path: Path, pg: PgCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """B comes back after it was retired and applies the record before its keystore is
    connected (the gap cannot be named yet) and a later erasure meanwhile (its count moves
    past the gap); once the keystore is connected, the gap is applied all the same.
    PostgreSQL only: with SQLite files the gap is never named (the test above)."""
    fresh_database(pg.url)
    monkeypatch.setenv("AAP_META_URL", pg.url)
    meta_url = pg.url
    (tmp_path / "meta").mkdir()
    (tmp_path / "logs").mkdir()
    a, b = Node(tmp_path, "a", meta_url), Node(tmp_path, "b", meta_url)
    rights = Rights(a.data, a.wh, a.keystore, HASHER, AuditLog(a.data, url=meta_url))
    rights.identities = a.identities
    feed(b, bo_events(10) + ana_events(20))
    gone_writer = b.wh.files.writer  # type: ignore[attr-defined]
    b.close()
    rights.erase_keys([key("ana-user")], {"userIds": 1}, "test")
    record = erasures.SharedErasures(a.wh.files.db)  # type: ignore[attr-defined]
    assert record.retire(gone_writer) == 1
    wh = Warehouse(b.data / "warehouse", tiers=TierStore(TierConfig(str(tmp_path / "tiers"))),
                   shared_list=open_meta(tmp_path / "meta" / "tiers.db", meta_url))
    try:
        mirror = erasures.attach(wh)  # registered again; not connected yet
        assert mirror is not None
        feed(a, [ev(1, anonymous_id="cy-anon", properties={"note": KEPT})])
        rights.erase_keys([key("cy-anon")], {"anonymousIds": 1}, "test")  # erasure 2
        mirror.apply()
        assert mirror.lost == (1, 1) and mirror.applied == 2
        ana = "SELECT count(*) FROM events_raw WHERE message_id IN ('m20', 'm21', 'm22')"
        assert wh.query(ana)[1] == [(3,)]  # not named yet
        erasures.connect(mirror, b.keystore, b.identities)
        mirror.apply()
        assert mirror.lost is None and mirror.everyone_due is None and mirror.applied == 2
        assert wh.query(ana)[1] == [(0,)]
        assert wh.query("SELECT count(*) FROM events_raw")[1] == [(2,)]  # Bo's
    finally:
        wh.close()
        a.close()


@pytest.mark.slow  # runs `aap cluster writers` and `retire` in subprocesses
def test_aap_cluster_writers_and_retire(tmp_path: Path, meta_url: str) -> None:
    """The commands list the writers the record waits for, retire one (audited), and
    refuse an unknown writer or a deployment without publishing with a message."""
    import os
    import subprocess
    import sys

    from aap.datadir import DataDir

    data = tmp_path / "data"
    data.mkdir()
    db = open_meta(DataDir(data).tier_list_db, meta_url)
    db.migrate(filelist.SCHEMA)
    store = erasures.SharedErasures(db)
    store.applied("0000000000a1", 0)
    store.applied("0000000000b2", 0)
    store.append({7}, {70})
    store.applied("0000000000a1", 1)

    def aap(*args: str, publish: str = "1") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aap", "cluster", *args, "--data-dir",
                               str(data)], capture_output=True, text=True,
                              env={**os.environ, "AAP_PUBLISH_SECONDS": publish})

    r = aap("writers")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "record of erasures: 1 recorded, 1 kept (1 to 1)"
    assert lines[1].startswith("0000000000a1\tlast batch listed 0\terasures applied 1 (0 behind)")
    assert lines[2].startswith("0000000000b2\tlast batch listed 0\terasures applied 0 (1 behind)")
    r = aap("retire", "0000000000b2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "retired writer 0000000000b2: 1 erasure(s) left the record"
    assert store.read(0) == (1, [])
    [entry] = [e for e in AuditLog(data, url=meta_url).entries()
               if e["action"] == "writer.retired"]
    assert entry["detail"] == {"writer": "0000000000b2", "erasures_pruned": 1}
    for refused, args, publish, message in (
            ("unknown", ("retire", "0000000000b2"), "1", "no writer '0000000000b2'"),
            ("hostile", ("retire", "<script>'; DROP TABLE erasures;--"), "1", "no writer"),
            ("publishing off", ("writers",), "0", "publishing is off")):
        r = aap(*args, publish=publish)
        assert r.returncode != 0, refused
        assert message in r.stderr and "Traceback" not in r.stderr, (refused, r.stderr)
    assert [w.writer for w in store.writers()] == ["0000000000a1"]
    db.close()
