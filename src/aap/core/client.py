"""The one client of the core process's Unix socket (``DATA_DIR/run/core.sock``, mode
0600: only the data dir's owner reaches it).

:class:`CoreClient` for the CLI, the runner and the checks (sync), and
:class:`AsyncCoreClient` for the collector's workers, which proxy the public API to the
core. Both speak HTTP over the socket; the core answers JSON in the house shape.
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path
from typing import Any

import httpx

from aap.datadir import DataDir

BASE_URL = "http://core"
"""Any host name: the socket, not the name, decides where a request goes."""

KEEPALIVE_S = 20.0
"""How long a client keeps an idle connection to the core for its next request."""

CORE_KEEPALIVE_S = 75
"""How long the core keeps an idle connection open: longer than its clients do
(:data:`KEEPALIVE_S`), so it never closes one a client is about to reuse. With both at
their libraries' default (5 s, httpx and uvicorn) a request could go out on a connection
at the moment the core closed it, and failed (a 503 ``core_unavailable`` through the
proxy)."""

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods sent again, once, on a fresh connection when the core closed the one they
went out on without answering (it was restarting, or closed the idle connection as the
request left). Others are not: the core may have acted on them."""


def _limits() -> httpx.Limits:
    return httpx.Limits(keepalive_expiry=KEEPALIVE_S)


def core_socket(data_dir: Path) -> Path:
    """Where the core of ``data_dir`` listens."""
    return DataDir(Path(data_dir)).core_socket


@functools.cache
def _tls() -> ssl.SSLContext:
    """The TLS context httpx wants for each transport. The core's socket speaks plain
    HTTP, yet httpx builds a default context per transport, reading the CA bundle: 60 ms
    of CPU on a slow machine, each time a client is made (the processor role's health
    check made one every 2 s). One per process serves them all."""
    return ssl.create_default_context()


def transport(data_dir: Path) -> httpx.HTTPTransport:
    """An httpx transport to the core of ``data_dir`` (for clients that add their own
    headers and paths, such as :meth:`aap.query.client.Client.local`)."""
    return httpx.HTTPTransport(uds=str(core_socket(data_dir)), verify=_tls(),
                               limits=_limits())


def core_alive(data_dir: Path, timeout: float) -> bool:
    """Whether a core of ``data_dir`` runs and answers its health check (200) now."""
    if not core_socket(data_dir).exists():
        return False
    with CoreClient(data_dir, timeout=timeout) as c:
        return c.alive()


class CoreError(RuntimeError):
    """The core answered something other than 200."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status}: {text}")
        self.status = status
        self.text = text


class CoreClient:
    """A sync client of the core's socket (a context manager)."""

    def __init__(self, data_dir: Path, *, timeout: float = 60.0,
                 headers: dict[str, str] | None = None) -> None:
        self.socket = core_socket(data_dir)
        self.http = httpx.Client(transport=transport(data_dir), base_url=BASE_URL,
                                 timeout=timeout, headers=headers)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kw)
        except httpx.RemoteProtocolError:
            if method.upper() not in _IDEMPOTENT:
                raise
            return self.http.request(method, path, **kw)

    def alive(self) -> bool:
        """Whether the core answers its health check (200) now."""
        try:
            return self.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def position(self) -> int:
        """The log position the processor has committed."""
        return int(self.get("/healthz").json()["position"])

    def sql(self, query: str, params: list[Any] | None = None) -> list[Any]:
        """Rows of a read query on the warehouse; :class:`CoreError` if it fails."""
        r = self.post("/internal/sql", json={"sql": query, "params": params or []})
        if r.status_code != 200:
            raise CoreError(r.status_code, r.text)
        rows: list[Any] = r.json()["rows"]
        return rows

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> CoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncCoreClient:
    """An async client of the core's socket; the connection pool is made on first use."""

    def __init__(self, data_dir: Path, *, timeout: float) -> None:
        self.socket = core_socket(data_dir)
        self.timeout = timeout
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(uds=str(self.socket), verify=_tls(),
                                                   limits=_limits()),
                base_url=BASE_URL, timeout=self.timeout)
        return self._http

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return await self._client().request(method, path, **kw)
        except httpx.RemoteProtocolError:
            if method.upper() not in _IDEMPOTENT:
                raise
            return await self._client().request(method, path, **kw)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
