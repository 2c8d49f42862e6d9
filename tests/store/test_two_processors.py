"""Two processors at once on one shared list and one tier store (``aap cluster up
--processors 2``): each has its own warehouse and runs the tiering job (batch files
folded per day, warm months compacted to cold, cold months dropped, the published
tables folded, the trash emptied) and retention (:func:`aap.privacy.removal.expire`) on
the same list at the same time. Whatever the interleaving, a query on either warehouse
reads every row written and not expired exactly once, expired rows are gone, every
listed file is in the store, no file is left on the store unlisted and out of the trash,
and no job raises or reports a failed unit: a file another processor moved meanwhile
(:class:`Moved`) is the next run's. (Only a retention run whose files kept moving
through all its attempts raises :class:`Moved`, having changed nothing: the tiering
thread logs it, and the next run does it.)"""

from __future__ import annotations

import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aap.privacy import removal
from aap.store import published, rewrite, tiering
from aap.store.filelist import EVENT_TIERS, Moved
from aap.store.meta import open_meta
from aap.store.publish import Publisher
from aap.store.schema import EVENT_ARROW_SCHEMA
from aap.store.tiering import TierPolicy
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Chunk, Warehouse
from tests.conftest import examples
from tests.store.publish_workers import events
from tests.store.test_publish import files_on_disk

DAYS = [datetime(2026, 1, 12, 9), datetime(2026, 1, 25, 9), datetime(2026, 2, 20, 9),
        datetime(2026, 3, 3, 9)]
"""The days events fall on: two in January, one in February, one in March."""
COLD_BEFORE = date(2026, 3, 1)
"""Warm days before this go cold (January and February)."""
DROP_BEFORE = "2026-02"
"""Cold archives of months before this are dropped (January's)."""
TODAY = date(2026, 4, 20)
POLICY = TierPolicy(hot_days=7, warm_days=(TODAY - COLD_BEFORE).days,
                    cold_days=(TODAY - date(2026, 2, 19)).days, grace=timedelta(0))
"""What :func:`run_tiering` does on ``TODAY``: the same limits as above."""
EXPIRIES = [(datetime(2026, 1, 15), datetime(2026, 1, 30)),
            (datetime(2026, 1, 20), datetime(2026, 2, 10)),
            (datetime(2026, 2, 1), datetime(2026, 2, 25))]
"""Retention runs: (every event before this goes, ``ads`` goes off events before this)."""
PURPOSES = [["analytics", "ads"], ["ads"], ["analytics"]]
"""An event's purposes, by its number: ``ads`` alone goes with the purpose."""
GRACE = timedelta(0)
"""Folded and dropped files leave the store at the next emptying of the trash (the
harshest case: a reader of a file listed a moment ago may find it gone)."""
PERSONS = {"a": 1, "b": 101}
"""Each processor's persons (7 from this number on)."""


def chunk(who: str, n: int, tag: str, shift: int, position: int) -> Chunk:
    """``n`` events of processor ``who`` over :data:`DAYS`, with their persons and an
    order for every third event."""
    base = PERSONS[who]
    t = events(n, tag)
    days = [DAYS[(i + shift) % len(DAYS)] + timedelta(minutes=i) for i in range(n)]
    t = t.set_column(t.schema.get_field_index("timestamp"), "timestamp",
                     pa.array(days, t.schema.field("timestamp").type))
    t = t.set_column(t.schema.get_field_index("received_at"), "received_at",
                     pa.array(days, t.schema.field("received_at").type))
    t = t.set_column(t.schema.get_field_index("person_id"), "person_id",
                     pa.array([base + i % 7 for i in range(n)], pa.int64()))
    t = t.set_column(t.schema.get_field_index("purposes"), "purposes",
                     pa.array([PURPOSES[i % 3] for i in range(n)],
                              t.schema.field("purposes").type))
    persons = [(base + p, DAYS[0], DAYS[-1], False, None) for p in range(min(n, 7))]
    orders = [(f"o-{tag}-{i}", f"{tag}-{i}", "src", base + i % 7, "s", days[i], 1.0, "EUR", 1)
              for i in range(0, n, 3)]
    return Chunk(events=t, position=position, next_person=1000, persons=persons,
                 orders=orders)


@dataclass
class Row:
    ts: datetime
    purposes: tuple[str, ...]
    who: str


@dataclass
class Model:
    """What should be stored: every row written, less what retention and the cold drop
    took."""

    rows: dict[str, Row] = field(default_factory=dict)
    dropped: bool = False
    """A drop of January's archives ran: January's rows may be gone (those that were
    cold then)."""

    def write(self, who: str, c: Chunk) -> None:
        for m, ts, p in zip(c.events.column("message_id").to_pylist(),
                            c.events.column("timestamp").to_pylist(),
                            c.events.column("purposes").to_pylist(), strict=True):
            self.rows[m] = Row(ts, tuple(p), who)

    def expire(self, level: int) -> None:
        everything, ads = EXPIRIES[level]
        for m, r in list(self.rows.items()):
            purposes = tuple(p for p in r.purposes if not (p == "ads" and r.ts < ads))
            if r.ts < everything or not purposes:
                del self.rows[m]
            else:
                r.purposes = purposes

    def drop_all(self) -> None:
        """After every January day went cold and January was dropped."""
        for m, r in list(self.rows.items()):
            if r.ts.isoformat()[:7] < DROP_BEFORE:
                del self.rows[m]

    def check(self, seen: Counter[tuple[str, tuple[str, ...]]], where: str) -> None:
        doubled = [k for k, n in seen.items() if n > 1]
        assert not doubled, f"{where}: rows read twice: {doubled[:5]}"
        got = dict(seen)
        for m, r in self.rows.items():
            maybe = self.dropped and r.ts.isoformat()[:7] < DROP_BEFORE
            if (m, r.purposes) not in got and not maybe:
                assert m not in {k[0] for k in got}, f"{where}: {m} has purposes" \
                    f" {[k[1] for k in got if k[0] == m]}, not {r.purposes}"
                raise AssertionError(f"{where}: {m} ({r}) is lost")
        extra = [k for k in got if k[0] not in self.rows or self.rows[k[0]].purposes != k[1]]
        assert not extra, f"{where}: rows that should be gone: {extra[:5]}"


@dataclass
class Pair:
    """Two processors' warehouses over one shared list and one tier store (each with its
    own :class:`TierStore` object, as two processes have)."""

    wh: dict[str, Warehouse]
    pub: dict[str, Publisher]
    position: dict[str, int] = field(default_factory=lambda: {"a": 0, "b": 0})

    def close(self) -> None:
        for wh in self.wh.values():
            wh.close()


def open_pair(tmp: Path, meta_url: str) -> Pair:
    whs = {who: Warehouse(tmp / f"wh-{who}", tiers=TierStore(TierConfig(str(tmp / "tiers"))),
                          shared_list=open_meta(tmp / "tiers.db", meta_url))
           for who in ("a", "b")}
    return Pair(whs, {who: Publisher(wh, 1) for who, wh in whs.items()})


def write(pair: Pair, model: Model, who: str, n: int, tag: str, shift: int) -> None:
    pair.position[who] += 1
    c = chunk(who, n, tag, shift, pair.position[who])
    pair.wh[who].write(c)
    pair.pub[who].publish_once()
    model.write(who, c)


def expire(wh: Warehouse, level: int) -> dict[str, Any]:
    everything, ads = EXPIRIES[level]
    return removal.expire(wh, {"ads": {t: ads for t in ("hot", "warm", "cold")}}, everything)


JOBS: dict[str, Callable[[Warehouse, int], object]] = {
    "fold": lambda wh, arg: tiering.compact_batches(wh, DAYS[arg % len(DAYS)].date()
                                                    .isoformat(), GRACE),
    "cold": lambda wh, arg: tiering.compact_to_cold(wh, ["2026-01", "2026-02"][arg % 2],
                                                    COLD_BEFORE, GRACE),
    "drop": lambda wh, arg: tiering.drop_cold_before(wh, DROP_BEFORE, GRACE),
    "expire": lambda wh, arg: expire(wh, arg % len(EXPIRIES)),
    "tables": lambda wh, arg: published.compact(wh, published.KINDS[arg % 2], GRACE,
                                                at_least=2),
    "trash": lambda wh, arg: tiering.empty_trash(wh),
}
"""The tiering job's units and retention, each as one call on a processor's warehouse."""


def run_job(pair: Pair, model: Model, who: str, job: str, arg: int) -> None:
    JOBS[job](pair.wh[who], arg)
    if job == "expire":
        model.expire(arg % len(EXPIRIES))
    elif job == "drop":
        model.dropped = True


HOOKS = (("files", ("files", "swap", "due", "trash", "forget")),
         ("tiers", ("read", "read_table", "delete", "write_batches", "scan")))
"""The calls of a job on the shared list and the tier store another job may come
between (a fold of local files reads them as it writes the new one: ``write_batches``)."""


@contextmanager
def meanwhile(wh: Warehouse, point: int, other: Callable[[], None],
              only: tuple[str, ...] = ()) -> Iterator[list[bool]]:
    """``other`` runs once, just before the ``point``-th call (from 0) of ``wh``'s jobs on
    the shared list or the tier store (``only``: of these methods), or at the end if
    they make fewer."""
    calls = [0]
    ran: list[bool] = []
    lock = threading.Lock()

    def hooked(fn: Callable[..., Any], counted: bool) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                now = counted and not ran and calls[0] >= point
                calls[0] += counted
                if now:
                    ran.append(True)
            if now:
                other()
            return fn(*args, **kwargs)
        return call

    owners = [(getattr(wh, owner), names) for owner, names in HOOKS]
    for obj, names in owners:
        for name in names:
            setattr(obj, name, hooked(getattr(obj, name), not only or name in only))
    try:
        yield ran
    finally:
        for obj, names in owners:
            for name in names:
                delattr(obj, name)
        if not ran:
            other()


READ = ("SELECT 'event', message_id, purposes FROM events_all"
        " UNION ALL SELECT 'order', order_id, NULL FROM orders")


def check(pair: Pair, model: Model) -> None:
    """Both warehouses read the model's rows once each (and each order at most once); the
    listed files hold them once each, are all in the store, and the store holds no file
    neither listed nor in the trash."""
    for who, wh in pair.wh.items():
        rows = wh.query(READ)[1]
        model.check(Counter((m, tuple(p)) for kind, m, p in rows if kind == "event"),
                    f"a query on {who}")
        orders = Counter(m for kind, m, _ in rows if kind == "order")
        assert [k for k, n in orders.items() if n > 1] == [], f"orders read twice on {who}"
    wh = pair.wh["a"]
    live = wh.files.files()
    assert [f.path for f in live if not wh.tiers.exists(f.path)] == [], "listed, not stored"
    listed = Counter[tuple[str, tuple[str, ...]]]()
    for f in live:
        if f.tier in EVENT_TIERS:
            t = wh.tiers.read([f.path], ["message_id", "purposes"])
            listed.update(zip(t.column("message_id").to_pylist(),
                              map(tuple, t.column("purposes").to_pylist()), strict=True))
    model.check(listed, "the listed files")
    kept = {f.path for f in live} | set(wh.files.trash())
    assert [p for p in files_on_disk(wh.tiers) if p not in kept] == [], \
        "files on the store neither listed nor in the trash"


def settle(pair: Pair, model: Model) -> None:
    """The next runs, one processor after the other (retention at the latest cutoffs,
    then the tiering job): each runs whole, nothing skipped; every January day goes cold
    and January's archives are dropped."""
    for who in ("a", "b"):
        expire(pair.wh[who], len(EXPIRIES) - 1)
        moved = tiering.run_tiering(pair.wh[who], POLICY, today=TODAY)
        assert moved["skipped"] == 0, moved
    model.expire(len(EXPIRIES) - 1)
    model.drop_all()
    model.dropped = False


def one_write_each(tmp: Path, meta_url: str = "") -> tuple[Pair, Model]:
    """Two processors that wrote and published 8 events each (a file a day each, and
    one per table)."""
    pair, model = open_pair(tmp, meta_url), Model()
    for who in ("a", "b"):
        write(pair, model, who, 8, f"{who}0", 0)
    return pair, model


# -- one job of a processor between two calls of the other's --

RACES = [
    ("cold", 0, [("fold", 0)], 2, ()),  # a January day folded before A's swap
    ("cold", 0, [("cold", 0)], 2, ()),  # both compact January
    ("drop", 0, [("drop", 0)], 1, ()),  # both drop January's archive
    ("drop", 0, [("expire", 1)], 1, ()),  # B's retention rewrites the archive A drops
    ("fold", 0, [("expire", 1)], 1, ()),  # B's retention deletes a file A is to read
    ("cold", 1, [("expire", 2)], 1, ()),
    ("tables", 0, [("expire", 1)], 1, ()),
    ("expire", 2, [("fold", 0), ("trash", 0)], 1, ()),  # folded and deleted, A to read it
    ("expire", 1, [("tables", 0)], 1, ("swap",)),  # persons folded before A's table swap
    ("trash", 0, [("trash", 0)], 1, ()),  # both delete the same files
    ("trash", 0, [("trash", 0)], 2, ()),  # B's between A's delete and A's forget
]
"""(A's job and its argument, B's jobs, the call of A's they come before, the calls
counted (all if empty))."""


@pytest.mark.parametrize("race", RACES, ids=lambda r: f"{r[0]}{r[1]}:"
                         f"{'+'.join(f'{j}{a}' for j, a in r[2])}@{r[3]}")
def test_a_job_meets_the_other_processors_meanwhile(tmp_path: Path, race: tuple[Any, ...],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A's job runs whole and raises nothing when B's comes between two of its calls (a
    file moved meanwhile is left for the next run); the rows are right after it, and
    after the next runs of both."""
    monkeypatch.setattr(rewrite, "REWRITE_THREADS", 1)  # A's calls in a fixed order
    job, arg, theirs, point, only = race
    pair, model = one_write_each(tmp_path)
    try:
        if job in ("drop", "trash"):  # January's archive, and files in the trash
            run_job(pair, model, "a", "cold", 0)
        with meanwhile(pair.wh["a"], point, lambda: [run_job(pair, model, "b", *j)
                                                     for j in theirs], only) as ran:
            run_job(pair, model, "a", job, arg)
        assert ran
        check(pair, model)
        settle(pair, model)
        check(pair, model)
    finally:
        pair.close()


def test_a_profile_sweep_meets_files_the_other_processor_moved(tmp_path: Path) -> None:
    """Retention drops the profiles of persons with no event left after reading every
    listed file: files B folded and deleted between A's reading of the list and of the
    files make A read the list again, not keep the profile as if a file were lost."""
    pair, model = one_write_each(tmp_path)
    a = pair.wh["a"]
    try:
        a.write(Chunk(events=EVENT_ARROW_SCHEMA.empty_table(), position=50, next_person=1000,
                      persons=[(50, DAYS[0], DAYS[0], False, None)]))  # no event of 50
        with meanwhile(a, 0, lambda: [run_job(pair, model, "b", j, 0)
                                      for j in ("fold", "trash")], only=("read",)) as ran:
            assert removal.drop_persons_without_events(a, {1, 50})[0] == 1
        assert ran
        assert a.con.execute("SELECT person_id FROM persons WHERE person_id IN (1, 50)"
                             ).fetchall() == [(1,)]
        check(pair, model)
    finally:
        pair.close()


# -- any interleaving --

JOB = st.tuples(st.sampled_from(sorted(JOBS)), st.integers(0, 5))
MEANWHILE = st.tuples(st.just("meanwhile"), st.sampled_from("ab"),
                      st.tuples(JOB, st.lists(JOB, min_size=1, max_size=3), st.integers(0, 6)))
OPS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.sampled_from("ab"), st.integers(0, 5)),
    st.tuples(st.just("job"), st.sampled_from("ab"), JOB), MEANWHILE, MEANWHILE),
    min_size=1, max_size=10)
"""After one write on each: writes, jobs, and jobs with the other's in between (twice
as likely: the races)."""


def step(pair: Pair, model: Model, k: int, op: tuple[str, str, Any]) -> None:
    kind, who, arg = op
    other = "b" if who == "a" else "a"
    if kind == "write":
        write(pair, model, who, 4 + 2 * arg, f"{who}w{k}", arg)
    elif kind == "job":
        run_job(pair, model, who, *arg)
    else:
        (job, job_arg), others, point = arg
        with meanwhile(pair.wh[who], point,
                       lambda: [run_job(pair, model, other, *o) for o in others]):
            run_job(pair, model, who, job, job_arg)


@pytest.mark.slow  # two warehouses on disk per example: ~2 s each on a busy machine
@settings(max_examples=examples(12), deadline=None)
@given(ops=OPS)
def test_two_processors_interleaved_keep_each_row_once(tmp_path_factory: pytest.TempPathFactory,
                                                        ops: list[tuple[str, str, Any]]
                                                        ) -> None:
    """Writes on either processor, and the tiering job's units and retention on either,
    some runs of one processor's coming between two calls (on the list or the store) of
    a run of the other's: after each, both read every row once, and no file is lost or
    left behind; then the next runs of both leave exactly the rows not expired and not
    in the dropped month."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rewrite, "REWRITE_THREADS", 1)  # the calls in a fixed order
        pair, model = one_write_each(tmp_path_factory.mktemp("two"))
        try:
            for k, op in enumerate(ops):
                step(pair, model, k, op)
                check(pair, model)
            settle(pair, model)
            check(pair, model)
        finally:
            pair.close()


# -- at once, in two threads --

ROUNDS = 6


@pytest.mark.slow  # ~5 s an engine (15 on a busy machine): both processors in rounds
def test_two_processors_at_once_keep_each_row_once(tmp_path: Path, meta_url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each processor, in a thread of its own, writes and publishes a chunk, runs the
    tiering job (with the published tables folded from 3 files on) and retention, again
    and again, while the other does the same on the same list: no unit is skipped as
    failed and nothing raises, but a retention run whose files kept moving through all
    its attempts (:class:`Moved`, nothing changed: the tiering thread logs it and the
    next run does it); then the next runs of both leave exactly the rows not expired and
    not in the dropped month, each read once on either processor."""
    monkeypatch.setattr(published, "COMPACT_FILES", 3)
    pair, model = one_write_each(tmp_path, meta_url)
    lock = threading.Lock()
    errors: list[BaseException] = []
    skipped: list[tuple[str, int, dict[str, Any]]] = []
    start = threading.Barrier(2)

    def retention(wh: Warehouse, r: int) -> dict[str, Any]:
        try:
            return expire(wh, r % len(EXPIRIES))
        except Moved:
            return {}

    def processor(who: str) -> None:
        wh = pair.wh[who]
        try:
            start.wait()
            for r in range(ROUNDS):
                c = chunk(who, 6, f"{who}t{r}", r, 100 + r)
                wh.write(c)
                pair.pub[who].publish_once()
                with lock:
                    model.write(who, c)
                for done in (tiering.run_tiering(wh, POLICY, today=TODAY), retention(wh, r)):
                    if done.get("skipped") or done.get("files_skipped"):
                        skipped.append((who, r, done))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=processor, args=(who,)) for who in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, "".join(traceback.format_exception(errors[0]))
    assert skipped == []  # a unit moved meanwhile is not a failure: it is the next run's
    settle(pair, model)
    check(pair, model)
    pair.close()


def _listed_orders(wh: Warehouse) -> set[str]:
    paths = [f.path for f in wh.files.files() if f.tier == "orders"]
    if not paths:
        return set()
    t = wh.tiers.read_table(paths)
    return {o for o, gone in zip(t.column("order_id").to_pylist(),
                                 t.column("_gone").to_pylist(), strict=True) if not gone}


def test_retention_on_one_processor_keeps_the_other_processors_published_orders(
        tmp_path: Path) -> None:
    """One person, two processors (her two devices in two partitions): A holds her old
    events, which retention erases; B holds a recent event and the order made from it.
    A's retention rewrites the published tables of the persons whose events it erased:
    B's published order of a kept event stays listed (it used to be dropped with every
    writer's rows of the person, missing on every query node until B published it
    again), and so do B's published profile of her; A's own rows of her are rewritten."""
    pair = open_pair(tmp_path, "")
    try:
        person = 500
        for who, day, tag in (("a", DAYS[0], "old"), ("b", DAYS[3], "new")):
            c = chunk(who, 3, tag, 0, 1)
            c.events = c.events.set_column(
                c.events.schema.get_field_index("person_id"), "person_id",
                pa.array([person] * 3, pa.int64()))
            c.events = c.events.set_column(
                c.events.schema.get_field_index("timestamp"), "timestamp",
                pa.array([day] * 3, c.events.schema.field("timestamp").type))
            c.persons = [(person, day, day, False, None)]
            c.orders = [(f"o-{tag}", f"{tag}-0", "src", person, "s", day, 1.0, "EUR", 1)]
            if who == "b":  # and an order of an old event of hers, which A's run erases
                ts = c.events.column("timestamp").to_pylist()
                c.events = c.events.set_column(
                    c.events.schema.get_field_index("timestamp"), "timestamp",
                    pa.array([DAYS[0], *ts[1:]], c.events.schema.field("timestamp").type))
                c.orders.append(("o-b-old", "new-0", "src", person, "s", DAYS[0], 1.0,
                                 "EUR", 1))
                c.orders[0] = ("o-new", "new-1", *c.orders[0][2:])
            pair.wh[who].write(c)
            pair.pub[who].publish_once()
        assert _listed_orders(pair.wh["a"]) == {"o-old", "o-new", "o-b-old"}
        out = expire(pair.wh["a"], 0)  # every event before January 15th goes
        assert out["persons_erased"] == 0  # she still has B's recent events
        assert "o-new" in _listed_orders(pair.wh["a"])
        assert "o-old" not in _listed_orders(pair.wh["a"])
        persons = [f.path for f in pair.wh["a"].files.files() if f.tier == "persons"]
        writers = set(pair.wh["a"].tiers.read_table(persons).column("_writer").to_pylist())
        assert len(writers) == 2, writers  # B's profile of her is still published
        expire(pair.wh["b"], 0)  # B's own run: its order of an erased event goes
        assert _listed_orders(pair.wh["a"]) == {"o-new"}
    finally:
        pair.close()
