"""Analysts' SQL runs in a worker process with an OS memory limit, killed at its deadline.

DuckDB's ``memory_limit`` covers its buffer manager, not everything a query allocates
(``range``/``list`` building, strings, Python-side conversion), and an interrupt is not
seen while DuckDB is inside some operators. So the ``sql`` kind does not run in the core:

- a **worker** is a Python process (``python -m aap.query.sandbox FD``) started ahead of
  time, with ``RLIMIT_DATA`` set to the memory limit (an allocation beyond it fails in
  the worker: DuckDB answers "Out of Memory", or the process dies), dying with its parent
  (``PR_SET_PDEATHSIG``, and an idle worker exits when its socket closes);
- per query the core sends the worker, over a Unix socket pair, the query and one pipe
  per view it reads (``SCM_RIGHTS``); threads of the core write each view's rows into
  its pipe as an Arrow IPC stream straight from a warehouse snapshot, batch by batch, so
  nothing is written to disk and the core holds one batch per view at a time;
- the worker answers with the JSON result (its size capped) and drops its DuckDB
  connection; it takes the next query in a fresh one, unless it timed out, ran out of
  memory, holds more than a quarter of its limit afterwards or ran ``MAX_QUERIES``: then
  it is killed and replaced;
- at the deadline the worker interrupts DuckDB itself; if no answer came a little later
  the core kills it (SIGKILL). Either way the answer is a ``timeout``.

A small pool of idle workers hides the start-up (~0.2-0.4 s of imports).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import decimal
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from aap.errors import BadRequest
from aap.settings import QuerySettings

MAX_QUERIES = 200
"""A worker is replaced after this many queries (or at once after a timeout, a memory
failure, or when it did not give its memory back)."""
GRACE_S = 1.0
"""After the deadline, how long the core waits for the worker's own ``timeout`` answer
before it kills the worker."""
ANSWER_OVERHEAD = 4096
"""Bytes a worker's answer may hold beyond the rows' budget (its other fields)."""
REUSE_BELOW = 4
"""A worker is reused while its resident memory is below 1/REUSE_BELOW of its limit."""
FETCH_ROWS = 2048
"""Rows fetched from DuckDB at a time while the answer is encoded."""
_HEADER = struct.Struct("!Q")


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 10**9
    """``RLIMIT_DATA`` of the worker; DuckDB's own limit in it is 60% of this."""
    threads: int = 2
    max_response_bytes: int = 50 * 2**20

    @classmethod
    def from_settings(cls, query: QuerySettings) -> Limits:
        """``AAP_SQL_MEMORY`` and ``AAP_MAX_RESPONSE_BYTES`` (checked with the settings)."""
        return cls(memory_bytes=query.sql_memory_bytes, max_response_bytes=query.max_response_bytes)


def duckdb_memory(memory_bytes: int) -> str:
    """DuckDB's own limit in a worker: 60% of the OS limit (the rest: Python, Arrow)."""
    return f"{max(64, memory_bytes * 6 // 10 // 2**20)}MiB"


class SandboxFailed(Exception):
    """The worker answered with an error: ``kind`` is ``timeout``, ``memory``,
    ``binder``, ``too_large`` or ``error``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


# -- the core's side --

def _send_all(sock: socket.socket, payload: bytes, fds: list[int]) -> None:
    data = _HEADER.pack(len(payload)) + payload
    sent = socket.send_fds(sock, [data[:65536]], fds)
    if sent < len(data):
        sock.sendall(data[sent:])


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class Worker:
    def __init__(self, limits: Limits) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aap.query.sandbox", str(child.fileno()),
                 str(limits.memory_bytes), str(limits.threads)],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, close_fds=True)
        finally:
            child.close()
        self.sock = parent
        self.limits = limits
        self.queries = 0
        self.reusable = False

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.sock.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def run(self, header: dict[str, Any], fds: list[int], deadline: float) -> dict[str, Any]:
        """Send the query and the views' pipes (read ends), wait for the answer until
        ``deadline`` (monotonic) plus a grace. Afterwards ``reusable`` says whether the
        worker may take another query (it answered, and says it is small again)."""
        self.reusable = False
        self.queries += 1
        try:
            _send_all(self.sock, msgspec.json.encode(header), fds)
        except OSError:
            raise SandboxFailed("error", "the query's worker process is not running"
                                ) from None
        self.sock.settimeout(max(0.0, deadline - time.monotonic()) + GRACE_S)
        try:
            (n,) = _HEADER.unpack(_recv_exact(self.sock, _HEADER.size))
            if n > self.limits.max_response_bytes + ANSWER_OVERHEAD:
                raise SandboxFailed("too_large", "")
            out: dict[str, Any] = msgspec.json.decode(_recv_exact(self.sock, n))
        except TimeoutError:
            raise SandboxFailed("timeout", "") from None
        except (EOFError, ConnectionError):
            self.proc.wait(timeout=10)
            if time.monotonic() >= deadline:
                raise SandboxFailed("timeout", "") from None
            raise SandboxFailed("memory", f"the query's worker process stopped (exit "
                                f"{self.proc.returncode})") from None
        error = out.get("error")
        self.reusable = (bool(out.pop("reuse", False)) and self.queries < MAX_QUERIES
                         and error not in ("timeout", "memory"))
        if error is not None:
            raise SandboxFailed(error, out.get("message", ""))
        return out


class WorkerPool:
    """Idle workers started ahead of time (``idle`` of them), and workers given back after
a query that left them clean."""

    def __init__(self, limits: Limits, idle: int = 2) -> None:
        self.limits = limits
        self.size = idle
        self.idle: list[Worker] = []
        self.busy: set[Worker] = set()
        self.lock = threading.Lock()
        self.wanted = threading.Event()
        self.closed = False
        self.thread = threading.Thread(target=self._fill, name="aap-sql-workers", daemon=True)
        if idle > 0:
            self.wanted.set()
            self.thread.start()

    def _fill(self) -> None:
        while True:
            self.wanted.wait()
            self.wanted.clear()
            while not self.closed:
                with self.lock:
                    if len(self.idle) >= self.size:
                        break
                try:
                    w = Worker(self.limits)
                except OSError:
                    time.sleep(1.0)
                    continue
                with self.lock:
                    if self.closed:
                        w.kill()
                        return
                    self.idle.append(w)
            if self.closed:
                return

    def take(self) -> Worker:
        found: Worker | None = None
        with self.lock:
            while self.idle and found is None:
                w = self.idle.pop(0)
                if w.proc.poll() is None:
                    found = w
                else:
                    w.kill()
        if self.size > 0 and not self.idle:
            self.wanted.set()  # a burst: have the next ones ready
        w = found if found is not None else Worker(self.limits)
        with self.lock:
            if self.closed:
                w.kill()
                raise SandboxFailed("error", "the server is stopping")
            self.busy.add(w)
        return w

    def give_back(self, w: Worker) -> None:
        with self.lock:
            self.busy.discard(w)
            if not self.closed and w.reusable and len(self.idle) < max(1, self.size):
                self.idle.append(w)
                return
        w.kill()
        if self.size > 0:
            self.wanted.set()  # replace it

    def close(self) -> None:
        """Kill every worker, busy ones included (their queries end at once)."""
        with self.lock:
            self.closed = True
            idle, self.idle = self.idle, []
            busy = list(self.busy)
        self.wanted.set()
        for w in idle + busy:
            w.kill()


_POOLS: dict[Limits, WorkerPool] = {}
_POOLS_LOCK = threading.Lock()


def pool(limits: Limits, idle: int = 2) -> WorkerPool:
    with _POOLS_LOCK:
        p = _POOLS.get(limits)
        if p is None:
            p = _POOLS[limits] = WorkerPool(limits, idle)
        return p


def shutdown() -> None:
    """Kill the idle workers (the core is stopping)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for p in pools:
        p.close()


_BROKEN = b"\xff\xff\xff\xff\x10\x00\x00\x00"
"""What ends a view's stream whose source failed: the start of a message that never
comes. A stream that just stopped would read as complete (Arrow takes the end of the
pipe for the end of the stream), and the query would answer over part of the rows."""


def _stream(reader: Any, fd: int, failed: list[BaseException]) -> None:
    """Write one view's record batches into its pipe as an Arrow IPC stream. When the
    source fails (a tier file not read), the failure goes to ``failed`` first and the
    stream is then broken, so the worker cannot answer from the rows before it."""
    import pyarrow as pa

    with contextlib.suppress(OSError), os.fdopen(fd, "wb", buffering=1 << 16) as f:
        try:
            out = pa.ipc.new_stream(f, reader.schema)
            batches = iter(reader)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except Exception as exc:  # the source: the answer would lack its rows
                    failed.append(exc)
                    f.write(_BROKEN)
                    return
                out.write_batch(batch)
            out.close()
        except Exception:  # the worker stopped reading (done, failed or
            pass           # killed), or the source was interrupted at the end of the query


def run(query: str, views: Iterable[tuple[str, Any, bool, str]], *, limit: int,
        timeout_s: float, limits: Limits, idle: int = 2,
        interrupt: Iterable[Any] = (), plan: bool = False) -> dict[str, Any]:
    """Run ``query`` in a worker on ``views``: (name the data is registered under,
    ``pyarrow.RecordBatchReader``, whether the query reads it more than once, the SQL
    that creates the view the query names over it). ``interrupt``: cursors to interrupt
    at the end (the views' sources), so that a writer never outlives the query. With
    ``plan``, the answer also holds DuckDB's optimized plan of the query as JSON text
    (``"plan"``: what it reads, for the audit log)."""
    deadline = time.monotonic() + timeout_s
    workers = pool(limits, idle)
    worker = workers.take()
    writers: list[threading.Thread] = []
    fds: list[int] = []
    names: list[tuple[str, bool, str]] = []
    failed: list[BaseException] = []
    try:
        for name, reader, whole, create in views:
            r, w = os.pipe()
            fds.append(r)
            names.append((name, whole, create))
            t = threading.Thread(target=_stream, args=(reader, w, failed), daemon=True,
                                 name=f"aap-sql-view-{name}")
            t.start()
            writers.append(t)
        header = {"query": query, "views": names, "limit": limit, "timeout_s": timeout_s,
                  "max_bytes": limits.max_response_bytes, "plan": plan}
        try:
            return worker.run(header, fds, deadline)
        except SandboxFailed:
            if failed:  # the worker met a broken view: its source's failure is the cause
                raise failed[0] from None
            raise
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        workers.give_back(worker)
        for cur in interrupt:
            with contextlib.suppress(Exception):
                cur.interrupt()
        for t in writers:
            t.join(timeout=30)


def failed(exc: SandboxFailed, *, timeout_s: float, limits: Limits) -> BadRequest:
    """The 400 for a worker's failure (``binder`` errors are the caller's to word)."""
    if exc.kind == "timeout":
        return BadRequest(f"the query ran over its time limit of {timeout_s:g} s",
                          code="timeout")
    if exc.kind == "memory":
        return BadRequest(f"the query needed more than its memory limit of "
                          f"{limits.memory_bytes / 2**20:.0f} MiB (AAP_SQL_MEMORY)",
                          {"limit_bytes": limits.memory_bytes, "reason": exc.message},
                          code="memory_limit")
    if exc.kind == "too_large":
        return BadRequest(f"the answer is larger than {limits.max_response_bytes} bytes "
                          "(AAP_MAX_RESPONSE_BYTES): ask for fewer rows or columns",
                          {"limit_bytes": limits.max_response_bytes},
                          code="response_too_large")
    return BadRequest(exc.message, code="bad_query")


# -- the worker's side --

def jsonable(v: Any) -> Any:
    """A value of a DuckDB row as JSON has it (dates ISO, decimals as floats, NaN null)."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else None
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    return str(v)


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        os._exit(0)


def _connect(threads: int, memory_limit: str) -> Any:
    import duckdb

    return duckdb.connect(":memory:", config={
        "enable_external_access": False, "threads": threads, "memory_limit": memory_limit,
        "autoinstall_known_extensions": False, "autoload_known_extensions": False,
    })


def _execute(con: Any, header: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    import duckdb
    import pyarrow as pa

    timer = threading.Timer(float(header["timeout_s"]), con.interrupt)
    timer.start()
    files = [os.fdopen(fd, "rb") for fd in fds]
    try:
        _register_views(con, header["views"], files)
        con.execute("SET lock_configuration = true")
        plan = _plan(con, header["query"]) if header.get("plan") else ""
        res = con.execute(header["query"])
        columns = [d[0] for d in res.description or []]
        rows, truncated = _fetch_rows(res, int(header["limit"]), int(header["max_bytes"]))
        out = {"kind": "sql", "columns": columns, "rows": rows, "truncated": truncated}
        if header.get("plan"):
            out["plan"] = plan
        return out
    except _TooLarge:
        return {"error": "too_large", "message": ""}
    except (duckdb.Error, MemoryError, pa.ArrowException) as exc:
        return _failure(exc)
    finally:
        timer.cancel()
        for f in files:
            with contextlib.suppress(OSError):
                f.close()


def _register_views(con: Any, views: list[Any], files: list[Any]) -> None:
    """Each view's Arrow stream (read whole, or scanned once) and the view over it."""
    import pyarrow as pa

    for (name, whole, create), f in zip(views, files, strict=True):
        stream = pa.ipc.open_stream(f)
        con.register(name, stream.read_all() if whole else stream)
        con.execute(create)


def _plan(con: Any, query: str) -> str:
    """The query's plan as JSON, or "" when unreadable (the caller then counts every
    personal column as read)."""
    import duckdb

    try:
        return "\n".join(str(r[-1]) for r in con.execute(
            "EXPLAIN (FORMAT json) " + query).fetchall())
    except duckdb.InterruptException:
        raise
    except duckdb.Error:
        return ""


class _TooLarge(Exception):
    """The rows encoded are over the byte budget."""


def _fetch_rows(res: Any, limit: int, budget: int) -> tuple[list[Any], bool]:
    """Up to ``limit`` rows as JSON values, and whether more were left; raises
    :class:`_TooLarge` when they encode to more than ``budget`` bytes."""
    rows: list[Any] = []
    size = 0
    while True:
        chunk = res.fetchmany(FETCH_ROWS)
        if not chunk:
            return rows, False
        for r in chunk:
            if len(rows) == limit:
                return rows, True
            row = [jsonable(v) for v in r]
            size += len(msgspec.json.encode(row)) + 1
            if size > budget:
                raise _TooLarge
            rows.append(row)


def _failure(exc: BaseException) -> dict[str, Any]:
    """A DuckDB error (or MemoryError) as the worker's error answer."""
    import duckdb

    if isinstance(exc, duckdb.InterruptException):
        return {"error": "timeout", "message": ""}
    if isinstance(exc, (duckdb.OutOfMemoryException, MemoryError)):
        return {"error": "memory", "message": str(exc).splitlines()[0][:300]}
    if isinstance(exc, duckdb.BinderException):
        return {"error": "binder", "message": str(exc).splitlines()[0]}
    msg = str(exc).splitlines()[0]
    if "bad alloc" in msg.lower() or "out of memory" in msg.lower():
        return {"error": "memory", "message": msg[:300]}
    return {"error": "error", "message": msg}


def main(argv: list[str]) -> None:
    fd, memory, threads = int(argv[0]), int(argv[1]), int(argv[2])
    _die_with_parent()
    sock = socket.socket(fileno=fd)
    # loaded before the limit (not pyarrow.dataset: DuckDB aborts if that is loaded
    # before the limit is set); the warm-up below loads the rest under the limit
    import duckdb  # noqa: F401
    import pyarrow  # noqa: F401

    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    _warm_up(threads, memory)
    while True:
        con = _connect(threads, duckdb_memory(memory))
        try:
            first, fds, _, _ = socket.recv_fds(sock, 65536, 64)
        except OSError:
            return
        if len(first) < _HEADER.size:
            return  # the core closed the socket: stop
        (n,) = _HEADER.unpack(first[:_HEADER.size])
        body = first[_HEADER.size:]
        if len(body) < n:
            body += _recv_exact(sock, n - len(body))
        header = msgspec.json.decode(body)
        # a hard stop of our own, should the core be gone or slow to kill us
        signal.alarm(int(float(header["timeout_s"]) + 2 * GRACE_S + 5))
        try:
            out = _execute(con, header, fds)
            con.close()
            del con
            out["reuse"] = _resident() < memory // REUSE_BELOW
            payload = msgspec.json.encode(out)
        except MemoryError:
            payload = msgspec.json.encode({"error": "memory", "message": "MemoryError"})
        sock.sendall(_HEADER.pack(len(payload)) + payload)
        signal.alarm(0)


def _warm_up(threads: int, memory: int) -> None:
    """Load what a query's first Arrow scan loads lazily (``pyarrow.dataset`` and
    more), before a query waits for it."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    table = pa.table({"x": [1, 2]})
    with pa.ipc.new_stream(sink, table.schema) as out:
        out.write_table(table)
    con = _connect(threads, duckdb_memory(memory))
    con.register("t", pa.ipc.open_stream(sink.getvalue()))
    con.register("u", table)
    con.execute("SELECT count(*) FROM t, u").fetchall()
    con.close()


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except MemoryError:  # the core answers memory_limit; no traceback in its log
        os._exit(70)
