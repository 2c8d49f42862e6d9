"""Start ``aap serve`` as a child process and wait until it is healthy.

Used by ``aap demo``, the benchmarks and the end-to-end tests, so that each of them
talks to the real server over a real socket on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import weakref
from pathlib import Path
from types import TracebackType

import httpx

from aap.core.client import CoreClient, CoreError, core_alive, core_socket
from aap.datadir import DataDir
from aap.lifecycle import STOP_GRACE_S, child_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_source(data_dir: Path, name: str, *args: str) -> str:
    """Create a source with the CLI; returns its write key (the last line printed).

    The demo, the benchmarks and the tests send many events: their sources are
    unlimited unless ``args`` give a ``--rate-limit``."""
    if "--rate-limit" not in args:
        args = (*args, "--rate-limit", "0")
    out = subprocess.run(
        [sys.executable, "-m", "aap", "sources", "create", name, "--data-dir", str(data_dir),
         *args],
        check=True, capture_output=True, text=True,
    ).stdout
    return out.strip().splitlines()[-1]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group of ``proc`` (its leader) and reap the leader."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


class ServerProcess:
    """``aap serve`` in its own process group; ``kill()`` is a ``kill -9`` of all of it.

    The server dies with the process that started it (:mod:`aap.lifecycle`), and is
    killed when this object is garbage-collected or the interpreter exits without
    stopping it."""

    def __init__(self, data_dir: Path, port: int | None = None, *, workers: int = 2,
                 env: dict[str, str] | None = None, log_file: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.workers = workers
        self.env = {**os.environ, **(env or {})}
        self.log_file = log_file or (self.data_dir.parent / f"{self.data_dir.name}-server.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], ServerProcess] | None = None

    @property
    def tls(self) -> ssl.SSLContext | None:
        """With ``AAP_TLS_CERT`` in ``env`` the server speaks HTTPS: a client context that
        trusts that certificate (self-signed in tests), else None."""
        cert = self.env.get("AAP_TLS_CERT")
        return ssl.create_default_context(cafile=cert) if cert else None

    @property
    def url(self) -> str:
        return f"{'https' if self.env.get('AAP_TLS_CERT') else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0, *, healthy: bool = True) -> ServerProcess:
        """Start and wait until /healthz answers 200 (or answers at all, if not ``healthy``)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_file, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aap", "serve", "--data-dir", str(self.data_dir),
             "--port", str(self.port), "--workers", str(self.workers)],
            stdout=out, stderr=subprocess.STDOUT, env=child_env(self.env),
            start_new_session=True,
        )
        out.close()
        self._finalizer = weakref.finalize(self, _kill_group, self.proc)
        try:
            self.wait_healthy(timeout, any_answer=not healthy)
        except BaseException:
            self.stop()  # not left running when it never came up
            raise
        return self

    @property
    def core_socket(self) -> Path:
        return core_socket(self.data_dir)

    def core(self, timeout: float = 60.0) -> CoreClient:
        """A client of the core process (processor, warehouse) over its Unix socket."""
        return CoreClient(self.data_dir, timeout=timeout)

    def sql(self, query: str, params: list[object] | None = None, timeout: float = 60.0
            ) -> list[list[object]]:
        """Rows of a read query on the warehouse."""
        with self.core(timeout) as c:
            try:
                rows: list[list[object]] = c.sql(query, list(params or []))
            except CoreError as exc:
                raise RuntimeError(f"query failed: {exc.text}") from None
        return rows

    def processed_position(self, timeout: float = 60.0) -> int:
        with self.core(timeout) as c:
            return c.position()

    def wait_processed(self, timeout: float = 180.0) -> None:
        """Wait until the processor has consumed everything in the log so far."""
        from aap.log.base import Log
        from aap.log.sqlite import SQLiteLog

        url = self.env.get("AAP_LOG_URL", "sqlite:")
        if url.startswith("kafka://"):
            from aap.log.kafka import KafkaLog

            log: Log = KafkaLog(url)  # its stats join no group
        else:
            log = SQLiteLog(DataDir(self.data_dir).log)
        head = log.stats().head_offset
        log.close()
        deadline = time.monotonic() + timeout
        while self.processed_position(max(0.5, deadline - time.monotonic())) < head:
            if time.monotonic() > deadline:
                raise TimeoutError(f"processor did not reach offset {head} in {timeout}s")
            time.sleep(0.02)

    def wait_healthy(self, timeout: float = 180.0, *, any_answer: bool = False) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_file}")
            try:
                status = httpx.get(self.url + "/healthz", timeout=1.0,
                                   verify=self.tls or True).status_code
                if (status == 200 or any_answer) and self._core_up():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not healthy after {timeout}s; see {self.log_file}")

    def _core_up(self) -> bool:
        return core_alive(self.data_dir, timeout=1.0)

    def kill(self) -> None:
        """SIGKILL the whole process group: master and workers die at once."""
        if self.proc is None:
            return
        _kill_group(self.proc)
        self._forget()

    def stop(self, timeout: float = STOP_GRACE_S + 1) -> None:
        """Graceful stop (SIGTERM to the group), then SIGKILL to whatever of the group
        is left after ``timeout`` seconds, or once the server has exited (the server
        kills its own children :data:`~aap.lifecycle.STOP_GRACE_S` seconds after it was
        told to stop)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        finally:  # also on a second Ctrl-C: stragglers of the group are killed
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            self._forget()

    def _forget(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = None
        self.proc = None

    def __enter__(self) -> ServerProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def pids(self) -> list[int]:
        """Every process of the server's process group (master, workers, core, its
        children), from ``/proc``; empty when it is not running."""
        if self.proc is None:
            return []
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == self.proc.pid:  # field 5 of stat is the process group
                pids.append(int(d))
        return pids

    def core_pid(self) -> int | None:
        """The core process (``python -m aap process``) of the running server."""
        for pid in self.pids():
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if "aap" in args and "process" in args:
                return pid
        return None
