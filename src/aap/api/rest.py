"""The REST API under ``/api/v1/``, as the core process answers it.

The collector's workers serve the public port: they check the Bearer API key and pass
the request with the key's role over the core's Unix socket (``/internal/api/v1/…``);
the core, which owns the warehouse, checks the role each route needs and answers.

| route | role |
|---|---|
| ``POST /query`` | analyst |
| ``GET /insights``, ``GET /insights/{id}`` (runs it) | viewer |
| ``POST /insights``, ``DELETE /insights/{id}`` | analyst |
| ``GET /cohorts`` | viewer |
| ``POST /cohorts``, ``DELETE /cohorts/{id}`` | analyst |
| ``GET /keys``, ``POST /keys``, ``DELETE /keys/{id}`` | admin |
| ``POST /privacy/requests``, ``GET /privacy/requests/{id}``, ``GET …/{id}/export`` | privacy |
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Callable
from typing import Any

import msgspec

from aap import errors
from aap.api.keys import ROLES, ApiKeys, role_at_least
from aap.jsonlimits import check_depth, too_deep
from aap.privacy.audit import AuditLog
from aap.privacy.requests import Requests
from aap.query.cache import QueryCache
from aap.query.cohorts import Cohorts
from aap.query.models import parse_cohort, parse_insight
from aap.query.runner import run_insight
from aap.settings import Settings
from aap.store.warehouse import Warehouse

logger = logging.getLogger("aap.api")

Handler = Callable[[dict[str, str], bytes, str], Any]
ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar("actor", default="local")
"""Who is calling, for the audit log: ``key:<id>`` of the API key, or the local caller."""


class SaveInsight(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    query: dict[str, Any]


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    name: str = ""


def _decode(body: bytes, typ: type) -> Any:
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as exc:
        raise errors.BadRequest(f"invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise errors.BadRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None


class RestAPI:
    def __init__(self, settings: Settings, warehouse: Warehouse,
                 privacy: Requests | None = None) -> None:
        self.settings = settings
        self.privacy = privacy
        self.warehouse = warehouse
        self.cohorts = Cohorts(settings.data_path)
        self.keys = ApiKeys(settings.data_path)
        self.audit = AuditLog(settings.data_path)
        self.cache = (QueryCache(warehouse, float(settings.query_cache_interval_s))
                      if settings.query_cache else None)
        self.routes: list[tuple[str, re.Pattern[str], str, Handler]] = [
            ("POST", re.compile(r"^/query$"), "analyst", self.query),
            ("GET", re.compile(r"^/insights$"), "viewer", self.list_insights),
            ("POST", re.compile(r"^/insights$"), "analyst", self.save_insight),
            ("GET", re.compile(r"^/insights/(?P<id>\d{1,12})$"), "viewer", self.run_saved),
            ("GET", re.compile(r"^/cohorts$"), "viewer", self.list_cohorts),
            ("POST", re.compile(r"^/cohorts$"), "analyst", self.create_cohort),
            ("DELETE", re.compile(r"^/cohorts/(?P<id>\d{1,12})$"), "analyst", self.delete_cohort),
            ("GET", re.compile(r"^/keys$"), "admin", self.list_keys),
            ("POST", re.compile(r"^/keys$"), "admin", self.create_key),
            ("DELETE", re.compile(r"^/keys/(?P<id>[0-9a-f]{12})$"), "admin", self.revoke_key),
            ("POST", re.compile(r"^/privacy/requests$"), "privacy", self.privacy_submit),
            ("GET", re.compile(r"^/privacy/requests/(?P<id>pr_[0-9a-f]{16})$"), "privacy",
             self.privacy_get),
            ("GET", re.compile(r"^/privacy/requests/(?P<id>pr_[0-9a-f]{16})/export$"), "privacy",
             self.privacy_export),
        ]

    def start(self) -> None:
        if self.cache is not None:
            self.cache.start()

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def handle(self, method: str, path: str, role: str, body: bytes, actor: str = "local"
               ) -> tuple[int, Any]:
        token = ACTOR.set(actor)
        try:
            return 200, self._route(method, path, role, body)
        except errors.AAPError as exc:
            return exc.status, exc.body()
        except RecursionError:  # a backstop: check_depth should have refused it
            deep = too_deep()
            return deep.status, deep.body()
        except Exception:
            logger.exception("API error on %s %s", method, path)
            return 500, {"code": "internal_error", "message": "internal error",
                         "detail": "see the server log"}
        finally:
            ACTOR.reset(token)

    def _route(self, method: str, path: str, role: str, body: bytes) -> Any:
        if role not in ROLES:
            raise errors.Unauthorized("no valid role", code="unauthorized")
        allowed = []
        for m, pattern, needed, handler in self.routes:
            match = pattern.match(path)
            if match is None:
                continue
            allowed.append(m)
            if m != method:
                continue
            if not role_at_least(role, needed):
                raise errors.Forbidden(f"{method} /api/v1{path} needs role {needed} or above;"
                                       f" this key has role {role}", code="role_too_low")
            if body:
                check_depth(body)  # every body is JSON: one limit before any decoder
            return handler(match.groupdict(), body, role)
        if allowed:
            raise errors.MethodNotAllowed(f"{method} is not allowed on /api/v1{path}", allowed)
        raise errors.NotFound(f"no endpoint at /api/v1{path}")

    # -- privacy requests --

    def _requests(self) -> Requests:
        if self.privacy is None:
            raise errors.NotFound("privacy requests are not served here")
        return self.privacy

    def privacy_submit(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return self._requests().submit(body, ACTOR.get())

    def privacy_get(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return self._requests().get(params["id"])

    def privacy_export(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return self._requests().export(params["id"], ACTOR.get())

    # -- queries --

    def _run(self, doc: Any, role: str) -> dict[str, Any]:
        actor = ACTOR.get()
        return run_insight(self.warehouse, doc, role=role, cohort=self.cohorts.get,
                           use_cache=self.cache is not None,
                           timeout_s=float(self.settings.query_timeout_s),
                           sql_max_rows=int(self.settings.sql_max_rows),
                           on_personal_read=lambda d: self.audit.append(actor, "data.read", d))

    def query(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return self._run(parse_insight(body), role)

    def list_insights(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return {"insights": self.cohorts.insights()}

    def save_insight(self, params: dict[str, str], body: bytes, role: str) -> Any:
        req = _decode(body, SaveInsight)
        parse_insight(req.query)  # valid before it is saved
        return self.cohorts.save_insight(req.name, req.query)

    def run_saved(self, params: dict[str, str], body: bytes, role: str) -> Any:
        name, query = self.cohorts.insight(int(params["id"]))
        # a saved insight runs with what its author (an analyst) could see
        result = self._run(parse_insight(query), role if role_at_least(role, "analyst")
                           else "analyst")
        return {"id": int(params["id"]), "name": name, "query": query, "result": result}

    # -- cohorts --

    def list_cohorts(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return {"cohorts": self.cohorts.list()}

    def create_cohort(self, params: dict[str, str], body: bytes, role: str) -> Any:
        out = self.cohorts.create(parse_cohort(body))
        self.audit.append(ACTOR.get(), "cohort.created", {"cohort": out["id"],
                                                          "kind": out["kind"]})
        return out

    def delete_cohort(self, params: dict[str, str], body: bytes, role: str) -> Any:
        if not self.cohorts.delete(int(params["id"])):
            raise errors.NotFound(f"no cohort with id {params['id']}")
        self.audit.append(ACTOR.get(), "cohort.deleted", {"cohort": int(params["id"])})
        return {"deleted": int(params["id"])}

    # -- keys --

    def list_keys(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return {"keys": [msgspec.to_builtins(k) for k in self.keys.list()]}

    def create_key(self, params: dict[str, str], body: bytes, role: str) -> Any:
        req = _decode(body, NewKey)
        try:
            k, key = self.keys.create(req.role, req.name, actor=ACTOR.get())
        except ValueError as exc:
            raise errors.BadRequest(str(exc), code="invalid_role") from None
        return {**msgspec.to_builtins(k), "key": key}

    def revoke_key(self, params: dict[str, str], body: bytes, role: str) -> Any:
        if not self.keys.revoke(params["id"], actor=ACTOR.get()):
            raise errors.NotFound(f"no active key with id {params['id']}")
        return {"revoked": params["id"]}
