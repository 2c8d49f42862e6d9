"""The OpenAPI document of everything the server answers (``GET /api/v1/openapi.json``).

One source of truth: each handler carries its :class:`Op` (``@documented(...)``) beside
its code, the route tables (:mod:`aap.routing`) say which paths and methods reach it (the
collector's :meth:`~aap.collect.app.Collector.routes`, the REST API's
:data:`aap.api.routes.ROUTES`), and :func:`document` builds the document from those
tables, the same that dispatch. A route with no ``Op`` makes
:func:`document` fail, and the tests compare the document with what the live server
answers. ``OPTIONS`` (CORS preflights on the browser endpoints) is not listed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from aap.errors import RequestTimeout

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["code", "message", "detail"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "detail": {}}}
_ERROR_TEXT = {400: "bad request (the body names the problem)", 401: "no valid key or token",
               403: "not allowed (origin, or role too low)", 404: "no such resource",
               RequestTimeout.status: "the body did not arrive in time",
               409: "not ready (the request is not done)", 413: "body over the size limit",
               429: "over the rate limit (Retry-After)", 503: "unavailable for now (Retry-After)",
               426: "a WebSocket endpoint: upgrade the connection", 304: "not modified"}
INGESTED: dict[str, Any] = {
    "type": "object", "required": ["success", "accepted"],
    "properties": {
        "success": {"const": True}, "accepted": {"type": "integer", "minimum": 0},
        "status": {"type": "integer"},
        "not_stored": {"type": "object", "additionalProperties": {"type": "integer"}},
        "rejected": {"type": "array", "items": {
            "type": "object", "required": ["index", "reason", "detail"],
            "properties": {"index": {"type": "integer"}, "reason": {"type": "string"},
                           "detail": {"type": "string"}}}}}}
INGEST_ERRORS = (400, 401, 403, 408, 413, 429, 503)
OBJECT: dict[str, Any] = {"type": "object"}

SECURITY_SCHEMES: dict[str, Any] = {
    "writeKey": {"type": "http", "scheme": "basic",
                 "description": "the source's write key as the user name, empty password"},
    "apiKey": {"type": "http", "scheme": "bearer", "description": "an API key (aap keys create)"},
    "subjectToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                     "description": "`Subject <token>`: a token the site signs for a person"},
    "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "aap_session",
                      "description": "the web app's session (POST /api/v1/session)"},
    "metricsToken": {"type": "http", "scheme": "bearer",
                     "description": "AAP_METRICS_TOKEN, when it is set"},
    "deviceKey": {"type": "http", "scheme": "bearer",
                  "description": "a device key (aap devices register)"},
}


@dataclass(frozen=True)
class Op:
    """What one handler answers, for the document."""

    summary: str
    ok: Any = field(default_factory=lambda: OBJECT)
    """Schema of the 200 body (JSON), or None for a body of ``ok_type`` that is not JSON."""
    ok_type: str = "application/json"
    errors: tuple[int, ...] = ()
    body: Any = None
    """JSON schema of the request body (POST), or None for no body."""
    body_types: tuple[str, ...] = ("application/json",)
    body_required: bool = True
    security: tuple[str, ...] = ()
    """Scheme names; ``""`` among them: the key may come another way (in the body)."""
    query: Mapping[str, Any] = field(default_factory=dict)
    paths: tuple[str, ...] = ()
    """For a handler behind a path prefix: the path templates it answers."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """Schemas of path parameters (default: a non-empty string without ``/``)."""
    role: str = ""
    path_types: Mapping[str, str] = field(default_factory=dict)
    """A path template whose 200 body is not ``ok_type``: template → its content type."""


F = TypeVar("F", bound=Callable[..., Any])


def documented(op: Op) -> Callable[[F], F]:
    def mark(handler: F) -> F:
        handler.openapi = op  # type: ignore[attr-defined]
        return handler

    return mark


def op_of(handler: Any) -> Op:
    op = getattr(handler, "openapi", None)
    if not isinstance(op, Op):
        raise LookupError(f"route handler {getattr(handler, '__qualname__', handler)!r}"
                          " has no @documented Op")
    return op


def schemas(named: Mapping[str, Any]) -> dict[str, Any]:
    """Components: the JSON schemas of msgspec types under the given names (a union such
    as ``Insight`` too), with the schemas they refer to."""
    out, components = msgspec.json.schema_components(
        list(named.values()), ref_template="#/components/schemas/{name}")
    for name, schema in zip(named, out, strict=True):
        components.setdefault(name, schema)
    return dict(components)


_TEMPLATE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REGEX_PARAM = re.compile(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>([^()]*)\)")


def template_of(pattern: str) -> tuple[str, dict[str, Any]]:
    """``^/cohorts/(?P<id>\\d{1,12})$`` → ``/cohorts/{id}`` and its parameter's schema."""
    params = {name: {"type": "string", "pattern": f"^{rx}$"}
              for name, rx in _REGEX_PARAM.findall(pattern)}
    path = _REGEX_PARAM.sub(lambda m: "{" + m.group(1) + "}", pattern)
    return path.removeprefix("^").removesuffix("$"), params


def template_regex(template: str) -> re.Pattern[str]:
    """The paths a template such as ``/array/{token}/config`` stands for."""
    return re.compile("^" + re.sub(r"\\\{[A-Za-z_][A-Za-z0-9_]*\\\}", "[^/]+",
                                   re.escape(template)) + "$")


def _operation(op: Op, method: str, path: str, op_id: str) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    ok: dict[str, Any] = {"description": "OK"}
    if method != "head":
        ctype = op.path_types.get(path, op.ok_type)
        ok["content"] = {ctype: {"schema": op.ok} if op.ok is not None and
                         ctype == op.ok_type else {}}
    responses["200"] = ok
    for status in sorted(op.errors):
        if status == 304:
            responses["304"] = {"description": _ERROR_TEXT[304]}
            continue
        r: dict[str, Any] = {"description": _ERROR_TEXT.get(status, "error")}
        if method != "head":
            r["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        responses[str(status)] = r
    out: dict[str, Any] = {"operationId": op_id, "summary": op.summary, "responses": responses}
    if op.role:
        out["description"] = f"Needs an API key of role {op.role} or above."
    if op.security:
        out["security"] = [{name: []} if name else {} for name in op.security]
    params = [{"name": n, "in": "path", "required": True,
               "schema": op.params.get(n, {"type": "string", "pattern": "^[^/]+$"})}
              for n in _TEMPLATE_PARAM.findall(path)]
    params += [{"name": n, "in": "query", "required": False, "schema": s}
               for n, s in op.query.items()]
    if params:
        out["parameters"] = params
    if op.body is not None and method == "post":
        content = {t: {"schema": op.body if t == "application/json" else {"type": "string"}}
                   for t in op.body_types}
        out["requestBody"] = {"required": op.body_required, "content": content}
    return out


def _op_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    return f"{method}_{words}" + ("_slash" if path.endswith("/") and len(path) > 1 else "")


def document(routes: Iterable[tuple[str, tuple[str, ...], Any]],
             prefix_routes: Iterable[tuple[str, tuple[str, ...], Any]],
             rest: Iterable[tuple[str, str, Op]], rest_prefix: str,
             components: Mapping[str, Any]) -> dict[str, Any]:
    """The document: ``routes`` (path, methods, handler), ``prefix_routes`` (prefix,
    methods, handler: the handler's Op names its path templates), ``rest`` (method,
    regex, Op) under ``rest_prefix``."""
    paths: dict[str, dict[str, Any]] = {}

    def add(path: str, method: str, op: Op) -> None:
        m = method.lower()
        paths.setdefault(path, {})[m] = _operation(op, m, path, _op_id(m, path))

    for path, methods, handler in routes:
        op = op_of(handler)
        for method in methods:
            add(path, method, op)
    for prefix, methods, handler in prefix_routes:
        op = op_of(handler)
        if not op.paths or not all(p.startswith(prefix) for p in op.paths):
            raise LookupError(f"the Op of the handler behind {prefix} must name its paths")
        for path in op.paths:
            for method in methods:
                add(path, method, op)
    for method, pattern, op in rest:
        path, params = template_of(pattern)
        add(rest_prefix + path, method,
            Op(**{**op.__dict__, "params": {**params, **op.params}}))
    return {
        "openapi": "3.1.0",
        "info": {"title": "AAP", "version": "1", "description":
                 "Every endpoint of an AAP server: the collector (Segment, PostHog and"
                 " Snowplow wire formats, consent, people's own privacy requests, the SDK,"
                 " health, metrics) and the REST API under /api/v1. Browser endpoints also"
                 " answer CORS preflights (OPTIONS), which are not listed."},
        "components": {"schemas": {"Error": ERROR_SCHEMA, **components},
                       "securitySchemes": SECURITY_SCHEMES},
        "paths": dict(sorted(paths.items())),
    }
