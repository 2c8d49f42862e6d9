"""Self-service rights on the collector's port, for the person: ``POST
/v1/privacy/requests`` and ``GET /v1/privacy/requests/{id}[/export]`` with
``Authorization: Subject <token>`` (see :mod:`aap.privacy.tokens`). A person can only
see their own requests. The core works the requests off (:mod:`aap.privacy.requests`).
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

PATH = "/v1/privacy/requests"
_ONE = re.compile(r"^/v1/privacy/requests/(pr_[0-9a-f]{16})(/export)?$")


class OwnRequest(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    traits: dict[str, Any] | None = None


class SelfService:
    def __init__(self, data_dir: Path, hasher: IdHasher) -> None:
        self.tokens = SubjectTokens(data_dir)
        self.store = RequestStore(data_dir)
        self.hasher = hasher

    def _subject(self, authorization: str | None) -> tuple[str, int]:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "subject" or not token.strip():
            raise errors.Unauthorized("send `Authorization: Subject <token>` (a token your"
                                      " site signs for you)", code="missing_subject_token")
        try:
            source, subject = self.tokens.verify(token)
        except BadToken as exc:
            raise errors.Unauthorized(str(exc), code="bad_subject_token") from None
        (raw,) = subject.values()
        return source, self.hasher.key(raw)

    def submit(self, authorization: str | None, body: bytes) -> dict[str, Any]:
        source, key = self._subject(authorization)
        req = decode_request(body, OwnRequest)
        rid = self.store.add(req.type, [key], {"self_service": True}, req.traits,
                             f"subject:{source}")
        return {"id": rid, "status": "pending"}

    def lookup(self, authorization: str | None, path: str) -> dict[str, Any] | bytes:
        source, key = self._subject(authorization)
        m = _ONE.match(path)
        if m is None:
            raise errors.no_endpoint(path)
        rid = m.group(1)
        if key not in self.store.subject_keys(rid):
            raise errors.NotFound(f"no privacy request {rid} of yours")
        return (self.store.export(rid, f"subject:{source}") if m.group(2)
                else self.store.get(rid))
