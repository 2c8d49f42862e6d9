"""``aap cluster up``: the roles of ``aap serve --role`` as processes on 127.0.0.1.

Collectors are stateless: any number of them run on one data dir, each on its own port
(the first on ``--port``, the next ones after it), appending to the one log. One
processor (the core: processor, warehouse and the queries, which every collector's
``/api/v1`` reaches through the core's socket) consumes the log; its ``/healthz``
answers on the port after the collectors' (``--port`` + ``--collectors``). Each process is kept
running by a :class:`~aap.core.supervisor.CoreSupervisor`: killed, it is started again
(a collector is stateless; the processor resumes from its last committed chunk).

Every process takes the settings of the environment: with ``AAP_LOG_URL=kafka://…`` the
collectors append to Kafka and the processor consumes it. ``--query N`` adds N query
nodes (``aap serve --role query``: the REST API and the web app over the files the
processor publishes) on the ports after the processor's, each with a data dir of its own
(``DATA_DIR/query-I``: its reader warehouse). They share the tier store (``AAP_TIER_URL``,
by default the processor's ``DATA_DIR/tiers``) and the shared-state database, which must
be PostgreSQL (``AAP_META_URL``): the SQLite files of the default live under one data dir
and a query node has its own, so ``--query`` > 0 without ``AAP_META_URL`` (or without
``AAP_PUBLISH_SECONDS``) is refused. The query nodes are given the processor's secret keys
(id hashing, audit, subject tokens, master key) in their environment, as a deployment
gives them from one Secret, so an id hashes the same everywhere. Several processors
need their state shared, which is being built: a topology that needs them is refused
with a message saying so (:class:`TopologyRefused`).
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path

import click
import httpx

from aap.core.supervisor import CoreSupervisor
from aap.datadir import UNIX_PATH_MAX, DataDir, secure
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
    query: int = 0
    """Query nodes of their own (0: the processor answers the queries, through the
    collectors' ``/api/v1``)."""
    workers: int = 1
    """Worker processes per collector."""

    def check(self, settings: Settings | None = None) -> None:
        if self.processors != 1:
            raise TopologyRefused(
                f"--processors {self.processors}: several processors need the log partitioned"
                " between them (AAP_LOG_URL=kafka://…, which works) and their state shared —"
                " sessions, dedup and the warehouse's files (identities and merges are, on"
                " AAP_META_URL) — which is being built: today one processor owns the"
                " warehouse; run one")
        if self.query and settings is not None:
            from aap.core.reader import query_role_problem

            if problem := query_role_problem(settings):
                raise TopologyRefused(f"--query {self.query}: {problem}")


def up(settings: Settings, topology: Topology) -> None:
    """Start the processes, say where they are, and keep them running until Ctrl-C or
    SIGTERM; then stop them all."""
    topology.check(settings)
    die_with_parent()
    secure(settings.data_path)
    base = settings.server.port
    ports = [base + i for i in range(topology.collectors)]
    health = base + topology.collectors
    query_ports = [health + 1 + i for i in range(topology.query)]
    query_dirs = [query_dir(settings.data_path, i) for i in range(topology.query)]
    for d in query_dirs:
        if len(os.fsencode(DataDir(d).core_socket)) > UNIX_PATH_MAX:
            raise TopologyRefused(f"the data dir's path is too long for a query node's core"
                                  f" socket under {d}: use a shorter --data-dir")
    parts = [CoreSupervisor(settings, "serve", name="processor", args=(
        "--role", "processor", "--host", "127.0.0.1", "--port", str(health)))]
    parts += [CoreSupervisor(settings, "serve", name=f"collector {i + 1}", args=(
        "--role", "collector", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(topology.workers))) for i, port in enumerate(ports)]
    shared = query_env(settings) if topology.query else {}
    parts += [CoreSupervisor(settings, "serve", name=f"query node {i + 1}", data_dir=d,
                             env=shared, args=(
        "--role", "query", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(topology.workers)))
        for i, (port, d) in enumerate(zip(query_ports, query_dirs, strict=True))]
    interrupt_on_sigterm()
    try:
        for part in parts:
            part.start()
        answers = "" if topology.query else " (and queries)"
        click.echo(f"processor{answers}: pid {parts[0].proc.pid if parts[0].proc else '?'},"
                   f" health http://127.0.0.1:{health}/healthz")
        for i, port in enumerate(ports):
            click.echo(f"collector {i + 1}: http://127.0.0.1:{port}")
        for i, port in enumerate(query_ports):
            click.echo(f"query node {i + 1}: http://127.0.0.1:{port} (data dir {query_dirs[i]})")
        _wait_ready([*ports, *query_ports, health])
        click.echo(f"cluster up: {topology.collectors} collectors, 1 processor,"
                   f" {topology.query} query nodes (Ctrl-C stops)")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for part in parts:
            part.terminate()
        for part in parts:
            part.close()


def query_dir(data: Path, i: int) -> Path:
    """The data dir of query node ``i`` (from 0) of a cluster on ``data``."""
    return data / f"query-{i + 1}"


def query_env(settings: Settings) -> dict[str, str]:
    """What the query nodes are given beside the environment: the processor's secret
    keys (base64, as from a Secret: those set in the environment, else read from its
    data dir, made there if missing) and its tier store."""
    from aap.privacy.ids import key_of
    from aap.settings import PrivacySettings

    paths = DataDir(settings.data_path)
    env = {"AAP_TIER_URL": settings.tier_url}
    for name in PrivacySettings.KEYS:  # master_key, id_hash_key, …: DataDir's names too
        env["AAP_" + name.upper()] = base64.b64encode(key_of(name, getattr(paths, name))
                                                      ).decode()
    return env


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
        names = [f"processor (:{p})" if p == ports[-1] else f"node (:{p})" for p in waiting]
        click.echo(f"not healthy after {READY_TIMEOUT_S:.0f} s: {', '.join(names)}"
                   " (still starting, or failing: see their output above)", err=True)


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
