"""The collector: a pure ASGI app that answers 200 only once a batch is durable.

Per request: route → back-pressure → write key → body (limits, gzip) → decode and
validate each event → origin and rate limit → IP to coarse geo, then truncated →
append to the log (group commit) → answer. A WebSocket stream (:mod:`aap.collect.stream`)
hands each of its messages to the same path (:meth:`Collector.accept_batch`).
"""

from __future__ import annotations

import gc
import hmac
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import msgspec.structs

from aap import errors
from aap.api import openapi
from aap.api.openapi import INGEST_ERRORS, INGESTED, Op, documented
from aap.api.proxy import ApiProxy
from aap.api.routes import PREFIX as API_PREFIX
from aap.api.routes import ROUTES as API_ROUTES
from aap.asgi import (
    Connection,
    Handler,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    WebSocket,
    content_length,
    failed,
    lifespan,
    read_raw,
    send_response,
)  # fmt: skip
from aap.collect import metrics
from aap.collect.body import decode_content
from aap.collect.compat import Compat, is_browser_path, sends_credentials, templated
from aap.collect.consent import ConsentRequest, Gate, Said, parse_consent
from aap.collect.health import Health
from aap.collect.keys import KeyLookups
from aap.collect.portal import Portal
from aap.collect.ratelimit import RateLimiter, retry_after
from aap.collect.segment import (
    BATCH_PATHS,
    REASON_TEXT,
    SINGLE_PATHS,
    Parsed,
    Rejection,
    basic_write_key,
    parse_batch,
    parse_single,
    to_event,
)  # fmt: skip
from aap.collect.shared import SharedState
from aap.collect.stream import PATH as STREAM_PATH
from aap.collect.stream import Streams
from aap.collect.subject import PATH as SUBJECT_PATH
from aap.collect.subject import OwnRequest, SelfService
from aap.collect.telemetry import PATH as TELEMETRY_PATH
from aap.collect.telemetry import Telemetry
from aap.events import Event, time_out_of_range
from aap.log import open_log
from aap.log.base import records
from aap.log.committer import GroupCommitter
from aap.privacy.cnil import CNIL, NOT_ANONYMOUS_TEXT, DailySalts, anonymize
from aap.privacy.ip import GeoLocator, IpPolicy, parse_networks, strip_ip
from aap.privacy.sealing import Sealer
from aap.routing import ANY, Found, Route, Router
from aap.settings import Settings
from aap.sources import Source, Sources
from aap.web.app import WebApp

logger = logging.getLogger("aap.collect")

CORS_ALLOW_HEADERS = "Authorization, Content-Type, Content-Encoding, X-Retry-Count, SP-Anonymous"
"""The request headers browsers may send cross-origin: the SDKs' own, nothing else."""
_json = msgspec.json.Encoder()
BASIC_KEY_HINT = "send it as the Basic auth user name"
UNKNOWN_KEY_DETAIL = "invalid write key: no source has it"
"""RudderStack's mobile SDKs stop sending (instead of retrying forever) when an error body
says "invalid write key", as RudderStack's own server does."""
GET_HEAD = ("GET", "HEAD")
POST = ("POST",)


class Collector:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_path
        self.sources = Sources(self.data_dir)
        self.log = open_log(settings)
        collector = settings.collector
        self.committer = (
            None if settings.storage.log_backend == "null"
            else GroupCommitter(self.log, collector.max_pending_appends,
                                settings.server.retry_after_seconds,
                                retention_hours=settings.tiers.log_retention_hours)
        )
        self.ip = IpPolicy(parse_networks(collector.trusted_proxies), settings.privacy.ipv4_prefix,
                           settings.privacy.ipv6_prefix, geo=GeoLocator())
        self.limiter = RateLimiter(workers=settings.server.workers or 1)
        self.health = Health(self.data_dir, self.log, min_free_disk_mb=collector.min_free_disk_mb,
                             max_lag=collector.max_consumer_lag,
                             interval_ms=collector.health_interval_ms)
        # the stores below are PostgreSQL's with AAP_META_URL: called off the event loop
        self.shared = SharedState(threaded=bool(settings.storage.meta_url)
                                  and collector.shared_state_thread)
        self.gate = Gate(self.data_dir, collector.consent_per_subject_per_minute)
        self.sealer = Sealer(self.data_dir, hasher=self.gate.hasher)
        self.self_service = SelfService(self.data_dir, self.gate.hasher, self.sources)
        self.salts = DailySalts(self.data_dir)
        self.portal = Portal(self.sources, self.gate, self.self_service, self.limiter,
                             self.shared)
        self.write_keys = KeyLookups("write", self.sources.by_key, self.limiter,
                                     collector.key_lookups_per_second)
        """A replaced server key stops working, a new controller group applies, within
        :data:`aap.collect.keys.KNOWN_TTL_S`."""
        self._metrics_token = settings.server.metrics_token.encode()
        self._hsts = ([("strict-transport-security", f"max-age={settings.tls.hsts_max_age}")]
                      if settings.tls.on else [])
        # a query may wait for a slot as long as it may run (aap.api.gate)
        self.api = ApiProxy(self.data_dir, timeout=2 * settings.query.query_timeout_s + 30,
                            max_body=settings.collector.max_request_bytes,
                            session_ttl_s=settings.server.session_ttl_s)
        self.web = WebApp(self.api, secure_cookie=settings.tls.on)  # pages, files, sessions
        self._openapi: bytes | None = None
        self.streams = Streams(self, settings.stream)  # GET /v1/stream (WebSocket)
        # POST /v1/devices/telemetry, and the MQTT bridge's messages
        self.telemetry = Telemetry(self.data_dir, settings.devices, self.sources,
                                   self.accept_batch, self.limiter,
                                   collector.key_lookups_per_second)
        self.router: Router[Handler] = Router(self.routes())

    def routes(self) -> list[Route[Handler]]:
        """The collector's route table: it dispatches, and it is what the OpenAPI
        document lists (:meth:`openapi_document`)."""
        own = [Route("/healthz", GET_HEAD, self.healthz),
               Route("/metrics", ("GET",), self.metrics),
               Route("/v1/consent", POST, self.consent),
               Route(SUBJECT_PATH, POST, self.own_request),
               *self.portal.routes(),  # the privacy portal's public endpoints
               Route(API_PREFIX + "/openapi.json", GET_HEAD, self.openapi),
               *(Route(path, POST, self.ingest_batch) for path in BATCH_PATHS),
               *(Route(path, POST, self.ingest_single) for path in SINGLE_PATHS),
               Route(STREAM_PATH, GET_HEAD, self.streams.http),
               Route(TELEMETRY_PATH, POST, self.ingest_telemetry)]
        # PostHog, Segment browser, Snowplow, /sdk.js
        compat = Compat(self, self.settings).routes()
        return [*own, *compat, *templated(self.own_request_status, ("GET",)), *self.web.routes(),
                Route(API_PREFIX + "/", ANY, self.proxy_api, prefix=True, label=API_PREFIX)]

    # -- ASGI --

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, self._startup, self._shutdown)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self.streams.serve(WebSocket(scope, receive, send))

    async def _startup(self) -> None:
        pass

    async def _shutdown(self) -> None:
        self.close()

    def close(self) -> None:
        self.health.close()
        self.telemetry.close()
        self.shared.close()
        if self.committer is not None:
            self.committer.close()
        self.log.close()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        req = Request(scope, receive, self.settings.server.body_timeout_s)
        found = self.router.find(req.path)
        route = self.router.label(req.path, found)
        try:
            resp = await self._dispatch(req, found)
        except Exception as exc:
            resp = failed(exc, route, logger)
        origin = req.headers.get("origin")
        if origin and req.cors and is_browser_path(req.path):
            resp.headers += [("access-control-allow-origin", origin), ("vary", "Origin"),
                             ("access-control-expose-headers", "Retry-After")]
            if sends_credentials(req.path):
                resp.headers.append(("access-control-allow-credentials", "true"))
        resp.headers += self._hsts
        await send_response(send, resp)
        metrics.REQUESTS.labels(route, str(resp.status)).inc()
        metrics.LATENCY.labels(route).observe(time.perf_counter() - start)

    async def _dispatch(self, req: Request, found: Found[Handler] | None) -> Response:
        if found is None:
            raise errors.no_endpoint(req.path)
        if req.method == "OPTIONS" and is_browser_path(req.path):
            return self.preflight(req)
        return await self.router.select(found[0], req.method, req.path).target(req)

    async def proxy_api(self, req: Request) -> Response:
        """The REST API: the key checked here, the answer the core's (:mod:`aap.api.proxy`)."""
        status, body, headers = await self.api.handle(
            req.method, req.path, req.headers, req.receive,
            req.scope.get("query_string", b"").decode("latin-1"))
        ctype = next((v for k, v in headers if k == "content-type"), "application/json")
        return Response(status, body, ctype, [h for h in headers if h[0] != "content-type"])

    # -- small endpoints --

    def preflight(self, req: Request) -> Response:
        return Response(204, b"", headers=[
            ("access-control-allow-methods", "GET, POST, OPTIONS"),
            ("access-control-allow-headers", CORS_ALLOW_HEADERS),
            ("access-control-max-age", "86400"),
        ])

    def openapi_document(self) -> dict[str, Any]:
        """The OpenAPI document of every route this server answers (see
        :mod:`aap.api.openapi`), built from the route tables."""
        from aap.privacy.requests import NewRequest
        from aap.query.models import CohortSpec, Insight

        components = openapi.schemas({
            "Insight": Insight, "CohortSpec": CohortSpec, "NewRequest": NewRequest,
            "OwnRequest": OwnRequest, "ConsentRequest": ConsentRequest})
        table = [(r.path, r.methods, r.target) for r in self.router.routes if not r.prefix]
        rest = [(m, r.regex(), r.target.op) for r in API_ROUTES for m in r.methods]
        return openapi.document(table, [], rest, API_PREFIX, components)

    @documented(Op("This OpenAPI document", ok={"type": "object", "required": ["openapi"]}))
    async def openapi(self, req: Request) -> Response:
        if self._openapi is None:
            self._openapi = _json.encode(self.openapi_document())
        return Response(200, b"" if req.method == "HEAD" else self._openapi)

    @documented(Op("Health: 200 while events are accepted", errors=(503,),
                   ok={"type": "object", "required": ["status"],
                       "properties": {"status": {"const": "ok"}}}))
    async def healthz(self, req: Request) -> Response:
        problem = await self.health.problem()
        if problem:
            raise errors.ServiceUnavailable(problem.message, code=problem.code,
                                            retry_after=self.settings.server.retry_after_seconds)
        return Response.json(200, {"status": "ok"})

    @documented(Op("Prometheus metrics", ok={"type": "string"},
                   ok_type=metrics.CONTENT_TYPE.partition(";")[0], errors=(401,),
                   security=("metricsToken", "")))
    async def metrics(self, req: Request) -> Response:
        if self._metrics_token:
            scheme, _, token = req.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    token.strip().encode("utf-8", "surrogateescape"), self._metrics_token):
                raise errors.Unauthorized("send Authorization: Bearer <AAP_METRICS_TOKEN>",
                                          code="bad_metrics_token")
        body = await self.health.off_loop(metrics.render, self.log.stats)  # the log's figures
        return Response(200, body, content_type=metrics.CONTENT_TYPE)

    # -- ingestion --

    @documented(Op("Segment/RudderStack batch of events", ok=INGESTED, errors=INGEST_ERRORS,
                   body={"type": "object", "required": ["batch"],
                         "properties": {"batch": {"type": "array", "items": {"type": "object"}},
                                        "writeKey": {"type": "string"}}},
                   body_types=("application/json", "text/plain"), security=("writeKey", "")))
    async def ingest_batch(self, req: Request) -> Response:
        limit = self.settings.collector.max_event_bytes
        return await self.ingest(req, lambda body: parse_batch(body, limit), json_body=True)

    @documented(Op("One Segment/RudderStack event (the type is the path's)", ok=INGESTED,
                   errors=INGEST_ERRORS, body={"type": "object"},
                   body_types=("application/json", "text/plain"), security=("writeKey", "")))
    async def ingest_single(self, req: Request) -> Response:
        mtype = SINGLE_PATHS[req.path]
        return await self.ingest(
            req, lambda body: parse_single(body, mtype, self.settings.collector.max_event_bytes),
            json_body=True)

    @documented(Op("A device's readings (IoT): [{name, ts, values}], gzip allowed",
                   ok=INGESTED, errors=INGEST_ERRORS,
                   body={"type": "array", "items": {
                       "type": "object", "required": ["name", "ts", "values"],
                       "properties": {"name": {"type": "string"},
                                      "ts": {"type": ["number", "string"]},
                                      "values": {"type": "object"}}}},
                   security=("deviceKey",)))
    async def ingest_telemetry(self, req: Request) -> Response:
        """``POST /v1/devices/telemetry`` (:mod:`aap.collect.telemetry`)."""
        await self.check_health()
        device = self.telemetry.device(req.headers.get("authorization"))
        limit = self.settings.devices.device_max_request_bytes
        raw = await read_raw(req.receive, content_length(req.headers.get("content-length")),
                             limit)
        metrics.BYTES_IN.inc(len(raw))
        body = decode_content(raw, req.headers.get("content-encoding", ""), limit)
        return Response.json(200, await self.telemetry.accept(req, device, body))

    async def ingest(self, req: Request, parse: Callable[[bytes], Parsed], *, auth: bool = True,
                     key_hint: str = BASIC_KEY_HINT, json_body: bool = False) -> Response:
        """Ingest the events ``parse`` finds in the body. ``auth=False``: the wire format
        carries its key in the body only (PostHog, Snowplow), the Authorization header
        is not read; ``key_hint`` says where the key goes when it is missing.
        ``json_body``: the events are the body's JSON decoded as it is (Segment), so the
        scrubbing may search the body for addresses instead of the events."""
        await self.check_health()
        source = self.source_from_header(req.headers.get("authorization")) if auth else None
        limit = self.settings.collector.max_request_bytes
        raw = await read_raw(req.receive, content_length(req.headers.get("content-length")),
                             limit)
        metrics.BYTES_IN.inc(len(raw))
        body = decode_content(raw, req.headers.get("content-encoding", ""), limit)
        parsed = parse(body)
        if source is None:
            source = self._source_in_body(parsed.write_key, key_hint)
        self.check_origin(req, source)
        return Response.json(200, await self.accept_batch(req, source, parsed,
                                                          body if json_body else None))

    async def accept_batch(self, conn: Connection, source: Source, parsed: Parsed,
                           body: bytes | None) -> dict[str, Any]:
        """The one ingestion path of a batch whose source is known and whose origin is
        allowed, for HTTP requests and WebSocket messages alike: the source's rate limit,
        each event validated, IP to coarse geo then truncated, the consent gate, personal
        data sealed, the durable append; returns the answer once the events are durable.
        ``body``: the batch's JSON as sent, which the scrubbing may search for addresses."""
        self._take_events(source, len(parsed.messages))
        events, rejected = self._events(conn, source, parsed)
        rejected_out = _rejected(rejected)
        if not events and rejected:
            raise errors.BadRequest("no event in the request is valid", rejected_out,
                                    code="invalid_events")
        not_stored = await self.shared.grouped(self._not_stored_all,
                                               (conn, source, events, body))
        if events:
            await self._append(source, events)
        return _ingested(len(events), not_stored, rejected_out)

    async def check_health(self) -> None:
        """Back-pressure: 503 while the log is not healthy (disk, consumer lag)."""
        problem = await self.health.problem()
        if problem:
            raise errors.ServiceUnavailable(problem.message, code=problem.code,
                                            retry_after=self.settings.server.retry_after_seconds)

    def _source_in_body(self, write_key: str | None, key_hint: str) -> Source:
        if not write_key:
            raise errors.Unauthorized(f"no write key: {key_hint}", code="missing_write_key")
        return self.source(write_key)

    def check_origin(self, req: Connection, source: Source) -> None:
        origin = req.headers.get("origin")
        if origin and not source.allows_origin(origin):
            req.cors = False
            raise errors.Forbidden(f"origin {origin} is not allowed for this source",
                                   code="origin_not_allowed")

    def _take_events(self, source: Source, n: int) -> None:
        """The source's rate limit: 429 when ``n`` events are over it."""
        wait = self.limiter.take(source.id, source.rate_limit, n)
        if wait:
            metrics.EVENTS_REJECTED.labels("rate_limited").inc(n)
            raise errors.TooManyRequests(
                f"source {source.name} is over its limit of {source.rate_limit:g} events/s",
                retry_after=retry_after(wait))

    def _not_stored_all(self, batches: list[tuple[Connection, Source, list[Event], bytes | None]]
                        ) -> list[dict[str, int] | Exception]:
        """For each batch (those that waited for the shared state together, in order):
        drop the events with no lawful basis and those of erased subjects, the rest
        sealed; what their events said about consent goes to the ledger in one
        transaction (:meth:`Gate.record_said`), their new persons' keys to the keystore
        in one write (:meth:`Sealer.seal_all`); how many of each
        were dropped, or the batch's own error (a subject over its consent cap)."""
        out: list[dict[str, int] | Exception] = []
        admitted: list[tuple[int, int, list[Event], bytes | None]] = []
        if any(source.mode != CNIL for _, source, _, _ in batches):
            # one indexed read of what the ledger gained, for all: a statement another
            # worker wrote before any of them arrived applies to it
            self.gate.state.refresh(force=True)
        said: list[Said] = []
        for conn, source, events, body in batches:
            try:
                withheld = self.gate.admit(source, events,
                                           conn.headers.get("sec-gpc", "").strip() == "1", said)
            except errors.AAPError as exc:
                out.append(exc)
                continue
            admitted.append((len(out), withheld, events, body))
            out.append({})
        self.gate.record_said(said)  # one turn at the ledger, before any event is stored
        erased = self.sealer.seal_all([(events, body) for _, _, events, body in admitted])
        for (i, withheld, _, _), gone in zip(admitted, erased, strict=True):
            if withheld:
                metrics.EVENTS_NOT_STORED.labels("no_lawful_basis").inc(withheld)
            if gone:
                metrics.EVENTS_NOT_STORED.labels("erased_subject").inc(gone)
            out[i] = {k: v for k, v in (("no_lawful_basis", withheld), ("erased_subject", gone))
                      if v}
        return out

    async def _append(self, source: Source, events: list[Event]) -> None:
        """Append the events to the log; returns once they are durable."""
        batches = records(self.log, source.id, events)  # Kafka: one per partition
        if self.committer is None:
            self.log.append(batches)
        else:
            await self.committer.append_all(batches)
        metrics.EVENTS_ACCEPTED.labels(source.id).inc(len(events))

    @documented(Op("A person files their own privacy request", errors=(400, 401, 408, 413),
                   body={"$ref": "#/components/schemas/OwnRequest"},
                   ok={"type": "object", "required": ["id", "status"]},
                   security=("subjectToken",)))
    async def own_request(self, req: Request) -> Response:
        """``POST /v1/privacy/requests`` with a subject token: a person's own request."""
        raw = await read_raw(req.receive, None, 64 * 1024)
        return Response.json(200, await self.shared(
            self.self_service.submit, req.headers.get("authorization"), raw))

    @documented(Op("A person's own privacy request: its status, or the zip of an access"
                   " request", errors=(401, 404, 409), security=("subjectToken",),
                   paths=(SUBJECT_PATH + "/{id}", SUBJECT_PATH + "/{id}/export"),
                   path_types={SUBJECT_PATH + "/{id}/export": "application/zip"},
                   params={"id": {"type": "string", "pattern": "^pr_[0-9a-f]{16}$"}}))
    async def own_request_status(self, req: Request) -> Response:
        out = await self.shared(self.self_service.lookup, req.headers.get("authorization"),
                                req.path)
        if isinstance(out, bytes):
            return Response(200, out, "application/zip")
        return Response.json(200, out)

    @documented(Op("A person grants or withdraws purposes", errors=(*INGEST_ERRORS,),
                   body={"$ref": "#/components/schemas/ConsentRequest"},
                   ok={"type": "object", "required": ["success", "recorded"],
                       "properties": {"success": {"const": True},
                                      "recorded": {"type": "integer"}}},
                   security=("writeKey", "subjectToken", "")))
    async def consent(self, req: Request) -> Response:
        """``POST /v1/consent``: a person grants or withdraws purposes. Back-pressure and
        the source's rate limit apply as to events (one statement request counts as one
        event, in a bucket of its own), and each id has its own cap per minute."""
        await self.check_health()
        authorization = req.headers.get("authorization")
        subject: dict[str, str] | None = None
        source: Source | None
        if authorization and authorization.partition(" ")[0].lower() == "subject":
            # the person themselves, with a token their site signed: may change history
            signed, subject = await self.shared(self.self_service.identify, authorization)
            source = msgspec.structs.replace(signed, server_key=True)
        else:
            source = self.source_from_header(authorization)
        clen = req.headers.get("content-length")
        limit = 64 * 1024
        raw = await read_raw(req.receive, content_length(clen), limit)
        body = decode_content(raw, req.headers.get("content-encoding", ""), limit)
        parsed = parse_consent(body, subject is not None)
        if subject is not None:
            named = {"userId": parsed.user_id, "anonymousId": parsed.anonymous_id}
            if any(v not in (None, "") and str(v) != subject.get(k) for k, v in named.items()):
                raise errors.Forbidden("a subject token speaks only for the person it names",
                                       code="not_your_subject")
            parsed.user_id = subject.get("userId")
            parsed.anonymous_id = subject.get("anonymousId")
        if source is None:
            source = self._source_in_body(parsed.write_key, BASIC_KEY_HINT)
        self.check_origin(req, source)
        wait = self.limiter.take("consent:" + source.id, source.rate_limit, 1)
        if wait:
            metrics.EVENTS_REJECTED.labels("consent_rate_limited").inc()
            raise errors.TooManyRequests(
                f"source {source.name} is over its limit of {source.rate_limit:g} consent"
                " statements/s", retry_after=retry_after(wait))
        n = await self.shared(self.gate.record, source, parsed,
                              req.headers.get("sec-gpc", "").strip() == "1")
        metrics.CONSENT_STATEMENTS.inc(n)
        return Response.json(200, {"success": True, "recorded": n})

    def _events(self, req: Connection, source: Source, parsed: Parsed
                ) -> tuple[list[Event], list[Rejection]]:
        received_at = datetime.now(UTC)
        gpc = req.headers.get("sec-gpc", "").strip() == "1"
        dnt = req.headers.get("dnt", "").strip() == "1"
        request_ip = self.ip.anonymize(
            self.ip.client_ip(req.peer, req.headers.get("x-forwarded-for")))
        events: list[Event] = []
        rejected = list(parsed.rejected)
        cnil = source.mode == CNIL
        salt = self.salts.today() if cnil else b""
        for index, m in parsed.messages:
            if cnil and m.user_id is None and m.anonymous_id is None:
                m.anonymous_id = "-"  # cookieless: no id needed (anonymize drops ids anyway)
            ev = to_event(m, source=source.id, received_at=received_at)
            if isinstance(ev, str):
                rejected.append(Rejection(index, ev, REASON_TEXT[ev]))
                continue
            bad_time = time_out_of_range(ev.timestamp, ev.sent_at, received_at,
                                         historical=source.historical)
            if bad_time is not None:
                rejected.append(Rejection(index, "timestamp_out_of_range", bad_time))
                continue
            sent_ip = strip_ip(ev.context)
            ev.ip, ev.geo = (self.ip.anonymize(sent_ip) if sent_ip else (None, None))
            if ev.ip is None:
                ev.ip, ev.geo = request_ip
            ev.gpc, ev.dnt = gpc or ev.context.get("gpc") is True, dnt
            if cnil:
                reason = anonymize(ev, salt, req.headers.get("user-agent"))
                if reason is not None:
                    rejected.append(Rejection(index, reason, NOT_ANONYMOUS_TEXT))
                    continue
            events.append(ev)
        rejected.sort(key=lambda r: r.index)
        return events, rejected

    # -- write keys --

    def source_from_header(self, authorization: str | None) -> Source | None:
        return self.source(basic_write_key(authorization)) if authorization else None

    def source(self, key: str) -> Source:
        found = self.write_keys.get(key)
        if found is None:
            raise errors.Unauthorized("unknown write key", UNKNOWN_KEY_DETAIL,
                                      code="unknown_write_key")
        return found


def _rejected(rejected: list[Rejection]) -> list[dict[str, Any]]:
    """The rejected events as the answer lists them (each counted in the metrics)."""
    for r in rejected:
        metrics.EVENTS_REJECTED.labels(r.reason).inc()
    return [{"index": r.index, "reason": r.reason, "detail": r.detail} for r in rejected]


def _ingested(accepted: int, not_stored: dict[str, int],
              rejected: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer to an ingestion: how many events were stored, and why others were not."""
    out: dict[str, Any] = {"success": True, "accepted": accepted}
    if not_stored:
        out["not_stored"] = not_stored
    if rejected:
        out["rejected"] = rejected
    return out


def create_app() -> Collector:
    """Factory for the ASGI server: each worker process builds its own collector."""
    from aap.lifecycle import die_with_parent

    die_with_parent()  # a worker dies with `aap serve`
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = Collector(Settings())
    # Requests allocate many short-lived containers and form no cycles: collect rarely,
    # and never scan what start-up allocated (measured: ~20% of a worker's time otherwise).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    return app
