"""The endpoints the other vendors' SDKs (PostHog, Segment's browser SDK, Snowplow) and
our own browser SDK talk to, installed on the :class:`~aap.collect.app.Collector`.

Each wire format lives in its own module (:mod:`.posthog`, :mod:`.snowplow`,
:mod:`.segment`) and turns requests into wire messages; the
collector's ingestion (write key, limits, rate limit, IP truncation, durable append,
200 only once durable) is the same for all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgspec

from aap import errors
from aap.collect import posthog, snowplow
from aap.collect.body import content_length, decode_content, read_raw

if TYPE_CHECKING:
    from aap.collect.app import Collector, Request, Response

SDK_FILE = Path(__file__).parent / "static" / "aap.min.js"
SEGMENT_SETTINGS_PREFIX = "/v1/projects/"
SEGMENT_METRICS_PATH = "/v1/m"
BROWSER_PREFIXES = ("/v1/", posthog.CONFIG_PREFIX)
POSTHOG_KEY_HINT = "send the source's write key as `api_key` (or `properties.token`)"
SNOWPLOW_KEY_HINT = "set the tracker's app id (`aid`) to the source's write key"
BROWSER_PATHS = frozenset((*posthog.CAPTURE_PATHS, *posthog.FLAGS_PATHS, snowplow.TP2_PATH,
                           *snowplow.GET_PATHS))


def is_browser_path(path: str) -> bool:
    """Paths browsers call cross-origin: CORS headers and preflights apply."""
    return path in BROWSER_PATHS or path.startswith(BROWSER_PREFIXES)


def query(req: Request) -> dict[str, list[str]]:
    raw = req.scope.get("query_string", b"")
    try:
        return parse_qs(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise errors.BadRequest("the query string is not valid UTF-8",
                                code="invalid_query") from None


class Compat:
    def __init__(self, app: Collector) -> None:
        self.app = app
        self._sdk: tuple[bytes, str] | None = None

    def install(self) -> None:
        routes = self.app.routes
        for path in posthog.CAPTURE_PATHS:
            routes[path] = (("POST", "GET"), self.posthog_capture)
        for path in posthog.FLAGS_PATHS:
            routes[path] = (("POST", "GET"), self.posthog_flags)
        routes[snowplow.TP2_PATH] = (("POST",), self.snowplow_post)
        for path in snowplow.GET_PATHS:
            routes[path] = (("GET",), self.snowplow_get)
        routes[SEGMENT_METRICS_PATH] = (("POST",), self.segment_metrics)
        routes["/sdk.js"] = (("GET", "HEAD"), self.sdk_js)
        self.app.prefix_routes += [
            (posthog.CONFIG_PREFIX, ("GET",), self.posthog_config),
            (SEGMENT_SETTINGS_PREFIX, ("GET",), self.segment_settings),
        ]

    # -- helpers --

    def _response(self) -> type[Response]:
        from aap.collect.app import Response

        return Response

    async def _body(self, req: Request) -> bytes:
        limit = self.app.settings.max_request_bytes
        clen = req.headers.get("content-length")
        raw = await read_raw(req.receive, content_length(clen), limit)
        return decode_content(raw, req.headers.get("content-encoding", ""), limit)

    def _limits(self) -> tuple[int, int]:
        s = self.app.settings
        return int(s.max_request_bytes), int(s.max_event_bytes)

    # -- PostHog --

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
            resp = await self.app._ingest(req, lambda _: parsed, auth=False,
                                          key_hint=POSTHOG_KEY_HINT)
        else:
            resp = await self.app._ingest(
                req, lambda body: posthog.parse(body, q, ctype, limit, max_event, engage=engage),
                auth=False, key_hint=POSTHOG_KEY_HINT)
        out = msgspec.json.decode(resp.body)
        out["status"] = 1  # what PostHog's own capture answers
        return self._response().json(200, out)

    async def posthog_flags(self, req: Request) -> Response:
        limit, _ = self._limits()
        body = await self._body(req) if req.method == "POST" else b""
        key = posthog.flags_key(body, query(req), req.headers.get("content-type", ""), limit)
        if not key:
            raise errors.Unauthorized("no project key: send `token` or `api_key`",
                                      code="missing_write_key")
        self.app._source(key)
        return self._response().json(200, posthog.flags_response())

    async def posthog_config(self, req: Request) -> Response:
        rest = req.path[len(posthog.CONFIG_PREFIX):]
        token, _, what = rest.partition("/")
        if what not in ("config", "config.js"):
            raise errors.NotFound(f"no endpoint at {req.path}")
        self.app._source(token)
        Response = self._response()
        cfg = posthog.remote_config(token)
        if what == "config":
            return Response.json(200, cfg)
        js = ("(function(){var w=window;w._POSTHOG_REMOTE_CONFIG=w._POSTHOG_REMOTE_CONFIG||{};"
              f"w._POSTHOG_REMOTE_CONFIG[{msgspec.json.encode(token).decode()}]="
              f"{{config:{msgspec.json.encode(cfg).decode()},siteApps:[]}}}})();")
        return Response(200, js.encode(), content_type="application/javascript")

    # -- Segment's browser SDK --

    async def segment_settings(self, req: Request) -> Response:
        rest = req.path[len(SEGMENT_SETTINGS_PREFIX):]
        key, _, what = rest.partition("/")
        if what != "settings":
            raise errors.NotFound(f"no endpoint at {req.path}")
        self.app._source(key)
        base = public_base(self.app.settings.public_url, req)
        protocol, _, host = base.partition("://")
        return self._response().json(200, segment_settings(key, protocol, host + "/v1"))

    async def segment_metrics(self, req: Request) -> Response:
        await self._body(req)  # read (and bound) the body; the SDK's own metrics are dropped
        return self._response().json(200, {"success": True})

    # -- Snowplow --

    async def snowplow_post(self, req: Request) -> Response:
        _, max_event = self._limits()
        return await self.app._ingest(req, lambda body: snowplow.parse_post(body, max_event),
                                      auth=False, key_hint=SNOWPLOW_KEY_HINT)

    async def snowplow_get(self, req: Request) -> Response:
        _, max_event = self._limits()
        parsed = snowplow.parse_query(query(req), max_event)
        await self.app._ingest(req, lambda _: parsed, auth=False, key_hint=SNOWPLOW_KEY_HINT)
        return self._response()(200, snowplow.PIXEL, content_type="image/gif",
                                headers=[("cache-control", "no-cache, no-store")])

    # -- consent and our SDK --

    async def sdk_js(self, req: Request) -> Response:
        if self._sdk is None:
            if not SDK_FILE.exists():
                raise errors.NotFound("the browser SDK is not built: run scripts/setup",
                                      code="sdk_not_built")
            js = SDK_FILE.read_bytes()
            self._sdk = (js, '"' + hashlib.sha256(js).hexdigest()[:16] + '"')
        js, etag = self._sdk
        headers = [("etag", etag), ("cache-control", "public, max-age=3600"),
                   ("access-control-allow-origin", "*")]
        if req.headers.get("if-none-match") == etag:
            return self._response()(304, b"", content_type="application/javascript",
                                    headers=headers)
        return self._response()(200, b"" if req.method == "HEAD" else js,
                                content_type="application/javascript; charset=utf-8",
                                headers=headers)


def public_base(public_url: str, req: Request) -> str:
    """``scheme://host[:port]`` as SDKs reach the collector."""
    if public_url:
        return public_url.rstrip("/")
    scheme = req.scope.get("scheme", "http")
    host = req.headers.get("host") or "{}:{}".format(*req.scope.get("server", ("127.0.0.1", 80)))
    return f"{scheme}://{host}"


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


Handler = Callable[["Request"], Awaitable["Response"]]
