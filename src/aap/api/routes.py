"""The REST API's route table (:mod:`aap.routing`): method, path template, role, handler
name and what it answers. :class:`aap.api.rest.RestAPI` dispatches on it (:data:`ROUTER`);
:mod:`aap.api.openapi` documents it, so the two cannot drift.

| route | role |
|---|---|
| ``POST /query`` | analyst |
| ``GET /insights``, ``GET /insights/{id}`` (runs it) | viewer |
| ``POST /insights`` | analyst |
| ``GET /cohorts`` | viewer |
| ``POST /cohorts``, ``DELETE /cohorts/{id}`` | analyst (a static cohort: privacy) |
| ``GET /keys``, ``POST /keys``, ``DELETE /keys/{id}`` | admin |
| ``POST /privacy/requests``, ``GET /privacy/requests/{id}``, ``GET …/{id}/export`` | privacy |
| ``GET /consent/stats``, ``POST /overview``, ``GET /overview/current``, ``GET /live`` | analyst |
| ``GET /sources``, ``POST /sources``, ``PATCH /sources/{id}`` (a name or an id), | admin |
| ``POST /sources/{id}/server_key``, ``GET /health`` | admin |
| ``GET /dashboards``, ``GET /dashboards/{id}`` | viewer |
| ``POST /dashboards``, ``DELETE /dashboards/{id}``, ``GET /sql/views`` | analyst |
| privacy center: ``GET /privacy/requests``, ``POST /privacy/consent/lookup``, ``GET
  /privacy/record``, ``GET /privacy/cnil``, ``GET /audit``, ``GET /audit/verify``, ``POST
  /privacy/persons/lookup`` (:mod:`aap.api.privacy_center`) | privacy |

A route takes the query-string parameters it names (``args``); any other is a 400.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from aap.api import overview_doc
from aap.api.openapi import Op
from aap.routing import Route, Router

API_ERRORS = (400, 401, 403, 408, 413, 503)
"""What any API route may answer besides 200: a bad body, no or a bad key, a role too
low, a body too slow or too large, the core not answering."""


class SaveInsight(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    query: dict[str, Any]


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    name: str = ""


PREFIX = "/api/v1"
"""Where the REST API sits on the collector's port (the core's socket: ``/internal`` +
this)."""


class Endpoint(NamedTuple):
    """What a REST route leads to: the role it needs, the name of the
    :class:`~aap.api.rest.RestAPI` method that answers, and its description."""

    role: str
    handler: str
    op: Op
    query: bool = False
    """It runs a query: it takes a slot of :mod:`aap.api.gate` and a query thread."""
    args: tuple[str, ...] = ()
    """The query-string parameters it takes (any other answers 400)."""


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _list(key: str) -> dict[str, Any]:
    return {"type": "object", "required": [key],
            "properties": {key: {"type": "array", "items": {"type": "object"}}}}


def _route(method: str, path: str, role: str, handler: str, summary: str,
           ok: Any = None, body: Any = None, errors: tuple[int, ...] = API_ERRORS,
           ok_type: str = "application/json", query: bool = False,
           params: dict[str, str] | None = None, args: tuple[str, ...] = ()
           ) -> Route[Endpoint]:
    return Route(path, (method,), Endpoint(role, handler, Op(
        f"{summary} (role {role} or above)", ok=ok if ok is not None else {"type": "object"},
        ok_type=ok_type, errors=errors, body=body, security=("apiKey",), role=role,
        query={a: {"type": "string"} for a in args}), query, args), params=params or {})


_ID = {"id": r"\d{1,12}"}
_KEY_ID = {"id": "[0-9a-f]{12}"}
_REQUEST_ID = {"id": "pr_[0-9a-f]{16}"}
_KEY = {"type": "object", "required": ["id", "role", "name", "created_at"],
        "properties": {"id": {"type": "string"}, "role": {"type": "string"},
                       "name": {"type": "string"}, "created_at": {"type": "integer"},
                       "key": {"type": "string"}}}
_ONE_ID = (*API_ERRORS, 404)
_SOURCE_REF = {"id": r"[A-Za-z0-9_\-]{1,64}"}
_SOURCE = {"type": "object", "required": ["id", "name", "key_hint", "origins", "rate_limit",
                                          "purposes", "mode", "created_at"],
           "properties": {"write_key": {"type": "string", "description": "only on creation"},
                          "server_key_secret": {"type": "string",
                                                "description": "only on creation"}}}
_SOURCE_FIELDS: dict[str, Any] = {
    "origins": {"type": "array", "items": {"type": "string"}},
    "rate_limit": {"type": "number", "minimum": 0},
    "purposes": {"type": "object", "additionalProperties": {"type": "string"}},
    "mode": {"enum": ["standard", "cnil"]}}
_NEW_SOURCE = {"type": "object", "required": ["name"], "additionalProperties": False,
               "properties": {"name": {"type": "string"}, **_SOURCE_FIELDS,
                              "historical": {"type": "boolean"},
                              "controller": {"type": ["string", "null"]},
                              "server_key": {"type": "boolean"}}}
_SOURCE_PATCH = {"type": "object", "additionalProperties": False,
                 "properties": {**_SOURCE_FIELDS,
                                "controller": {"type": ["string", "null"]}}}
_DASHBOARD = {"type": "object", "required": ["id", "name", "insights"],
              "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                             "insights": {"type": "array"}}}

# -- the privacy center (issue 14): aap.api.privacy_center --
_STR = {"type": "string"}
_WHO = {"type": "object", "additionalProperties": False,
        "properties": {"userId": _STR, "anonymousId": _STR},
        "description": "a userId or an anonymousId (or both, of one person)"}
_PAGE = {"limit": {"type": "integer", "minimum": 1, "maximum": 500}}


def _center(method: str, path: str, handler: str, summary: str, ok: Any = None,
            body: Any = None, query: dict[str, Any] | None = None,
            errors: tuple[int, ...] = API_ERRORS) -> Route[Endpoint]:
    return _route(method, path, "privacy", handler, summary, ok=ok, body=body, errors=errors,
                  args=tuple(query or ()))


PRIVACY_CENTER: tuple[Route[Endpoint], ...] = (
    _center("GET", "/privacy/requests", "privacy_list",
            "The privacy requests' queue, newest first (no subject ids)", ok=_list("requests"),
            query={"status": {"enum": ["pending", "running", "done", "failed"]},
                   "type": {"enum": ["access", "erasure", "rectification", "restriction",
                                     "objection"]},
                   "before": {"type": "string", "description": "a request id: page on"},
                   **_PAGE}),
    _center("POST", "/privacy/consent/lookup", "consent_lookup",
            "One person's consent history, newest first (audited: consent.viewed)",
            ok=_list("history"), body=_WHO),
    _center("GET", "/privacy/record", "privacy_record",
            "The record of processing (Art. 30) with each tier's retention status",
            ok={"type": "object", "required": ["markdown", "purposes", "tiers"]}),
    _center("GET", "/privacy/cnil", "privacy_cnil",
            "The CNIL check's report, per source in CNIL mode",
            ok={"type": "object", "required": ["sources", "passed"]}),
    _center("GET", "/audit", "audit_list", "The audit log, newest first, filtered",
            ok=_list("entries"),
            query={"action": {"type": "string", "description": "a prefix of the action"},
                   "actor": {"type": "string", "description": "part of the actor"},
                   "from": {"type": "string", "format": "date-time"},
                   "to": {"type": "string", "format": "date-time"},
                   "before": {"type": "integer", "description": "a seq: page on"}, **_PAGE}),
    _center("GET", "/audit/verify", "audit_verify", "Verify the audit log's hash chain",
            ok={"type": "object", "required": ["ok", "entries", "message"]}),
    _center("POST", "/privacy/persons/lookup", "person_lookup",
            "One person's timeline, sessions, orders, flags and opened traits"
            " (audited: person.viewed)", body=_WHO, errors=_ONE_ID,
            ok={"type": "object", "required": ["events", "sessions", "orders", "flags"]}),
)

ROUTES: tuple[Route[Endpoint], ...] = (
    _route("POST", "/query", "analyst", "query", "Run an insight", body=_ref("Insight"),
           errors=(*_ONE_ID, 429), query=True),  # 404: a cohort it names; 429: the key's queue is full
    _route("GET", "/insights", "viewer", "list_insights", "List saved insights",
           ok=_list("insights")),
    _route("POST", "/insights", "analyst", "save_insight", "Save an insight",
           errors=_ONE_ID,  # 404: a cohort it names does not exist
           body={"type": "object", "required": ["name", "query"], "additionalProperties": False,
                 "properties": {"name": {"type": "string"}, "query": _ref("Insight")}}),
    _route("GET", "/insights/{id}", "viewer", "run_saved", "Run a saved insight",
           errors=(*_ONE_ID, 429), params=_ID, query=True,
           ok={"type": "object", "required": ["id", "name", "query", "result"]}),
    _route("GET", "/cohorts", "viewer", "list_cohorts", "List cohorts",
           ok=_list("cohorts")),
    _route("POST", "/cohorts", "analyst", "create_cohort",
           "Create a cohort (a static cohort of ids needs role privacy)",
           body=_ref("CohortSpec")),
    _route("DELETE", "/cohorts/{id}", "analyst", "delete_cohort",
           "Delete a cohort", errors=_ONE_ID, params=_ID,
           ok={"type": "object", "required": ["deleted"],
               "properties": {"deleted": {"type": "integer"}}}),
    _route("GET", "/keys", "admin", "list_keys", "List API keys", ok=_list("keys")),
    _route("POST", "/keys", "admin", "create_key", "Create an API key", ok=_KEY,
           body={"type": "object", "required": ["role"], "additionalProperties": False,
                 "properties": {"role": {"enum": ["viewer", "analyst", "privacy", "admin"]},
                                "name": {"type": "string"}}}),
    _route("DELETE", "/keys/{id}", "admin", "revoke_key",
           "Revoke an API key", errors=_ONE_ID, params=_KEY_ID,
           ok={"type": "object", "required": ["revoked"],
               "properties": {"revoked": {"type": "string"}}}),
    _route("POST", "/privacy/requests", "privacy", "privacy_submit",
           "File a privacy request for a person", body=_ref("NewRequest")),
    _route("GET", "/privacy/requests/{id}", "privacy", "privacy_get",
           "A privacy request's status", errors=_ONE_ID, params=_REQUEST_ID),
    _route("GET", "/privacy/requests/{id}/export", "privacy",
           "privacy_export", "The zip of a finished access request", errors=(*_ONE_ID, 409),
           ok_type="application/zip", ok={"type": "string", "format": "binary"},
           params=_REQUEST_ID),
    # -- web app, overview part: consent aggregates, overview panels, live events --
    _route("GET", "/consent/stats", "analyst", "consent_stats",
           "Consent aggregates per purpose and day, and the GPC share (no ids)",
           args=("from", "to", "source"), ok=overview_doc.CONSENT_STATS),
    _route("POST", "/overview", "analyst", "overview",
           "The overview's figures, daily series and top lists", body=overview_doc.OVERVIEW_REQUEST,
           errors=(*API_ERRORS, 429), query=True, ok=overview_doc.OVERVIEW),
    _route("GET", "/overview/current", "analyst", "overview_current",
           "Distinct visitors with an event in the last 5 minutes",
           errors=(*API_ERRORS, 429), query=True,
           ok={"type": "object", "required": ["visitors"],
               "properties": {"visitors": {"type": "integer"}}}),
    _route("GET", "/live", "analyst", "live",
           "Events processed after a cursor (long poll, up to 10 s; pseudonymous ids only)",
           args=("after", "event", "source"), ok=overview_doc.LIVE),
    # -- admin: sources and health (aap.api.admin) --
    _route("GET", "/sources", "admin", "list_sources", "List sources (never their keys)",
           ok=_list("sources")),
    _route("POST", "/sources", "admin", "create_source",
           "Create a source; answers its write key, the only time it is shown",
           errors=(*API_ERRORS, 409), ok=_SOURCE, body=_NEW_SOURCE),
    _route("PATCH", "/sources/{id}", "admin", "update_source",
           "Change a source (by name or id): origins, rate limit, purposes, mode, controller",
           errors=_ONE_ID, ok=_SOURCE, params=_SOURCE_REF, body=_SOURCE_PATCH),
    _route("POST", "/sources/{id}/server_key", "admin", "new_server_key",
           "Replace a source's server (secret) key (the old one stops within 5 s);"
           " answers it, the only time it is shown",
           errors=_ONE_ID, ok=_SOURCE, params=_SOURCE_REF),
    _route("GET", "/health", "admin", "health",
           "Log, tiers, disk, processor and processes, for operators"),
    # -- insights (issue 14, the web app): dashboards and the sql kind's views --
    _route("GET", "/dashboards", "viewer", "list_dashboards", "List dashboards",
           ok=_list("dashboards")),
    _route("POST", "/dashboards", "analyst", "create_dashboard",
           "Create a dashboard of saved insights", errors=_ONE_ID,  # 404: an insight it names
           body={"type": "object", "required": ["name"], "additionalProperties": False,
                 "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200},
                                "insights": {"type": "array", "maxItems": 100,
                                             "items": {"type": "integer", "minimum": 1}}}},
           ok=_DASHBOARD),
    _route("GET", "/dashboards/{id}", "viewer", "get_dashboard",
           "A dashboard: its saved insights' ids and names", errors=_ONE_ID, params=_ID,
           ok=_DASHBOARD),
    _route("DELETE", "/dashboards/{id}", "analyst", "delete_dashboard", "Delete a dashboard",
           errors=_ONE_ID, params=_ID,
           ok={"type": "object", "required": ["deleted"],
               "properties": {"deleted": {"type": "integer"}}}),
    _route("GET", "/sql/views", "analyst", "list_sql_views",
           "The views the sql kind reads, with the columns this key's role sees",
           ok=_list("views")),
    # -- the privacy center (issue 14, privacy helper): aap.api.privacy_center --
    *PRIVACY_CENTER,
)

ROUTER = Router(ROUTES, mount=PREFIX)
"""The REST API's paths, below ``/api/v1`` (the core: below ``/internal/api/v1``)."""


def is_query(method: str, path: str) -> bool:
    """Whether ``method`` on ``path`` (below ``/api/v1``) runs a query."""
    found = ROUTER.find(path)
    route = found[0].get(method) if found is not None else None
    return route is not None and route.target.query
