"""``aap serve``: the collector under granian (one worker process per core by default),
and the core process, started again if it dies (:class:`CoreSupervisor`).

``--role`` runs a part of it: ``collector`` (the workers alone: stateless, any number of
them on one data dir, each on its own port), ``processor`` (the core — processor,
warehouse and the queries, which the collectors' ``/api/v1`` reaches through the core's
socket — and the MQTT bridge; its own ``GET /healthz`` on ``--port``, see
:mod:`aap.core.health`), ``all`` (both: the default), ``query`` (a query node: the REST API and the web app on
``--port`` (:mod:`aap.api.front`) over a core that reads the published files of the
shared list, :mod:`aap.core.reader`; it needs publishing and ``AAP_META_URL``, and says
so otherwise)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aap.core.client import CORE_KEEPALIVE_S, core_socket
from aap.core.health import HealthServer, ProcessorHealth, serve_health
from aap.datadir import secure
from aap.lifecycle import STOP_GRACE_S, child_env, die_with_parent, interrupt_on_sigterm
from aap.settings import Settings

logger = logging.getLogger("aap.serve")


def prepare(settings: Settings, instance: str = "") -> dict[str, str]:
    """Create the data dir and a fresh metrics dir (one of its own for each ``instance``
    of a role that runs several times on one data dir); returns the workers'
    environment."""
    data = settings.data_path
    secure(data)
    metrics_dir = settings.data.metrics / instance if instance else settings.data.metrics
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env = settings.as_env()
    env["AAP_DATA_DIR"] = str(data)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env


def worker_count(settings: Settings) -> int:
    return settings.server.workers or (os.cpu_count() or 1)


def serve_core(settings: Settings, reader: bool = False) -> None:
    """The core process: processor, warehouse and queries, on a Unix socket.

    One process (uvicorn, no worker children): it owns the DuckDB file, and a kill -9
    of it leaves nothing behind that still holds the file. ``reader``: a query node's
    core (:mod:`aap.core.reader`).
    """
    import uvicorn

    from aap.core.app import create_app

    die_with_parent()
    os.environ["AAP_DATA_DIR"] = str(settings.data_path)
    secure(settings.data_path)  # the socket and every file the core writes: owner only
    sock = core_socket(settings.data_path)
    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    os.chmod(sock, 0o600)
    uvicorn.Server(core_config(create_app(reader))).run(sockets=[listener])


def core_config(app: Any) -> Any:
    """uvicorn's configuration of the core: no access log, and idle connections kept
    longer than the core's clients keep them (:data:`aap.core.client.CORE_KEEPALIVE_S`)."""
    import uvicorn

    return uvicorn.Config(app, lifespan="on", access_log=False, log_level="warning",
                          timeout_keep_alive=CORE_KEEPALIVE_S)


ROLES = ("all", "collector", "processor", "query")


class RoleUnavailable(ValueError):
    """A role this configuration cannot run (the message says why)."""


def serve(settings: Settings, role: str = "all") -> None:
    """The collector workers (granian) and the core, until SIGINT or SIGTERM: then both
    are told to stop at once, and what is still running :data:`STOP_GRACE_S` seconds
    later is killed (the core's current chunk is abandoned: its log position was not
    committed, so the next core does it again). ``role``: see the module."""
    if role not in ROLES:
        raise RoleUnavailable(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    if role == "query":
        from aap.core.reader import query_role_problem

        if problem := query_role_problem(settings):
            raise RoleUnavailable(problem)
    die_with_parent()
    workers = worker_count(settings)
    env = prepare(settings, "" if role == "all" else
                  role if role == "processor" else f"{role}-{settings.server.port}")
    env["AAP_WORKERS"] = str(workers)
    os.environ.update(env)
    # Make sure the schema exists before several workers race to create it.
    from aap.devices import Devices
    from aap.log import open_log
    from aap.sources import Sources

    if role != "query":  # a query node has no log
        open_log(settings).close()
    Sources(settings.data_path).close()
    Devices(settings.data_path).close()
    health = _processor_health(settings, open_log) if role == "processor" else None
    parts: list[CoreSupervisor] = []
    if role in ("all", "processor"):
        parts.append(CoreSupervisor(settings))
        # the MQTT bridge, when a broker is configured: one per data dir (its client id
        # holds one session), supervised like the core
        if settings.devices.mqtt_broker:
            parts.append(CoreSupervisor(settings, "mqtt", name="MQTT bridge"))
    if role == "query":
        parts.append(CoreSupervisor(settings, name="query core", args=("--query",)))
    for part in parts:
        part.start()

    def stop() -> None:
        for part in parts:
            part.terminate()

    try:
        if health is not None:
            health[0].start()
            _wait_for_stop(parts)
        else:
            _serve_collector(settings, workers, on_stop=stop,
                             target="aap.api.front:create_app" if role == "query" else
                             "aap.collect.app:create_app")
    finally:
        if health is not None:
            health[1].shutdown()
            health[0].close()
        for part in parts:
            part.close()


def _processor_health(settings: Settings, open_log: Callable[[Settings], Any]
                      ) -> tuple[ProcessorHealth, HealthServer]:
    """The processor role's ``/healthz`` on ``--port`` (:mod:`aap.core.health`), bound
    before anything starts: a port already taken stops the role with that reason."""
    health = ProcessorHealth(settings, lambda: open_log(settings))
    try:
        return health, serve_health(settings, health)
    except OSError as exc:
        raise RoleUnavailable(str(exc)) from None


def _wait_for_stop(parts: list[CoreSupervisor]) -> None:
    """Until SIGINT or SIGTERM (the parts are started again by their supervisors)."""
    interrupt_on_sigterm()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        for part in parts:
            part.terminate()


class CoreSupervisor:
    """Keeps the core process (processor, warehouse, queries) running: if it dies, it is
    started again, and it resumes from the last chunk it committed. The same keeps the
    MQTT bridge (``command="mqtt"``) running, which resumes its persistent session, and
    the processes of ``aap cluster up`` (``command="serve"`` with ``args``)."""

    def __init__(self, settings: Settings, command: str = "process", name: str = "core",
                 args: Sequence[str] = (), *, data_dir: Path | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        """``data_dir``: another than the settings' (a query node of ``aap cluster up``);
        ``env``: variables added to this process's environment for the child."""
        self.name = name
        self.cmd = [sys.executable, "-m", "aap", command, "--data-dir",
                    str(data_dir or settings.data_path), *args]
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.closing = threading.Event()
        self.stopping_at: float | None = None
        self.lock = threading.RLock()  # also taken by the signal handler
        self.thread = threading.Thread(target=self._watch, name="aap-core-supervisor",
                                       daemon=True)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env=child_env({**os.environ, **self.env}))
        self.thread.start()

    def _watch(self) -> None:
        # the core dies with the thread that started it (PR_SET_PDEATHSIG): this thread
        # lives until the core has stopped
        while not self.closing.is_set():
            assert self.proc is not None
            code = self.proc.wait()
            if self.closing.wait(1.0):
                return
            with self.lock:
                if self.closing.is_set():
                    return
                logger.warning("%s process exited with %s; starting it again", self.name, code)
                self.proc = subprocess.Popen(self.cmd, env=child_env({**os.environ, **self.env}))

    def terminate(self) -> None:
        """Tell the core to stop (SIGTERM), without waiting; it is not started again."""
        with self.lock:
            self.closing.set()
            if self.stopping_at is None:
                self.stopping_at = time.monotonic()
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Stop the core: SIGTERM, then SIGKILL :data:`STOP_GRACE_S` seconds after the
        stop began."""
        self.terminate()
        assert self.stopping_at is not None
        proc = self.proc
        if proc is None:
            return
        try:
            proc.wait(max(0.0, self.stopping_at + STOP_GRACE_S - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("the %s did not stop in %.0f s: killed", self.name, STOP_GRACE_S)
            proc.kill()
            proc.wait()


def _granian(on_stop: Callable[[], None], **kw: Any) -> Any:
    """Granian's server, which also calls ``on_stop`` the moment it is told to stop (so
    the core stops while the workers do, not after them)."""
    from granian import Granian

    class Server(Granian):  # type: ignore[misc,valid-type]
        def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
            try:
                on_stop()
            finally:
                super().signal_handler_interrupt(*args, **kwargs)

    return Server(**kw)


def _serve_collector(settings: Settings, workers: int, on_stop: Callable[[], None],
                     target: str = "aap.collect.app:create_app") -> None:
    """The public port's workers: the collector's, or a query node's (``target``)."""
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    tls = {"ssl_cert": Path(settings.tls.tls_cert), "ssl_key": Path(settings.tls.tls_key)} \
        if settings.tls.on else {}
    _granian(
        on_stop,
        target=target,
        factory=True,
        address=settings.server.host,
        port=settings.server.port,
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
            header_read_timeout=max(1, int(settings.server.header_timeout_s * 1000))),
        **tls,
        workers_kill_timeout=int(STOP_GRACE_S),  # then a worker that did not stop is killed
    ).serve()
