"""Subject tokens: how a person exercises their rights themselves.

The site's backend, which knows who is logged in, signs a short-lived token naming the
person with the source's **subject secret** (``aap sources secret NAME`` prints it; it
is derived from a key in ``DATA_DIR/keys/subject-token.key`` and the source id, so AAP
stores no copy of it). The person's browser then calls ``POST /v1/privacy/requests``
with ``Authorization: Subject <token>`` — access, erasure, restriction or objection of
their own data — and follows it with ``GET /v1/privacy/requests/{id}`` (and
``…/export`` for the zip), with the same token.

A token is ``base64url(payload) "." base64url(HMAC-SHA256(secret, payload))`` where the
payload is JSON: ``{"src": source id, "sub": {"userId": …} or {"anonymousId": …},
"exp": unix seconds}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import msgspec

from aap.datadir import DataDir
from aap.jsonlimits import depth
from aap.privacy.ids import key_of


class BadToken(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SubjectTokens:
    def __init__(self, data_dir: Path) -> None:
        self._root = key_of("subject_token_key", DataDir(data_dir).subject_token_key)

    def secret(self, source_id: str) -> bytes:
        """The source's subject secret (what its backend signs tokens with)."""
        return hmac.new(self._root, b"aap-subject-token:" + source_id.encode(),
                        hashlib.sha256).digest()

    def issue(self, source_id: str, subject: dict[str, str], ttl_s: int = 900) -> str:
        """A token, as a site's backend would make it (for tests and `aap` tools)."""
        return sign(self.secret(source_id), source_id, subject, int(time.time()) + ttl_s)

    def verify(self, token: str) -> tuple[str, dict[str, str]]:
        """(source id, subject) of a valid, unexpired token; :class:`BadToken` otherwise.

        The signature is checked before the payload is read: only its source id (a flat
        string, which names the key) is decoded first, after a length and depth check."""
        try:
            body, mac = token.strip().split(".")
            if len(body) > MAX_TOKEN_CHARS:
                raise ValueError("too long")
            raw = _unb64(body)
            if depth(raw) > 2:
                raise ValueError("too deep")
            source_id = _head.decode(raw).src
        except (ValueError, msgspec.DecodeError):
            raise BadToken("not a subject token") from None
        want = hmac.new(self.secret(source_id), body.encode(), hashlib.sha256).digest()
        try:
            good = hmac.compare_digest(want, _unb64(mac))
        except ValueError:
            good = False
        if not good:
            raise BadToken("the token's signature is wrong")
        try:
            payload = _payload.decode(raw)
            exp = int(payload.exp)
        except (ValueError, OverflowError, msgspec.DecodeError):
            raise BadToken("not a subject token") from None
        if exp < time.time():
            raise BadToken("the token has expired")
        subject = payload.sub
        ids = {k: v for k, v in subject.items() if k in ("userId", "anonymousId")
               and isinstance(v, str) and v}
        if len(ids) != 1 or len(subject) != 1:
            raise BadToken("the token must name one userId or one anonymousId")
        return source_id, ids


MAX_TOKEN_CHARS = 4096
"""A token names one source and one id: a few hundred characters."""


class _Head(msgspec.Struct):
    src: str


class _Payload(msgspec.Struct):
    src: str
    sub: dict[str, Any]
    exp: int | float


_head = msgspec.json.Decoder(_Head)
_payload = msgspec.json.Decoder(_Payload)


def sign(secret: bytes, source_id: str, subject: dict[str, str], exp: int) -> str:
    payload: dict[str, Any] = {"src": source_id, "sub": subject, "exp": exp}
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    return body + "." + _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
