"""The stateless half of the processor: log records → one Arrow table per chunk.

These steps depend on nothing but the records and the configuration, so they can run
in another process (:class:`WorkerPreparer`, the default in ``aap serve``) while the
processor runs the stateful steps of the previous chunk (:mod:`aap.process.steps`).
Work is done per column, or once per distinct value (URLs, user agents); only
extracting fields from the decoded events walks them one by one.

The table has the warehouse's event columns except ``person_id`` and ``session_id``,
plus what the stateful steps need (:data:`AUX_COLUMNS`).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import lru_cache
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import duckdb
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aap.errors import TransientError
from aap.process import enrich, shop
from aap.process.view import (
    _NO_CONTEXT,
    CampaignView,
    ContextView,
    EventView,
    LibraryView,
    PageView,
    decode,
)  # fmt: skip
from aap.store.schema import DEDUP_KEY_SQL

logger = logging.getLogger("aap.process")

NOT_SET = np.iinfo(np.int64).min
"""A missing time in int64 microsecond columns."""

ENRICHED_COLUMNS = (
    "url", "host", "path", "referrer", "referrer_domain",
    "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content",
    "browser", "browser_version", "os", "os_version", "device_type",
    "country", "region", "city", "library_name", "library_version",
)  # fmt: skip
AUX_COLUMNS = ("row", "key", "user_key", "anonymous_key", "previous_key", "raw_ids",
               "sdk_session", "traits", "received_ms")
"""Columns the stateful steps read and the warehouse does not store: the event's index
in the chunk (what the shop rows refer to, see :mod:`aap.process.shop`), the dedup key
(see :data:`aap.store.schema.DEDUP_KEY_SQL`), the keyed hashes of the ids (the collector
seals the raw ids; for events written unsealed, by tools and tests, ``raw_ids`` holds
userId / anonymousId / previousId and the processor hashes them), the SDK's session id, the
traits of identify events (JSON), and the receive time in milliseconds."""


@dataclass(frozen=True, slots=True)
class PrepareConfig:
    historical_sources: frozenset[str] = frozenset()
    """Sources whose timestamps are kept as sent (historical imports)."""
    max_future: timedelta = timedelta(minutes=5)
    """Corrected times further than this after the receive time are clamped to it."""


class Prepared(NamedTuple):
    table: pa.Table
    clamped: int
    """Events whose corrected time was in the future and was clamped."""
    shop: shop.Rows
    """Orders, order items and product mentions of the chunk's events."""


@dataclass
class _Work:
    events: list[EventView]
    cfg: PrepareConfig
    sql: duckdb.DuckDBPyConnection
    cols: dict[str, pa.Array] = field(default_factory=dict)
    clamped: int = 0
    shop: shop.Rows | None = None


_PURPOSES = pa.list_(pa.string())


def _strings(values: Sequence[Any]) -> pa.Array:
    return pa.array(values, pa.string())


def fields(w: _Work) -> None:
    """The event's own fields."""
    evs = w.events
    c = w.cols
    c["row"] = pa.array(np.arange(len(evs), dtype=np.int32))
    c["message_id"] = _strings([e.message_id for e in evs])
    c["source"] = _strings([e.source for e in evs])
    c["type"] = types = _strings([e.type for e in evs])
    c["event"] = pc.if_else(pc.equal(types, "track"), pc.coalesce(_strings([e.event for e in evs]), ""),
                            pc.binary_join_element_wise("$", types, ""))
    c["name"] = _strings([e.name for e in evs])
    c["category"] = _strings([e.category for e in evs])
    c["properties"] = _strings(list(map(_json.encode, [e.properties for e in evs])))
    c["gpc"] = pa.array([e.gpc for e in evs], pa.bool_())
    c["dnt"] = pa.array([e.dnt for e in evs], pa.bool_())
    for kind in ("user", "anonymous", "previous"):
        c[kind + "_key"] = pa.array([getattr(e, kind + "_key") for e in evs], pa.int64())
    c["raw_ids"] = pa.array([(e.user_id, e.anonymous_id, e.previous_id)
                             if e.user_id or e.anonymous_id or e.previous_id else None
                             for e in evs], pa.list_(pa.string()))
    c["traits"] = _strings([_json.encode(e.traits) if e.traits and e.type == "identify" else None
                            for e in evs])
    c["purposes"] = pa.array([list(e.purposes) for e in evs], _PURPOSES)


def keys(w: _Work) -> None:
    """Dedup keys (:data:`aap.store.schema.DEDUP_KEY_SQL`)."""
    w.sql.register("batch_ids", pa.table({"source": w.cols["source"],
                                          "message_id": w.cols["message_id"]}))
    try:
        res = w.sql.execute(f"SELECT {DEDUP_KEY_SQL} AS k FROM batch_ids").fetchnumpy()
    finally:
        w.sql.unregister("batch_ids")
    w.cols["key"] = pa.array(np.asarray(res["k"], dtype=np.uint64))


def _times(values: list[datetime | None]) -> tuple[pa.Array, np.ndarray]:
    """The times as a column (UTC, without a zone, as the warehouse stores them) and as
    microseconds (:data:`NOT_SET` where missing)."""
    arr = pa.array(values, pa.timestamp("us", tz="UTC"))
    return arr.cast(pa.timestamp("us")), arr.cast(pa.int64()).fill_null(NOT_SET).to_numpy()


def correct_time(w: _Work) -> None:
    """``timestamp + (receivedAt - sentAt)``; far-future times are clamped to receivedAt."""
    evs = w.events
    _, ts = _times([e.timestamp for e in evs])
    w.cols["sent_at"], sent = _times([e.sent_at for e in evs])
    w.cols["received_at"], recv = _times([e.received_at for e in evs])
    w.cols["received_ms"] = pa.array(recv // 1000)
    has_ts = ts != NOT_SET
    skew = has_ts & (sent != NOT_SET)
    out = np.where(has_ts, ts, recv)
    out[skew] = ts[skew] + (recv[skew] - sent[skew])
    future = out - recv > w.cfg.max_future // timedelta(microseconds=1)
    hist_sources = w.cfg.historical_sources
    if hist_sources:
        hist = np.fromiter((e.source in hist_sources for e in evs), bool, len(evs))
        future &= ~hist
        out[hist] = np.where(has_ts, ts, recv)[hist]
    out[future] = recv[future]
    w.clamped += int(future.sum())
    w.cols["timestamp"] = pa.array(out.astype("datetime64[us]"))


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


def _text_column(values: list[Any], convert: Callable[[Any], str | None] = _text) -> pa.Array:
    """The values that are non-empty strings (``convert`` of each value, when some are
    not strings); others null."""
    try:
        arr = pa.array(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([convert(v) for v in values], pa.string())
    if arr.null_count == len(arr):
        return arr
    return pc.if_else(pc.equal(pc.binary_length(arr), 0), pa.scalar(None, pa.string()), arr)


def _parts(values: list[Any], cls: type, empty: Any) -> list[Any]:
    """The values, with those that are not a ``cls`` replaced by ``empty``."""
    if all(v.__class__ is cls for v in values):
        return values
    return [v if v.__class__ is cls else empty for v in values]


def _inputs(events: list[EventView]) -> dict[str, pa.Array]:
    """What enrichment reads of the events, as columns: from the properties first, then
    from the context (a value of an unexpected type counts as missing)."""
    ctx = _parts([e.context for e in events], ContextView, _NO_CONTEXT)
    props = [e.properties for e in events]
    pages = _parts([c.page for c in ctx], PageView, _NO_PAGE)
    camps = _parts([c.campaign for c in ctx], CampaignView, _NO_CAMPAIGN)
    libs = _parts([c.library for c in ctx], LibraryView, _NO_LIBRARY)
    t = _text_column
    out = {
        "url_in": pc.coalesce(t([p.get("url") for p in props]), t([g.url for g in pages])),
        "referrer": pc.coalesce(t([p.get("referrer") for p in props]),
                                t([g.referrer for g in pages])),
        "path_in": pc.coalesce(t([p.get("path") for p in props]), t([g.path for g in pages])),
        "c_source": t([c.source for c in camps]),
        "c_medium": t([c.medium for c in camps]),
        "c_campaign": pc.coalesce(t([c.name for c in camps]), t([c.campaign for c in camps])),
        "c_term": t([c.term for c in camps]),
        "c_content": t([c.content for c in camps]),
        "ua": t([c.user_agent for c in ctx]),
        "library_name": t([lib.name for lib in libs]),
        "library_version": t([lib.version for lib in libs]),
        "sdk_session": pc.coalesce(t([c.session_id for c in ctx], _session_text),
                                   t([p.get("$session_id") for p in props], _session_text),
                                   t([c.session_id_snake for c in ctx], _session_text)),
    }
    return out


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


def enrichment(w: _Work) -> None:
    """Page, referrer, campaign, user agent, coarse geo and library columns; also the
    SDK's session id where the event carries one."""
    evs = w.events
    x = _inputs(evs)
    url, host, url_path, *url_utm = _per_value(x["url_in"], _url_parts, 8)
    c = w.cols
    c.update(url=url, host=host, path=pc.coalesce(url_path, x["path_in"]))
    c["referrer"] = x["referrer"]
    c["referrer_domain"] = _per_value(x["referrer"], _referrer_domain, 1)[0]
    for f, u in zip(enrich.UTM_FIELDS, url_utm, strict=True):
        c["utm_" + f] = pc.coalesce(x["c_" + f], u)
    c.update(zip(("browser", "browser_version", "os", "os_version", "device_type"),
                 _per_value(x["ua"], _agent, 5), strict=True))
    geos = [e.geo for e in evs]
    c["country"] = _strings([g.country if g else None for g in geos])
    c["region"] = _strings([g.region if g else None for g in geos])
    c["city"] = _strings([g.city if g else None for g in geos])
    c["library_name"] = x["library_name"]
    c["library_version"] = x["library_version"]
    c["sdk_session"] = x["sdk_session"]


def shop_rows(w: _Work) -> None:
    """Orders, items and products (see :mod:`aap.process.shop`), read from the decoded
    properties."""
    w.shop = shop.extract(w.cols["event"], w.events)


PREPARE_STEPS: tuple[tuple[str, Callable[[_Work], None]], ...] = (
    ("fields", fields),
    ("keys", keys),
    ("time", correct_time),
    ("enrich", enrichment),
    ("shop", shop_rows),
)

_json = msgspec.json.Encoder()
_PREPARED_COLUMNS = (
    "message_id", "source", "type", "event", "timestamp", "sent_at", "received_at", "name",
    "category", *ENRICHED_COLUMNS, "properties", "gpc", "dnt", "purposes", *AUX_COLUMNS,
)  # fmt: skip


def prepare(payloads: Sequence[bytes], cfg: PrepareConfig,
            sql: duckdb.DuckDBPyConnection) -> Prepared:
    """The events of these log payloads, as one table."""
    events = [ev for p in payloads for ev in decode(p)]
    w = _Work(events, cfg, sql)
    if events:
        for _, step in PREPARE_STEPS:
            step(w)
        table = pa.table({n: w.cols[n] for n in _PREPARED_COLUMNS})
    else:
        table = pa.table({n: pa.array([], pa.string()) for n in _PREPARED_COLUMNS})  # no rows
    return Prepared(table, w.clamped, w.shop or shop.Rows.empty())


# -- where preparation runs -------------------------------------------------------------


class LocalPreparer:
    """Prepares in the calling thread, when the result is asked for."""

    capacity = 1
    """Chunks that may be submitted before a result is taken."""

    def __init__(self, cfg: PrepareConfig) -> None:
        self.cfg = cfg
        self.sql = duckdb.connect()
        self._pending: Sequence[bytes] | None = None

    def submit(self, payloads: Sequence[bytes]) -> None:
        assert self._pending is None, "one chunk at a time"
        self._pending = payloads

    def result(self) -> Prepared:
        payloads, self._pending = self._pending, None
        assert payloads is not None, "nothing submitted"
        return prepare(payloads, self.cfg, self.sql)

    def reset(self) -> None:
        self._pending = None

    def close(self) -> None:
        self.sql.close()


class _Child:
    """One prepare process and its end of the pipe."""

    def __init__(self, ctx: Any, cfg: PrepareConfig, n: int) -> None:
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, cfg), daemon=True,
                                name=f"aap-prepare-{n}")
        self.proc.start()
        child.close()
        self.conn: Connection = parent

    def close(self) -> None:
        self.conn.close()
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)


class WorkerPreparer:
    """Prepares in ``processes`` child processes, chunks going to them in turn:
    :meth:`submit` returns at once (up to :attr:`capacity` chunks ahead), :meth:`result`
    waits for the oldest. The children are stateless; one that dies is started again,
    and the chunk it was working on fails with a :class:`TransientError` (the processor
    retries)."""

    def __init__(self, cfg: PrepareConfig, processes: int = 1) -> None:
        self.cfg = cfg
        self.capacity = max(1, processes)
        self._ctx = mp.get_context("spawn")
        self._children: list[_Child | None] = [None] * self.capacity
        self._submitted = 0
        self._taken = 0
        for i in range(self.capacity):
            self._start(i)

    def _start(self, i: int) -> _Child:
        child = self._children[i] = _Child(self._ctx, self.cfg, i)
        return child

    def _restart(self, i: int) -> None:
        old, self._children[i] = self._children[i], None
        if old is not None:
            old.close()
        self._start(i)

    @property
    def pending(self) -> int:
        return self._submitted - self._taken

    def submit(self, payloads: Sequence[bytes]) -> None:
        assert self.pending < self.capacity, f"{self.capacity} chunks at a time"
        i = self._submitted % self.capacity
        child = self._children[i]
        if child is None or not child.proc.is_alive():
            self._restart(i)
            child = self._children[i]
        assert child is not None
        try:
            child.conn.send_bytes(_job_encoder.encode(
                (sorted(self.cfg.historical_sources), list(payloads))))
        except OSError as exc:
            self._restart(i)
            raise TransientError(f"the prepare worker went away: {exc}") from exc
        self._submitted += 1

    def result(self) -> Prepared:
        assert self.pending, "nothing submitted"
        i = self._taken % self.capacity
        self._taken += 1
        child = self._children[i]
        try:
            if child is None:
                raise EOFError("not running")
            data = child.conn.recv_bytes()
        except (EOFError, OSError) as exc:
            self._restart(i)
            raise TransientError(f"the prepare worker went away: {exc}") from exc
        if data[:1] == b"E":
            raise RuntimeError(f"preparing a chunk failed: {data[1:].decode(errors='replace')}")
        return _unpack(data)

    def reset(self) -> None:
        """Forget the chunks in flight (their results are read and thrown away)."""
        while self.pending:
            try:
                self.result()
            except Exception:
                pass

    def close(self) -> None:
        self._submitted = self._taken = 0
        for i, child in enumerate(self._children):
            if child is not None:
                child.close()
                self._children[i] = None


_HEADER = struct.Struct("<c7xq")
"""Kind (``P``), then the clamped count; 16 bytes keep the Arrow buffers after it aligned."""
_LENGTH = struct.Struct("<q")


def _pack(prepared: Prepared) -> pa.Buffer:
    """:data:`_HEADER`, then the event table and the three shop tables, each an Arrow IPC
    stream preceded by its length and padded to 8 bytes."""
    sink = pa.BufferOutputStream()
    sink.write(_HEADER.pack(b"P", prepared.clamped))
    rows = prepared.shop
    for table in (prepared.table, rows.orders, rows.items, rows.products):
        part = pa.BufferOutputStream()
        with pa.ipc.new_stream(part, table.schema) as writer:
            writer.write_table(table)
        buf = part.getvalue()
        sink.write(_LENGTH.pack(buf.size))
        sink.write(buf)
        sink.write(b"\0" * (-buf.size % 8))
    return sink.getvalue()


def _unpack(data: bytes) -> Prepared:
    _, clamped = _HEADER.unpack_from(data)
    view = pa.py_buffer(data)
    at = _HEADER.size
    tables = []
    for _ in range(4):
        (size,) = _LENGTH.unpack_from(data, at)
        at += _LENGTH.size
        with pa.ipc.open_stream(view[at:at + size]) as reader:
            tables.append(reader.read_all())
        at += size + (-size % 8)
    return Prepared(tables[0], clamped, shop.Rows(*tables[1:]))
_job_encoder = msgspec.msgpack.Encoder()
_job_decoder = msgspec.msgpack.Decoder(tuple[list[str], list[bytes]])
"""A job for a prepare process: the historical sources as of now, and the payloads."""


def _worker_main(conn: Connection, cfg: PrepareConfig) -> None:
    """The child's loop: payloads in, :data:`_HEADER` and an Arrow IPC stream out (or
    ``b"E" + message``). Ends when the parent closes its end (or dies)."""
    import gc

    # A chunk is tens of thousands of short-lived objects in no cycles, freed by their
    # reference counts; the collector would only walk them over and over (~1 µs an event).
    gc.disable()
    sql = duckdb.connect(config={"threads": 1})
    done = 0
    while True:
        done += 1
        if done % 200 == 0:
            gc.collect()
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            historical, payloads = _job_decoder.decode(data)
            if frozenset(historical) != cfg.historical_sources:
                cfg = replace(cfg, historical_sources=frozenset(historical))
            out = _pack(prepare(payloads, cfg, sql))
        except Exception as exc:
            logger.exception("preparing a chunk failed")
            out = b"E" + f"{type(exc).__name__}: {exc}".encode()
        try:
            conn.send_bytes(out)
        except OSError:
            return
