"""Erasure and access with identities shared by several processors (``AAP_META_URL``,
:mod:`aap.store.identities`): the erased person's links, merges and "identified" mark
leave the shared store too, including ids that only another processor's warehouse
knows, and those ids are suppressed like the others; an access request finds a person
whom only another processor knows. Runs on both engines of the shared state
(PostgreSQL: marked ``slow``)."""

from __future__ import annotations

from pathlib import Path

from aap.log.sqlite import SQLiteLog
from aap.privacy.audit import AuditLog
from aap.privacy.keystore import Keystore
from aap.privacy.rights import Rights
from aap.process.processor import Processor
from aap.store.identities import SharedIdentities
from aap.store.meta import open_meta
from aap.store.publish import Publisher
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse
from tests.process.test_processor import drain, ev
from tests.process.test_shared_identities import HASHER, append, by_message


def shared_rows(shared: Path, url: str) -> dict[str, list[tuple[int, ...]]]:
    """Every row of the shared identity tables."""
    db = open_meta(shared / "identities.db", url)
    try:
        return {t: sorted(tuple(int(v) for v in r) for r in db.fetchall(f"SELECT * FROM {t}"))
                for t in ("identity_ids", "identity_overrides", "identity_identified")}
    finally:
        db.close()


def test_erasure_reaches_the_shared_identities_and_ids_only_another_processor_knows(
        tmp_path: Path, meta_url: str) -> None:
    data = tmp_path / "data"  # the core that runs the erasure (keystore, audit, receipts)
    data.mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    keystore = Keystore(data, url=meta_url)
    log_a, log_b = SQLiteLog(tmp_path / "log-a"), SQLiteLog(tmp_path / "log-b")
    wh_a, wh_b = Warehouse(tmp_path / "wh-a"), Warehouse(tmp_path / "wh-b")

    def processor(log: SQLiteLog, wh: Warehouse) -> Processor:
        return Processor(log, wh, HASHER, chunk_records=1,
                         identities=SharedIdentities(shared, meta_url),
                         destroyed=keystore.refresh_destroyed)

    proc_a, proc_b = processor(log_a, wh_a), processor(log_b, wh_b)
    # A: alice browses on a0 and logs in there; B: she logs in on a9 (B merges a9 into
    # her person; A's warehouse never hears of a9). carol is someone else, on B.
    append(log_a, ev(1, anonymous_id="a0"))
    append(log_a, ev(2, type="identify", event=None, user_id="alice", anonymous_id="a0"))
    append(log_b, ev(3, anonymous_id="a9"), ev(4, anonymous_id="c1"))
    append(log_b, ev(5, type="identify", event=None, user_id="alice", anonymous_id="a9"),
           ev(6, type="identify", event=None, user_id="carol", anonymous_id="c1"))
    drain(proc_a)
    drain(proc_b)
    key = HASHER.key
    store = SharedIdentities(shared, meta_url)
    persons = store.persons_of([key(x) for x in ("a0", "a9", "alice", "c1", "carol")])
    alice, carol = persons[key("alice")], persons[key("carol")]
    assert persons[key("a0")] == persons[key("a9")] == alice != carol
    assert key("a9") not in dict(wh_a.query("SELECT id_key, person_id FROM person_ids")[1])
    before = shared_rows(shared, meta_url)

    rights = Rights(data, wh_a, keystore, HASHER, AuditLog(data, url=meta_url))
    rights.identities = store
    receipt = rights.erase_keys([key("a0")], {"anonymousIds": 1}, "test")

    assert receipt["identifiers_suppressed"] == 3  # a0, alice, and a9 from the shared store
    after = shared_rows(shared, meta_url)
    erased_persons = {p for p in before["identity_ids"] if p[0] in
                      {key("a0"), key("a9"), key("alice")}}
    gone = {k for k, _ in erased_persons} | {p for _, p in erased_persons}
    assert erased_persons and not any(set(r) & gone for rows in after.values() for r in rows)
    # carol is untouched
    assert sorted(r for r in after["identity_ids"] if r[1] == carol) == \
        sorted(r for r in before["identity_ids"] if r[1] == carol)
    assert (carol,) in after["identity_identified"]
    assert receipt["derived"]["shared_identity_rows"] == sum(map(len, before.values())) - \
        sum(map(len, after.values()))
    # a9 came back on B: suppressed (an erased subject), not a new person
    keystore.refresh_destroyed()
    append(log_b, ev(7, anonymous_id="a9"))
    drain(proc_b)
    assert "m7" not in by_message(wh_b)
    assert proc_b.dropped.get("erased_subject", 0) >= 1
    assert key("a9") not in store.persons_of([key("a9")])
    for p in (proc_a, proc_b):
        p.close()


def test_access_finds_a_person_whose_events_another_processor_holds(
        tmp_path: Path, meta_url: str) -> None:
    """With several processors each holds the links of the ids in its partitions: an
    access request run by processor A finds a person only B has met through the shared
    identities, and exports her events from the files B published (A found no person:
    the equivalence test with two processors exported none of a user's 7 events)."""
    data, shared = tmp_path / "data", tmp_path / "shared"
    data.mkdir()
    shared.mkdir()
    keystore = Keystore(data, url=meta_url)
    tiers = TierStore(TierConfig(str(tmp_path / "tiers")))
    wh_a, wh_b = (Warehouse(tmp_path / n, tiers=tiers,
                            shared_list=open_meta(tmp_path / "tiers.db", meta_url))
                  for n in ("wh-a", "wh-b"))
    log_b = SQLiteLog(tmp_path / "log-b")
    proc_b = Processor(log_b, wh_b, HASHER, chunk_records=1,
                       identities=SharedIdentities(shared, meta_url))
    append(log_b, ev(1, anonymous_id="a9"), ev(2, anonymous_id="a9"))
    append(log_b, ev(3, type="identify", event=None, user_id="alice", anonymous_id="a9"))
    drain(proc_b)
    Publisher(wh_b, 1).publish_once()
    assert wh_a.query("SELECT count(*) FROM events")[1] == [(3,)]  # A reads B's files
    assert wh_a.query("SELECT count(*) FROM person_ids")[1] == [(0,)]
    rights = Rights(data, wh_a, keystore, HASHER, AuditLog(data, url=meta_url))
    rights.identities = SharedIdentities(shared, meta_url)
    got = rights.access_keys([HASHER.key("alice")], {"userIds": ["alice"]}, "test")
    assert (got["persons"], got["events"]) == (1, 3), got
    proc_b.close()
