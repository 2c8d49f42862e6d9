"""``aap cluster up``: the roles of ``aap serve --role`` as processes on 127.0.0.1.

Collectors are stateless: any number of them run on one data dir, each on its own port
(the first on ``--port``, the next ones after it), appending to the one log. One
processor (the core: processor, warehouse and the queries, which every collector's
``/api/v1`` reaches through the core's socket) consumes the log; its ``/healthz``
answers on the port after the collectors' (``--port`` + ``--collectors``). Each process is kept
running by a :class:`~aap.core.supervisor.CoreSupervisor`: killed, it is started again
(a collector is stateless; the processor resumes from its last committed chunk).

Every process takes the settings of the environment: with ``AAP_LOG_URL=kafka://…`` the
collectors append to Kafka and the processor consumes it. Several processors, and query
nodes of their own, need the processor's state and the warehouse's files shared, which
is being built: a topology that needs them is refused with a message saying so
(:class:`TopologyRefused`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import click
import httpx

from aap.core.supervisor import CoreSupervisor
from aap.datadir import secure
from aap.lifecycle import die_with_parent, interrupt_on_sigterm
from aap.settings import Settings

READY_TIMEOUT_S = 120.0
"""How long ``up`` waits for every collector's ``/healthz`` before it says so."""


class TopologyRefused(ValueError):
    """A topology this configuration cannot run (the message says why)."""


@dataclass(frozen=True)
class Topology:
    collectors: int = 2
    processors: int = 1
    query: int = 1
    """Query nodes: the processor answers the queries, so 0 and 1 are the same today."""
    workers: int = 1
    """Worker processes per collector."""

    def check(self) -> None:
        if self.processors != 1:
            raise TopologyRefused(
                f"--processors {self.processors}: several processors need the log partitioned"
                " between them (AAP_LOG_URL=kafka://…, which works) and their state shared —"
                " sessions, dedup and the warehouse's files (identities and merges are, on"
                " AAP_META_URL) — which is being built: today one processor owns the"
                " warehouse; run one")
        if self.query > 1:
            raise TopologyRefused(
                f"--query {self.query}: query nodes of their own need the warehouse's files"
                " shared (AAP_TIER_URL, AAP_META_URL), which are being built; today the"
                " processor answers the queries (--query 1)")


def up(settings: Settings, topology: Topology) -> None:
    """Start the processes, say where they are, and keep them running until Ctrl-C or
    SIGTERM; then stop them all."""
    topology.check()
    die_with_parent()
    secure(settings.data_path)
    base = settings.server.port
    ports = [base + i for i in range(topology.collectors)]
    health = base + topology.collectors
    parts = [CoreSupervisor(settings, "serve", name="processor", args=(
        "--role", "processor", "--host", "127.0.0.1", "--port", str(health)))]
    parts += [CoreSupervisor(settings, "serve", name=f"collector {i + 1}", args=(
        "--role", "collector", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(topology.workers))) for i, port in enumerate(ports)]
    interrupt_on_sigterm()
    try:
        for part in parts:
            part.start()
        click.echo(f"processor (and queries): pid {parts[0].proc.pid if parts[0].proc else '?'},"
                   f" health http://127.0.0.1:{health}/healthz")
        for i, port in enumerate(ports):
            click.echo(f"collector {i + 1}: http://127.0.0.1:{port}")
        _wait_ready([*ports, health])
        click.echo(f"cluster up: {topology.collectors} collectors, 1 processor (Ctrl-C stops)")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for part in parts:
            part.terminate()
        for part in parts:
            part.close()


def _wait_ready(ports: list[int]) -> None:
    """Until every collector's ``/healthz`` and the processor's (the last port) answer
    200, or :data:`READY_TIMEOUT_S` has passed: then it says which did not."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = list(ports)
    while waiting and time.monotonic() < deadline:
        for port in list(waiting):
            if _ready(port):
                waiting.remove(port)
        if waiting:
            time.sleep(0.2)
    if waiting:
        names = [f"processor (:{p})" if p == ports[-1] else f"collector (:{p})" for p in waiting]
        click.echo(f"not healthy after {READY_TIMEOUT_S:.0f} s: {', '.join(names)}"
                   " (still starting, or failing: see their output above)", err=True)


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
