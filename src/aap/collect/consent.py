"""``POST /v1/consent``: a person's consent choices, per purpose, from a site or our SDK.

A minimal version until the privacy core (the consent ledger) exists: the body is
validated and the statement is appended to the durable log like an event, a ``track``
named ``$consent`` whose ``context.consent.categoryPreferences`` holds the purposes
(Segment's convention, which the consent gate reads on every event) and whose
properties keep the proof: purposes, policy version, channel. It is answered 200 only
once it is durable.

Body: ``{"userId" and/or "anonymousId", "purposes": {"analytics": true, …},
"policy_version"?, "channel"?, "timestamp"?, "messageId"?}``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import msgspec

from aap.collect.segment import Parsed, WireMessage
from aap.errors import BadRequest

PATH = "/v1/consent"
EVENT = "$consent"
_PURPOSE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class ConsentBody(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    purposes: dict[str, bool]
    user_id: str | None = None
    anonymous_id: str | None = None
    policy_version: str | None = msgspec.field(default=None, name="policy_version")
    channel: str | None = None
    timestamp: datetime | None = None
    message_id: str | None = None
    write_key: str | None = None


_decoder = msgspec.json.Decoder(ConsentBody)


def parse(body: bytes) -> Parsed:
    if not body.strip():
        raise BadRequest("the request body is empty", code="empty_body")
    try:
        c = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest("the consent body has a missing field or one of the wrong type",
                         str(exc), code="invalid_consent") from None
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("the body is not valid JSON", str(exc), code="invalid_json") from None
    if not (c.user_id or "").strip() and not (c.anonymous_id or "").strip():
        raise BadRequest("a consent statement needs `userId` or `anonymousId`",
                         code="missing_identity")
    if not c.purposes:
        raise BadRequest("`purposes` must name at least one purpose", code="invalid_consent")
    bad = [p for p in c.purposes if not _PURPOSE.match(p)]
    if bad:
        raise BadRequest("purpose ids are lower-case letters, digits and `_`", bad,
                         code="invalid_consent")
    props: dict[str, Any] = {"purposes": c.purposes, "channel": c.channel or "api"}
    if c.policy_version is not None:
        props["policy_version"] = c.policy_version
    m = WireMessage(type="track", event=EVENT, user_id=c.user_id or None,
                    anonymous_id=c.anonymous_id or None, message_id=c.message_id,
                    timestamp=c.timestamp, properties=props,
                    context={"consent": {"categoryPreferences": c.purposes}})
    return Parsed([(0, m)], [], c.write_key)
