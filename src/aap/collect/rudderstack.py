"""RudderStack's control plane, as far as its SDKs need it: the source configuration.

RudderStack's iOS and Android SDKs (v1: ``rudder-sdk-ios``, ``rudder-sdk-android``) load
``GET {controlPlaneUrl}/sourceConfig?p=ios|android&v=VERSION`` at start-up, with the write
key as the Basic auth user name, and send events only once it says the source is
enabled. AAP answers for its own sources: enabled, no destinations (AAP is the only
one), the SDK's own error and metrics reports off, and the fields ``rudder-sdk-swift``
(v2) also requires (``writeKey``, ``workspaceId``: the source's controller group, else
the source). The JavaScript SDK loads ``/sourceConfig/?writeKey=…``: answered the same
way (not tested here). Events themselves go to the data plane, ``/v1/batch``
(:mod:`aap.collect.segment`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aap.sources import Source

SOURCE_CONFIG_PATHS = ("/sourceConfig", "/sourceConfig/")


def source_config(source: Source, write_key: str) -> dict[str, Any]:
    """The answer to ``/sourceConfig`` for a source (the fields the SDKs read)."""
    created = datetime.fromtimestamp(source.created_at, UTC).isoformat().replace("+00:00", "Z")
    return {
        "isHosted": False,
        "source": {
            "id": source.id, "name": source.name, "writeKey": write_key, "enabled": True,
            "workspaceId": source.controller or source.id,
            "deleted": False, "createdAt": created, "updatedAt": created,
            "config": {"statsCollection": {"errors": {"enabled": False},
                                           "metrics": {"enabled": False}}},
            "destinations": [],
        },
    }
