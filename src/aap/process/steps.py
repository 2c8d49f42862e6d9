"""The processor's steps, in order. Each takes a row and the processor's state and
returns the row or ``Dropped(reason)``; every reason is counted in ``/metrics``.

Every step is deterministic given the state and the log, so a processor that crashes
and re-reads the log from its last committed position produces the same rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

import msgspec
import numpy as np

from aap.events import Event
from aap.privacy.ids import IdHasher
from aap.process import enrich
from aap.process.identity import Identities


class Dropped(NamedTuple):
    reason: str


@dataclass(slots=True)
class Row:
    """One event on its way to the warehouse: the columns of ``events_raw``."""

    ev: Event
    key: int
    timestamp: datetime
    person_id: int = 0
    session_id: str | None = None
    enriched: tuple[Any, ...] = ()
    """Values of :data:`ENRICHED_COLUMNS`, in that order."""


ENRICHED_COLUMNS = (
    "url", "host", "path", "referrer", "referrer_domain",
    "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content",
    "browser", "browser_version", "os", "os_version", "device_type",
    "country", "region", "city", "library_name", "library_version",
)  # fmt: skip
_NO_AGENT = (None, None, None, None, None)
_NO_GEO = (None, None, None)


def dedup_key(source: str, message_id: str) -> int:
    """Equals DuckDB's ``md5_number_upper(source || chr(0) || message_id)``."""
    digest = hashlib.md5(f"{source}\x00{message_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little")


class DedupIndex:
    """Keys of every stored event: a sorted array loaded from the warehouse plus a set of
    the keys added since, merged into the array now and then."""

    def __init__(self, keys: np.ndarray | None = None) -> None:
        self.sorted = np.sort(keys.astype(np.uint64)) if keys is not None else np.empty(0, np.uint64)
        self.recent: set[int] = set()

    def __contains__(self, key: int) -> bool:
        if key in self.recent:
            return True
        i = int(np.searchsorted(self.sorted, np.uint64(key)))
        return i < len(self.sorted) and int(self.sorted[i]) == key

    def add(self, key: int) -> None:
        self.recent.add(key)
        if len(self.recent) >= 2_000_000:
            self.compact()

    def compact(self) -> None:
        if self.recent:
            new = np.fromiter(self.recent, np.uint64, len(self.recent))
            self.sorted = np.union1d(self.sorted, new)
            self.recent = set()


@dataclass(slots=True)
class SessionState:
    last: datetime
    session_id: str


@dataclass
class State:
    identities: Identities
    hasher: IdHasher
    dedup: DedupIndex
    sessions: dict[int, SessionState]
    historical_sources: frozenset[str] = frozenset()
    inactivity: timedelta = timedelta(minutes=30)
    max_future: timedelta = timedelta(minutes=5)
    clamped: int = 0
    """Events whose corrected time was in the future and was clamped (this chunk)."""


Step = Callable[[Row, State], "Row | Dropped"]


def dedup(row: Row, st: State) -> Row | Dropped:
    if row.key in st.dedup:
        return Dropped("duplicate")
    st.dedup.add(row.key)
    return row


def correct_time(row: Row, st: State) -> Row | Dropped:
    """``timestamp + (receivedAt - sentAt)``; far-future times are clamped to receivedAt."""
    ev = row.ev
    if ev.source in st.historical_sources:
        row.timestamp = _naive(ev.timestamp or ev.received_at)
        return row
    ts = ev.timestamp or ev.sent_at or ev.received_at
    if ev.sent_at is not None and ev.timestamp is not None:
        ts = ev.timestamp + (ev.received_at - ev.sent_at)
    elif ev.timestamp is None:
        ts = ev.received_at
    if ts - ev.received_at > st.max_future:
        ts = ev.received_at
        st.clamped += 1
    row.timestamp = _naive(ts)
    return row


def _naive(dt: datetime) -> datetime:
    """UTC without tzinfo, as the warehouse stores it."""
    off = dt.utcoffset()
    return (dt - off).replace(tzinfo=None) if off is not None else dt


@lru_cache(maxsize=50_000)
def _page(url: str | None, referrer: str | None, path: str | None
          ) -> tuple[tuple[Any, ...], dict[str, list[str]]]:
    parts = enrich.split_url(url) if url else None
    return ((parts.url if parts else None, parts.host if parts else None,
             (parts.path if parts else None) or path, referrer, enrich.domain(referrer)),
            parts.query if parts else {})


@lru_cache(maxsize=20_000)
def _agent(ua: str | None) -> tuple[Any, ...]:
    return tuple(enrich.parse_agent(ua)) if ua else _NO_AGENT


def enrichment(row: Row, st: State) -> Row | Dropped:
    ev = row.ev
    ctx = ev.context
    props = ev.properties
    page: dict[str, Any] = ctx["page"] if isinstance(ctx.get("page"), dict) else {}
    t = enrich.text
    url = t(props.get("url")) or t(page.get("url"))
    referrer = t(props.get("referrer")) or t(page.get("referrer"))
    page_cols, query = _page(url, referrer, t(props.get("path")) or t(page.get("path")))
    campaign = enrich.utm(ctx.get("campaign"), query)
    geo = ev.geo
    lib: dict[str, Any] = ctx["library"] if isinstance(ctx.get("library"), dict) else {}
    row.enriched = (
        *page_cols,
        campaign.get("source"), campaign.get("medium"), campaign.get("campaign"),
        campaign.get("term"), campaign.get("content"),
        *_agent(t(ctx.get("userAgent"))),
        *((geo.country, geo.region, geo.city) if geo else _NO_GEO),
        t(lib.get("name")), t(lib.get("version")),
    )
    return row


def identity(row: Row, st: State) -> Row | Dropped:
    ev = row.ev
    h = st.hasher.key
    ids = st.identities
    if ev.type == "alias" and ev.previous_id and ev.user_id:
        other = h(ev.previous_id)
        before = ids.person_of(other)
        row.person_id = ids.alias(other, h(ev.user_id))
    else:
        other = h(ev.anonymous_id) if ev.anonymous_id else 0
        before = ids.person_of(other) if ev.anonymous_id else None
        row.person_id = ids.observe(h(ev.user_id) if ev.user_id else None,
                                    other if ev.anonymous_id else None)
    if before is not None and before != row.person_id and ids.resolve(before) == row.person_id:
        # merged just now: the anonymous visit goes on as the same session
        moved = st.sessions.pop(before, None)
        mine = st.sessions.get(row.person_id)
        if moved is not None and (mine is None or moved.last > mine.last):
            st.sessions[row.person_id] = moved
    return row


def _sdk_session(ev: Event) -> str | None:
    for v in (ev.context.get("sessionId"), ev.properties.get("$session_id"),
              ev.context.get("session_id")):
        if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v):
            return str(v)
    return None


def sessions(row: Row, st: State) -> Row | Dropped:
    """The SDK's session id when there is one, else a new session after
    ``inactivity`` without events of the person."""
    sdk = _sdk_session(row.ev)
    person = row.person_id
    prev = st.sessions.get(person)
    t = row.timestamp
    if sdk is not None:
        sid = "s:" + sdk
    elif prev is not None and abs(t - prev.last) <= st.inactivity:
        sid = prev.session_id
    else:
        sid = hashlib.md5(f"{person}\x00{row.ev.message_id}".encode()).hexdigest()[:20]
    row.session_id = sid
    if prev is None or t >= prev.last:
        st.sessions[person] = SessionState(t, sid)
    return row


STEPS: tuple[tuple[str, Step], ...] = (
    ("dedup", dedup),
    ("time", correct_time),
    ("enrich", enrichment),
    ("identity", identity),
    ("sessions", sessions),
)


def event_name(ev: Event) -> str:
    if ev.type == "track":
        return ev.event or ""
    return "$" + ev.type


_json = msgspec.json.Encoder()


def properties_json(ev: Event) -> str:
    return _json.encode(ev.properties).decode()
