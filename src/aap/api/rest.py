"""The REST API under ``/api/v1/``, as the core process answers it.

The collector's workers serve the public port: they check the Bearer API key and pass
the request with the key's role over the core's Unix socket (``/internal/api/v1/…``);
the core, which owns the warehouse, checks the role each route needs and answers. The
routes and the role each needs are in :data:`aap.api.routes.ROUTES`; errors are raised
(:mod:`aap.errors`) and answered by the core's app (:func:`aap.asgi.error_response`).

Whatever the route, a query or saved insight that reads personal data needs role privacy
(:mod:`aap.query.guard`), and every such read is audited (``data.read``).

Queries (``POST /query``, ``GET /insights/{id}``) take a slot of :mod:`aap.api.gate`
and run on the core's query threads; the other routes run on threads of their own.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import msgspec

from aap import errors
from aap.api.admin import HealthParts, SourcesAPI, health
from aap.api.dashboards import DashboardsAPI
from aap.api.keys import ROLES, ApiKeys, role_at_least
from aap.api.live import LiveFeed
from aap.api.overview import Overview
from aap.api.privacy_center import PrivacyCenter
from aap.api.querystring import query_args
from aap.api.routes import ROUTER, NewKey, SaveInsight
from aap.jsonlimits import check_depth
from aap.privacy.audit import AuditLog
from aap.privacy.requests import Requests
from aap.query import guard, sandbox
from aap.query.cache import QueryCache
from aap.query.cohorts import Cohorts
from aap.query.dashboards import Dashboards
from aap.query.models import parse_cohort, parse_insight
from aap.query.runner import Deadline, run_insight
from aap.settings import Settings
from aap.store.tiers import read_again, unreadable
from aap.store.warehouse import Warehouse

Handler = Callable[[dict[str, str], bytes, str], Any]
ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar("actor", default="local")
"""Who is calling, for the audit log: ``key:<id>`` of the API key, or the local caller."""
ARGS: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("args")
"""The query-string parameters of the request (only those its route takes)."""


def _decode(body: bytes, typ: type) -> Any:
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as exc:
        raise errors.BadRequest(f"invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise errors.BadRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None


class RestAPI(DashboardsAPI, PrivacyCenter):
    def __init__(self, settings: Settings, warehouse: Warehouse,
                 privacy: Requests | None = None) -> None:
        self.settings = settings
        self.privacy = privacy
        self.warehouse = warehouse
        self.cohorts = Cohorts(settings.data_path)
        self.dashboards = Dashboards(settings.data_path)
        self.keys = ApiKeys(settings.data_path)
        self.audit = AuditLog(settings.data_path)
        self.cache = (QueryCache(warehouse, settings.query.query_cache_interval_s)
                      if settings.query.query_cache else None)
        self.sql_limits = sandbox.Limits.from_settings(settings.query)
        self.overview_api = Overview(settings.data_path, warehouse,  # overview, consent, live
                                     use_cache=self.cache is not None,
                                     timeout_s=settings.query.query_timeout_s)
        self.live_feed = LiveFeed()
        self.live_feed.names = self.overview_api.source_names
        self.sources = SourcesAPI(settings.data_path)
        self.health_parts: HealthParts | None = None
        """Set by the core (:class:`aap.core.app.Core`): what ``GET /health`` reports."""

    def start(self) -> None:
        if self.cache is not None:
            self.cache.start()

    def close(self) -> None:
        self.live_feed.close()
        if self.cache is not None:
            self.cache.close()
        sandbox.shutdown()   # running sql queries end at once,
        Deadline.expire_all()  # and insights at their next statement

    def handle(self, method: str, path: str, role: str, body: bytes, actor: str = "local",
               query: str = "") -> Any:
        """The answer of ``method`` on ``path`` (below ``/api/v1``) for a key of ``role``;
        :class:`~aap.errors.AAPError` when the request cannot be answered."""
        if role not in ROLES:
            raise errors.Unauthorized("no valid role", code="unauthorized")
        route, params = ROUTER.resolve(method, path)
        needed = route.target.role
        if not role_at_least(role, needed):
            raise errors.Forbidden(f"{method} /api/v1{path} needs role {needed} or above;"
                                   f" this key has role {role}", code="role_too_low")
        if body:
            check_depth(body)  # every body is JSON: one limit before any decoder
        handler: Handler = getattr(self, route.target.handler)
        token, args = ACTOR.set(actor), ARGS.set(query_args(query, route.target.args))
        try:
            if method == "GET" or route.target.query:  # reads only: asked again
                return read_again(lambda: handler(params, body, role))
            return handler(params, body, role)
        except Exception as exc:
            if not self.warehouse.tiers.away(exc):
                raise
            raise unreadable() from exc  # the files cannot be read now: later
        finally:
            ACTOR.reset(token)
            ARGS.reset(args)

    # -- what the privacy center's handlers read (aap.api.privacy_center) --

    def caller(self) -> str:
        return ACTOR.get()

    def call_args(self) -> dict[str, str]:
        return ARGS.get()

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
                           timeout_s=self.settings.query.query_timeout_s,
                           sql_max_rows=self.settings.query.sql_max_rows,
                           on_personal_read=lambda d: self.audit.append(actor, "data.read", d),
                           max_cells=self.settings.query.max_insight_cells,
                           sql_limits=self.sql_limits,
                           sql_idle_workers=self.settings.query.sql_workers)

    def query(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return self._run(parse_insight(body), role)

    def list_insights(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return {"insights": guard.redact(self.cohorts.insights(), role)}

    def save_insight(self, params: dict[str, str], body: bytes, role: str) -> Any:
        req = _decode(body, SaveInsight)
        # valid, and readable by its author, before it is saved
        guard.check(parse_insight(req.query), role, self.cohorts.get)
        return self.cohorts.save_insight(req.name, req.query)

    def run_saved(self, params: dict[str, str], body: bytes, role: str) -> Any:
        name, query = self.cohorts.insight(int(params["id"]))
        # a saved insight runs with what its author (an analyst) could see
        result = self._run(parse_insight(query), role if role_at_least(role, "analyst")
                           else "analyst")
        return {"id": int(params["id"]), "name": name, "query": guard.redact(query, role),
                "result": result}

    # -- cohorts --

    def list_cohorts(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return {"cohorts": guard.redact(self.cohorts.list(), role)}

    def create_cohort(self, params: dict[str, str], body: bytes, role: str) -> Any:
        spec = parse_cohort(body)
        detail: dict[str, Any] = {}
        if spec.static is not None:
            # a list of raw userIds / anonymousIds: processing identifiers
            if not guard.may_read_personal(role):
                raise errors.Forbidden(
                    "a static cohort is made from raw identifiers (userId / anonymousId):"
                    f" that needs role {guard.NEEDED} or above; this key has role {role}",
                    code="personal_data")
            detail["ids_processed"] = len(spec.static.ids)
        elif spec.behavioural is not None:
            fields = guard.check(spec.behavioural, role)
            if fields:
                detail["fields"] = fields
        out = self.cohorts.create(spec)
        self.audit.append(ACTOR.get(), "cohort.created", {"cohort": out["id"],
                                                          "kind": out["kind"], **detail})
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

    # -- overview, consent aggregates, live events (web app: overview part) --

    def consent_stats(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return self.overview_api.consent_stats(ARGS.get())

    def overview(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return self.overview_api.overview(body)

    def overview_current(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return self.overview_api.current()

    def live(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return self.live_feed.poll(ARGS.get())
    # -- admin: sources and health (aap.api.admin) --

    def list_sources(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return self.sources.list_sources(ACTOR.get())

    def create_source(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return self.sources.create_source(body, ACTOR.get())

    def update_source(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return self.sources.update_source(params["id"], body, ACTOR.get())

    def new_server_key(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return self.sources.new_server_key(params["id"], ACTOR.get())

    def health(self, params: dict[str, str], body: bytes, role: str) -> Any:
        if self.health_parts is None:
            raise errors.ServiceUnavailable("health is answered by the core", code="starting")
        return health(self.health_parts)
