"""The stateless half of the processor reads log records with DuckDB's JSON reader, as
columns (src/aap/process/prepare.py). These properties hold it to a reference written
here event by event over the decoded :class:`aap.events.Event`: for any events — fields
of unexpected types, pages that are not objects, odd time zones — every column is what
the reference says, whether the record was written as JSON or as the msgpack the first
versions of the log wrote."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aap.events import MESSAGE_TYPES, Event, Geo, encode_events
from aap.process import enrich
from aap.process.prepare import PREPARED_SCHEMA, PrepareConfig, Reader, prepare
from tests.conftest import examples

# each example: a prepare pass through DuckDB
SETTINGS = settings(max_examples=examples(120),
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module")
def reader() -> Iterator[Reader]:
    r = Reader(threads=1)
    yield r
    r.close()


# -- events -------------------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
                     st.sampled_from(["", "https://www.example.com/a/b?utm_source=news&x=1",
                                      "http://Shop.Example.ORG/", "/only/a/path", "not a url",
                                      "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) "
                                      "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 "
                                      "Mobile/15E148 Safari/604.1"]))
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


_value = st.one_of(st.text(max_size=6), st.integers(-2**63, 2**64 - 1), _scalars, _json)
"""A field's value: often text or an integer (what the reader tells apart), or anything."""


def _obj(keys: list[str]) -> st.SearchStrategy[Any]:
    """An object with some of ``keys``, or something that is not an object."""
    return st.one_of(st.fixed_dictionaries({}, optional={k: _value for k in keys}),
                     st.fixed_dictionaries({}, optional={k: _value for k in keys}), _scalars,
                     st.lists(_scalars, max_size=2))


_context = st.fixed_dictionaries({}, optional={
    "page": _obj(["url", "referrer", "path", "title"]),
    "campaign": _obj(["source", "medium", "name", "campaign", "term", "content"]),
    "library": _obj(["name", "version"]),
    "os": st.one_of(_obj(["name", "version"]), st.fixed_dictionaries({
        "name": st.sampled_from(["iOS", "ios", " Android ", "iPadOS", "tvOS", "  "]),
        "version": st.sampled_from(["17.1", "14"])})),
    "userAgent": _value, "sessionId": _value, "session_id": _value, "locale": _json})
_properties = st.fixed_dictionaries({}, optional={
    "url": _value, "referrer": _value, "path": _value, "$session_id": _value, "price": _json,
    "nested": _json})
_zones = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                          timezone(timedelta(hours=-8)), None])
_times = st.builds(lambda d, z: d.replace(tzinfo=z),
                   st.datetimes(datetime(1950, 1, 1), datetime(2150, 1, 1)), _zones)
_ids = st.one_of(st.none(), st.text(max_size=8))
_keys = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1))


@st.composite
def events(draw: st.DrawFn) -> Event:
    received = draw(st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1))).replace(tzinfo=UTC)
    return Event(
        type=draw(st.sampled_from(sorted(MESSAGE_TYPES))), message_id=draw(st.text(max_size=10)),
        user_id=draw(_ids), anonymous_id=draw(_ids), previous_id=draw(_ids),
        event=draw(st.one_of(st.none(), st.text(max_size=8))),
        name=draw(st.one_of(st.none(), st.text(max_size=8))),
        category=draw(st.one_of(st.none(), st.text(max_size=8))),
        timestamp=draw(st.one_of(st.none(), _times,
                                 st.just(received + timedelta(minutes=3)),
                                 st.just(received + timedelta(minutes=5)),
                                 st.just(received + timedelta(minutes=5, microseconds=1)),
                                 st.just(received + timedelta(days=3)))),
        sent_at=draw(st.one_of(st.none(), _times)), context=draw(_context),
        properties=draw(_properties),
        traits=draw(st.dictionaries(st.text(max_size=5), _scalars, max_size=3)),
        received_at=received, source=draw(st.sampled_from(["src_a", "src_b"])),
        geo=draw(st.one_of(st.none(), st.builds(Geo, country=st.sampled_from(["FR", None]),
                                                region=_ids, city=_ids))),
        gpc=draw(st.booleans()), dnt=draw(st.booleans()),
        purposes=draw(st.dictionaries(st.sampled_from(["analytics", "marketing", "ads"]),
                                      st.sampled_from(["consent", "legitimate_interest"]),
                                      max_size=3)),
        user_key=draw(_keys), anonymous_key=draw(_keys), previous_key=draw(_keys))


# -- the reference, one event at a time -------------------------------------------------------


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _session(v: Any) -> str | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int) and -2**63 <= v < 2**64:
        return str(v)
    return _text(v)


def _micros(t: datetime | None) -> int | None:
    if t is None:
        return None
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _first(*values: str | None) -> str | None:
    return next((v for v in values if v is not None), None)


def reference(e: Event, historical: frozenset[str]) -> dict[str, Any]:
    ctx, props = e.context, e.properties

    def part(name: str) -> dict[str, Any]:
        v = ctx.get(name)
        return v if isinstance(v, dict) else {}

    page, camp, lib = part("page"), part("campaign"), part("library")
    url_in = _first(_text(props.get("url")), _text(page.get("url")))
    split = enrich.split_url(url_in) if url_in else enrich.Page(None, None, None, {})
    referrer = _first(_text(props.get("referrer")), _text(page.get("referrer")))
    campaign = {"source": _text(camp.get("source")), "medium": _text(camp.get("medium")),
                "campaign": _first(_text(camp.get("name")), _text(camp.get("campaign"))),
                "term": _text(camp.get("term")), "content": _text(camp.get("content"))}
    ua = _text(ctx.get("userAgent"))
    agent = enrich.parse_agent(ua) if ua else enrich.Agent(None, None, None, None, None)
    if agent.os is None:  # no OS in the user agent: the one the SDK names in the context
        said = (_text(part("os").get("name")) or "").strip()
        os_name = {"ios": "iOS", "iphone os": "iOS", "android": "Android"}.get(
            said.lower(), said[:64] or None)
        agent = agent._replace(
            os=os_name, os_version=_text(part("os").get("version")) if os_name else None,
            device_type=agent.device_type or ("mobile" if os_name in ("iOS", "Android")
                                              else None))
    ts, sent, recv = _micros(e.timestamp), _micros(e.sent_at), _micros(e.received_at)
    assert recv is not None
    if ts is None:
        t = recv
    elif e.source in historical or sent is None:
        t = ts
    else:
        t = ts + (recv - sent)
    if e.source not in historical and t - recv > 5 * 60 * 1_000_000:
        t = recv
    raw = (e.user_id, e.anonymous_id, e.previous_id)
    return {
        "message_id": e.message_id, "source": e.source, "type": e.type,
        "event": (e.event or "") if e.type == "track" else "$" + e.type,
        "timestamp": t, "sent_at": sent, "received_at": recv, "received_ms": recv // 1000,
        "name": e.name, "category": e.category,
        "url": split.url, "host": split.host, "path": split.path or _text(props.get("path"))
        or _text(page.get("path")), "referrer": referrer, "referrer_domain": enrich.domain(referrer),
        **{f"utm_{f}": campaign[f] or (split.query.get("utm_" + f) or [None])[0]
           for f in enrich.UTM_FIELDS},
        "browser": agent.browser, "browser_version": agent.browser_version, "os": agent.os,
        "os_version": agent.os_version, "device_type": agent.device_type,
        "country": e.geo.country if e.geo else None, "region": e.geo.region if e.geo else None,
        "city": e.geo.city if e.geo else None,
        "library_name": _text(lib.get("name")), "library_version": _text(lib.get("version")),
        "properties": props, "gpc": e.gpc, "dnt": e.dnt, "purposes": list(e.purposes),
        "user_key": e.user_key, "anonymous_key": e.anonymous_key, "previous_key": e.previous_key,
        "raw_ids": list(raw) if any(raw) else None,
        "sdk_session": _first(_session(ctx.get("sessionId")), _session(props.get("$session_id")),
                              _session(ctx.get("session_id"))),
        "traits": e.traits if e.traits and e.type == "identify" else None,
    }


def _as_compared(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for k in ("timestamp", "sent_at", "received_at"):
        if out[k] is not None:
            out[k] = _micros(out[k])
    out["properties"] = json.loads(out["properties"])
    out["traits"] = json.loads(out["traits"]) if out["traits"] is not None else None
    for k in ("row", "key"):
        del out[k]
    return out


def _legacy(events: list[Event]) -> bytes:
    """A record as the first versions of the log wrote it: msgpack, then zstd."""
    return zstandard.ZstdCompressor(level=1).compress(msgspec.msgpack.encode(events))


@pytest.mark.slow  # a DuckDB pass per example: seconds even with dev's count
@SETTINGS
@given(st.lists(st.lists(events(), max_size=4), max_size=4),
       st.frozensets(st.sampled_from(["src_a", "src_b"])), st.booleans())
def test_the_columns_are_what_each_event_says(reader: Reader, records: list[list[Event]],
                                              historical: frozenset[str], legacy: bool) -> None:
    payloads = [(_legacy if legacy else encode_events)(r) for r in records]
    got = prepare(payloads, PrepareConfig(historical_sources=historical), reader)
    assert got.table.schema == PREPARED_SCHEMA
    flat = [e for r in records for e in r]
    rows = got.table.to_pylist()
    assert [r["row"] for r in rows] == list(range(len(flat)))
    assert [_as_compared(r) for r in rows] == [reference(e, historical) for e in flat]
    assert got.clamped == sum(_clamped(e, historical) for e in flat)


def _clamped(e: Event, historical: frozenset[str]) -> bool:
    """Whether the corrected time was more than five minutes after the receive time."""
    ts, sent, recv = _micros(e.timestamp), _micros(e.sent_at), _micros(e.received_at)
    if ts is None or recv is None or e.source in historical:
        return False
    return (ts + (recv - sent) if sent is not None else ts) - recv > 5 * 60 * 1_000_000


@pytest.mark.slow  # a DuckDB pass per example: seconds even with dev's count
@SETTINGS
@given(st.lists(events(), min_size=1, max_size=6))
def test_same_message_same_key_whatever_the_record(reader: Reader, evs: list[Event]) -> None:
    """The dedup key depends on the source and message id only."""
    one = prepare([encode_events(evs)], PrepareConfig(), reader).table
    apart = prepare([encode_events([e]) for e in reversed(evs)], PrepareConfig(), reader).table
    ids = zip(one.column("source").to_pylist(), one.column("message_id").to_pylist(), strict=True)
    keys = dict(zip(ids, one.column("key").to_pylist(), strict=True))
    for s, m, k in zip(apart.column("source").to_pylist(), apart.column("message_id").to_pylist(),
                       apart.column("key").to_pylist(), strict=True):
        assert keys[(s, m)] == k


def test_no_records_and_empty_records_give_an_empty_table(reader: Reader) -> None:
    for payloads in ([], [encode_events([])], [encode_events([]), _legacy([])]):
        got = prepare(payloads, PrepareConfig(), reader)
        assert got.table.num_rows == 0 and got.table.schema == PREPARED_SCHEMA


def test_the_scratch_file_keeps_no_events(reader: Reader) -> None:
    ev = Event(type="track", message_id="m", event="Canary Seen", received_at=datetime.now(UTC),
               source="src_a", properties={"note": "canary-7f3a"})
    assert prepare([encode_events([ev])], PrepareConfig(), reader).table.num_rows == 1
    with open(reader.path, "rb") as f:
        assert b"canary-7f3a" not in f.read()


@pytest.mark.slow
def test_scratch_files_of_dead_processes_are_removed(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from aap.process import prepare as prepare_module

    monkeypatch.setattr(prepare_module, "_scratch_dir", lambda: str(tmp_path))
    dead = subprocess.Popen(["true"])  # a process that has exited
    dead.wait()
    stale = tmp_path / f"aap-chunk-{dead.pid}-x.json"
    stale.write_bytes(b"[{...one chunk...}]")
    alive = tmp_path / f"aap-chunk-{os.getpid()}-y.json"
    alive.write_bytes(b"[]")
    other = tmp_path / "unrelated.json"
    other.write_bytes(b"{}")
    r = Reader(threads=1)
    try:
        assert not stale.exists()
        assert alive.exists() and other.exists()
        assert Path(r.path).parent == tmp_path and Path(r.path).exists()
    finally:
        r.close()
    assert not Path(r.path).exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_memory_file_system_moves_the_scratch_file_to_the_temporary_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scratch file that answers every write with ENOSPC, as a full ``/dev/shm`` would:
    a link to ``/dev/full`` (the reader removes the link, never the device)."""
    import tempfile

    full_dir = tmp_path / "shm"
    full_dir.mkdir()
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_dir))
    r = Reader(threads=1)
    try:
        os.unlink(r.path)
        link = full_dir / "aap-chunk-full.json"
        link.symlink_to("/dev/full")
        r.path = str(link)
        ev = Event(type="track", message_id="m", event="Seen", received_at=datetime.now(UTC),
                   source="src_a")
        got = prepare([encode_events([ev])], PrepareConfig(), r).table
        assert got.column("message_id").to_pylist() == ["m"]
        assert Path(r.path).parent == temp_dir and Path(r.path).stat().st_size == 0
        assert not link.exists() and not link.is_symlink()
    finally:
        r.close()
    assert Path("/dev/full").exists()
