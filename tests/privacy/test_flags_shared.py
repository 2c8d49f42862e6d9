"""Restriction and objection shared by two warehouses (``AAP_META_URL``,
:mod:`aap.store.flags`): two data dirs, each with its own log, processor, warehouse and
rights (the real objects a core makes), share identities and flags; a person has events
in both. A restriction set through one hides the person from the other's insights, its
``sql`` kind and its operator SQL, and they are shown again once it is lifted through
the other; an objection through one takes the person out of the other's behavioural
cohorts (profiling) only; a person only the other warehouse holds is found through the
shared identities; a merge made by the other's processor carries a restriction to the
surviving person; an erasure removes the person's flag rows from the shared store.
Runs on both engines (the SQLite file of the shared identities, then PostgreSQL); marked
``slow``: the ``sql`` kind runs in a worker process."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from aap.datadir import DataDir
from aap.events import Event, encode_events
from aap.log.base import Append
from aap.log.sqlite import SQLiteLog
from aap.privacy.audit import AuditLog
from aap.privacy.ids import IdHasher
from aap.privacy.keystore import Keystore
from aap.privacy.rights import Rights
from aap.process.processor import Processor
from aap.query.common import CohortDef
from aap.query.runner import run_insight
from aap.store import flags
from aap.store.flags import SharedFlags
from aap.store.identities import SharedIdentities
from aap.store.warehouse import Warehouse
from tests.process.test_processor import T0, drain
from tests.store.flags_workers import local, shared

pytestmark = pytest.mark.slow
HASHER = IdHasher(b"k" * 32)
NOW = T0 + timedelta(days=1)
_n = iter(range(1_000_000))


def ev(user: str | None, anon: str | None, typ: str = "track") -> Event:
    i = next(_n)
    return Event(type=typ, event="E" if typ == "track" else None, message_id=f"m{i}",
                 user_id=user, anonymous_id=anon, timestamp=T0 + timedelta(minutes=i),
                 received_at=T0 + timedelta(minutes=i), source="s",
                 purposes={"analytics": "consent"})


class Node:
    """One data dir's log, processor, warehouse (mirroring the shared flags) and rights."""

    def __init__(self, data: Path, shared_dir: Path, url: str) -> None:
        self.log = SQLiteLog(data / "log")
        self.wh = Warehouse(DataDir(data).warehouse)
        self.mirror = flags.mirror(self.wh, SharedFlags(shared_dir, url))
        self.proc = Processor(self.log, self.wh, HASHER, chunk_records=1,
                              identities=SharedIdentities(shared_dir, url))
        self.rights = Rights(data, self.wh, Keystore(data, url=url), HASHER,
                             AuditLog(data, url=url))

    def send(self, *events: Event) -> None:
        self.log.append([Append("s", len(events), encode_events(list(events)))])
        drain(self.proc)

    def sql_persons(self) -> set[int]:
        """The persons the ``sql`` kind sees in ``events`` and ``persons``."""
        out = set()
        for view in ("events", "persons"):
            got = run_insight(self.wh, {"kind": "sql", "query": f"SELECT DISTINCT person_id"
                                        f" FROM {view}"}, role="admin", sql_idle_workers=0)
            out |= {int(r[0]) for r in got["rows"]}
        return out

    def operator_persons(self) -> set[int]:
        """What the operator's SQL (``aap sql``, the core's ``/internal/sql``) sees."""
        return {int(r[0]) for r in self.wh.query("SELECT DISTINCT person_id FROM events")[1]}

    def trend_persons(self, cohort: int | None = None) -> int:
        doc: dict[str, Any] = {"kind": "trends", "series": [{"event": "E", "math": "persons"}],
                               "interval": "month", "date_from": "-30d"}
        if cohort is not None:
            doc["cohort"] = cohort
        got = run_insight(self.wh, doc, now=NOW, role="admin",
                          cohort=lambda i: CohortDef(i, "active", event="E", days=30))
        return int(sum(v or 0 for s in got["series"] for v in s["values"]))

    def close(self) -> None:
        self.proc.close()
        self.wh.close()


@pytest.fixture
def nodes(tmp_path: Path, meta_url: str) -> Iterator[tuple[Node, Node, SharedFlags]]:
    first, second, shared_dir = tmp_path / "d0", tmp_path / "d1", tmp_path / "shared"
    shared_dir.mkdir()
    Keystore(first, url=meta_url).close()
    AuditLog(first, url=meta_url)
    shutil.copytree(DataDir(first).keys, DataDir(second).keys)  # one audit chain's key
    a, b = Node(first, shared_dir, meta_url), Node(second, shared_dir, meta_url)
    for node in (a, b):  # rita, otto, ivy and cora have events in both warehouses
        node.send(*(ev(f"u-{who}", None) for who in ("rita", "otto", "ivy", "cora")))
    yield a, b, SharedFlags(shared_dir, meta_url)
    a.close()
    b.close()


def person(node: Node, who: str) -> int:
    """The person of a raw id in the node's warehouse, as its merges resolve it."""
    got = node.wh.query("SELECT coalesce(o.person_id, i.person_id) FROM person_ids i"
                        " LEFT JOIN person_overrides o ON o.old_person_id = i.person_id"
                        " WHERE i.id_key = ?", [HASHER.key(who)])[1]
    return int(got[0][0])


def test_a_restriction_through_one_hides_the_person_on_the_other(
        nodes: tuple[Node, Node, SharedFlags]) -> None:
    a, b, store = nodes
    rita = person(a, "u-rita")
    assert rita == person(b, "u-rita")  # one person in both (shared identities)
    everyone = b.sql_persons()
    assert rita in everyone and len(everyone) == 4 and b.trend_persons() == 4
    out = a.rights.flag_keys([HASHER.key("u-rita")], "restriction", "test")
    assert out == {"type": "restriction", "persons": 1}
    assert store.flagged([rita], "restricted") == {rita}
    # the other warehouse: no refresh asked for; its next query brings the mirror up to date
    assert b.sql_persons() == everyone - {rita}
    assert b.operator_persons() == everyone - {rita}
    assert b.trend_persons() == 3
    assert a.operator_persons() == everyone - {rita}
    # the access export on the other says so too
    assert b.rights.access_keys([HASHER.key("u-rita")], {}, "test")["restricted"] is True
    lifted = b.rights.flag_keys([HASHER.key("u-rita")], "restriction", "test", lift=True)
    assert lifted["flags_removed"] == 1
    assert a.sql_persons() == everyone and a.trend_persons() == 4
    assert b.operator_persons() == everyone
    assert local(a.wh) == local(b.wh) == shared(store) == set()


def test_a_person_only_the_other_warehouse_holds_is_found_through_the_shared_ids(
        nodes: tuple[Node, Node, SharedFlags]) -> None:
    a, b, store = nodes
    b.send(ev("u-vera", None))  # vera's events reach B only
    vera = person(b, "u-vera")
    assert a.wh.query("SELECT count(*) FROM person_ids")[1] == [(4,)]  # A never saw her
    out = a.rights.flag_keys([HASHER.key("u-vera")], "restriction", "test")
    assert out == {"type": "restriction", "persons": 1}
    assert vera not in b.operator_persons() and vera not in b.sql_persons()
    receipt = a.rights.erase(["u-vera"], [], "test")
    assert receipt["removed"]["shared_flags"] == 1 and shared(store) == set()


def test_an_objection_through_one_leaves_the_others_profiling_only(
        nodes: tuple[Node, Node, SharedFlags]) -> None:
    a, b, store = nodes
    assert b.trend_persons(cohort=1) == 4
    a.rights.flag_keys([HASHER.key("u-otto")], "objection", "test")
    otto = person(a, "u-otto")
    assert store.flagged([otto], "objected") == {otto}
    assert b.trend_persons(cohort=1) == 3  # a behavioural cohort is profiling: without him
    assert b.trend_persons() == 4  # plain analytics still count him
    assert otto in b.sql_persons()
    a.rights.flag_keys([HASHER.key("u-otto")], "objection", "test", lift=True)
    assert b.trend_persons(cohort=1) == 4


def test_a_merge_on_the_other_carries_the_restriction(
        nodes: tuple[Node, Node, SharedFlags]) -> None:
    a, b, store = nodes
    a.send(ev(None, "a-ivy"), ev(None, "a-ivy"))  # ivy browses anonymously, seen by A
    anon = person(a, "a-ivy")
    a.rights.flag_keys([HASHER.key("a-ivy")], "restriction", "test")
    ivy = person(b, "u-ivy")
    before = b.operator_persons()
    assert ivy in before and anon != ivy
    # B's processor sees ivy log in on that device: the anonymous person merges into hers
    b.send(ev("u-ivy", "a-ivy", typ="identify"))
    survivor = person(b, "a-ivy")
    assert survivor == ivy
    assert store.flagged([ivy], "restricted") == {ivy}
    assert ivy not in b.operator_persons() and ivy not in b.sql_persons()
    assert ivy not in a.operator_persons()
    assert local(a.wh) == local(b.wh) == shared(store)


def test_an_erasure_removes_the_flag_rows_from_the_shared_store(
        nodes: tuple[Node, Node, SharedFlags]) -> None:
    a, b, store = nodes
    rita, cora = person(a, "u-rita"), person(a, "u-cora")
    a.rights.flag_keys([HASHER.key("u-rita")], "restriction", "test")
    a.rights.flag_keys([HASHER.key("u-rita")], "objection", "test")
    b.rights.flag_keys([HASHER.key("u-cora")], "objection", "test")
    assert {p for p, _, _ in shared(store)} == {rita, cora}
    receipt = a.rights.erase(["u-rita"], [], "test")
    assert receipt["removed"]["shared_flags"] == 2
    # every row of the shared table: none is rita's any more; cora's stays
    rows = store._db.fetchall("SELECT * FROM person_flags")
    assert rows and [r for r in rows if int(r[0]) == rita] == []
    assert {(int(r[0]), str(r[1])) for r in rows} == {(cora, "objected")}
    assert local(b.wh) != shared(store)  # not refreshed yet: B has not read since
    assert rita not in a.operator_persons()  # her events are gone from A
    b.wh.fresh_flags()  # (B still holds hers: an erasure reaches the warehouse it ran on)
    assert local(a.wh) == local(b.wh) == shared(store)
