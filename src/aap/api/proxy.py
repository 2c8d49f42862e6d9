"""The public REST API on the collector's port: authenticate, then ask the core.

DuckDB lets one process own the warehouse, and that is the core process; the collector's
workers (several processes) cannot open it. So a worker checks the ``Authorization:
Bearer <api key>`` header itself (401 with a JSON body when it is missing or wrong) and
passes the request, with the key's role, to the core over its Unix socket
(``DATA_DIR/run/core.sock``, mode 0600, so only the data dir's owner reaches it). The
core checks the role the route needs (403) and runs the query.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx

from aap import errors
from aap.api.keys import ApiKeys
from aap.api.querystring import MAX_QUERY
from aap.asgi import content_length, read_raw
from aap.core.client import AsyncCoreClient

_PATH = re.compile(r"^/api/v1(/[A-Za-z0-9_\-]{1,64}){1,4}$")
"""API paths are plain segments: no dots (``..`` would walk out of the API once the path
is forwarded), no encoded characters."""


def _query(query: str) -> httpx.QueryParams | None:
    """The query string passed on to the core as it came (the core parses and checks it),
    bounded in length."""
    if not query:
        return None
    if len(query) > MAX_QUERY:
        raise errors.BadRequest(f"the query string is longer than {MAX_QUERY} bytes",
                                code="bad_query_string")
    return httpx.QueryParams(query)


class ApiProxy:
    def __init__(self, data_dir: Any, *, timeout: float, max_body: int) -> None:
        self.keys = ApiKeys(data_dir)
        self.core = AsyncCoreClient(data_dir, timeout=timeout)
        self.max_body = max_body

    async def handle(self, method: str, path: str, headers: dict[str, str], receive: Any,
                     query: str = "") -> tuple[int, bytes, list[tuple[str, str]]]:
        if not _PATH.match(path):
            raise errors.no_endpoint(path)
        auth = headers.get("authorization", "")
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
        clen = headers.get("content-length")
        body = await read_raw(receive, content_length(clen),
                              self.max_body)
        try:
            r = await self.core.request(
                method, "/internal" + path, content=body,
                params=_query(query),
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
