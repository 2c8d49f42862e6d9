"""Enrichment: user agent → browser / OS / device type (ua-parser), page URL → host,
path and a query-free URL, referrer → domain, UTM campaign fields, library.

Only what the record of processing declares: nothing is looked up outside AAP, and the
raw user-agent string is not kept.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit, urlunsplit


class Agent(NamedTuple):
    browser: str | None
    browser_version: str | None
    os: str | None
    os_version: str | None
    device_type: str | None


_TABLETS = ("iPad", "Tablet", "Kindle", "Nexus 7", "Nexus 9", "Nexus 10", "SM-T", "Tab")


@lru_cache(maxsize=20_000)
def parse_agent(ua: str) -> Agent:
    from ua_parser import parse

    r = parse(ua)
    browser = r.user_agent.family if r.user_agent and r.user_agent.family != "Other" else None
    bver = r.user_agent.major if r.user_agent else None
    os_ = r.os.family if r.os and r.os.family != "Other" else None
    over = ".".join(p for p in (r.os.major, r.os.minor) if p) if r.os and r.os.major else None
    dev = r.device.family if r.device else None
    if dev == "Spider" or (browser or "").lower().endswith("bot"):
        kind = "bot"
    elif dev and any(t in dev for t in _TABLETS):
        kind = "tablet"
    elif os_ in ("iOS", "Android", "Windows Phone", "KaiOS") or "Mobile" in (browser or ""):
        kind = "mobile"
    elif os_ is None and browser is None:
        kind = None
    else:
        kind = "desktop"
    return Agent(browser, bver, os_, over, kind)


class Page(NamedTuple):
    url: str | None
    host: str | None
    path: str | None
    query: dict[str, list[str]]


@lru_cache(maxsize=50_000)
def split_url(url: str) -> Page:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return Page(None, None, None, {})
    if not parts.scheme or not parts.netloc:
        return Page(None, None, parts.path or None, {})
    host = (parts.hostname or "").lower() or None
    clean = urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", "", ""))
    return Page(clean, host, parts.path or "/", parse_qs(parts.query))


def domain(url: str | None) -> str | None:
    if not url:
        return None
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return None
    if not host:
        return None
    return host[4:] if host.startswith("www.") else host


UTM_FIELDS = ("source", "medium", "campaign", "term", "content")
def text(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None
