"""Finding personal data in an event, by name and by shape, and taking it out.

Two rules, applied at any depth of ``traits``, ``properties``, ``context`` and
``integrations`` (lists included) and to the event's own strings (``event``, ``name``,
``category``, ``groupId``, ``messageId``):

- a field whose name is personal (:func:`aap.privacy.personal.is_personal_field`:
  ``Email``, ``e_mail``, ``contact.email``, ``$ip``, ``last_ip``, ``IP_Address``, …)
  leaves the event whole;
- a string that holds an email address or an IP address (v4, v6, ``::ffff:1.2.3.4``,
  bracketed, with a port or a zone, percent-encoded in a URL) keeps its place with each
  such address replaced by :data:`REDACTED` (loopback and unspecified addresses, which
  are nobody's, stay: a page served from ``http://127.0.0.1:8000/``). In a URL the path, the query's names and
  the other values stay: ``/u/[redacted]/orders?email=[redacted]&plan=pro``. A
  percent-encoded part of a URL that holds one is replaced whole. A key that holds one
  leaves the event with its value. ``groupId`` and ``messageId`` become
  ``redacted-<keyed hash>`` instead, so that grouping and de-duplication still work.

:func:`take_personal` returns what it took as ``[path, original value]`` pairs, which
the collector seals under the subject's key (:mod:`aap.privacy.sealing`) or drops when
the event has no subject; :func:`put_back` restores them.

Speed: a request's strings are first searched for what an address needs all at once
(``@``, ``%``, ``::``, the middle of a dotted quad, colon runs: :func:`_suspect_bytes`),
in its JSON body when the events are that body decoded, else in the events encoded
together; only when that finds something is each event searched, and then its strings
one by one, and only a string that may hold an address meets a regular expression (its
verdict is cached: user agents and URLs repeat). Field names are looked up in a cache,
and an event whose every name was seen clean before under the same parent is not walked
(:func:`_all_clean`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

import msgspec

from aap.events import Event
from aap.privacy.personal import is_id_of, is_named_thing, is_personal_field

REDACTED = "[redacted]"
"""What replaces an email or IP address found inside a stored string."""

MAX_DEPTH = 64
"""Deeper than this, an object is taken out whole (sealed or dropped), unread."""

REDACTED_ID_PREFIX = "redacted-"
"""``groupId`` / ``messageId`` holding an address become this plus a keyed hash (hex)."""

USER_AGENT_FIELDS = frozenset({"userAgent", "user_agent", "ua", "$raw_user_agent"})
"""Fields that hold a user agent, where ``Chrome/120.0.0.0`` is a version, not an IP."""

# each pattern starts only where its run starts (the look-behinds): linear time on
# hostile input such as 30,000 letters and an "@"
_EMAIL = re.compile(r"(?<![\w.!#$'*+^`{|}~-])[\w.!#$'*+^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
_V4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?!\.?\d)")
_V4_UA = re.compile(r"(?<![\d./])\d{1,3}(?:\.\d{1,3}){3}(?!\.?\d)")
_V6 = re.compile(r"(?<![0-9A-Fa-f:.])[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")
_ENCODED = re.compile(r"(?<![^/?&#=;\s])[^/?&#=;\s]*%[^/?&#=;\s]*")

_ATTRS = ("event", "name", "category")
_ID_ATTRS = ("group_id", "message_id")
_CONTAINERS = ("traits", "properties", "context", "integrations")

Path = list[str | int]


def _v4(m: re.Match[str]) -> str:
    text = m.group()
    parts = [int(p) for p in text.split(".")]
    # loopback (a page served from 127.0.0.1) and 0.0.0.0 are nobody's address
    return REDACTED if max(parts) <= 255 and parts[0] not in (0, 127) else text


def _v6(m: re.Match[str]) -> str:
    text = m.group()
    if not any(c not in ":." for c in text):
        return text  # "::" alone, "a :: b"
    # "2001:db8::" ends with colons; "…::1." or "…::1:" ends a sentence or a list;
    # "ip:2001:db8::1", "a2001:db8::1": the address may start a few characters in
    for cand in dict.fromkeys((text, text.rstrip("."), text.rstrip(".:"))):
        for drop in range(5):
            addr = cand[drop:]
            # one group and "::" ("2002::") right after a letter ("std::vector") is a word
            groups = sum(1 for g in addr.split(":") if g)
            at = m.start() + drop
            if groups == 0 or (groups < 2 and not addr.startswith("::") and at > 0
                               and (m.string[at - 1].isalnum() or m.string[at - 1] == "_")):
                continue
            try:
                ip = ipaddress.IPv6Address(addr)
            except ValueError:
                continue
            v4 = ip.ipv4_mapped
            if ip.is_loopback or (v4 is not None and (v4.is_loopback or v4.is_unspecified)):
                return text
            return text[:drop] + REDACTED + text[len(cand):]
    return text


def _may_hold(s: str) -> bool:
    """Cheap test: whether ``s`` can hold an email or IP address at all."""
    return ("@" in s or "%" in s or "::" in s or s.count(".") >= 3
            or s.count(":") >= 6)


def _redact_plain(s: str, user_agent: bool) -> str:
    if "@" in s:
        s = _EMAIL.sub(REDACTED, s)
    if ":" in s:
        s = _V6.sub(_v6, s)
    if s.count(".") >= 3:
        s = (_V4_UA if user_agent else _V4).sub(_v4, s)
    return s


def _decoded(token: str) -> str:
    for _ in range(3):
        if "%" not in token:
            break
        token = unquote_plus(token)
    return token


def _encoded(m: re.Match[str]) -> str:
    token = m.group()
    plain = _decoded(token)
    if plain != token and _redact_plain(plain, False) != plain:
        return REDACTED
    return token


@lru_cache(maxsize=8192)
def _redacted(s: str, user_agent: bool) -> str:
    out = _redact_plain(s, user_agent)
    if "%" in out:
        out = _ENCODED.sub(_encoded, out)
    return out


def redact(s: str, user_agent: bool = False) -> str:
    """``s`` with every email and IP address in it replaced by :data:`REDACTED`."""
    return _redacted(s, user_agent) if _may_hold(s) else s


def holds_address(s: str) -> bool:
    """Whether the string holds an email or IP address (see :func:`redact`)."""
    return _may_hold(s) and _redacted(s, False) != s


def holds_personal(value: Any, depth: int = 0) -> bool:
    """Whether a value holds a personal field name or an address anywhere inside (one
    nested deeper than :data:`MAX_DEPTH` is taken to)."""
    if isinstance(value, str):
        return holds_address(value)
    if isinstance(value, (dict, list)) and depth > MAX_DEPTH:
        return True
    if isinstance(value, dict):
        return any(not isinstance(k, str) or is_personal_field(None, k) or holds_address(k)
                   or holds_personal(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_personal(v, depth + 1) for v in value)
    return False


def is_personal_trait(name: str, value: Any) -> bool:
    """Whether a trait (of a rectification, say) is personal: by its name, or by a
    personal name or an address anywhere in its value."""
    return is_personal_field(None, name) or holds_address(name) or holds_personal(value)


def _suspect(ev: Event) -> bool:
    """Whether any string of the event may hold an address: one JSON encoding of the
    event's parts and a few byte searches, no regular expression (see
    :func:`_suspect_bytes`)."""
    return _suspect_parts([ev])


def _suspect_parts(events: list[Event]) -> bool:
    """Whether any string of these events may hold an address: their parts encoded as
    one JSON document. A user agent is judged on its own (its ``Chrome/120.0.0.0`` is a
    version, not an address) and then left out of the document."""
    data = _without_user_agents(
        _enc([(ev.traits, ev.properties, ev.context, ev.integrations, ev.event, ev.name,
               ev.category, ev.group_id, ev.message_id) for ev in events]), events)
    return data is None or _suspect_bytes(data)


def _without_user_agents(data: bytes, events: list[Event]) -> bytes | None:
    """``data`` without the events' user agents, each judged on its own first (``None``
    when one holds an address)."""
    for ua in {ua for ev in events if (ua := ev.context.get("userAgent")) and type(ua) is str}:
        if _may_hold(ua) and _redacted(ua, True) != ua:
            return None
        data = data.replace(_enc(ua), b"")
    return data


def _suspect_bytes(data: bytes) -> bool:
    """Searches for what an address needs: ``@``, ``%`` (an encoded one), ``::``, the
    middle of a dotted quad (``.0.113.``) or five colon-separated hex groups. A superset of
    what :data:`_V4` and :data:`_V6` find (an IPv6 address has ``::`` or seven colons);
    each search starts from a literal character, so a clean 30 KB request costs tens of
    microseconds."""
    if b"@" in data or b"%" in data or b"::" in data:
        return True
    if b"." in data and _DOTTED.search(data):
        return True
    return b":" in data and _COLONS.search(data) is not None


_DOTTED = re.compile(rb"\.\d{1,3}\.\d{1,3}\.")
_COLONS = re.compile(rb":[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:")


_enc = msgspec.json.Encoder().encode
_KEYS: dict[str, bool] = {}
"""Field name → personal (by name or by holding an address); a cache, cleared when big."""
MAX_KEYS = 100_000
"""Field names in :data:`_KEYS` before it is cleared."""


_CLEAN: dict[str | None, set[str]] = {}
"""Parent key (``None`` at the top of a container) → field names seen there that are
not personal: a dict whose keys are all among them needs no look at each name."""
MAX_PARENTS = 10_000
"""Parent keys in :data:`_CLEAN` before it is cleared."""
MAX_CLEAN_PER_PARENT = 1_000
"""Field names remembered as clean under one parent key."""


def _clean(parent: str | None) -> set[str]:
    clean = _CLEAN.get(parent)
    if clean is None:
        if len(_CLEAN) > MAX_PARENTS:
            _CLEAN.clear()
        clean = _CLEAN[parent] = set()
    return clean


def _personal_key(parent: str | None, k: str) -> bool:
    verdict = _KEYS.get(k)
    if verdict is None:
        verdict = is_personal_field(None, k) or holds_address(k)
        if len(_KEYS) > MAX_KEYS:
            _KEYS.clear()
        _KEYS[k] = verdict
    if not verdict:
        return parent is not None and is_id_of(parent, k)
    return parent is None or is_personal_field(parent, k) or holds_address(k)


def _walk(obj: dict[str, Any] | list[Any], path: tuple[str | int, ...], parent: str | None,
          out: list[tuple[Path, Any]], values: bool) -> None:
    if len(path) > MAX_DEPTH:
        for k, v in (obj.items() if type(obj) is dict else enumerate(obj)):
            if (type(v) is dict or type(v) is list) and v:
                out.append(([*path, k], v))
                obj[k] = REDACTED  # type: ignore[index]
        return
    if type(obj) is dict:
        clean = _clean(parent)
        if not values and obj.keys() <= clean:  # no personal name here: nested ones only
            for k, v in obj.items():
                if (type(v) is dict or type(v) is list) and v:
                    _walk(v, (*path, k), k, out, values)
            return
        gone: list[str] = []
        for k, v in obj.items():
            if _personal_key(parent, k):
                out.append(([*path, k], v))
                gone.append(k)
                continue
            if type(k) is str and len(clean) < MAX_CLEAN_PER_PARENT:
                clean.add(k)
            if type(v) is str:
                if values and _may_hold(v):
                    r = _redacted(v, k in USER_AGENT_FIELDS)
                    if r != v:
                        out.append(([*path, k], v))
                        obj[k] = r  # same keys: iterating on is safe
            elif (type(v) is dict or type(v) is list) and v:
                _walk(v, (*path, k), k, out, values)
        for k in gone:
            del obj[k]
    elif type(obj) is list:
        for i, v in enumerate(obj):
            if type(v) is str:
                if values and _may_hold(v):
                    r = _redacted(v, False)
                    if r != v:
                        out.append(([*path, i], v))
                        obj[i] = r
            elif (type(v) is dict or type(v) is list) and v:
                _walk(v, (*path, i), parent, out, values)


_THING_EVENTS = {"Order Item": "product"}
"""Events whose properties describe a thing though their first word does not say which
(Snowplow's transaction item)."""


@lru_cache(maxsize=4096)
def _thing(event: str) -> str | None:
    thing = _THING_EVENTS.get(event) or event.split(" ", 1)[0].lower()
    return thing if is_named_thing(thing) else None


def _owner(ev: Event, attr: str) -> str | None:
    """What the top-level fields describe, where it is a thing and not a person: a page
    view's (or screen's) properties describe the page (``properties.name`` is the page's
    name), a group call's traits the group (``traits.name`` is the company's), a track
    event named for a thing (``Product Viewed``, ``Form Submitted``) that thing."""
    if attr == "properties":
        if ev.type in ("page", "screen"):
            return ev.type
        if ev.type == "track" and ev.event:
            # Segment's e-commerce spec ("Product Viewed": ``name`` is the product's),
            # "Promotion Clicked", the browser SDK's "Form Submitted", ...
            return _thing(ev.event)
    if attr == "traits" and ev.type == "group":
        return "group"
    return None


def _all_clean(ev: Event) -> bool:
    """Whether every field name of the event's containers, at every depth, is one seen
    before under the same parent and found not personal (no address is looked for): one
    loop over the nested dicts, no path built. ``False`` sends the event to :func:`_walk`."""
    stack: list[tuple[Any, str | None]] = []
    for attr in _CONTAINERS:
        container = getattr(ev, attr)
        if container:
            stack.append((container, _owner(ev, attr)))
    clean = _CLEAN
    while stack:
        obj, parent = stack.pop()
        if type(obj) is dict:
            known = clean.get(parent)
            if known is None or not obj.keys() <= known:
                return False
            for k, v in obj.items():
                if (type(v) is dict or type(v) is list) and v:
                    stack.append((v, k))
        else:
            if len(stack) > MAX_DEPTH * 4:
                return False
            for v in obj:
                if (type(v) is dict or type(v) is list) and v:
                    stack.append((v, parent))
    return True


def take_personal_all(events: list[Event], keyed: Callable[[str], int],
                      body: bytes | None = None) -> list[list[tuple[Path, Any]]]:
    """:func:`take_personal` for each event of a request. Their strings are first
    searched for addresses all at once: in the common case, where none can hold one, no
    event's strings are looked at one by one. ``body``: the request's JSON, when every
    string of the events stands in it as it is (a JSON wire format decoded straight into
    the events): searched instead of encoding the events again, unless it has escapes."""
    clean = (body is not None and _clean_body(body, events)) or not _suspect_parts(events)
    values = False if clean else None
    return [take_personal(ev, keyed, values) for ev in events]


def _clean_body(body: bytes, events: list[Event]) -> bool:
    """Whether a JSON body without escapes can hold no address (user agents judged on
    their own, as in :func:`_suspect_parts`)."""
    if b"\\" in body:  # an escape can spell any character: decide on the events
        return False
    data = _without_user_agents(body, events)
    return data is not None and not _suspect_bytes(data)


def take_personal(ev: Event, keyed: Callable[[str], int], values: bool | None = None
                  ) -> list[tuple[Path, Any]]:
    """Take every personal field and address out of ``ev`` (in place); the originals as
    ``(path, value)`` pairs, in the order :func:`put_back` needs. ``keyed`` is the keyed
    hash that replaces a ``groupId`` or ``messageId`` holding an address. ``values``:
    whether strings may hold addresses (``None``: find out, :func:`_suspect`)."""
    out: list[tuple[Path, Any]] = []
    if values is None:
        values = _suspect(ev)
    if not values and _all_clean(ev):
        return out
    for attr in _CONTAINERS:
        container = getattr(ev, attr)
        if container:
            _walk(container, (attr,), _owner(ev, attr), out, values)
    if not values:
        return out
    for attr in _ATTRS:
        v = getattr(ev, attr)
        if isinstance(v, str) and _may_hold(v):
            r = _redacted(v, False)
            if r != v:
                out.append(([attr], v))
                setattr(ev, attr, r)
    for attr in _ID_ATTRS:
        v = getattr(ev, attr)
        if isinstance(v, str) and _may_hold(v) and _redacted(v, False) != v:
            out.append(([attr], v))
            setattr(ev, attr, f"{REDACTED_ID_PREFIX}{keyed(v) & 0xFFFFFFFFFFFFFFFF:016x}")
    return out


def put_back(ev: Event, taken: list[Any]) -> None:
    """Restore what :func:`take_personal` took (``[path, value]`` pairs, as sealed)."""
    for path, value in taken:
        if len(path) == 1:
            attr = path[0]
            if attr in _ATTRS or attr in _ID_ATTRS:
                setattr(ev, attr, value)
            continue
        if path[0] not in _CONTAINERS:
            continue
        node: Any = getattr(ev, path[0])
        if not isinstance(node, dict):
            node = {}
            setattr(ev, path[0], node)
        for step in path[1:-1]:
            node = node[step]
        node[path[-1]] = value
