"""The public port of a query node (``aap serve --role query``): the REST API, the web
app and ``/healthz``; nothing is collected here.

Like a collector's workers (:mod:`aap.collect.app`), each worker checks the API key or
the session cookie (:mod:`aap.api.proxy`) and asks the node's core over its Unix socket;
the core is a reader (:mod:`aap.core.reader`). The paths that take events, consent or
people's own requests are answered 404 with a JSON body saying this node does not
collect: send them to a collector.
"""

from __future__ import annotations

import logging

import httpx

from aap import errors
from aap.api.proxy import ApiProxy
from aap.api.routes import PREFIX as API_PREFIX
from aap.asgi import (
    Handler,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    failed,
    lifespan,
    send_response,
)
from aap.routing import ANY, Route, Router
from aap.settings import Settings
from aap.web.app import WebApp

logger = logging.getLogger("aap.query")

GET_HEAD = ("GET", "HEAD")


class QueryFront:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # a query may wait for a slot as long as it may run (aap.api.gate)
        self.api = ApiProxy(settings.data_path, timeout=2 * settings.query.query_timeout_s + 30,
                            max_body=settings.collector.max_request_bytes,
                            session_ttl_s=settings.server.session_ttl_s)
        self.web = WebApp(self.api, secure_cookie=settings.tls.on)
        self._hsts = ([("strict-transport-security", f"max-age={settings.tls.hsts_max_age}")]
                      if settings.tls.on else [])
        self.router: Router[Handler] = Router([
            Route("/healthz", GET_HEAD, self.healthz), *self.web.routes(),
            Route(API_PREFIX + "/", ANY, self.proxy_api, prefix=True, label=API_PREFIX)])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, self._startup, self._shutdown)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _startup(self) -> None:
        pass

    async def _shutdown(self) -> None:
        await self.api.aclose()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = Request(scope, receive, self.settings.server.body_timeout_s)
        try:
            found = self.router.find(req.path)
            if found is None:
                raise errors.NotFound(f"no endpoint at {errors.shown(req.path)}: this is a"
                                      " query node (the REST API and the web app); events,"
                                      " consent and people's own requests go to a collector",
                                      code="not_on_query_node")
            resp = await self.router.select(found[0], req.method, req.path).target(req)
        except Exception as exc:
            resp = failed(exc, req.path[:200], logger)
        resp.headers += self._hsts
        await send_response(send, resp)

    async def proxy_api(self, req: Request) -> Response:
        status, body, headers = await self.api.handle(
            req.method, req.path, req.headers, req.receive,
            req.scope.get("query_string", b"").decode("latin-1"))
        ctype = next((v for k, v in headers if k == "content-type"), "application/json")
        return Response(status, body, ctype, [h for h in headers if h[0] != "content-type"])

    async def healthz(self, req: Request) -> Response:
        """The core's answer (:meth:`aap.core.reader.ReaderCore.health`): 200 while the
        shared list answers and the merges were read lately, else 503 saying why."""
        try:
            r = await self.api.core.request("GET", "/healthz")
        except httpx.HTTPError:
            raise errors.ServiceUnavailable("the query node's core is not running (starting?)",
                                            code="core_unavailable",
                                            retry_after=self.settings.server.retry_after_seconds
                                            ) from None
        return Response(r.status_code, b"" if req.method == "HEAD" else r.content)


def create_app() -> QueryFront:
    """Factory for the ASGI server: each worker process builds its own front."""
    from aap.lifecycle import die_with_parent

    die_with_parent()  # a worker dies with `aap serve`
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return QueryFront(Settings())
