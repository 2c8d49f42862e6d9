"""The endpoints the other vendors' SDKs (PostHog, Segment's browser SDK, Snowplow,
RudderStack's control plane) and our own browser SDK talk to: :meth:`Compat.routes`,
which the :class:`~aap.collect.app.Collector` adds to its table, answered through the
:class:`Ingest` it gives.

Each wire format lives in its own module (:mod:`.posthog`, :mod:`.snowplow`,
:mod:`.segment`, :mod:`.rudderstack`) and turns requests into wire messages; the
collector's ingestion (write key, limits, rate limit, IP truncation, durable append,
200 only once durable) is the same for all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

import msgspec

from aap import errors
from aap.api.openapi import INGEST_ERRORS, INGESTED, Op, documented, op_of
from aap.asgi import Handler, Request, Response, content_length, read_raw
from aap.collect import posthog, rudderstack, snowplow
from aap.collect.body import decode_content
from aap.collect.segment import Parsed, basic_write_key
from aap.routing import Route
from aap.settings import Settings
from aap.sources import Source

SDK_FILE = Path(__file__).parent / "static" / "aap.min.js"
BANNER_FILE = Path(__file__).parent / "static" / "aap-banner.min.js"
"""The SDK's consent banner (``aap.consent.show()`` loads it from ``/sdk-banner.js``)."""
SEGMENT_SETTINGS_PREFIX = "/v1/projects/"
SEGMENT_METRICS_PATH = "/v1/m"
BROWSER_PREFIXES = ("/v1/", posthog.CONFIG_PREFIX)
POSTHOG_KEY_HINT = "send the source's write key as `api_key` (or `properties.token`)"
RUDDERSTACK_KEY_HINT = "send it as the Basic auth user name (or `writeKey` in the query)"
SNOWPLOW_KEY_HINT = "set the tracker's app id (`aid`) to the source's write key"
BROWSER_PATHS = frozenset((*posthog.CAPTURE_PATHS, *posthog.FLAGS_PATHS, snowplow.TP2_PATH,
                           *snowplow.GET_PATHS, *rudderstack.SOURCE_CONFIG_PATHS))


CREDENTIALED_PATHS = frozenset((snowplow.TP2_PATH, *snowplow.GET_PATHS))
"""Where a browser SDK sends credentials: Snowplow's JavaScript tracker sends its
requests with ``withCredentials`` (for the collector's network-user-id cookie) by
default, and the browser drops the answer unless it allows credentials. AAP sets and
reads no cookie, there or anywhere; every other SDK sends none."""


OBJECT_OR_LIST = {"anyOf": [{"type": "object"}, {"type": "array"}]}


def is_browser_path(path: str) -> bool:
    """Paths browsers call cross-origin: CORS headers and preflights apply."""
    return path in BROWSER_PATHS or path.startswith(BROWSER_PREFIXES)


def sends_credentials(path: str) -> bool:
    """Whether CORS answers on ``path`` allow credentials (see CREDENTIALED_PATHS)."""
    return path in CREDENTIALED_PATHS


def query(req: Request) -> dict[str, list[str]]:
    raw = req.scope.get("query_string", b"")
    try:
        return parse_qs(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise errors.BadRequest("the query string is not valid UTF-8",
                                code="invalid_query") from None


class Ingest(Protocol):
    """What the compatible endpoints need of the collector: its ingestion (write key,
    limits, rate limit, IP truncation, durable append) and its write keys."""

    async def ingest(self, req: Request, parse: Callable[[bytes], Parsed], *,
                     auth: bool = True, key_hint: str = ..., json_body: bool = False
                     ) -> Response: ...

    def source(self, key: str) -> Source: ...


def templated(handler: Handler, methods: tuple[str, ...]) -> list[Route[Handler]]:
    """Routes of a handler behind path templates: those its ``Op`` names (only those
    paths answer; others under the same start are 404, not 405)."""
    return [Route(path, methods, handler) for path in op_of(handler).paths]


class Compat:
    def __init__(self, app: Ingest, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._sdk: tuple[bytes, str] | None = None
        self._banner: tuple[bytes, str] | None = None

    def routes(self) -> list[Route[Handler]]:
        return [
            *(Route(path, ("POST", "GET"), self.posthog_capture)
              for path in posthog.CAPTURE_PATHS),
            *(Route(path, ("POST", "GET"), self.posthog_flags) for path in posthog.FLAGS_PATHS),
            Route(snowplow.TP2_PATH, ("POST",), self.snowplow_post),
            *(Route(path, ("GET",), self.snowplow_get) for path in snowplow.GET_PATHS),
            Route(SEGMENT_METRICS_PATH, ("POST",), self.segment_metrics),
            *(Route(path, ("GET",), self.rudderstack_source_config)
              for path in rudderstack.SOURCE_CONFIG_PATHS),
            Route("/sdk.js", ("GET", "HEAD"), self.sdk_js),
            Route("/sdk-banner.js", ("GET", "HEAD"), self.sdk_banner_js),
            *templated(self.posthog_config, ("GET",)),
            *templated(self.segment_settings, ("GET",)),
        ]

    # -- helpers --

    async def _body(self, req: Request) -> bytes:
        limit = self.settings.collector.max_request_bytes
        clen = req.headers.get("content-length")
        raw = await read_raw(req.receive, content_length(clen), limit)
        return decode_content(raw, req.headers.get("content-encoding", ""), limit)

    def _limits(self) -> tuple[int, int]:
        s = self.settings.collector
        return s.max_request_bytes, s.max_event_bytes

    # -- PostHog --

    @documented(Op("PostHog capture: one event or a batch (POST body, or `data` in a GET)",
                   ok=INGESTED, errors=INGEST_ERRORS, body=OBJECT_OR_LIST, body_required=False,
                   body_types=("application/json", "text/plain",
                               "application/x-www-form-urlencoded"),
                   query={"data": {"type": "string"}, "compression": {"type": "string"},
                          "ver": {"type": "string"}}))
    async def posthog_capture(self, req: Request) -> Response:
        q = query(req)
        limit, max_event = self._limits()
        engage = req.path.startswith("/engage")
        ctype = req.headers.get("content-type", "")
        if req.method == "GET":
            data = (q.get("data") or [""])[0]
            if not data:
                raise errors.BadRequest("a GET capture needs the event in `data`",
                                        code="empty_body")
            # the (empty) body is read once, by _ingest: a second read would wait forever
            parsed = posthog.parse(b"data=" + data.encode(), q, ctype, limit, max_event,
                                   engage=engage)
            resp = await self.app.ingest(req, lambda _: parsed, auth=False,
                                          key_hint=POSTHOG_KEY_HINT)
        else:
            resp = await self.app.ingest(
                req, lambda body: posthog.parse(body, q, ctype, limit, max_event, engage=engage),
                auth=False, key_hint=POSTHOG_KEY_HINT)
        out = msgspec.json.decode(resp.body)
        out["status"] = 1  # what PostHog's own capture answers
        return Response.json(200, out)

    @documented(Op("PostHog feature flags: none, for the SDKs' start-up",
                   errors=(400, 401, 408, 413), body={"type": "object"}, body_required=False,
                   body_types=("application/json", "text/plain"),
                   query={"token": {"type": "string"}, "api_key": {"type": "string"},
                          "v": {"type": "string"}}))
    async def posthog_flags(self, req: Request) -> Response:
        limit, _ = self._limits()
        body = await self._body(req) if req.method == "POST" else b""
        key = posthog.flags_key(body, query(req), req.headers.get("content-type", ""), limit)
        if not key:
            raise errors.Unauthorized("no project key: send `token` or `api_key`",
                                      code="missing_write_key")
        self.app.source(key)
        return Response.json(200, posthog.flags_response())

    @documented(Op("posthog-js remote config (JSON, or JavaScript for config.js)",
                   errors=(401,), paths=(posthog.CONFIG_PREFIX + "{token}/config",
                                         posthog.CONFIG_PREFIX + "{token}/config.js"),
                   path_types={posthog.CONFIG_PREFIX + "{token}/config.js":
                               "application/javascript"}))
    async def posthog_config(self, req: Request) -> Response:
        rest = req.path[len(posthog.CONFIG_PREFIX):]
        token, _, what = rest.partition("/")
        if what not in ("config", "config.js"):
            raise errors.no_endpoint(req.path)
        self.app.source(token)
        cfg = posthog.remote_config(token)
        if what == "config":
            return Response.json(200, cfg)
        js = ("(function(){var w=window;w._POSTHOG_REMOTE_CONFIG=w._POSTHOG_REMOTE_CONFIG||{};"
              f"w._POSTHOG_REMOTE_CONFIG[{msgspec.json.encode(token).decode()}]="
              f"{{config:{msgspec.json.encode(cfg).decode()},siteApps:[]}}}})();")
        return Response(200, js.encode(), content_type="application/javascript")

    # -- Segment's browser SDK --

    @documented(Op("Settings for Segment's browser SDK: send everything to this server",
                   errors=(400, 401), paths=(SEGMENT_SETTINGS_PREFIX + "{writeKey}/settings",)))
    async def segment_settings(self, req: Request) -> Response:
        rest = req.path[len(SEGMENT_SETTINGS_PREFIX):]
        key, _, what = rest.partition("/")
        if what != "settings":
            raise errors.no_endpoint(req.path)
        self.app.source(key)
        settings = self.settings.server
        if settings.public_url:
            base, vary = settings.public_url.rstrip("/"), []
        else:
            base, vary = request_base(req, allowed_hosts(settings.allowed_hosts, settings.host)), \
                [("vary", "Host")]
        protocol, _, host = base.partition("://")
        return Response.json(200, segment_settings(key, protocol, host + "/v1"),
                                     [("cache-control", "public, max-age=300"), *vary])

    @documented(Op("Segment's browser SDK's own metrics (dropped)", errors=(400, 408, 413),
                   ok={"type": "object", "required": ["success"]}, body={"type": "object"},
                   body_required=False, body_types=("application/json", "text/plain")))
    async def segment_metrics(self, req: Request) -> Response:
        await self._body(req)  # read (and bound) the body; the SDK's own metrics are dropped
        return Response.json(200, {"success": True})

    # -- RudderStack's control plane --

    @documented(Op("RudderStack source configuration: the source enabled, no destinations",
                   errors=(401,), ok={"type": "object", "required": ["source"]},
                   query={"p": {"type": "string"}, "v": {"type": "string"},
                          "writeKey": {"type": "string"}}))
    async def rudderstack_source_config(self, req: Request) -> Response:
        authorization = req.headers.get("authorization")
        key = basic_write_key(authorization) if authorization else \
            (query(req).get("writeKey") or [""])[0]
        if not key:
            raise errors.Unauthorized(f"no write key: {RUDDERSTACK_KEY_HINT}",
                                      code="missing_write_key")
        return Response.json(200, rudderstack.source_config(self.app.source(key), key))

    # -- Snowplow --

    @documented(Op("Snowplow tracker protocol: a payload_data document", ok=INGESTED,
                   errors=INGEST_ERRORS, body={"type": "object", "required": ["data"],
                                               "properties": {"schema": {"type": "string"},
                                                              "data": {"type": "array"}}}))
    async def snowplow_post(self, req: Request) -> Response:
        _, max_event = self._limits()
        return await self.app.ingest(req, lambda body: snowplow.parse_post(body, max_event),
                                      auth=False, key_hint=SNOWPLOW_KEY_HINT)

    @documented(Op("Snowplow tracker protocol: one event in the query string (a 1x1 GIF)",
                   ok=None, ok_type="image/gif", errors=INGEST_ERRORS,
                   query={"e": {"type": "string"}, "aid": {"type": "string"},
                          "uid": {"type": "string"}, "duid": {"type": "string"},
                          "url": {"type": "string"}, "dtm": {"type": "string"}}))
    async def snowplow_get(self, req: Request) -> Response:
        _, max_event = self._limits()
        parsed = snowplow.parse_query(query(req), max_event)
        await self.app.ingest(req, lambda _: parsed, auth=False, key_hint=SNOWPLOW_KEY_HINT)
        return Response(200, snowplow.PIXEL, content_type="image/gif",
                                headers=[("cache-control", "no-cache, no-store")])

    # -- consent and our SDK --

    @documented(Op("AAP's browser SDK", ok=None, ok_type="application/javascript",
                   errors=(304, 404), query={}))
    async def sdk_js(self, req: Request) -> Response:
        if self._sdk is None:
            self._sdk = _script(SDK_FILE)
        return _serve_script(req, self._sdk)

    @documented(Op("The consent banner of AAP's browser SDK (loaded by aap.consent.show())",
                   ok=None, ok_type="application/javascript", errors=(304, 404), query={}))
    async def sdk_banner_js(self, req: Request) -> Response:
        if self._banner is None:
            self._banner = _script(BANNER_FILE)
        return _serve_script(req, self._banner)


def _script(path: Path) -> tuple[bytes, str]:
    """A built script of the SDK and its ETag (404 if it is not built)."""
    if not path.exists():
        raise errors.NotFound("the browser SDK is not built: run scripts/setup",
                              code="sdk_not_built")
    js = path.read_bytes()
    return js, '"' + hashlib.sha256(js).hexdigest()[:16] + '"'


def _serve_script(req: Request, script: tuple[bytes, str]) -> Response:
    js, etag = script
    headers = [("etag", etag), ("cache-control", "public, max-age=3600"),
               ("access-control-allow-origin", "*")]
    if req.headers.get("if-none-match") == etag:
        return Response(304, b"", content_type="application/javascript", headers=headers)
    return Response(200, b"" if req.method == "HEAD" else js,
                    content_type="application/javascript; charset=utf-8", headers=headers)


LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def allowed_hosts(setting: str, bound: str) -> frozenset[str]:
    """Host names (without port) a request's Host may carry for the settings endpoint to
    name it back: ``AAP_ALLOWED_HOSTS``, else the local names and the bound address."""
    listed = [h.strip().lower() for h in setting.split(",") if h.strip()]
    if not listed:
        listed = [*LOCAL_HOSTS, f"[{bound}]" if ":" in bound else bound]
    return frozenset(listed)


def request_base(req: Request, allowed: frozenset[str]) -> str:
    """``scheme://host[:port]`` from the request's Host, when that host is allowed (a
    forged Host must not redirect a site's events, nor poison a cache)."""
    host = req.headers.get("host", "").strip().lower()
    name = host if host.startswith("[") and host.endswith("]") else (
        host.rpartition(":")[0] if ":" in host else host)
    port = host[len(name) + 1:]
    if not host or (host not in allowed and name not in allowed) or (port and not port.isdigit()):
        raise errors.BadRequest(
            "the Host header is not one of the allowed hosts: set AAP_PUBLIC_URL or"
            " AAP_ALLOWED_HOSTS", code="host_not_allowed")
    return f"{req.scope.get('scheme', 'http')}://{host}"


def segment_settings(key: str, protocol: str, api_host: str) -> dict[str, Any]:
    """The CDN settings ``@segment/analytics-next`` loads: send everything to AAP."""
    return {
        "integrations": {"Segment.io": {
            "apiKey": key, "apiHost": api_host, "protocol": protocol,
            "unbundledIntegrations": [], "addBundledMetadata": True,
            "maybeBundledConfigIds": {}, "versionSettings": {"version": "4.4.7",
                                                             "componentTypes": ["browser"]},
        }},
        "plan": {"track": {"__default": {"enabled": True, "integrations": {}}},
                 "identify": {"__default": {"enabled": True}},
                 "group": {"__default": {"enabled": True}}},
        "edgeFunction": {}, "analyticsNextEnabled": True, "middlewareSettings": {},
        "enabledMiddleware": {}, "metrics": {"sampleRate": 0, "host": api_host + "/m"},
        "legacyVideoPluginsEnabled": False, "remotePlugins": [], "autoInstrumentationSettings":
            {"disableTraffic": True, "sampleRate": 0},
    }

