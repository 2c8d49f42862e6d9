"""The core process: it owns the warehouse, runs the processor in a thread, and answers
queries (DuckDB cursors of the same database, so queries never block the processor).

It listens on a Unix socket in the data dir (``run/core.sock``, mode 0600): only local
processes with access to the data dir reach it. The public REST API (issue 4) will be
proxied to it by the collector's workers.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import duckdb
import msgspec

from aap import errors
from aap.api.gate import QueryGate
from aap.api.rest import is_query
from aap.collect.app import Receive, Scope, Send
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
from aap.settings import Settings
from aap.sources import Sources
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


class SQLRequest(msgspec.Struct):
    sql: str
    params: list[Any] = []


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


class Core:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        data = settings.data_path
        self.log = open_log(settings)
        s3, kept = settings.s3, settings.tiers
        tiers = TierStore(TierConfig(
            settings.tier_url, s3_endpoint=s3.s3_endpoint_url,
            s3_access_key=s3.s3_access_key, s3_secret_key=s3.s3_secret_key,
            s3_region=s3.s3_region))
        self.warehouse = Warehouse(settings.data.warehouse, tiers=tiers,
                                   memory_limit=settings.storage.warehouse_memory)
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
                             log=self.log)
        self.processor = Processor(
            self.log, self.warehouse, hasher,
            historical_sources=historical,
            inactivity=timedelta(minutes=settings.processor.session_inactivity_minutes),
            worker=settings.processor.processor_worker,
            prepare_processes=settings.processor.prepare_processes,
            consent=ConsentState(ConsentLedger(data)),
            destroyed=self.keystore.refresh_destroyed,
            forgotten=self.keystore.refresh_forgotten,
            scopes=sources.scopes,
        )
        # The processor keeps large, long-lived maps (ids, sessions); a full collection
        # scans them all. Freeze what start-up loaded and collect rarely: it allocates
        # many short-lived containers and forms no cycles (measured: 33k → 46k events/s).
        from aap.api.rest import RestAPI

        self.privacy = Requests(data, self.rights, sources.scopes)
        self.rights.after_erasure = self._after_erasure
        self.rest = RestAPI(settings, self.warehouse, self.privacy)
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.processor.run, args=(self.stop,),
                                       name="aap-processor", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.tiering.start()
        self.rest.start()
        self.privacy.start()

    def close(self) -> None:
        self.stop.set()
        self.privacy.close()
        self.rest.close()
        self.thread.join(timeout=30)
        self.tiering.close()
        self.warehouse.close()
        self.log.close()

    def access(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            req = msgspec.json.decode(body, type=EraseRequest)
            return 200, self.rights.access(req.userIds, req.anonymousIds, actor=req.actor)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            return 400, {"code": "bad_request", "message": str(exc), "detail": str(exc)}

    def _after_erasure(self) -> None:
        if self.rest.cache is not None:  # derived copies: the query cache drops the
            self.rest.cache.sync()       # rows of the rewritten files now, not later
        self.warehouse.con.cursor().execute("CHECKPOINT")

    def erase(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            req = msgspec.json.decode(body, type=EraseRequest)
            return 200, self.rights.erase(req.userIds, req.anonymousIds, actor=req.actor)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            return 400, {"code": "bad_request", "message": str(exc), "detail": str(exc)}

    def rights_request(self, kind: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """``aap privacy rectify|restrict|object``: the same code as the REST API's
        requests (:class:`aap.privacy.rights.Rights`), run at once."""
        try:
            req = msgspec.json.decode(body, type=EraseRequest)
            keys = self.rights.subject_keys(req.userIds, req.anonymousIds)
            if kind == "rectification":
                return 200, self.rights.rectify_keys(keys, req.traits, req.actor)
            return 200, self.rights.flag_keys(keys, kind, req.actor, lift=req.lift)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            return 400, {"code": "bad_request", "message": str(exc), "detail": str(exc)}

    def sql(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            req = msgspec.json.decode(body, type=SQLRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return 400, {"code": "bad_request", "message": str(exc), "detail": str(exc)}
        try:
            cols, result = self.warehouse.query(req.sql, req.params)
        except duckdb.Error as exc:
            return 400, {"code": "bad_query", "message": str(exc), "detail": str(exc)}
        rows = [[_jsonable(v) for v in r] for r in result]
        return 200, {"columns": cols, "rows": rows, "position": self.processor.position}


_RIGHTS = {"/internal/privacy/rectify": "rectification",
           "/internal/privacy/restrict": "restriction",
           "/internal/privacy/object": "objection"}


class CoreApp:
    """Threads: queries run on ``queries`` (``AAP_QUERY_CONCURRENCY`` threads) once the
    gate (:mod:`aap.api.gate`) gives them a slot; privacy calls on ``privacy``, every
    other call on ``other``: neither ever waits behind analysts' queries."""

    def __init__(self) -> None:
        self.core: Core | None = None
        self.gate: QueryGate | None = None
        self.queries: ThreadPoolExecutor | None = None
        self.privacy = ThreadPoolExecutor(4, thread_name_prefix="aap-privacy")
        self.other = ThreadPoolExecutor(8, thread_name_prefix="aap-api")

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
        self.core = Core(settings)
        self.core.start()

    def _close(self) -> None:
        if self.core:
            self.core.close()
        for pool in (self.queries, self.privacy, self.other):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    async def _on(self, pool: ThreadPoolExecutor | None, fn: Callable[..., Any], *args: Any
                  ) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(fn, *args))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    self._start()
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await asyncio.to_thread(self._close)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            m = await receive()
            body += m.get("body", b"")
            more = m.get("more_body", False)
        status: int
        out: Any
        reply_headers = [(b"content-type", b"application/json")]
        status, out = 404, {"code": "not_found", "message": "no such endpoint", "detail": ""}
        if self.core is None:
            status, out = 503, {"code": "starting", "message": "starting", "detail": ""}
        elif scope["path"] == "/healthz":
            status, out = 200, {"status": "ok", "position": self.core.processor.position}
        elif scope["path"] == "/internal/privacy/erase" and scope["method"] == "POST":
            status, out = await self._on(self.privacy, self.core.erase, body)
        elif scope["path"] == "/internal/privacy/access" and scope["method"] == "POST":
            status, out = await self._on(self.privacy, self.core.access, body)
        elif scope["path"] in _RIGHTS and scope["method"] == "POST":
            status, out = await self._on(self.privacy, self.core.rights_request,
                                         _RIGHTS[scope["path"]], body)
        elif scope["path"] == "/internal/sql" and scope["method"] == "POST":
            status, out = await self._on(self.other, self.core.sql, body)
        elif scope["path"].startswith("/internal/api/v1/"):
            headers = dict(scope["headers"])
            role = headers.get(b"x-aap-role", b"").decode("latin-1")
            # who, for the audit log: the API key the collector's worker checked, else
            # a local caller on the socket (the CLI names itself)
            key_id = headers.get(b"x-aap-key", b"").decode("latin-1")
            actor = (f"key:{key_id}" if key_id else
                     headers.get(b"x-aap-actor", b"local").decode("latin-1")[:100])
            method, path = scope["method"], scope["path"][len("/internal/api/v1"):]
            args = (method, path, role, body, actor)
            if is_query(method, path) and self.gate is not None:
                try:
                    async with self.gate.slot(key_id or actor):
                        status, out = await self._on(self.queries, self.core.rest.handle, *args)
                except errors.TransientError as exc:
                    status, out = exc.status, exc.body()
                    reply_headers.append((b"retry-after", str(exc.retry_after).encode()))
            else:
                pool = self.privacy if path.startswith("/privacy/") else self.other
                status, out = await self._on(pool, self.core.rest.handle, *args)
        if isinstance(out, bytes):  # a file (the zip of an access request)
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/zip")]})
            await send({"type": "http.response.body", "body": out})
            return
        encoded = msgspec.json.encode(out)
        limit = self.core.settings.query.max_response_bytes if self.core else 0
        if limit and len(encoded) > limit:
            status, encoded = 400, msgspec.json.encode(errors.BadRequest(
                f"the answer is {len(encoded)} bytes, more than {limit}"
                " (AAP_MAX_RESPONSE_BYTES): ask for less (fewer series, rows or buckets)",
                {"bytes": len(encoded), "limit_bytes": limit},
                code="response_too_large").body())
        if status == 405 and isinstance(out.get("detail"), list):  # the methods allowed
            reply_headers.append((b"allow", ", ".join(out["detail"]).encode()))
        await send({"type": "http.response.start", "status": status,
                    "headers": reply_headers})
        await send({"type": "http.response.body", "body": encoded})


def create_app() -> CoreApp:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return CoreApp()
