"""The stateless half of the processor: log records → one Arrow table per chunk.

These steps depend on nothing but the records and the configuration, so they can run
in another process (:class:`WorkerPreparer`, the default in ``aap serve``) while the
processor runs the stateful steps of the previous chunk (:mod:`aap.process.steps`).

No step walks the events one by one in Python: the chunk's records (JSON arrays, see
:func:`aap.events.encode_events`) are read by DuckDB's JSON reader straight into
columns, fields of ``context`` and ``properties`` included (:data:`READ_SQL`); the
rest is done per column, or once per distinct value (URLs, user agents), and only the
properties of e-commerce events are decoded in Python (:mod:`aap.process.shop`).

The table has the warehouse's event columns except ``person_id`` and ``session_id``,
plus what the stateful steps need (:data:`AUX_COLUMNS`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing as mp
import os
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import lru_cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aap.errors import TransientError
from aap.events import MAX_FUTURE, json_payload
from aap.process import enrich, shop
from aap.store.schema import DEDUP_KEY_SQL, EVENT_ARROW_SCHEMA

logger = logging.getLogger("aap.process")

NOT_SET = np.iinfo(np.int64).min
"""A missing time in int64 microsecond columns."""

AUX_COLUMNS = ("row", "key", "user_key", "anonymous_key", "previous_key", "raw_ids",
               "sdk_session", "traits", "received_ms")
"""Columns the stateful steps read and the warehouse does not store: the event's index
in the chunk (what the shop rows refer to, see :mod:`aap.process.shop`), the dedup key
(see :data:`aap.store.schema.DEDUP_KEY_SQL`), the keyed hashes of the ids (the collector
seals the raw ids; for events written unsealed, by tools and tests, ``raw_ids`` holds
userId / anonymousId / previousId and the processor hashes them), the SDK's session id, the
traits of identify events (JSON), and the receive time in milliseconds."""

_AUX_TYPES = {"row": pa.int32(), "key": pa.uint64(), "user_key": pa.int64(),
              "anonymous_key": pa.int64(), "previous_key": pa.int64(),
              "raw_ids": pa.list_(pa.string()), "sdk_session": pa.string(),
              "traits": pa.string(), "received_ms": pa.int64()}
_STORED = {f.name: f.type for f in EVENT_ARROW_SCHEMA if f.name not in ("person_id", "session_id")}
PREPARED_SCHEMA = pa.schema([*_STORED.items(), *_AUX_TYPES.items()])
"""The table :func:`prepare` returns."""


@dataclass(frozen=True, slots=True)
class PrepareConfig:
    historical_sources: frozenset[str] = frozenset()
    """Sources whose timestamps are kept as sent (historical imports)."""
    max_future: timedelta = MAX_FUTURE
    """Corrected times further than this after the receive time are clamped to it."""


class Prepared(NamedTuple):
    table: pa.Table
    clamped: int
    """Events whose corrected time was in the future and was clamped."""
    shop: shop.Rows
    """Orders, order items and product mentions of the chunk's events."""


# -- reading: records → columns, in DuckDB ----------------------------------------------

_FIELDS = {
    "type": "VARCHAR", "messageId": "VARCHAR", "source": "VARCHAR", "event": "VARCHAR",
    "name": "VARCHAR", "category": "VARCHAR", "userId": "VARCHAR", "anonymousId": "VARCHAR",
    "previousId": "VARCHAR", "timestamp": "TIMESTAMPTZ", "sentAt": "TIMESTAMPTZ",
    "receivedAt": "TIMESTAMPTZ", "context": "JSON", "properties": "JSON", "traits": "JSON",
    "purposes": "JSON", "geo": "STRUCT(country VARCHAR, region VARCHAR, city VARCHAR)",
    "gpc": "BOOLEAN", "dnt": "BOOLEAN", "userKey": "BIGINT", "anonymousKey": "BIGINT",
    "previousKey": "BIGINT",
}  # fmt: skip
"""What the steps read of a logged :class:`aap.events.Event` (the reader skips the rest)."""

_CONTEXT_PATHS = ("page.url", "page.referrer", "page.path", "campaign.source",
                  "campaign.medium", "campaign.name", "campaign.campaign", "campaign.term",
                  "campaign.content", "userAgent", "library.name", "library.version",
                  "sessionId", "session_id", "os.name", "os.version")
_PROPERTY_PATHS = ("url", "referrer", "path", '"$session_id"')

_INPUTS: dict[str, tuple[tuple[str, bool], ...]] = {
    # column: the fields it is read from, first that has one wins; (field, integers too)
    "url_in": (("p.url", False), ("c.page.url", False)),
    "referrer": (("p.referrer", False), ("c.page.referrer", False)),
    "path_in": (("p.path", False), ("c.page.path", False)),
    "c_source": (("c.campaign.source", False),),
    "c_medium": (("c.campaign.medium", False),),
    "c_campaign": (("c.campaign.name", False), ("c.campaign.campaign", False)),
    "c_term": (("c.campaign.term", False),),
    "c_content": (("c.campaign.content", False),),
    "ua": (("c.userAgent", False),),
    "c_os": (("c.os.name", False),),
    "c_os_version": (("c.os.version", False),),
    "library_name": (("c.library.name", False),),
    "library_version": (("c.library.version", False),),
    "sdk_session": (("c.sessionId", True), ('p."$session_id"', True), ("c.session_id", True)),
}
"""What enrichment and sessions read, from the properties first, then from the context.
A value counts only if it is a non-empty string (for session ids, also an integer, as
text); anything else — a number where text belongs, an object, a ``page`` that is not
an object — counts as missing."""


def _input_sql(name: str, sources: tuple[tuple[str, bool], ...]) -> str:
    parts = []
    for src, integers in sources:
        doc, path = src.split(".", 1)
        i = (_CONTEXT_PATHS if doc == "c" else _PROPERTY_PATHS).index(path) + 1
        kinds = "('VARCHAR', 'BIGINT', 'UBIGINT')" if integers else "('VARCHAR')"
        parts.append(f"CASE WHEN {doc}t[{i}] IN {kinds} AND {doc}x[{i}] <> '' "
                     f"THEN {doc}x[{i}] END")
    return (f"coalesce({', '.join(parts)})" if len(parts) > 1 else parts[0]) + f" AS {name}"


def _paths(paths: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'$.{p}'" for p in paths) + "]"


READ_SQL = f"""
WITH e AS (
    SELECT *,
        json_extract_string(context, {_paths(_CONTEXT_PATHS)}) AS cx,
        json_type(context, {_paths(_CONTEXT_PATHS)}) AS ct,
        json_extract_string(properties, {_paths(_PROPERTY_PATHS)}) AS px,
        json_type(properties, {_paths(_PROPERTY_PATHS)}) AS pt
    FROM read_json($path, format = 'array', records = true,
                   columns = {{{", ".join(f"{k}: '{v}'" for k, v in _FIELDS.items())}}})
)
SELECT
    messageId AS message_id, source, type,
    CASE WHEN type = 'track' THEN coalesce(event, '') ELSE '$' || type END AS event,
    epoch_us(timestamp) AS ts, epoch_us(sentAt) AS sent, epoch_us(receivedAt) AS recv,
    name, category,
    geo.country AS country, geo.region AS region, geo.city AS city,
    coalesce(properties, '{{}}')::VARCHAR AS properties,
    coalesce(gpc, false) AS gpc, coalesce(dnt, false) AS dnt,
    coalesce(json_keys(purposes), []::VARCHAR[]) AS purposes,
    hash(source, messageId) AS key,
    userKey AS user_key, anonymousKey AS anonymous_key, previousKey AS previous_key,
    CASE WHEN coalesce(userId, '') <> '' OR coalesce(anonymousId, '') <> ''
              OR coalesce(previousId, '') <> ''
         THEN [userId, anonymousId, previousId] END AS raw_ids,
    CASE WHEN type = 'identify' AND traits IS NOT NULL AND traits::VARCHAR <> '{{}}'
         THEN traits::VARCHAR END AS traits,
    {(","+chr(10)+"    ").join(_input_sql(k, v) for k, v in _INPUTS.items())}
FROM e
"""
"""One chunk's events as columns: its records are one JSON array in a scratch file
(``$path``). The dedup key is :data:`aap.store.schema.DEDUP_KEY_SQL` over the same
source and message id."""
assert DEDUP_KEY_SQL == "hash(source, message_id)", "READ_SQL computes the dedup key"


SCRATCH_MIN_FREE = 512 << 20
"""``/dev/shm`` is used for scratch files only with this much free (containers often give
it 64 MB; a chunk of large events takes tens of MB in each prepare process)."""


def _scratch_dir() -> str:
    """Where chunks are written for DuckDB to read: memory (``/dev/shm``) where there is
    one with room, so that the events never touch a disk there; else the temporary
    directory."""
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
        if os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize >= SCRATCH_MIN_FREE:
            return str(shm)
    except OSError:
        pass
    return tempfile.gettempdir()


def _remove_stale(scratch: str) -> None:
    """Remove the scratch files of processes that are gone (killed in the middle of a
    chunk: the file still holds that chunk's events, as the log holds them)."""
    for path in Path(scratch).glob("aap-chunk-*-*.json"):
        try:
            pid = int(path.name.split("-")[2])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            continue  # alive, someone else's


class Reader:
    """Reads chunks of log records into columns with its own DuckDB connection, through a
    private scratch file (mode 0600, emptied after each chunk, removed on :meth:`close`)."""

    def __init__(self, threads: int | None = None) -> None:
        config: dict[str, str | bool | int | float | list[str]] = (
            {"threads": threads} if threads else {})
        self.sql = duckdb.connect(config=config)
        self.sql.execute("SET TimeZone = 'UTC'")  # times sent without an offset are UTC
        self.path = self._scratch(_scratch_dir())

    @staticmethod
    def _scratch(directory: str) -> str:
        _remove_stale(directory)
        fd, path = tempfile.mkstemp(prefix=f"aap-chunk-{os.getpid()}-", suffix=".json",
                                    dir=directory)
        os.close(fd)
        return path

    def read(self, payloads: Sequence[bytes]) -> pa.Table:
        # One array of all the records' events: their arrays' insides, between commas.
        parts: list[memoryview | bytes] = [b"["]
        for raw in map(json_payload, payloads):
            if len(raw) > 2:
                parts += (memoryview(raw)[1:-1], b",")
        parts[-1:] = [b"]"] if len(parts) > 1 else [b"[", b"]"]
        try:
            self._write(parts)
        except OSError as exc:
            if exc.errno != errno.ENOSPC or os.path.dirname(self.path) == tempfile.gettempdir():
                raise
            # the memory file system is full: from now on, the temporary directory
            logger.warning("no room for a chunk in %s; using %s from now on",
                           os.path.dirname(self.path), tempfile.gettempdir())
            with contextlib.suppress(OSError):  # (_write emptied it)
                os.unlink(self.path)
            self.path = self._scratch(tempfile.gettempdir())
            self._write(parts)
        try:
            return self.sql.sql(READ_SQL, params={"path": self.path}).to_arrow_table()
        finally:
            self._empty()  # the events do not stay in the scratch file

    def _write(self, parts: list[memoryview | bytes]) -> None:
        try:
            with open(self.path, "wb") as f:
                f.writelines(parts)
        except OSError:
            with contextlib.suppress(OSError):
                self._empty()
            raise

    def _empty(self) -> None:
        with open(self.path, "wb"):
            pass

    def close(self) -> None:
        self.sql.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


# -- the steps ---------------------------------------------------------------------------


@dataclass
class _Work:
    read: pa.Table
    cfg: PrepareConfig
    cols: dict[str, pa.Array] = field(default_factory=dict)
    clamped: int = 0
    shop: shop.Rows | None = None

    def col(self, name: str) -> pa.Array:
        return self.read.column(name).combine_chunks()


def fields(w: _Work) -> None:
    """The event's own fields, and the inputs of the stateful steps."""
    w.cols["row"] = pa.array(np.arange(w.read.num_rows, dtype=np.int32))
    for name in ("message_id", "source", "type", "event", "name", "category", "country",
                 "region", "city", "properties", "gpc", "dnt", "purposes", "key", "user_key",
                 "anonymous_key", "previous_key", "raw_ids", "traits", "library_name",
                 "library_version", "sdk_session", "referrer"):
        w.cols[name] = w.col(name)


def _micros(col: pa.Array) -> np.ndarray:
    return col.fill_null(NOT_SET).to_numpy()


def _times(col: pa.Array) -> pa.Array:
    """Microseconds since the epoch → the warehouse's UTC timestamps."""
    return col.cast(pa.timestamp("us"))


def correct_time(w: _Work) -> None:
    """``timestamp + (receivedAt - sentAt)``; far-future times are clamped to receivedAt."""
    ts, sent_col, recv_col = w.col("ts"), w.col("sent"), w.col("recv")
    ts, sent, recv = _micros(ts), _micros(sent_col), _micros(recv_col)
    w.cols["sent_at"], w.cols["received_at"] = _times(sent_col), _times(recv_col)
    w.cols["received_ms"] = pa.array(recv // 1000)
    has_ts = ts != NOT_SET
    skew = has_ts & (sent != NOT_SET)
    out = np.where(has_ts, ts, recv)
    out[skew] = ts[skew] + (recv[skew] - sent[skew])
    future = out - recv > w.cfg.max_future // timedelta(microseconds=1)
    hist_sources = w.cfg.historical_sources
    if hist_sources:
        hist = pc.is_in(w.col("source"), value_set=pa.array(sorted(hist_sources))
                        ).to_numpy(zero_copy_only=False)
        future &= ~hist
        out[hist] = np.where(has_ts, ts, recv)[hist]
    out[future] = recv[future]
    w.clamped += int(future.sum())
    w.cols["timestamp"] = pa.array(out.astype("datetime64[us]"))


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


MOBILE_OS = ("iOS", "Android")
_OS_NAMES = {"ios": "iOS", "iphone os": "iOS", "android": "Android"}


def _os_name(name: str) -> tuple[Any, ...]:
    """An OS as an SDK names it in ``context.os.name``, spelled as ua-parser spells it."""
    return (_OS_NAMES.get(name.strip().lower(), name.strip()[:64] or None),)


def enrichment(w: _Work) -> None:
    """Page, referrer, campaign and user agent columns (coarse geo, library and the SDK's
    session id are read as they are, see :data:`READ_SQL`)."""
    url, host, url_path, *url_utm = _per_value(w.col("url_in"), _url_parts, 8)
    c = w.cols
    c.update(url=url, host=host, path=pc.coalesce(url_path, w.col("path_in")))
    c["referrer_domain"] = _per_value(c["referrer"], _referrer_domain, 1)[0]
    for f, u in zip(enrich.UTM_FIELDS, url_utm, strict=True):
        c["utm_" + f] = pc.coalesce(w.col("c_" + f), u)
    browser, browser_version, os_, os_version, device_type = _per_value(w.col("ua"), _agent, 5)
    # an app's events may carry no user agent (PostHog's and RudderStack's iOS SDKs): then
    # the OS its SDK names in the context (``context.os``), and an iOS or Android one is
    # mobile; where the user agent names an OS, it is the one kept
    ctx = pc.is_null(os_)
    ctx_os = _per_value(w.col("c_os"), _os_name, 1)[0]
    none = pa.scalar(None, pa.string())
    c.update(browser=browser, browser_version=browser_version,
             os=pc.if_else(ctx, ctx_os, os_),
             os_version=pc.if_else(ctx, pc.if_else(pc.is_null(ctx_os), none,
                                                   w.col("c_os_version")), os_version),
             device_type=pc.coalesce(device_type, pc.if_else(
                 pc.and_(ctx, pc.is_in(ctx_os, pa.array(MOBILE_OS))), pa.scalar("mobile"),
                 none)))


def shop_rows(w: _Work) -> None:
    """Orders, items and products (see :mod:`aap.process.shop`)."""
    c = w.cols
    w.shop = shop.extract(c["event"], c["message_id"], c["source"], c["properties"])


PREPARE_STEPS: tuple[tuple[str, Callable[[_Work], None]], ...] = (
    ("fields", fields),
    ("time", correct_time),
    ("enrich", enrichment),
    ("shop", shop_rows),
)


def prepare(payloads: Sequence[bytes], cfg: PrepareConfig, reader: Reader) -> Prepared:
    """The events of these log payloads, as one table (:data:`PREPARED_SCHEMA`)."""
    read = reader.read(payloads)
    if not read.num_rows:
        return Prepared(PREPARED_SCHEMA.empty_table(), 0, shop.Rows.empty())
    w = _Work(read, cfg)
    for _, step in PREPARE_STEPS:
        step(w)
    table = pa.table([w.cols[f.name].cast(f.type) for f in PREPARED_SCHEMA],
                     schema=PREPARED_SCHEMA)
    return Prepared(table, w.clamped, w.shop or shop.Rows.empty())


# -- where preparation runs -------------------------------------------------------------


class LocalPreparer:
    """Prepares in the calling thread, when the result is asked for."""

    capacity = 1
    """Chunks that may be submitted before a result is taken."""

    def __init__(self, cfg: PrepareConfig) -> None:
        self.cfg = cfg
        self.reader = Reader()
        self._pending: Sequence[bytes] | None = None

    def submit(self, payloads: Sequence[bytes]) -> None:
        assert self._pending is None, "one chunk at a time"
        self._pending = payloads

    def result(self) -> Prepared:
        payloads, self._pending = self._pending, None
        assert payloads is not None, "nothing submitted"
        return prepare(payloads, self.cfg, self.reader)

    def reset(self) -> None:
        self._pending = None

    def close(self) -> None:
        self.reader.close()


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
GC_EVERY_JOBS = 200
"""A prepare process runs with the garbage collector off, and collects once every this
many jobs."""
_job_encoder = msgspec.msgpack.Encoder()
_job_decoder = msgspec.msgpack.Decoder(tuple[list[str], list[bytes]])
"""A job for a prepare process: the historical sources as of now, and the payloads."""


def _worker_main(conn: Connection, cfg: PrepareConfig) -> None:
    """The child's loop: payloads in, :data:`_HEADER` and an Arrow IPC stream out (or
    ``b"E" + message``). Ends when the parent closes its end (or dies)."""
    import gc

    from aap.lifecycle import die_with_parent

    die_with_parent()  # dies with the core (a chunk in flight is done again)
    # A chunk is tens of thousands of short-lived objects in no cycles, freed by their
    # reference counts; the collector would only walk them over and over (~1 µs an event).
    gc.disable()
    reader = Reader(threads=1)
    done = 0
    while True:
        done += 1
        if done % GC_EVERY_JOBS == 0:
            gc.collect()
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            reader.close()
            return
        try:
            historical, payloads = _job_decoder.decode(data)
            if frozenset(historical) != cfg.historical_sources:
                cfg = replace(cfg, historical_sources=frozenset(historical))
            out = _pack(prepare(payloads, cfg, reader))
        except Exception as exc:
            logger.exception("preparing a chunk failed")
            out = b"E" + f"{type(exc).__name__}: {exc}".encode()
        try:
            conn.send_bytes(out)
        except OSError:
            reader.close()
            return
