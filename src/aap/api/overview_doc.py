"""JSON schemas of the overview part's routes (consent aggregates, overview, live
events), for the OpenAPI document (:mod:`aap.api.routes`)."""

from __future__ import annotations

from typing import Any

_INT = {"type": "integer"}
_NUM = {"type": "number"}
_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}


def _obj(props: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"type": "object", "properties": props,
            **({"required": list(props)} if required else {})}


def _list(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


PURPOSE_STATS = _obj({"purpose": _STR, "granted": _INT, "refused": _INT, "withdrawn": _INT,
                      "visitors_with_consent_share": _NUM, "events_with_consent_share": _NUM})

CONSENT_STATS = _obj({
    "from": _STR, "to": _STR, "purposes": _list(PURPOSE_STATS),
    "by_day": _list(_obj({"day": _STR, "purpose": _STR, "source": _STR, "granted": _INT,
                          "refused": _INT, "withdrawn": _INT})),
    "gpc_share": _NUM})

FIELDS = ["page", "entry_page", "exit_page", "referrer", "utm_source", "utm_medium",
          "utm_campaign", "country", "region", "device", "browser", "os", "source"]

BREAKDOWNS = ["pages", "countries", "regions", "devices", "browsers", "os", "entry_pages",
              "exit_pages", "referrers", "utm_campaigns"]
PANELS = ["figures", "series", *BREAKDOWNS, "consent"]
"""What ``panels`` may name (:data:`aap.api.overview.PANELS`)."""

OVERVIEW_REQUEST = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"},
        "compare": {"type": "boolean"},
        "filters": {"type": "array", "maxItems": 20, "items": {
            "type": "object", "required": ["field", "value"], "additionalProperties": False,
            "properties": {"field": {"enum": FIELDS}, "value": {"type": "string",
                                                                "maxLength": 1000}}}},
        "limit": {"type": "integer", "minimum": 1, "maximum": 100},
        "panels": {"type": "array", "minItems": 1, "items": {"enum": PANELS},
                   "description": "Only these panels (all when absent): the answer has only"
                                  " their keys (top lists under 'breakdowns')."}}}

_FIGURES = _obj({"visitors": _INT, "pageviews": _INT, "sessions": _INT, "bounce_rate": _NUM,
                 "visit_duration_s": _NUM})
_SERIES = _obj({"labels": _list(_STR), "visitors": _list(_INT), "pageviews": _list(_INT)})
_ROW = _obj({"value": _STR, "visitors": _INT, "pageviews": _INT})

OVERVIEW = {**_obj({
    "from": _STR, "to": _STR, "figures": _FIGURES, "series": _SERIES,
    "breakdowns": _obj({k: _list(_ROW) for k in BREAKDOWNS}, required=False),
    "consent": _list(PURPOSE_STATS)}), "required": ["from", "to"],
    "description": "Every panel, or only those named in 'panels'."}

LIVE_EVENT = _obj({"cursor": _INT, "time": _STR, "event": _NSTR, "type": _STR,
                   "source": _STR, "person": _STR, "path": _NSTR, "country": _NSTR,
                   "browser": _NSTR})

LIVE = _obj({"cursor": _INT, "events": _list(LIVE_EVENT)})
