"""The public REST API on the collector's port: authenticate, then ask the core.

DuckDB lets one process own the warehouse, and that is the core process; the collector's
workers (several processes) cannot open it. So a worker checks the ``Authorization:
Bearer <api key>`` header itself (401 with a JSON body when it is missing or wrong) and
passes the request, with the key's role, to the core over its Unix socket
(``DATA_DIR/run/core.sock``, mode 0600, so only the data dir's owner reaches it). The
core checks the role the route needs (403) and runs the query.

The web app sends the ``aap_session`` cookie instead (:mod:`aap.web.sessions`): a
session stands for its key as it is now. With the cookie, every method but GET and HEAD
needs the session's ``X-CSRF-Token`` (403 ``csrf_failed``), and a request a browser
marks as coming from another origin (``Sec-Fetch-Site``) is refused whatever its
method. ``Authorization: Bearer`` works as before and wins over a cookie.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx

from aap import errors
from aap.api.keys import ApiKey, ApiKeys
from aap.asgi import content_length, read_raw
from aap.core.client import AsyncCoreClient
from aap.web.sessions import Sessions, cookie_token, cross_site, csrf_ok

_PATH = re.compile(r"^/api/v1(/[A-Za-z0-9_\-]{1,64}){1,4}$")
"""API paths are plain segments: no dots (``..`` would walk out of the API once the path
is forwarded), no encoded characters."""


class ApiProxy:
    def __init__(self, data_dir: Any, *, timeout: float, max_body: int,
                 session_ttl_s: int = 43200) -> None:
        self.keys = ApiKeys(data_dir)
        self.sessions = Sessions(data_dir, self.keys, session_ttl_s)
        self.core = AsyncCoreClient(data_dir, timeout=timeout)
        self.max_body = max_body

    async def authenticate(self, method: str, headers: dict[str, str]) -> ApiKey:
        """The key a request speaks for: its Bearer key, else its session cookie's
        (with the CSRF token on a state-changing method); 401 or 403 otherwise."""
        auth = headers.get("authorization", "")
        token = cookie_token(headers)
        if not auth and token is not None:
            return await asyncio.to_thread(self.session_key, method, headers, token)
        if not auth:
            raise errors.Unauthorized("no API key: send Authorization: Bearer <api key>",
                                      code="missing_api_key")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise errors.Unauthorized("use Authorization: Bearer <api key>",
                                      code="bad_auth_scheme")
        record = await asyncio.to_thread(self.keys.verify, key.strip())
        if record is None:
            raise errors.Unauthorized("unknown or revoked API key", code="invalid_api_key")
        return record

    def session_key(self, method: str, headers: dict[str, str], token: str) -> ApiKey:
        if cross_site(headers):
            raise errors.Forbidden("the session cookie is not accepted from another origin",
                                   code="csrf_failed")
        session = self.sessions.get(token)
        if session is None:
            raise errors.Unauthorized("no session, or it has ended: sign in again",
                                      code="invalid_session")
        if method not in ("GET", "HEAD") and not csrf_ok(headers, session):
            raise errors.Forbidden("send the session's CSRF token as X-CSRF-Token",
                                   code="csrf_failed")
        return session.key

    async def handle(self, method: str, path: str, headers: dict[str, str], receive: Any
                     ) -> tuple[int, bytes, list[tuple[str, str]]]:
        if not _PATH.match(path):
            raise errors.no_endpoint(path)
        record = await self.authenticate(method, headers)
        clen = headers.get("content-length")
        body = await read_raw(receive, content_length(clen),
                              self.max_body)
        try:
            r = await self.core.request(
                method, "/internal" + path, content=body,
                headers={"x-aap-role": record.role, "x-aap-key": record.id,
                         "content-type": "application/json"})
        except httpx.TimeoutException:
            raise errors.ServiceUnavailable("the query engine did not answer in time",
                                            code="core_timeout") from None
        except httpx.TransportError:
            raise errors.ServiceUnavailable("the query engine is not running (starting?)",
                                            code="core_unavailable") from None
        extra = [(h, r.headers[h]) for h in ("allow", "retry-after") if h in r.headers]
        if r.headers.get("content-type", "application/json") != "application/json":
            extra.append(("content-type", r.headers["content-type"]))
        return r.status_code, r.content, extra

    async def aclose(self) -> None:
        await self.core.aclose()
