"""The web app on the collector's port: its pages, its static files and its session API.

- ``GET /``, ``/insights``, ``/sql``, ``/live``, ``/dashboards``, ``/privacy``,
  ``/admin``: the app's HTML shell (the app routes on the path); ``GET
  /portal/{source name}``: the portal's shell. Each answer has a fresh CSP nonce (for
  the ``<style>`` elements CodeMirror adds, through ``<meta name="csp-nonce">``), the
  Content-Security-Policy, ``nosniff`` and ``Referrer-Policy: same-origin``. Without a
  build (``scripts/setup`` runs ``node web/build.mjs``) the pages answer 503.
- ``GET /app/{file}``: the built files of ``src/aap/web/static/``, looked up by name
  among the files the build wrote (no path is ever joined from the request). Hashed
  chunks are cached for a year (immutable); entries are revalidated (ETag).
- ``POST|GET|DELETE /api/v1/session``: sign in with an API key or a one-time link (a
  cookie, :mod:`aap.web.sessions`), read the session, sign out.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from pathlib import Path

import msgspec

from aap import errors
from aap.api.openapi import Op, documented
from aap.api.proxy import ApiProxy
from aap.asgi import Handler, Request, Response, read_raw
from aap.routing import Route
from aap.web.sessions import COOKIE, WebSession, cookie_token, cross_site, csrf_ok

STATIC = Path(__file__).parent / "static"
PAGES = ("/", "/insights", "/sql", "/live", "/dashboards", "/privacy", "/admin")
"""The app's pages (``web/src/pages.ts``): each answers the same shell."""
SESSION_PATH = "/api/v1/session"
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".json": "application/json", ".map": "application/json", ".svg": "image/svg+xml",
         ".png": "image/png", ".woff2": "font/woff2", ".txt": "text/plain; charset=utf-8"}
IMMUTABLE = "public, max-age=31536000, immutable"
_GET_HEAD = ("GET", "HEAD")
_FILE = {"file": r"[^/]{1,100}(/[^/]{1,100})?"}
"""Any one or two segments reach the handler (a method other than GET gets 405); only
the names of files the build wrote are answered (:meth:`WebApp.asset`), others 404."""
_HTML = Op("A page of the web app (its HTML shell)", ok={"type": "string"}, ok_type="text/html",
           errors=(503,))
_SESSION = {"type": "object", "required": ["role", "csrf", "key_id", "name"],
            "properties": {"role": {"enum": ["viewer", "analyst", "privacy", "admin"]},
                           "csrf": {"type": "string"}, "key_id": {"type": "string"},
                           "name": {"type": "string"}}}


class SignIn(msgspec.Struct, forbid_unknown_fields=True):
    key: str | None = None
    link: str | None = None


class Asset(msgspec.Struct, frozen=True):
    body: bytes
    content_type: str
    etag: str
    cache: str


def csp(nonce: str) -> str:
    return ("default-src 'self'; script-src 'self'; "
            f"style-src 'self' 'nonce-{nonce}'; img-src 'self' data: blob:; "
            "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'; form-action 'self'")


def page_headers(nonce: str) -> list[tuple[str, str]]:
    return [("content-security-policy", csp(nonce)), ("x-content-type-options", "nosniff"),
            ("referrer-policy", "same-origin"), ("cache-control", "no-store")]


def load_assets(root: Path) -> dict[str, Asset]:
    """Every file the build wrote under ``root`` whose type is served, by its path
    below ``root`` (``main.js``, ``chunks/insights-AB12CD34.js``)."""
    out: dict[str, Asset] = {}
    if not root.is_dir():
        return out
    for path in sorted(root.rglob("*")):
        ctype = TYPES.get(path.suffix)
        if ctype is None or not path.is_file():
            continue
        name = path.relative_to(root).as_posix()
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        hashed = "/" in name  # chunks/ and assets/ carry a content hash in their name
        out[name] = Asset(body, ctype, etag, IMMUTABLE if hashed else "no-cache")
    return out


class WebApp:
    def __init__(self, proxy: ApiProxy, *, secure_cookie: bool, static: Path = STATIC) -> None:
        self.proxy = proxy
        self.sessions = proxy.sessions
        self.secure = secure_cookie
        self.static = static
        self.assets = load_assets(static)
        self.shells = {name: (static / f"{name}.html").read_text()
                       for name in ("index", "portal") if (static / f"{name}.html").is_file()}

    def routes(self) -> list[Route[Handler]]:
        return [*(Route(path, _GET_HEAD, self.page) for path in PAGES),
                Route("/portal/{name}", _GET_HEAD, self.portal,
                      params={"name": r"[^/]{1,200}"}),
                Route("/app/{file}", _GET_HEAD, self.asset, params=_FILE),
                Route(SESSION_PATH, ("GET", "POST", "DELETE"), self.session)]

    # -- pages and files --

    def _shell(self, req: Request, name: str) -> Response:
        shell = self.shells.get(name)
        if shell is None or "main.js" not in self.assets:
            raise errors.ServiceUnavailable(
                "the web app is not built: run scripts/setup (or node web/build.mjs)",
                retry_after=60, code="web_not_built")
        nonce = base64.b64encode(secrets.token_bytes(16)).decode()
        body = shell.replace("{{nonce}}", nonce).encode()
        return Response(200, b"" if req.method == "HEAD" else body,
                        "text/html; charset=utf-8", page_headers(nonce))

    @documented(_HTML)
    async def page(self, req: Request) -> Response:
        return self._shell(req, "index")

    @documented(Op("The privacy portal of a source (its HTML shell)", ok={"type": "string"},
                   ok_type="text/html", errors=(503,),
                   params={"name": {"type": "string", "pattern": "^[^/]{1,200}$"}}))
    async def portal(self, req: Request) -> Response:
        return self._shell(req, "portal")

    @documented(Op("A built file of the web app (JS, CSS)", ok={"type": "string"},
                   ok_type="text/javascript", errors=(304, 404),
                   params={"file": {"type": "string", "pattern": f"^{_FILE['file']}$"}}))
    async def asset(self, req: Request) -> Response:
        name = req.path.removeprefix("/app/")
        asset = self.assets.get(name)
        if asset is None:
            raise errors.NotFound(f"no file {errors.shown(name)} in the web app",
                                  code="not_found")
        headers = [("etag", asset.etag), ("cache-control", asset.cache),
                   ("x-content-type-options", "nosniff")]
        if req.headers.get("if-none-match") == asset.etag:
            return Response(304, b"", asset.content_type, headers)
        return Response(200, b"" if req.method == "HEAD" else asset.body, asset.content_type,
                        headers)

    # -- the session API --

    @documented(Op("Sign in (POST: an API key or a one-time link → the aap_session cookie),"
                   " read the session (GET), sign out (DELETE, with X-CSRF-Token)",
                   ok=_SESSION, errors=(400, 401, 403, 408, 413),
                   body={"type": "object", "additionalProperties": False,
                         "properties": {"key": {"type": "string"},
                                        "link": {"type": "string"}}},
                   security=("sessionCookie", "")))
    async def session(self, req: Request) -> Response:
        if req.method == "POST":
            return await self.sign_in(req)
        token = cookie_token(req.headers)
        if token is None:
            raise errors.Unauthorized("not signed in", code="no_session")
        live = await asyncio.to_thread(self._live, req.headers, token)
        if req.method == "GET":
            return Response.json(200, live.public())
        if not csrf_ok(req.headers, live):
            raise errors.Forbidden("send the session's CSRF token as X-CSRF-Token",
                                   code="csrf_failed")
        await asyncio.to_thread(self.sessions.end, token)
        return Response.json(200, {"ended": True}, [("set-cookie", self.cookie_header("", 0))])

    def _live(self, headers: dict[str, str], token: str) -> WebSession:
        if cross_site(headers):
            raise errors.Forbidden("the session cookie is not accepted from another origin",
                                   code="csrf_failed")
        live = self.sessions.get(token)
        if live is None:
            raise errors.Unauthorized("no session, or it has ended: sign in again",
                                      code="invalid_session")
        return live

    async def sign_in(self, req: Request) -> Response:
        if cross_site(req.headers):
            raise errors.Forbidden("sign in from the app's own pages", code="csrf_failed")
        raw = await read_raw(req.receive, None, 4096)
        try:
            cred = msgspec.json.decode(raw or b"{}", type=SignIn)
        except msgspec.DecodeError as exc:
            raise errors.BadRequest(f"not a sign-in body: {exc}", code="invalid_body") from None
        if (cred.key is None) == (cred.link is None):
            raise errors.BadRequest('send {"key": "<API key>"} or {"link": "<token>"}',
                                    code="invalid_body")
        created = await asyncio.to_thread(self._create, cred)
        token, live = created
        return Response.json(200, live.public(),
                             [("set-cookie", self.cookie_header(token, self.sessions.ttl_s)),
                              ("cache-control", "no-store")])

    def _create(self, cred: SignIn) -> tuple[str, WebSession]:
        if cred.key is not None:
            key = self.proxy.keys.verify(cred.key.strip())
            if key is None:
                raise errors.Unauthorized("unknown or revoked API key", code="invalid_api_key")
            return self.sessions.create(key, "key")
        key = self.sessions.consume_link(cred.link or "")
        if key is None:
            raise errors.Unauthorized("this sign-in link is unknown, used or expired",
                                      code="invalid_link")
        return self.sessions.create(key, "link")

    def cookie_header(self, token: str, max_age: int) -> str:
        parts = [f"{COOKIE}={token}", "HttpOnly", "SameSite=Strict", "Path=/",
                 f"Max-Age={max_age}"]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)

