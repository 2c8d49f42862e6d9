"""The processor's steps, in order. Each takes a :class:`Batch` of events (the events of
one chunk of the log, as columns) and the processor's state, and works on the whole
batch at once; a step that drops events says why (:meth:`Batch.drop`), and every
reason is counted in ``/metrics``.

Steps see the events in log order, and every step is deterministic given the state
and the log, so a processor that crashes and re-reads the log from its last committed
position produces the same rows. Work that does not depend on the order (hashing,
time arithmetic, parsing a user agent or a URL) is done per column or once per
distinct value; only what carries state from one event to the next (identity,
sessions) walks the events one by one.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import duckdb
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aap.privacy.ids import IdHasher
from aap.process import enrich
from aap.process.identity import Identities
from aap.process.view import (
    _NO_CONTEXT,
    CampaignView,
    ContextView,
    EventView,
    LibraryView,
    PageView,
)  # fmt: skip

_NOT_SET = np.iinfo(np.int64).min
"""A missing time in the int64 microsecond columns."""


@dataclass(slots=True)
class Batch:
    """Events of one chunk, in log order, with the columns the steps add."""

    events: list[EventView]
    source: pa.Array
    message_id: pa.Array
    dropped: Counter[str] = field(default_factory=Counter)
    keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    """Dedup keys: see :func:`dedup_key`."""
    timestamp: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    """The corrected time, microseconds since the epoch (UTC)."""
    sent_at: pa.Array | None = None
    received_at: pa.Array | None = None
    enriched: dict[str, pa.Array] = field(default_factory=dict)
    """The columns of :data:`ENRICHED_COLUMNS`."""
    sdk_session: list[str | None] = field(default_factory=list)
    person_id: list[int] = field(default_factory=list)
    session_id: list[str] = field(default_factory=list)

    _properties: pa.Array | None = None

    def properties_json(self) -> pa.Array:
        """The events' properties as JSON text."""
        if self._properties is None:
            enc = _json_encoder.encode
            self._properties = pa.array([enc(e.properties) for e in self.events], pa.string())
        return self._properties

    @classmethod
    def of(cls, events: list[EventView]) -> Batch:
        return cls(events, pa.array([e.source for e in events], pa.string()),
                   pa.array([e.message_id for e in events], pa.string()))

    def __len__(self) -> int:
        return len(self.events)

    def drop(self, mask: np.ndarray, reason: str) -> None:
        """Drop the events where ``mask`` is true, counted under ``reason``."""
        n = int(mask.sum())
        if not n:
            return
        self.dropped[reason] += n
        keep = np.flatnonzero(~mask)
        sel = keep.tolist()
        self.events = [self.events[i] for i in sel]
        idx = pa.array(keep)
        self.source = self.source.take(idx)
        self.message_id = self.message_id.take(idx)
        if self.sent_at is not None and self.received_at is not None:
            self.sent_at, self.received_at = self.sent_at.take(idx), self.received_at.take(idx)
        for name in ("keys", "timestamp"):
            arr = getattr(self, name)
            if len(arr):
                setattr(self, name, arr[keep])
        self.enriched = {k: v.take(idx) for k, v in self.enriched.items()}
        self._properties = None
        for name in ("sdk_session", "person_id", "session_id"):
            vals = getattr(self, name)
            if vals:
                setattr(self, name, [vals[i] for i in sel])


ENRICHED_COLUMNS = (
    "url", "host", "path", "referrer", "referrer_domain",
    "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content",
    "browser", "browser_version", "os", "os_version", "device_type",
    "country", "region", "city", "library_name", "library_version",
)  # fmt: skip
_json_encoder = msgspec.json.Encoder()


def dedup_key(source: str, message_id: str) -> int:
    """Equals DuckDB's ``md5_number_upper(source || chr(0) || message_id)``."""
    digest = hashlib.md5(f"{source}\x00{message_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little")


class DedupIndex:
    """Keys of every stored event, as a few sorted arrays of doubling sizes (merged like
    the levels of an LSM tree), so that looking up a chunk's keys and adding them is a
    handful of vectorised operations."""

    def __init__(self, keys: np.ndarray | None = None) -> None:
        self.levels: list[np.ndarray] = []
        if keys is not None and len(keys):
            self.levels.append(np.unique(keys.astype(np.uint64)))

    def __len__(self) -> int:
        return sum(len(a) for a in self.levels)

    def __contains__(self, key: int) -> bool:
        return bool(self.contains(np.array([key], np.uint64))[0])

    def contains(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), bool)
        for level in self.levels:
            i = np.searchsorted(level, keys)
            i[i == len(level)] = 0
            found |= level[i] == keys if len(level) else False
        return found

    def add(self, keys: np.ndarray) -> None:
        """Add keys that are not in the index yet (and are unique among themselves)."""
        new = np.sort(keys.astype(np.uint64))
        while self.levels and len(self.levels[-1]) <= 2 * len(new):
            new = np.concatenate((self.levels.pop(), new))
            new.sort(kind="stable")
        self.levels.append(new)


@dataclass
class State:
    identities: Identities
    hasher: IdHasher
    dedup: DedupIndex
    sessions: dict[int, tuple[int, str]]
    """person → (time of their latest event in µs, its session id)."""
    historical_sources: frozenset[str] = frozenset()
    inactivity: timedelta = timedelta(minutes=30)
    max_future: timedelta = timedelta(minutes=5)
    clamped: int = 0
    """Events whose corrected time was in the future and was clamped (this chunk)."""
    sql: duckdb.DuckDBPyConnection = field(default_factory=duckdb.connect)
    """An in-memory engine for per-column work (hashing)."""


Step = Callable[[Batch, State], None]


def dedup(b: Batch, st: State) -> None:
    """Drop copies of events already stored, and later copies within the batch."""
    st.sql.register("batch_ids", pa.table({"source": b.source, "message_id": b.message_id}))
    try:
        res = st.sql.execute("SELECT md5_number_upper(source || chr(0) || message_id) AS k"
                             " FROM batch_ids").fetchnumpy()
    finally:
        st.sql.unregister("batch_ids")
    keys = np.asarray(res["k"], dtype=np.uint64)
    seen = st.dedup.contains(keys)
    _, first = np.unique(keys, return_index=True)
    again = np.ones(len(keys), bool)
    again[first] = False
    b.keys = keys
    b.drop(seen | again, "duplicate")
    st.dedup.add(b.keys)


def _times(values: list[datetime | None]) -> tuple[pa.Array, np.ndarray]:
    """The times as a column (UTC, without a zone, as the warehouse stores them) and as
    microseconds (``_NOT_SET`` where missing)."""
    arr = pa.array(values, pa.timestamp("us", tz="UTC"))
    return arr.cast(pa.timestamp("us")), arr.cast(pa.int64()).fill_null(_NOT_SET).to_numpy()


def correct_time(b: Batch, st: State) -> None:
    """``timestamp + (receivedAt - sentAt)``; far-future times are clamped to receivedAt."""
    evs = b.events
    _, ts = _times([e.timestamp for e in evs])
    b.sent_at, sent = _times([e.sent_at for e in evs])
    b.received_at, recv = _times([e.received_at for e in evs])
    has_ts = ts != _NOT_SET
    skew = has_ts & (sent != _NOT_SET)
    out = np.where(has_ts, ts, recv)
    out[skew] = ts[skew] + (recv[skew] - sent[skew])
    future = out - recv > _us(st.max_future)
    if st.historical_sources:
        hist = np.fromiter((e.source in st.historical_sources for e in evs), bool, len(evs))
        future &= ~hist
        out[hist] = np.where(has_ts, ts, recv)[hist]
    out[future] = recv[future]
    st.clamped += int(future.sum())
    b.timestamp = out


def _us(td: timedelta) -> int:
    return td // timedelta(microseconds=1)


def _text(v: Any) -> str | None:
    return v if v.__class__ is str and v else None


def _session_text(v: Any) -> str | None:
    """A non-empty string, or an integer as text."""
    if v.__class__ is str:
        return v or None
    return str(v) if v.__class__ is int else None


_NO_PAGE = PageView()
_NO_CAMPAIGN = CampaignView()
_NO_LIBRARY = LibraryView()
_INPUTS = ("url_in", "referrer", "path_in", "c_source", "c_medium", "c_campaign", "c_term",
           "c_content", "ua", "library_name", "library_version", "sdk_session")


def _inputs(ev: EventView) -> tuple[Any, ...]:
    """What enrichment reads of one event (see :data:`_INPUTS`)."""
    c = ev.context if isinstance(ev.context, ContextView) else _NO_CONTEXT
    p = ev.properties
    page = c.page if isinstance(c.page, PageView) else _NO_PAGE
    camp = c.campaign if isinstance(c.campaign, CampaignView) else _NO_CAMPAIGN
    lib = c.library if isinstance(c.library, LibraryView) else _NO_LIBRARY
    t = _text
    return (
        t(p.get("url")) or t(page.url),
        t(p.get("referrer")) or t(page.referrer),
        t(p.get("path")) or t(page.path),
        t(camp.source), t(camp.medium), t(camp.name) or t(camp.campaign),
        t(camp.term), t(camp.content),
        t(c.user_agent),
        t(lib.name), t(lib.version),
        _session_text(c.session_id) or _session_text(p.get("$session_id"))
        or _session_text(c.session_id_snake),
    )


def _per_value(column: pa.Array, fn: Callable[[Any], tuple[Any, ...]], width: int
               ) -> list[pa.Array]:
    """``fn`` of each value of ``column``, computed once per distinct value: ``width``
    columns (a null value gives nulls)."""
    enc = column.dictionary_encode()
    values = [fn(v) for v in enc.dictionary.to_pylist()]
    cols = list(zip(*values, strict=True)) if values else [() for _ in range(width)]
    return [pa.array(c, pa.string()).take(enc.indices) for c in cols]


def _url_parts(url: str) -> tuple[Any, ...]:
    parts = enrich.split_url(url)
    q = parts.query
    return (parts.url, parts.host, parts.path,
            *((q.get("utm_" + f) or (None,))[0] for f in enrich.UTM_FIELDS))


def _referrer_domain(url: str) -> tuple[Any, ...]:
    return (enrich.domain(url),)


@lru_cache(maxsize=20_000)
def _agent(ua: str) -> tuple[Any, ...]:
    return tuple(enrich.parse_agent(ua))


def enrichment(b: Batch, st: State) -> None:
    """Page, referrer, campaign, user agent, coarse geo and library columns; also the
    SDK's session id where the event carries one. URLs and user agents are parsed once
    per distinct value."""
    evs = b.events
    x = dict(zip(_INPUTS, (pa.array(col, pa.string()) for col in zip(
        *map(_inputs, evs), strict=True)), strict=True))
    url, host, url_path, *url_utm = _per_value(x["url_in"], _url_parts, 8)
    referrer = x["referrer"]
    cols: dict[str, pa.Array] = {
        "url": url, "host": host,
        "path": pc.coalesce(url_path, x["path_in"]),
        "referrer": referrer,
        "referrer_domain": _per_value(referrer, _referrer_domain, 1)[0],
        **{"utm_" + f: pc.coalesce(x["c_" + f], u)
           for f, u in zip(enrich.UTM_FIELDS, url_utm, strict=True)},
    }
    agent = _per_value(x["ua"], _agent, 5)
    cols.update(zip(("browser", "browser_version", "os", "os_version", "device_type"), agent,
                    strict=True))
    geos = [e.geo for e in evs]
    cols["country"] = pa.array([g.country if g else None for g in geos], pa.string())
    cols["region"] = pa.array([g.region if g else None for g in geos], pa.string())
    cols["city"] = pa.array([g.city if g else None for g in geos], pa.string())
    cols["library_name"] = x["library_name"]
    cols["library_version"] = x["library_version"]
    b.enriched = cols
    b.sdk_session = x["sdk_session"].to_pylist()


def identity(b: Batch, st: State) -> None:
    """Each event's person (see :mod:`aap.process.identity`)."""
    h = st.hasher.key
    ids = st.identities
    known = ids.ids
    merged = ids.merged
    identified = ids.identified
    sessions = st.sessions
    out = []
    for ev in b.events:
        user, anon = ev.user_id or None, ev.anonymous_id or None
        if ev.type == "alias" and ev.previous_id and user:
            other = h(ev.previous_id)
            before = ids.person_of(other)
            person = ids.alias(other, h(user))
        elif user is None:
            p = known.get(h(anon))  # type: ignore[arg-type]
            out.append(merged.get(p, p) if p is not None else ids.observe(None, h(anon)))  # type: ignore[arg-type]
            continue
        else:
            ukey = h(user)
            if anon is None:
                p = known.get(ukey)
                if p is not None:
                    p = merged.get(p, p)
                    if p in identified:
                        out.append(p)
                        continue
                out.append(ids.observe(ukey, None))
                continue
            other = h(anon)
            before = ids.person_of(other)
            person = ids.observe(ukey, other)
        out.append(person)
        if before is not None and before != person and ids.resolve(before) == person:
            # merged just now: the anonymous visit goes on as the same session
            moved = sessions.pop(before, None)
            mine = sessions.get(person)
            if moved is not None and (mine is None or moved[0] > mine[0]):
                sessions[person] = moved
    b.person_id = out


def sessions(b: Batch, st: State) -> None:
    """The SDK's session id when there is one, else a new session after
    ``inactivity`` without events of the person."""
    state = st.sessions
    gap = _us(st.inactivity)
    out = []
    for person, t, sdk, ev in zip(b.person_id, b.timestamp.tolist(), b.sdk_session, b.events,
                                  strict=True):
        prev = state.get(person)
        if sdk is not None:
            sid = "s:" + sdk
        elif prev is not None and abs(t - prev[0]) <= gap:
            sid = prev[1]
        else:
            sid = hashlib.md5(f"{person}\x00{ev.message_id}".encode(
                "utf-8", "surrogatepass")).hexdigest()[:20]
        out.append(sid)
        if prev is None or t >= prev[0]:
            state[person] = (t, sid)
    b.session_id = out


STEPS: tuple[tuple[str, Step], ...] = (
    ("dedup", dedup),
    ("time", correct_time),
    ("enrich", enrichment),
    ("identity", identity),
    ("sessions", sessions),
)


def event_names(types: pa.Array, events: pa.Array) -> pa.Array:
    """The ``event`` column: a track's event name, else ``$`` and the type (``$page``)."""
    return pc.if_else(pc.equal(types, "track"), pc.coalesce(events, ""),
                      pc.binary_join_element_wise("$", types, ""))
