"""A small HTTP client of the query API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from aap.datadir import DataDir
from aap.privacy.audit import local_actor


class QueryError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body.get('code')}: {body.get('message')}")
        self.status = status
        self.body = body


class Client:
    """``Client(url, api_key)`` for the public API, or ``Client.local(data_dir)`` for the
    core process's Unix socket (same machine, owner of the data dir)."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 120.0,
                 transport: httpx.BaseTransport | None = None, role: str | None = None,
                 actor: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if role:
            headers["X-AAP-Role"] = role
        if actor:
            headers["X-AAP-Actor"] = actor
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout,
                                  transport=transport)
        self._prefix = "/api/v1" if api_key else "/internal/api/v1"

    @classmethod
    def local(cls, data_dir: Path, role: str = "admin", timeout: float = 120.0) -> Client:
        """The core's socket; the audit log names the caller ``cli:<OS user>``."""
        sock = DataDir(Path(data_dir)).core_socket
        return cls("http://core", timeout=timeout, role=role, actor=local_actor(),
                   transport=httpx.HTTPTransport(uds=str(sock)))

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        r = self._http.request(method, self._prefix + path, json=json)
        try:
            body = r.json()
        except ValueError:
            body = {"code": "bad_response", "message": r.text[:200]}
        if r.status_code != 200:
            raise QueryError(r.status_code, body)
        return body

    def query(self, insight: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self._call("POST", "/query", insight)
        return out

    def create_cohort(self, spec: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self._call("POST", "/cohorts", spec)
        return out

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
