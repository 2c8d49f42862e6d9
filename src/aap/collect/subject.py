"""Self-service rights on the collector's port, for the person: ``POST
/v1/privacy/requests`` and ``GET /v1/privacy/requests/{id}[/export]`` with
``Authorization: Subject <token>`` (see :mod:`aap.privacy.tokens`). A person can only
see their own requests, filed through a source of the same controller as the token's
(:attr:`aap.sources.Source.scope`): a request is bound to the scope it was filed in, and
a token of another controller gets a 404 for it. The core works the requests off
(:mod:`aap.privacy.requests`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec

from aap import errors
from aap.privacy.ids import IdHasher
from aap.privacy.requests import RequestStore, decode_request
from aap.privacy.tokens import BadToken, SubjectTokens
from aap.sources import Source, Sources

PATH = "/v1/privacy/requests"
_ONE = re.compile(r"^/v1/privacy/requests/(pr_[0-9a-f]{16})(/export)?$")


TYPES = ("access", "erasure", "restriction", "objection")
"""What a person may ask for themselves (a rectification goes through the site's privacy
team and the API: its traits are not checked here)."""


class OwnRequest(msgspec.Struct, forbid_unknown_fields=True):
    type: str


class SelfService:
    def __init__(self, data_dir: Path, hasher: IdHasher, sources: Sources) -> None:
        self.tokens = SubjectTokens(data_dir)
        self.store = RequestStore(data_dir)
        self.hasher = hasher
        self.sources = sources

    def _scopes(self, source_id: str) -> tuple[str, ...]:
        """The scopes a token of ``source_id`` acts in: its source and its controller
        group; the group's first (what new requests are bound to)."""
        src = self.sources.by_id(source_id)
        if src is None:
            raise errors.Unauthorized("the token's source does not exist",
                                      code="bad_subject_token")
        return (src.scope, src.id) if src.controller else (src.id,)

    def identify(self, authorization: str | None) -> tuple[Source, dict[str, str]]:
        """The source and the person (``{"userId": …}`` or ``{"anonymousId": …}``, raw) of
        a subject token (401 if it is not valid)."""
        source_id, subject = self._verify(authorization)
        src = self.sources.by_id(source_id)
        if src is None:
            raise errors.Unauthorized("the token's source does not exist",
                                      code="bad_subject_token")
        return src, subject

    def _verify(self, authorization: str | None) -> tuple[str, dict[str, str]]:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "subject" or not token.strip():
            raise errors.Unauthorized("send `Authorization: Subject <token>` (a token your"
                                      " site signs for you)", code="missing_subject_token")
        try:
            return self.tokens.verify(token)
        except BadToken as exc:
            raise errors.Unauthorized(str(exc), code="bad_subject_token") from None

    def _subject(self, authorization: str | None) -> tuple[str, int]:
        source, subject = self._verify(authorization)
        (raw,) = subject.values()
        return source, self.hasher.key(raw)

    def submit(self, authorization: str | None, body: bytes) -> dict[str, Any]:
        source, key = self._subject(authorization)
        scopes = self._scopes(source)
        req = decode_request(body, OwnRequest)
        if req.type not in TYPES:
            raise errors.BadRequest(f"`type` must be one of {', '.join(TYPES)}",
                                    {"allowed": list(TYPES)}, code="invalid_request")
        rid = self.store.add(req.type, [key], {"self_service": True}, None,
                             f"subject:{source}", scope=scopes[0])
        return {"id": rid, "status": "pending"}

    def lookup(self, authorization: str | None, path: str) -> dict[str, Any] | bytes:
        source, key = self._subject(authorization)
        m = _ONE.match(path)
        if m is None:
            raise errors.no_endpoint(path)
        rid = m.group(1)
        keys, scope = self.store.owner(rid)
        if key not in keys or scope not in self._scopes(source):
            raise errors.NotFound(f"no privacy request {rid} of yours")
        return (self.store.export(rid, f"subject:{source}") if m.group(2)
                else self.store.get(rid))
