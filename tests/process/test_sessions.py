"""Sessions per device stream (:func:`aap.process.steps.sessions`): a stream is the keyed
anonymousId, else the keyed userId (the log's message key), and its sessions depend on its
own events only — not on a person's other devices, on the order the streams are read in,
on how the log is cut into chunks, on partitions, on restarts, or on when idle streams are
forgotten."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from aap.events import Event, encode_events
from aap.log.base import Append
from aap.log.keys import person_key, stream_keys
from aap.log.sqlite import SQLiteLog
from aap.privacy import removal
from aap.privacy.ids import IdHasher
from aap.process.identity import Identities
from aap.process.processor import Processor
from aap.process.steps import PRUNE_SLACK_MS, Batch, DedupIndex, State, sessions
from aap.store.migrations import VERSION_TABLE
from aap.store.warehouse import SCHEMA, Warehouse
from tests.conftest import examples

MIN_US, MIN_MS = 60_000_000, 60_000
T0_MS = 1_780_000_000_000
HASHER = IdHasher(b"k" * 32)

# -- the step alone, on random interleavings --


def _state() -> State:
    return State(identities=Identities(), hasher=HASHER, dedup=DedupIndex(), sessions={})


def _run(st: State, evs: list[dict[str, Any]], partitioned: bool) -> dict[str, str]:
    """The sessions step over ``evs`` (one chunk): message id → session id."""
    table = pa.table({
        "timestamp": pa.array([e["t"] for e in evs], pa.int64()).cast(pa.timestamp("us")),
        "received_ms": pa.array([e["r"] for e in evs], pa.int64()),
        "sdk_session": pa.array([e["sdk"] for e in evs], pa.string()),
        "message_id": pa.array([e["id"] for e in evs], pa.string())})
    b = Batch(table, partition=[e["p"] for e in evs] if partitioned else [])
    b.ids = ([e["user"] for e in evs], [e["anon"] for e in evs], [None] * len(evs))
    sessions(b, st)
    return dict(zip(table.column("message_id").to_pylist(), b.session_id, strict=True))


@st.composite
def _log(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[int], bool]:
    """Two or three streams interleaved in a random order, cut in random chunks. Times of
    receipt rise in log order (as collectors set them); each event's own time is some
    minutes before it was received, so late and out-of-order events occur."""
    n = draw(st.integers(2, 3))
    # stream 0 is a browser that logs in half way (anonymousId kept); stream 1 another
    # device of the same person; stream 2, when there, a server library (userId only)
    counts = [draw(st.integers(1, 12)) for _ in range(n)]
    order = draw(st.permutations([i for i, c in enumerate(counts) for _ in range(c)]))
    parts = [draw(st.integers(0, 2)) for _ in range(n)]
    r = T0_MS
    seen = [0] * n
    evs = []
    for i in order:
        r += draw(st.sampled_from([0, 1, 5, 20, 29, 31, 60, 95, 200])) * MIN_MS
        delay = draw(st.sampled_from([0, 0, 1, 25, 40, 70, 100])) * MIN_US
        k = seen[i]
        seen[i] += 1
        user = (1001 if (i == 0 and k >= counts[0] // 2) or i == 2 else None)
        anon = (11 + i) if i < 2 else None
        evs.append({"t": r * 1000 - delay, "r": r, "p": parts[i], "user": user, "anon": anon,
                    "id": f"m{i}-{k}", "stream": i,
                    "sdk": draw(st.sampled_from([None, None, None, None, f"sdk-{i}"]))})
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(evs) - 1)), max_size=4)))
    return evs, cuts, draw(st.booleans())


@given(_log())
@settings(max_examples=examples(400), deadline=None)
def test_interleaved_streams_get_the_sessions_each_stream_gets_alone(
        log: tuple[list[dict[str, Any]], list[int], bool]) -> None:
    evs, cuts, partitioned = log
    alone: dict[str, str] = {}
    for i in {e["stream"] for e in evs}:
        alone |= _run(_state(), [e for e in evs if e["stream"] == i], partitioned)
    together: dict[str, str] = {}
    st_ = _state()
    for a, b in zip([0, *cuts], [*cuts, len(evs)], strict=True):
        together |= _run(st_, evs[a:b], partitioned)
    assert together == alone
    # streams are apart: no session id is shared by two streams' events
    owner = {e["id"]: e["stream"] for e in evs}
    by_session: dict[str, set[int]] = {}
    for m, s in together.items():
        by_session.setdefault(s, set()).add(owner[m])
    assert all(len(v) == 1 for s, v in by_session.items() if not s.startswith("s:"))


def test_the_rule_inactivity_late_events_and_the_late_margin() -> None:
    st_ = _state()
    r = T0_MS

    def one(mid: str, t_min: float, r_min: float, sdk: str | None = None) -> str:
        return _run(st_, [{"t": int((r + r_min * MIN_MS) * 1000 + (t_min - r_min) * MIN_US),
                           "r": r + int(r_min * MIN_MS), "p": 0, "user": None, "anon": 7,
                           "id": mid, "sdk": sdk}], False)[mid]

    a = one("a", 0, 0)
    assert one("b", 29, 29) == a  # within 30 minutes
    assert one("c", 5, 40) == a  # a late event, within 30 minutes of the latest: goes on
    assert one("d", 58, 58) == a  # 29 minutes after b, the latest (c did not move it)
    assert one("e", 89, 89) != a  # 31 minutes: a new session
    e = one("e2", 90, 90)
    assert one("x", 91, 91, sdk="S") == "s:S"  # the SDK's id wins, and goes on
    assert one("y", 92, 92) == "s:S"
    # received more than inactivity + late (30 + 60 minutes) after the stream's latest
    # receipt: a new session, whatever its own time (4 minutes after y's)
    assert one("f", 96, 92 + 91) not in (e, "s:S")


def test_idle_streams_are_forgotten_per_partition() -> None:
    st_ = _state()
    base = {"user": None, "sdk": None}
    _run(st_, [{**base, "t": T0_MS * 1000, "r": T0_MS, "p": 0, "anon": 1, "id": "a"},
               {**base, "t": T0_MS * 1000, "r": T0_MS, "p": 1, "anon": 2, "id": "b"}], True)
    assert set(st_.sessions) == {1, 2}
    # partition 0 moves on by more than inactivity + late + slack; partition 1 does not
    later = T0_MS + 90 * MIN_MS + PRUNE_SLACK_MS + MIN_MS
    b = Batch(pa.table({"timestamp": pa.array([later * 1000], pa.timestamp("us")),
                        "received_ms": [later], "sdk_session": pa.array([None], pa.string()),
                        "message_id": ["c"]}), partition=[0])
    b.ids = ([None], [3], [None])
    sessions(b, st_)
    assert set(st_.sessions) == {2, 3} and b.pruned == [1]


def test_the_stream_is_the_log_message_key() -> None:
    ev = Event(type="track", message_id="m", source="s", received_at=T0, user_key=5,
               anonymous_key=9)
    assert person_key(ev) == b"9" and stream_keys([5, 5, None], [9, None, 9]) == [9, 5, 9]
    ev.anonymous_key = None
    assert person_key(ev) == b"5"


_KEY = st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1)


@given(user=_KEY, anon=_KEY)
def test_one_events_key_follows_the_rule_of_a_chunks_streams(user: int | None,
                                                              anon: int | None) -> None:
    """The collector's key of one event and the processor's streams of a chunk are one
    rule written twice (the collector's without lists): they agree on every pair."""
    ev = Event(type="track", message_id="m", source="s", received_at=T0, user_key=user,
               anonymous_key=anon)
    [stream] = stream_keys([user], [anon])
    assert person_key(ev) == (None if stream is None else str(stream).encode())


# -- the processor, on a real log and warehouse --

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)


def _ev(minute: float, anon: str | None, user: str | None = None, typ: str = "track",
        **kw: Any) -> Event:
    at = T0 + timedelta(minutes=minute)
    return Event(type=typ, event=None if typ == "identify" else "E",
                 message_id=str(uuid.uuid4()), anonymous_id=anon, user_id=user, source="s",
                 timestamp=at, received_at=kw.pop("received_at", at), **kw)


def _append(log: SQLiteLog, events: list[Event]) -> None:
    for e in events:  # one request per event: the log's order is the list's
        log.append([Append("s", 1, encode_events([e]))])


def _process(log: SQLiteLog, wh: Warehouse, **kw: Any) -> Processor:
    proc = Processor(log, wh, HASHER, chunk_records=kw.pop("chunk_records", 3), **kw)
    while proc.run_once():
        pass
    proc.close()
    return proc


def _sessions(wh: Warehouse) -> dict[str, str]:
    return dict(wh.query("SELECT message_id, session_id FROM events")[1])


def _devices() -> tuple[list[Event], list[Event]]:
    """Ana's phone and laptop, at the same time, both logged in."""
    phone = [_ev(m, "phone", "ana") for m in (0, 10, 20, 70, 80)]
    laptop = [_ev(m, "laptop", "ana") for m in (5, 15, 46, 50)]
    return phone, laptop


def test_two_devices_of_one_person_get_the_same_sessions_in_any_order(tmp_path: Path) -> None:
    phone, laptop = _devices()
    got = []
    for n, order in enumerate((phone + laptop, laptop + phone,
                               sorted(phone + laptop, key=lambda e: e.timestamp))):
        log, wh = SQLiteLog(tmp_path / f"log{n}"), Warehouse(tmp_path / f"wh{n}")
        _append(log, order)
        _process(log, wh)
        got.append(_sessions(wh))
        [(persons,)] = wh.query("SELECT count(DISTINCT person_id) FROM events")[1]
        assert persons == 1
    assert got[0] == got[1] == got[2]
    s = got[0]
    assert len({s[e.message_id] for e in phone}) == 2  # 20 → 70: 50 minutes apart
    assert len({s[e.message_id] for e in laptop}) == 2  # 15 → 46
    assert not {s[e.message_id] for e in phone} & {s[e.message_id] for e in laptop}


def test_a_login_goes_on_with_the_session(tmp_path: Path) -> None:
    log, wh = SQLiteLog(tmp_path / "log"), Warehouse(tmp_path / "wh")
    visit = [_ev(0, "a1"), _ev(2, "a1"), _ev(3, "a1", "bo", typ="identify"), _ev(4, "a1", "bo")]
    _append(log, visit)
    _process(log, wh, chunk_records=2)  # the login in the second chunk
    s = _sessions(wh)
    assert len({s[e.message_id] for e in visit}) == 1
    [(persons,)] = wh.query("SELECT count(DISTINCT person_id) FROM events")[1]
    assert persons == 1


def test_a_server_event_without_anonymous_id_is_its_own_stream(tmp_path: Path) -> None:
    """Was one session with the browser's (sessions were per person); now the server
    library's events (userId alone) are their own stream, as PostHog and Amplitude cut."""
    log, wh = SQLiteLog(tmp_path / "log"), Warehouse(tmp_path / "wh")
    browser = [_ev(0, "a1", "bo"), _ev(5, "a1", "bo")]
    server = _ev(2, None, "bo")
    _append(log, [browser[0], server, browser[1]])
    _process(log, wh)
    s = _sessions(wh)
    assert s[browser[0].message_id] == s[browser[1].message_id] != s[server.message_id]


def test_a_restart_goes_on_with_the_open_sessions(tmp_path: Path) -> None:
    log, wh = SQLiteLog(tmp_path / "log"), Warehouse(tmp_path / "wh")
    phone, laptop = _devices()
    _append(log, phone[:2] + laptop[:2])
    _process(log, wh)
    [(rows,)] = wh.query("SELECT count(*) FROM session_streams")[1]
    assert rows == 2  # the two devices' streams, written with the chunks
    wh.close()
    wh = Warehouse(tmp_path / "wh")  # a new processor on the same warehouse
    _append(log, phone[2:3] + laptop[2:3])
    _process(log, wh)
    s = _sessions(wh)
    assert s[phone[2].message_id] == s[phone[0].message_id]
    assert s[laptop[2].message_id] != s[laptop[0].message_id]  # 31 minutes later
    # the same as one processor that never stopped
    whole, log2 = Warehouse(tmp_path / "whole"), SQLiteLog(tmp_path / "log2")
    _append(log2, phone[:2] + laptop[:2] + phone[2:3] + laptop[2:3])
    _process(log2, whole)
    assert _sessions(whole) == s
    assert (whole.query("SELECT * FROM session_streams ORDER BY 1")[1]
            == wh.query("SELECT * FROM session_streams ORDER BY 1")[1])


def test_idle_streams_leave_the_table(tmp_path: Path) -> None:
    log, wh = SQLiteLog(tmp_path / "log"), Warehouse(tmp_path / "wh")
    _append(log, [_ev(0, "old"), _ev(1, "other")])
    _process(log, wh)
    _append(log, [_ev(200, "new")])  # received 200 minutes later
    _process(log, wh)
    keys = {HASHER.key(x): x for x in ("old", "other", "new")}
    got = {keys[k] for (k,) in wh.query("SELECT stream_key FROM session_streams")[1]}
    assert got == {"new"}


def test_retention_of_a_person_deletes_their_streams(tmp_path: Path) -> None:
    log, wh = SQLiteLog(tmp_path / "log"), Warehouse(tmp_path / "wh")
    _append(log, [_ev(0, "gone", "cy"), _ev(1, None, "cy"), _ev(2, "kept")])
    _process(log, wh)
    [(person,)] = wh.query("SELECT person_id FROM person_ids WHERE id_key = ?",
                           [HASHER.key("cy")])[1]
    [(rows,)] = wh.query("SELECT count(*) FROM session_streams")[1]
    assert rows == 3
    with wh.transaction() as cur:  # their events expired
        cur.execute("DELETE FROM events_raw WHERE person_id = ?", [person])
    n, keys = removal.drop_persons_without_events(wh, {person})
    assert n == 1 and set(keys) == {HASHER.key("gone"), HASHER.key("cy")}
    left = [k for (k,) in wh.query("SELECT stream_key FROM session_streams")[1]]
    assert left == [HASHER.key("kept")]


def test_an_older_warehouse_gets_the_streams_table(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh")
    with wh.transaction() as cur:  # as a warehouse of the version before it
        cur.execute("DROP TABLE session_streams")
        cur.execute("ALTER TABLE events_raw DROP COLUMN publish_batch")  # (version 3 on)
        cur.execute(f"UPDATE {VERSION_TABLE} SET version = 1")
    wh.close()
    wh = Warehouse(tmp_path / "wh")
    assert wh.query(f"SELECT version FROM {VERSION_TABLE}")[1] == [(SCHEMA.latest,)]
    log = SQLiteLog(tmp_path / "log")
    _append(log, [_ev(0, "a1")])
    _process(log, wh)
    assert wh.query("SELECT count(*) FROM session_streams")[1] == [(1,)]
