"""Running the collector under granian, one worker process per core by default."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from aap.settings import Settings


def prepare(settings: Settings) -> dict[str, str]:
    """Create the data dir and a fresh metrics dir; returns the workers' environment."""
    data = settings.data_path
    data.mkdir(parents=True, exist_ok=True)
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
    """The core process: processor, warehouse and queries, on a Unix socket."""
    from granian import Granian
    from granian.constants import Interfaces

    os.environ["AAP_DATA_DIR"] = str(settings.data_path)
    sock = core_socket(settings)
    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)
    Granian(
        "aap.api.app:create_app", factory=True, uds=sock, uds_permissions=0o600,
        interface=Interfaces.ASGI, workers=1, log_access=False,
    ).serve()


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
    core = subprocess.Popen([sys.executable, "-m", "aap", "process", "--data-dir",
                             str(settings.data_path)])
    try:
        _serve_collector(settings, workers)
    finally:
        core.terminate()
        core.wait(30)


def _serve_collector(settings: Settings, workers: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces

    Granian(
        "aap.collect.app:create_app",
        factory=True,
        address=settings.host,
        port=int(settings.port),
        interface=Interfaces.ASGI,
        workers=workers,
        log_access=False,  # access logs would hold client addresses
        backlog=2048,
    ).serve()
