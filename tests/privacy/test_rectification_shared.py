"""Rectification (Art. 16) with several processors (``AAP_META_URL``, publishing on).

Two processors, each with its own data dir, log, warehouse and publisher (wired as the
core wires them: tests/privacy/test_erasure_wide.py), share the identities, the list of
live files and the tier store. Rita's events reach both (her two devices' streams in two
partitions), each holding her traits; both publish. Her plan is rectified through A.
Then the reader over the list (a query node's view) and B's own queries show the
rectified plan, whatever B does next: an unrelated event of hers, a plain publishing
turn, a chunk it built before it learned of the rectification, a stop. A trait that
arrives in an event after the rectification still wins over it, as in one processor.
Runs on both engines of the shared state (PostgreSQL: marked ``slow``)."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest

from aap.datadir import DataDir
from aap.privacy import exports
from aap.privacy.audit import AuditLog
from aap.privacy.keystore import Keystore
from aap.privacy.rights import Rights
from aap.store import rectifications
from aap.store.meta import open_meta
from aap.store.rectifications import SharedRectifications
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Chunk, Warehouse
from tests.privacy.test_erasure_wide import Node as ErasureNode
from tests.privacy.test_erasure_wide import feed, key
from tests.process.test_processor import ev
from tests.process.test_shared_identities import HASHER
from tests.store.test_publish_tables import files_with

TRAITS = "SELECT CAST(traits AS VARCHAR) FROM persons WHERE person_id = ?"
OLD = "old-plan-3c1f"
"""Rita's plan before it is rectified: no published file holds it afterwards."""


class Node(ErasureNode):
    """One processor as the core wires it, its warehouse applying the shared record of
    rectifications (from its start-up on)."""

    def open(self) -> None:
        super().open()
        rectifications.mirror(self.wh, SharedRectifications(self.tmp / "meta", self.url))
        self.pub.recover()


def reader(tmp: Path, meta_url: str) -> Warehouse:
    """A warehouse with no rows of its own over the shared list: a query node's view."""
    return Warehouse(tmp / "reader", tiers=TierStore(TierConfig(str(tmp / "tiers"))),
                     shared_list=open_meta(tmp / "meta" / "tiers.db", meta_url))


def traits(wh: Warehouse, person: int) -> dict[str, Any]:
    rows = wh.query(TRAITS, [person])[1]
    assert len(rows) == 1, rows
    return dict(json.loads(rows[0][0]))


def rita(i: int, **kw: Any) -> Any:
    """Rita logged in on her device ``i % 2`` (A's or B's partition)."""
    return ev(i, user_id="u-rita", anonymous_id=f"rita-{i % 2}", **kw)


@pytest.fixture
def nodes(tmp_path: Path, meta_url: str) -> Any:
    (tmp_path / "meta").mkdir()
    (tmp_path / "logs").mkdir()
    Keystore(tmp_path / "a", url=meta_url).close()  # one master key and audit key
    AuditLog(tmp_path / "a", url=meta_url)  # (a cluster's processors share them)
    shutil.copytree(DataDir(tmp_path / "a").keys, DataDir(tmp_path / "b").keys)
    a, b = Node(tmp_path, "a", meta_url), Node(tmp_path, "b", meta_url)
    rights = Rights(a.data, a.wh, a.keystore, HASHER, AuditLog(a.data, url=meta_url))
    rights.identities = a.identities
    # Rita on both, with her plan and one trait each; Bo on B only
    feed(a, [rita(10, type="identify", event=None, traits={"plan": OLD, "lang": "fr"})])
    feed(b, [rita(11, type="identify", event=None, traits={"plan": OLD, "size": "m"}),
             ev(12, user_id="u-bo", anonymous_id="bo", type="identify", event=None,
                traits={"plan": "free"})])
    a.pub.publish_once()
    b.pub.publish_once()
    rd = reader(tmp_path, meta_url)
    yield a, b, rights, rd
    rd.close()
    for node in (a, b):
        node.close()


def person(node: Node, raw: str) -> int:
    got = node.identities.persons_of([key(raw)])
    return got[key(raw)]


@pytest.mark.parametrize("then", ["event", "chunk", "stopped"])
def test_a_rectification_through_one_processor_reaches_the_others_profile(
        nodes: Any, then: str, tmp_path: Path) -> None:
    a, b, rights, rd = nodes
    p = person(a, "u-rita")
    assert traits(rd, p) == {"plan": OLD, "lang": "fr", "size": "m"}
    assert files_with(str(tmp_path / "tiers"), OLD.encode())
    if then == "chunk":
        # a chunk B built before the rectification reached it, written after B applied
        # it: its events came before the rectification, which wins over them
        real = b.wh.write
        done: list[dict[str, Any]] = []

        def write(chunk: Chunk) -> None:
            if "m20" in chunk.events.column("message_id").to_pylist() and not done:
                done.append(rights.rectify_keys([key("u-rita")], {"plan": "pro"}, "test"))
                with b.wh.write_lock:
                    b.pub.settle()  # B applies the record (as before its next batch)
            real(chunk)

        b.wh.write = write  # type: ignore[method-assign]
        feed(b, [rita(21, type="identify", event=None, traits={"plan": "stale"},
                      message_id="m20")])
        assert done
    elif then == "stopped":  # B is stopped meanwhile; started again, it just publishes
        b.close()
        rights.rectify_keys([key("u-rita")], {"plan": "pro"}, "test")
        assert traits(rd, p)["plan"] == "pro"  # A rewrote B's published row at once
        b.open()
    else:
        out = rights.rectify_keys([key("u-rita")], {"plan": "pro"}, "test")
        assert out["persons"] == 1 and out["traits"] == ["plan"]
        # an unrelated event of hers reaches B: B publishes her again
        feed(b, [rita(31, properties={"note": "later"})])
    a.pub.publish_once()
    b.pub.publish_once()
    want = {"plan": "pro", "lang": "fr", "size": "m"}
    assert traits(rd, p) == want
    assert traits(b.wh, p)["plan"] == "pro"  # B's own queries (its local row wins there)
    assert traits(a.wh, p)["plan"] == "pro"
    assert traits(rd, person(b, "u-bo")) == {"plan": "free"}  # nobody else's
    # the old value is in no published file: each writer's rows of before were rewritten
    assert files_with(str(tmp_path / "tiers"), OLD.encode()) == []


def test_a_trait_sent_after_the_rectification_wins_over_it(nodes: Any) -> None:
    a, b, rights, rd = nodes
    p = person(a, "u-rita")
    rights.rectify_keys([key("u-rita")], {"plan": "pro", "size": None}, "test")
    # B's next chunk reads the record: the patch goes first, then the chunk's trait
    feed(b, [rita(41, type="identify", event=None, traits={"plan": "team"})])
    assert traits(b.wh, p) == {"plan": "team"}
    b.pub.publish_once()  # its rows listed before the chunk get the patch; the new not
    a.pub.publish_once()
    assert traits(rd, p) == {"plan": "team", "lang": "fr"}
    assert traits(b.wh, p) == {"plan": "team"}
    assert traits(a.wh, p) == {"plan": "pro", "lang": "fr"}


def test_a_person_only_the_other_processor_holds_is_rectified_and_erased(
        nodes: Any, meta_url: str) -> None:
    """Bo's events reach B only: a rectification through A finds him in the shared
    identities (his plan in B's profile, his new email sealed in the keystore, which B's
    access export shows: on PostgreSQL the keystore is shared, on SQLite the two nodes
    are given one here); an erasure through A removes his rows from the record."""
    a, b, rights, rd = nodes
    bo = person(b, "u-bo")
    assert a.wh.query("SELECT count(*) FROM person_ids WHERE id_key = ?",  # A never met him
                      [key("u-bo")])[1] == [(0,)]
    shared_keys = b.keystore if meta_url else a.keystore
    shared_keys.keys_for([key("u-bo"), key("bo")])  # the collector sealed his ids
    out = rights.rectify_keys([key("u-bo")], {"plan": "pro", "email": "bo@new.example"}, "t")
    assert (out["persons"], out["traits"], out["personal_traits_kept"]) == (1, ["plan"], 1)
    b.pub.publish_once()
    assert traits(rd, bo) == traits(b.wh, bo) == {"plan": "pro"}
    on_b = Rights(b.data, b.wh, shared_keys, HASHER, AuditLog(b.data, url=meta_url))
    on_b.identities = b.identities
    summary = on_b.access_keys([key("u-bo")], {"userIds": ["u-bo"]}, "test")
    with zipfile.ZipFile(io.BytesIO(exports.read(shared_keys, Path(summary["path"])))) as z:
        assert json.loads(z.read("personal_traits.json")) == {"email": "bo@new.example"}
        assert json.loads(json.loads(z.read("profile.json"))[0]["traits"]) == {"plan": "pro"}
    record = SharedRectifications(a.data.parent / "meta", meta_url)
    assert [r.persons for r in record.since(0)] == [frozenset({bo})]
    receipt = rights.erase_keys([key("u-bo")], {"userIds": 1}, "test")
    assert receipt["removed"]["shared_rectifications"] == 1
    assert record.since(0) == []
    record.close()
