"""Running the collector under granian, one worker process per core by default."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

from aap.datadir import secure
from aap.settings import Settings

logger = logging.getLogger("aap.serve")


def prepare(settings: Settings) -> dict[str, str]:
    """Create the data dir and a fresh metrics dir; returns the workers' environment."""
    data = settings.data_path
    secure(data)
    metrics_dir = data / "run" / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env = settings.as_env()
    env["AAP_DATA_DIR"] = str(data)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env


def worker_count(settings: Settings) -> int:
    return int(settings.workers) or (os.cpu_count() or 1)


def core_socket(settings: Settings) -> Path:
    return settings.data_path / "run" / "core.sock"


def serve_core(settings: Settings) -> None:
    """The core process: processor, warehouse and queries, on a Unix socket.

    One process (uvicorn, no worker children): it owns the DuckDB file, and a kill -9
    of it leaves nothing behind that still holds the file.
    """
    import uvicorn

    from aap.api.app import create_app

    os.environ["AAP_DATA_DIR"] = str(settings.data_path)
    secure(settings.data_path)  # the socket and every file the core writes: owner only
    sock = core_socket(settings)
    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    os.chmod(sock, 0o600)
    config = uvicorn.Config(create_app(), lifespan="on", access_log=False, log_level="warning")
    uvicorn.Server(config).run(sockets=[listener])


def serve(settings: Settings) -> None:
    workers = worker_count(settings)
    env = prepare(settings)
    env["AAP_WORKERS"] = str(workers)
    os.environ.update(env)
    # Make sure the schema exists before several workers race to create it.
    from aap.log import open_log
    from aap.sources import Sources

    open_log(settings).close()
    Sources(settings.data_path).close()
    core = CoreSupervisor(settings)
    core.start()
    try:
        _serve_collector(settings, workers)
    finally:
        core.close()


class CoreSupervisor:
    """Keeps the core process (processor, warehouse, queries) running: if it dies, it is
    started again, and it resumes from the last chunk it committed."""

    def __init__(self, settings: Settings) -> None:
        self.cmd = [sys.executable, "-m", "aap", "process", "--data-dir", str(settings.data_path)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="aap-core-supervisor",
                                       daemon=True)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd)
        self.thread.start()

    def _watch(self) -> None:
        while not self.closing.is_set():
            assert self.proc is not None
            code = self.proc.wait()
            if self.closing.wait(1.0):
                return
            logger.warning("core process exited with %s; starting it again", code)
            self.proc = subprocess.Popen(self.cmd)

    def close(self) -> None:
        self.closing.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _serve_collector(settings: Settings, workers: int) -> None:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    tls = {"ssl_cert": Path(settings.tls_cert), "ssl_key": Path(settings.tls_key)} \
        if settings.tls_cert else {}
    Granian(
        "aap.collect.app:create_app",
        factory=True,
        address=settings.host,
        port=int(settings.port),
        interface=Interfaces.ASGI,
        workers=workers,
        log_access=False,  # access logs would hold client addresses
        backlog=2048,
        # HTTP/1.1 only: every SDK speaks it, and the header deadline below holds for every
        # connection (granian's HTTP/2 has no header read timeout: a client could hold a
        # connection open with a half-sent header block)
        http=HTTPModes.http1,
        # a client that has not sent its headers in time is cut off (slowloris); bodies
        # have their own deadline in the collector (AAP_BODY_TIMEOUT_S)
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, int(float(settings.header_timeout_s) * 1000))),
        **tls,  # type: ignore[arg-type]
    ).serve()
