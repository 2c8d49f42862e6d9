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
gives them from one Secret, so an id hashes the same everywhere.

``--processors N`` (N > 1) needs the log on Kafka (the group shares its partitions out),
``AAP_META_URL`` and ``AAP_PUBLISH_SECONDS``: each processor has a data dir of its own
(``DATA_DIR/processor-I``: its warehouse is its private buffer of unpublished rows), the
same keys and tier store as the query nodes, and its ``/healthz`` on the ports after the
collectors'; the log positions and open sessions of a partition move between them with
the published files (:mod:`aap.store.handover`). Queries then go to the query nodes (the
collectors' ``/api/v1`` reaches a core in ``DATA_DIR``, which does not run). Other
topologies are refused with the reason (:class:`TopologyRefused`).
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
        if self.processors > 1 and settings is not None:
            missing = [need for need, ok in (
                ("the log on Kafka (AAP_LOG_URL=kafka://…: the processors share its"
                 " partitions)", settings.storage.kafka),
                ("AAP_META_URL=postgresql://… (identities, the list of files and the log"
                 " positions, shared)", bool(settings.storage.meta_url)),
                ("AAP_PUBLISH_SECONDS > 0 (a processor's rows are seen by the others once"
                 " published)", settings.tiers.publish_seconds > 0)) if not ok]
            if missing:
                raise TopologyRefused(f"--processors {self.processors}: several processors"
                                      f" need {' and '.join(missing)}; or run one")
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
    healths = [base + topology.collectors + i for i in range(topology.processors)]
    health = healths[-1]
    query_ports = [health + 1 + i for i in range(topology.query)]
    query_dirs = [query_dir(settings.data_path, i) for i in range(topology.query)]
    many = topology.processors > 1
    proc_dirs = ([processor_dir(settings.data_path, i) for i in range(topology.processors)]
                 if many else [None])
    for d in [*query_dirs, *[d for d in proc_dirs if d is not None]]:
        if len(os.fsencode(DataDir(d).core_socket)) > UNIX_PATH_MAX:
            raise TopologyRefused(f"the data dir's path is too long for a core socket"
                                  f" under {d}: use a shorter --data-dir")
    shared = query_env(settings) if topology.query or many else {}
    proc_env = {**(shared if many else {}), **_no_query_cache(topology)}
    parts = [CoreSupervisor(settings, "serve", name=f"processor {i + 1}" if many else
                            "processor", data_dir=d, env=proc_env, args=(
        "--role", "processor", "--host", "127.0.0.1", "--port", str(port)))
        for i, (port, d) in enumerate(zip(healths, proc_dirs, strict=True))]
    parts += [CoreSupervisor(settings, "serve", name=f"collector {i + 1}", args=(
        "--role", "collector", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(topology.workers))) for i, port in enumerate(ports)]
    parts += [CoreSupervisor(settings, "serve", name=f"query node {i + 1}", data_dir=d,
                             env=shared, args=(
        "--role", "query", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(topology.workers)))
        for i, (port, d) in enumerate(zip(query_ports, query_dirs, strict=True))]
    interrupt_on_sigterm()
    try:
        for part in parts:
            part.start()
        answers = "" if topology.query or many else " (and queries)"
        for i, port in enumerate(healths):
            proc = parts[i].proc
            where = f" (data dir {proc_dirs[i]})" if many else ""
            click.echo(f"{parts[i].name}{answers}: pid {proc.pid if proc else '?'},"
                       f" health http://127.0.0.1:{port}/healthz{where}")
        for i, port in enumerate(ports):
            click.echo(f"collector {i + 1}: http://127.0.0.1:{port}")
        for i, port in enumerate(query_ports):
            click.echo(f"query node {i + 1}: http://127.0.0.1:{port} (data dir {query_dirs[i]})")
        _wait_ready([*ports, *query_ports], healths)
        click.echo(f"cluster up: {topology.collectors} collectors, {topology.processors}"
                   f" processor{'s' if many else ''}, {topology.query} query nodes"
                   " (Ctrl-C stops)")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for part in parts:
            part.terminate()
        for part in parts:
            part.close()


def _no_query_cache(topology: Topology) -> dict[str, str]:
    """Where query nodes answer the queries, a processor keeps no query cache (a native
    copy of every published file, made again each ``query_cache_interval_s``: a tenth of
    the processor's CPU at 7,000 events/s, for queries that go elsewhere). Its core still
    answers a query (from the files) if one comes; ``AAP_QUERY_CACHE`` set in the
    environment is kept."""
    if (topology.query or topology.processors > 1) and "AAP_QUERY_CACHE" not in os.environ:
        return {"AAP_QUERY_CACHE": "0"}
    return {}


def processor_dir(data: Path, i: int) -> Path:
    """The data dir of processor ``i`` (from 0) of a cluster of several on ``data``."""
    return data / f"processor-{i + 1}"


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


def _wait_ready(ports: list[int], processors: list[int]) -> None:
    """Until every node's ``/healthz`` and the processors' answer 200, or
    :data:`READY_TIMEOUT_S` has passed: then it says which did not."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = [*ports, *processors]
    while waiting and time.monotonic() < deadline:
        for port in list(waiting):
            if _ready(port):
                waiting.remove(port)
        if waiting:
            time.sleep(0.2)
    if waiting:
        names = [f"processor (:{p})" if p in processors else f"node (:{p})" for p in waiting]
        click.echo(f"not healthy after {READY_TIMEOUT_S:.0f} s: {', '.join(names)}"
                   " (still starting, or failing: see their output above)", err=True)


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
