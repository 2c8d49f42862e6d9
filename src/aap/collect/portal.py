"""The privacy portal's public endpoints on the collector's port, for the people being
measured (the page itself is ``/portal/{source name}``, served by :mod:`aap.web`):

- ``GET /v1/portal/{source name}`` (no auth): the source's purposes in plain language
  (:mod:`aap.privacy.plain`), each with its lawful basis and whether consent is asked;
  the consent banner of the browser SDK reads it too.
- ``GET /v1/consent`` with ``Authorization: Subject <token>``: the person's current
  choice per purpose of the token's source, in that source's scope (``POST /v1/consent``
  with the same token records a new statement: :meth:`aap.collect.app.Collector.consent`).
- ``GET /v1/privacy/requests`` with the token: the person's own requests and their status.

Each answer counts against the source's rate limit (a bucket of its own, as consent
statements have).
"""

from __future__ import annotations

from typing import Any

from aap import errors
from aap.api.openapi import Op, documented
from aap.asgi import Handler, Request, Response
from aap.collect.consent import Gate
from aap.collect.ratelimit import RateLimiter, retry_after
from aap.collect.shared import SharedState
from aap.collect.subject import PATH as REQUESTS_PATH
from aap.collect.subject import SelfService
from aap.privacy.plain import LANGUAGES, texts
from aap.privacy.purposes import Basis
from aap.routing import Route
from aap.sources import Source, Sources

INFO_PATH = "/v1/portal/{name}"
CONSENT_PATH = "/v1/consent"
NAME = r"[^/]{1,200}"
"""What the template's ``{name}`` takes (a source name is looked up, never trusted)."""

_PLAIN = {"type": "object", "required": ["title", "description"],
          "properties": {"title": {"type": "string"}, "description": {"type": "string"}}}
INFO = {"type": "object", "required": ["source", "purposes", "languages"], "properties": {
    "source": {"type": "string"}, "languages": {"type": "array", "items": {"type": "string"}},
    "purposes": {"type": "array", "items": {
        "type": "object", "required": ["id", "basis", "consent", "texts"], "properties": {
            "id": {"type": "string"}, "basis": {"type": "string"},
            "consent": {"type": "boolean", "description": "whether consent is asked"},
            "texts": {"type": "object", "additionalProperties": _PLAIN}}}}}}
CHOICES = {"type": "object", "required": ["source", "purposes"], "properties": {
    "source": {"type": "string"},
    "purposes": {"type": "object", "additionalProperties": {
        "type": "object", "required": ["granted", "basis", "consent", "at_ms"],
        "properties": {"granted": {"type": "boolean"}, "basis": {"type": "string"},
                       "consent": {"type": "boolean"},
                       "at_ms": {"type": ["integer", "null"],
                                 "description": "when the person said so (null: never)"}}}}}}
OWN_REQUESTS = {"type": "object", "required": ["requests"], "properties": {
    "requests": {"type": "array", "items": {"type": "object", "required": ["id", "status"]}}}}


class Portal:
    """The handlers; ``shared``: where the gate's and the requests' stores are called
    (:mod:`aap.collect.shared`)."""

    def __init__(self, sources: Sources, gate: Gate, self_service: SelfService,
                 limiter: RateLimiter, shared: SharedState) -> None:
        self.sources = sources
        self.gate = gate
        self.self_service = self_service
        self.shared = shared
        self.limiter = limiter

    def routes(self) -> list[Route[Handler]]:
        return [Route(INFO_PATH, ("GET", "HEAD"), self.info, params={"name": NAME}),
                Route(CONSENT_PATH, ("GET",), self.choices),
                Route(REQUESTS_PATH, ("GET",), self.own_requests)]

    def _limit(self, source: Source) -> None:
        wait = self.limiter.take("portal:" + source.id, source.rate_limit, 1)
        if wait:
            raise errors.TooManyRequests(
                f"source {source.name} is over its limit of {source.rate_limit:g}"
                " requests/s", retry_after=retry_after(wait))

    def _purposes(self, source: Source) -> list[tuple[str, str]]:
        """The source's purposes the registry knows, with their basis."""
        return [(p, b) for p, b in source.purposes if p in self.gate.registry]

    @documented(Op("The purposes of a source in plain language (the privacy portal, the"
                   " consent banner)", ok=INFO, errors=(404, 429),
                   params={"name": {"type": "string", "pattern": f"^{NAME}$"}}))
    async def info(self, req: Request) -> Response:
        name = req.path[len(INFO_PATH.partition("{")[0]):]
        source = self.sources.by_name(name)
        if source is None:  # the name is not echoed back: it is whatever was asked
            raise errors.NotFound("no source by that name", code="unknown_source")
        self._limit(source)
        registry = self.gate.registry
        out = {"source": source.name, "languages": list(LANGUAGES), "purposes": [
            {"id": pid, "basis": basis, "consent": basis == Basis.CONSENT,
             "texts": texts(registry.get(pid))} for pid, basis in self._purposes(source)]}
        return Response.json(200, out, [("cache-control", "public, max-age=60")])

    @documented(Op("A person's current choice per purpose (subject token)",
                   ok=CHOICES, errors=(401, 429), security=("subjectToken",)))
    async def choices(self, req: Request) -> Response:
        source, subject = await self.shared(self.self_service.identify,
                                            req.headers.get("authorization"))
        self._limit(source)
        out = await self.shared(self._choices, source, subject)
        return Response.json(200, {"source": source.name, "purposes": out},
                             [("cache-control", "no-store")])

    def _choices(self, source: Source, subject: dict[str, str]) -> dict[str, Any]:
        (raw,) = subject.values()
        key = self.gate.hasher.key(raw)
        state = self.gate.state
        state.refresh(force=True)
        out: dict[str, Any] = {}
        for pid, basis in self._purposes(source):
            said = state.of(source.scopes, [key], pid)
            consent = basis == Basis.CONSENT
            # no statement: a consent purpose is off, another basis applies as declared
            out[pid] = {"granted": said[0] if said else not consent, "basis": basis,
                        "consent": consent, "at_ms": said[1] if said else None}
        return out

    @documented(Op("A person's own privacy requests and their status (subject token)",
                   ok=OWN_REQUESTS, errors=(401, 429), security=("subjectToken",)))
    async def own_requests(self, req: Request) -> Response:
        source, subject = await self.shared(self.self_service.identify,
                                            req.headers.get("authorization"))
        self._limit(source)
        (raw,) = subject.values()
        mine = await self.shared(self.self_service.store.mine, self.gate.hasher.key(raw),
                                 source.scopes)
        return Response.json(200, {"requests": mine}, [("cache-control", "no-store")])
