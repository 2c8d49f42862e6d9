"""The query string of a REST API request: parsed, bounded and checked against the
parameters its route takes (:attr:`aap.api.routes.Endpoint.args`)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from aap import errors

MAX_QUERY = 2048
"""Longest query string taken (bytes)."""


def query_args(query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """Parameter → value; 400 for a parameter the route does not take, one given twice,
    or a query string that is too long or not ``name=value&…``."""
    if not query:
        return {}
    if len(query) > MAX_QUERY:
        raise errors.BadRequest(f"the query string is longer than {MAX_QUERY} bytes",
                                code="bad_query_string")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True,
                          max_num_fields=32)
    except ValueError as exc:
        raise errors.BadRequest(f"the query string cannot be read: {exc}",
                                code="bad_query_string") from None
    out: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            raise errors.BadRequest(
                f"unknown query parameter {name[:64]!r}"
                + (f"; this route takes {', '.join(allowed)}" if allowed else
                   "; this route takes none"),
                {"parameter": name[:64], "allowed": list(allowed)}, code="unknown_parameter")
        if name in out:
            raise errors.BadRequest(f"query parameter {name!r} given twice",
                                    code="bad_query_string")
        out[name] = value
    return out
