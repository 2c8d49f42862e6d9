"""The core process: it owns the warehouse, runs the processor in a thread, and answers
queries (DuckDB cursors of the same database, so queries never block the processor).

It listens on a Unix socket in the data dir (``run/core.sock``, mode 0600): only local
processes with access to the data dir reach it (:mod:`aap.core.client`). The collector's
workers pass the public REST API to it (:mod:`aap.api.proxy`); its routes are the
table of :meth:`CoreApp.routes`.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec

from aap import errors
from aap.api.admin import HealthParts
from aap.api.gate import QueryGate
from aap.api.rest import RestAPI
from aap.api.routes import PREFIX, is_query
from aap.asgi import (
    Receive,
    Response,
    Scope,
    Send,
    failed,
    lifespan,
    read_body,
    send_response,
)  # fmt: skip
from aap.core.operator_sql import sql_answer
from aap.log import open_log
from aap.privacy.audit import AuditLog
from aap.privacy.cnil import DailySalts
from aap.privacy.consent import ConsentLedger, ConsentState
from aap.privacy.ids import IdHasher
from aap.privacy.keystore import Keystore
from aap.privacy.purposes import Registry
from aap.privacy.requests import Requests
from aap.privacy.retention import RetentionJob, check_settings
from aap.privacy.rights import Rights
from aap.process.processor import Processor
from aap.routing import ANY, Route, Router
from aap.settings import Settings
from aap.sources import Sources
from aap.store import erasures, flags, handover, rectifications
from aap.store.identities import SharedIdentities
from aap.store.meta import log_failure
from aap.store.publish import Publisher, refuse_unshared, shared_list
from aap.store.tiering import TieringThread, TierPolicy
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse

logger = logging.getLogger("aap.core")


class EraseRequest(msgspec.Struct):
    """A rights request from the CLI (``aap privacy …``) on the core's socket."""

    userIds: list[str] = []
    anonymousIds: list[str] = []
    actor: str = "privacy"
    traits: dict[str, Any] = {}
    lift: bool = False


def _open_warehouse(settings: Settings) -> tuple[Warehouse, Publisher | None]:
    """The warehouse on its tier store, and its publisher when ``AAP_PUBLISH_SECONDS`` is
    set (:mod:`aap.store.publish`), with the shared record of erasures it applies
    (:mod:`aap.store.erasures`). The caller runs :meth:`Publisher.recover` (a batch a stop
    left half published is finished) once the record's hooks are set."""
    kept = settings.tiers
    tiers = TierStore(TierConfig.from_settings(settings))
    warehouse = Warehouse(
        settings.data.warehouse, tiers=tiers, memory_limit=settings.storage.warehouse_memory,
        shared_list=shared_list(settings.data_path, kept.publish_seconds,
                                settings.storage.meta_url))
    refuse_unshared(warehouse)
    # with AAP_META_URL a rectification run by any processor reaches this warehouse's
    # profiles too (from the first publishing turn on: aap.store.rectifications)
    rectifications.attach(warehouse, settings.data_path, settings.storage.meta_url)
    if kept.publish_seconds <= 0:
        return warehouse, None
    if settings.storage.kafka:  # partitions may move between processors
        handover.enable(warehouse)
    erasures.attach(warehouse)
    return warehouse, Publisher(warehouse, kept.publish_seconds)


class Core:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        data = settings.data_path
        self.log = open_log(settings)
        kept = settings.tiers
        self.warehouse, self.publisher = _open_warehouse(settings)
        registry = Registry.for_data_dir(data)
        check_settings(settings, registry)  # `aap serve` says why before it gets here
        self.keystore = Keystore(data)
        self.retention = RetentionJob(self.warehouse, registry, kept.cold_days,
                                      kept.retention_interval_s,
                                      after=(DailySalts(data).purge,),
                                      forget=self.keystore.forget)
        self.tiering = TieringThread(self.warehouse, TierPolicy(
            kept.hot_days, kept.warm_days, kept.cold_days),
            kept.tiering_interval_s, retention=self.retention)

        sources = Sources(data)

        def historical() -> frozenset[str]:
            return frozenset(s.id for s in sources.list() if s.historical)

        hasher = IdHasher.for_data_dir(data)
        self.rights = Rights(data, self.warehouse, self.keystore, hasher, AuditLog(data),
                             log=self.log)  # .identities: set below
        shared = SharedIdentities(data, meta) if (meta := settings.storage.meta_url) else None
        self._spread_erasures(shared)
        self.processor = Processor(
            self.log, self.warehouse, hasher,
            historical_sources=historical, late=timedelta(minutes=settings.processor.session_late_minutes),
            inactivity=timedelta(minutes=settings.processor.session_inactivity_minutes),
            worker=settings.processor.processor_worker,
            prepare_processes=settings.processor.prepare_processes,
            consent=ConsentState(ConsentLedger(data)),
            destroyed=self.keystore.refresh_destroyed,
            forgotten=self.keystore.refresh_forgotten,
            scopes=sources.scopes,
            identities=shared,
        )
        self.rights.identities = shared
        if self.publisher is not None and self.warehouse.handover:
            self.processor.publish_now = self.publisher.publish_once
        self.privacy = Requests(data, self.rights, sources.scopes)
        self.rights.after_erasure = self._after_erasure
        self.rest = RestAPI(settings, self.warehouse, self.privacy)
        self.rest.retention = self.retention  # the privacy center shows its last run
        self.processor.on_written = self.rest.live_feed.add  # live events
        self.rest.health_parts = HealthParts(  # GET /api/v1/health (aap.api.admin)
            data, self.log, self.warehouse, self.processor,
            self._processing, settings.server.workers or (os.cpu_count() or 1), time.time(),
            self.publisher)
        # The processor keeps large, long-lived maps (ids, sessions); a full collection
        # scans them all. Freeze what start-up loaded and collect rarely: it allocates
        # many short-lived containers and forms no cycles (measured: 33k → 46k events/s).
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.processor.run, args=(self.stop,),
                                       name="aap-processor", daemon=True)

    def _spread_erasures(self, shared: SharedIdentities | None) -> None:
        """Publishing on: erasures recorded by other processors are suppressed here too
        (their ids join this keystore's destroyed ones, shared or not) and, once applied
        to the hot rows, leave the shared identities (a chunk built before the erasure
        reached this processor may have linked its ids again); then the batch a stop left
        half published is finished, and with the handover (several processors) what it
        left unpublished is published (or dropped, :mod:`aap.store.handover`)."""
        if isinstance(self.warehouse.erasures, erasures.ErasureMirror):
            erasures.connect(self.warehouse.erasures, self.keystore, shared)
        if self.publisher is not None:
            self.publisher.recover()
            if self.warehouse.handover:
                try:  # what a stop left unpublished: listed, or dropped if another
                    self.publisher.publish_once()  # processor took its partitions and
                except Exception as exc:           # published past it
                    log_failure(logger, "publishing at start-up failed; the publisher tries"
                                " again", exc, self.warehouse.tiers)

    def _processing(self) -> bool:
        return self.thread.is_alive()

    def start(self) -> None:
        # with AAP_META_URL the flags (restriction, objection) are shared: person_flags
        # becomes their mirror, brought up to date before each query (and at once)
        flags.attach(self.warehouse, self.settings.data_path, self.settings.storage.meta_url)
        self.thread.start()
        self.tiering.start()
        if self.publisher is not None:
            self.publisher.start()
        self.rest.start()
        self.privacy.start()

    def close(self) -> None:
        self.stop.set()
        self.privacy.close()
        self.rest.close()
        self.thread.join(timeout=30)
        if self.publisher is not None:
            self.publisher.close()
            if self.warehouse.handover and not self.thread.is_alive():
                self.processor.publish_now = None  # the log's close revokes: done here
                try:  # a graceful stop (a rollout) hands its partitions over published
                    self.publisher.publish_once()
                except Exception as exc:
                    log_failure(logger, "publishing at stop failed; what is left is published"
                                " at the next start, or read again by the next owner", exc,
                                self.warehouse.tiers)
        self.tiering.close()
        self.warehouse.close()
        self.log.close()

    def access(self, body: bytes) -> dict[str, Any]:
        with _bad_request():
            req = msgspec.json.decode(body, type=EraseRequest)
            return self.rights.access(req.userIds, req.anonymousIds, actor=req.actor)

    def _after_erasure(self) -> None:
        if self.rest.cache is not None:  # derived copies: the query cache drops the
            self.rest.cache.sync()       # rows of the rewritten files now, not later
        if not self.warehouse.checkpoint():
            logger.warning("no checkpoint after the erasure: other writers kept the database"
                        " busy for a minute; DuckDB folds the WAL at its next checkpoint")

    def erase(self, body: bytes) -> dict[str, Any]:
        with _bad_request():
            req = msgspec.json.decode(body, type=EraseRequest)
            return self.rights.erase(req.userIds, req.anonymousIds, actor=req.actor)

    def rights_request(self, kind: str, body: bytes) -> dict[str, Any]:
        """``aap privacy rectify|restrict|object``: the same code as the REST API's
        requests (:class:`aap.privacy.rights.Rights`), run at once."""
        with _bad_request():
            req = msgspec.json.decode(body, type=EraseRequest)
            keys = self.rights.subject_keys(req.userIds, req.anonymousIds)
            if kind == "rectification":
                return self.rights.rectify_keys(keys, req.traits, req.actor)
            return self.rights.flag_keys(keys, kind, req.actor, lift=req.lift)

    def sql(self, body: bytes) -> dict[str, Any]:
        return sql_answer(self.warehouse, body, self.processor.position)

    def health(self) -> dict[str, Any]:
        """The core answers (200); whether its processor's loop runs and when it last
        turned is for the caller to judge (:mod:`aap.core.health`)."""
        proc = self.processor
        return {"status": "ok", "position": proc.position,
                "processor": {"running": self.thread.is_alive(),
                              "loop_age_s": round(time.monotonic() - proc.turned_at, 3),
                              "failures": proc.failures,
                              "last_write_at": proc.last_write_at},
                "publishing_stopped": (self.publisher.stopped
                                       if self.publisher is not None else None)}


_BAD_BODY: tuple[type[Exception], ...] = (msgspec.DecodeError, msgspec.ValidationError,
                                          ValueError)


@contextmanager
def _bad_request(*caught: type[Exception], code: str = "bad_request") -> Iterator[None]:
    """A request the core cannot decode or do (``caught``; by default a bad body, or a
    ``ValueError`` of the rights code) answers 400 with the message."""
    try:
        yield
    except caught or _BAD_BODY as exc:  # noqa: B030 (a tuple of exception classes)
        raise errors.BadRequest(str(exc), code=code) from None


_RIGHTS = {"/internal/privacy/rectify": "rectification",
           "/internal/privacy/restrict": "restriction",
           "/internal/privacy/object": "objection"}
INTERNAL_API = "/internal" + PREFIX + "/"
"""Where the core answers the REST API the collector's workers pass on."""
POST = ("POST",)

if TYPE_CHECKING:
    from aap.core.reader import ReaderCore

AnyCore: TypeAlias = "Core | ReaderCore"
"""A processor's core, or a query node's (:mod:`aap.core.reader`)."""
CoreCall = Callable[[AnyCore, Scope, bytes], Awaitable[Any]]
"""A route of the core: its answer (JSON-able, or the bytes of a zip), or it raises."""


class CoreApp:
    """Threads: queries run on ``queries`` (``AAP_QUERY_CONCURRENCY`` threads) once the
    gate (:mod:`aap.api.gate`) gives them a slot; privacy calls on ``privacy``, every
    other call on ``other``: neither ever waits behind analysts' queries."""

    def __init__(self, reader: bool = False) -> None:
        """``reader``: a query node's core (:mod:`aap.core.reader`)."""
        self.reader = reader
        self.core: AnyCore | None = None
        self.gate: QueryGate | None = None
        self.queries: ThreadPoolExecutor | None = None
        self.privacy = ThreadPoolExecutor(4, thread_name_prefix="aap-privacy")
        self.other = ThreadPoolExecutor(8, thread_name_prefix="aap-api")
        self.live = ThreadPoolExecutor(32, thread_name_prefix="aap-live")
        self.router: Router[CoreCall] = Router(self.routes())

    def routes(self) -> list[Route[CoreCall]]:
        """The core's routes: health, the CLI's privacy and SQL calls, the REST API."""
        rights: list[Route[CoreCall]] = [
            Route(path, POST, functools.partial(self.rights_request, kind))
            for path, kind in _RIGHTS.items()]
        return [Route("/healthz", ANY, self.healthz),
                Route("/internal/privacy/erase", POST, self.erase),
                Route("/internal/privacy/access", POST, self.access),
                *rights,
                Route("/internal/sql", POST, self.sql),
                Route(INTERNAL_API, ANY, self.api, prefix=True)]

    def _start(self) -> None:
        settings = Settings()
        query = settings.query
        self.gate = QueryGate(total=query.query_concurrency,
                              per_key=query.query_concurrency_per_key,
                              queue_per_key=query.query_queue_per_key,
                              max_wait_s=query.query_timeout_s,
                              retry_after=settings.server.retry_after_seconds)
        self.queries = ThreadPoolExecutor(query.query_concurrency,
                                          thread_name_prefix="aap-query")
        if self.reader:
            from aap.core.reader import ReaderCore

            self.core = ReaderCore(settings)
        else:
            self.core = Core(settings)
        self.core.start()

    def _close(self) -> None:
        if self.core:
            self.core.close()
        for pool in (self.queries, self.privacy, self.other, self.live):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    async def _startup(self) -> None:
        self._start()

    async def _shutdown(self) -> None:
        await asyncio.to_thread(self._close)

    async def _on(self, pool: ThreadPoolExecutor | None, fn: Callable[..., Any], *args: Any
                  ) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(fn, *args))

    # -- ASGI --

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, self._startup, self._shutdown)
        elif scope["type"] == "http":
            await send_response(send, await self._answer(scope, await read_body(receive)))

    async def _answer(self, scope: Scope, body: bytes) -> Response:
        try:
            if self.core is None:
                raise errors.ServiceUnavailable("starting", code="starting")
            route, _ = self.router.resolve(scope["method"], scope["path"])
            return self._reply(self.core, await route.target(self.core, scope, body))
        except Exception as exc:
            return failed(exc, f"{scope['method']} {scope['path'][:200]}", logger)

    def _reply(self, core: AnyCore, out: Any) -> Response:
        if isinstance(out, bytes):  # a file (the zip of an access request)
            return Response(200, out, "application/zip")
        encoded = msgspec.json.encode(out)
        limit = core.settings.query.max_response_bytes
        if limit and len(encoded) > limit:
            raise errors.BadRequest(
                f"the answer is {len(encoded)} bytes, more than {limit}"
                " (AAP_MAX_RESPONSE_BYTES): ask for less (fewer series, rows or buckets)",
                {"bytes": len(encoded), "limit_bytes": limit}, code="response_too_large")
        return Response(200, encoded)

    # -- routes --

    async def healthz(self, core: AnyCore, scope: Scope, body: bytes) -> Any:
        return core.health()

    async def erase(self, core: AnyCore, scope: Scope, body: bytes) -> Any:
        return await self._on(self.privacy, core.erase, body)

    async def access(self, core: AnyCore, scope: Scope, body: bytes) -> Any:
        return await self._on(self.privacy, core.access, body)

    async def rights_request(self, kind: str, core: AnyCore, scope: Scope, body: bytes) -> Any:
        return await self._on(self.privacy, core.rights_request, kind, body)

    async def sql(self, core: AnyCore, scope: Scope, body: bytes) -> Any:
        return await self._on(self.other, core.sql, body)

    async def api(self, core: AnyCore, scope: Scope, body: bytes) -> Any:
        """The REST API: a query waits for a slot of the gate, then runs on a query
        thread; privacy requests and the rest run on threads of their own."""
        headers = dict(scope["headers"])
        role = headers.get(b"x-aap-role", b"").decode("latin-1")
        # who, for the audit log: the API key the collector's worker checked, else
        # a local caller on the socket (the CLI names itself)
        key_id = headers.get(b"x-aap-key", b"").decode("latin-1")
        actor = (f"key:{key_id}" if key_id else
                 headers.get(b"x-aap-actor", b"local").decode("latin-1")[:100])
        method, path = scope["method"], scope["path"][len(INTERNAL_API) - 1:]
        args = (method, path, role, body, actor, scope.get("query_string", b"").decode("latin-1"))
        if is_query(method, path) and self.gate is not None:
            async with self.gate.slot(key_id or actor):
                return await self._on(self.queries, core.rest.handle, *args)
        pool = (self.privacy if path.startswith("/privacy/") else
                self.live if path == "/live" else self.other)  # /live: long polls wait there
        return await self._on(pool, core.rest.handle, *args)


def create_app(reader: bool = False) -> CoreApp:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return CoreApp(reader)
