"""What counts as personal data in an event: one rule for the collector's sealing and
for every query kind's guard (a property or trait the collector would seal is one an
analyst may not read).

Names are matched case- and separator-insensitively (``Email``, ``e_mail``,
``emailAddress``, ``$email``, ``contact.email`` all name an email address), and values
by their shape wherever they sit (values: see the collector's scrubbing).
"""

from __future__ import annotations

import re
from functools import lru_cache
from itertools import pairwise

_EXACT = frozenset({
    # names and handles
    "name", "fullname", "firstname", "lastname", "surname", "givenname", "familyname",
    "middlename", "maidenname", "nickname", "displayname", "username", "userlogin",
    "screenname", "realname", "legalname",
    # contact
    "address", "streetaddress", "street", "address1", "address2", "addressline1",
    "addressline2", "homeaddress", "billingaddress", "shippingaddress", "postaladdress",
    "postcode", "postalcode", "zip", "zipcode",
    "website", "homepage", "avatar", "photo", "picture", "profilepicture",
    # dates of birth, national numbers
    "birthday", "birthdate", "dateofbirth", "dob",
    "ssn", "socialsecuritynumber", "nationalid", "nationalidnumber", "taxid", "passport",
    "passportnumber", "driverslicense", "iban", "creditcard", "cardnumber", "ccnumber",
    # precise location
    "latitude", "longitude", "lat", "lng", "lon", "coordinates", "geolocation", "gps",
    # identifiers a client may repeat in properties
    "userid", "anonymousid", "previousid", "distinctid", "anondistinctid", "deviceid",
    "advertisingid", "idfa", "idfv", "gaid", "adid",
    # addresses glued to a word (``LASTIP``, ``clientip``: ``ip`` alone is too common a
    # fragment to match inside a word: zip, tip, shipping)
    "lastip", "firstip", "currentip", "clientip", "userip", "remoteip", "sourceip", "srcip",
    "dstip", "originip", "realip", "publicip", "privateip", "deviceip", "hostip", "serverip",
    "peerip", "visitorip", "customerip", "ipaddr", "remoteaddr", "remoteaddress",
    "clientaddr", "clientaddress", "xforwardedfor", "forwardedfor", "xrealip",
    "mobilephone", "homephone", "workphone", "mobilenumber", "cellnumber", "phoneno",
    "emailaddr", "forwardedip",
})
"""Normalized names (lower case, letters and digits only) that are personal as a whole."""

_TOKENS = frozenset({
    "email", "emails", "mail", "phone", "phones", "telephone", "mobile", "cellphone", "fax",
    "ip", "ips", "ipv4", "ipv6", "ipaddress", "ssn", "password", "passwd",
})
"""Words that make a name personal wherever they appear in it (``billing_email``,
``last_ip``, ``mobilePhone``, ``IPAddress``)."""

_SUBSTRINGS = ("email", "ipaddress", "phonenumber", "firstname", "lastname", "fullname",
               "username", "birthdate", "dateofbirth", "streetaddress", "password")
"""Fragments that make a normalized name personal even when glued to other words
(``useremailverified``, ``customerphonenumber``)."""

_NAMED_THINGS = frozenset({
    "library", "app", "application", "os", "browser", "campaign", "product", "products",
    "item", "items", "page", "screen", "network", "referrer", "company", "organization",
    "organisation", "group", "experiment", "variant", "feature", "category", "brand",
    "store", "promotion", "coupon", "list", "form", "button", "element", "event", "step",
    "plan", "project", "team", "file", "carrier", "locale", "timezone",
})
"""Normalized names of things whose ``name`` names the thing, not a person
(``context.library.name``, ``context.os.name``, ``products[].name``); a device's name
(``Alice's iPhone``) stays personal."""

_IDS_OF = {"device": frozenset({"id", "token", "pushtoken"})}
"""Fields that are an identifier only under their parent: a device's ``id`` (the iOS
vendor id, the Android id the mobile SDKs put in ``context.device.id``) and its push
``token`` single out one phone, so they are sealed like ``deviceId``; a product's or a
page's ``id`` stays."""

_VENDOR_FIELDS = frozenset({"$screen_name"})
"""Vendors' own fields whose name reads as personal but is not (PostHog's screen name)."""

_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")


def _normalize(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


@lru_cache(maxsize=65536)
def is_personal_name(name: str) -> bool:
    """Whether a property, trait or context field of this name holds personal data.

    ``Email``, ``e-mail``, ``emailAddress``, ``billing_email``, ``$ip``, ``last_ip``,
    ``IPAddress``, ``phoneNumber``, ``first_name``, ``$name`` are personal; ``plan``,
    ``product_name``, ``zip_file``, ``tooltip`` and ``shipping`` are not.
    """
    if not isinstance(name, str) or not name or name in _VENDOR_FIELDS:
        return False
    norm = _normalize(name)
    if not norm:
        return False
    if norm in _EXACT:
        return True
    if any(s in norm for s in _SUBSTRINGS):
        return True
    # "PHONE", "pHoNe", "Last_iP": a separated part that is a token whatever its casing
    if any(_normalize(part) in _TOKENS for part in _SEPARATORS.split(name)):
        return True
    words = [w.lower() for w in _WORDS.findall(name)]
    if any(w in _TOKENS for w in words):
        return True
    # "e_mail", "E-Mail", "ip_v6", "ip-address": words split by a separator
    glued = {a + b for a, b in pairwise(words)}
    return bool(glued & (_TOKENS | {"ipv4", "ipv6"}))


def is_named_thing(name: str) -> bool:
    """Whether an object under this name is a thing whose ``name`` is not a person's
    (``library``, ``os``, ``product``, ``campaign``, ``form``, ...)."""
    return _normalize(name) in _NAMED_THINGS


@lru_cache(maxsize=65536)
def is_personal_field(parent: str | None, name: str) -> bool:
    """Whether the field ``name`` inside the object held under ``parent`` (``None`` at the
    top) is personal: :func:`is_personal_name`, except the ``name`` of a thing that is
    not a person (``library.name``, ``os.name``, ``products[].name``)."""
    if parent is not None:
        norm = _normalize(name)
        if norm == "name" and is_named_thing(parent):
            return False
        if norm in _IDS_OF.get(_normalize(parent), ()):
            return True
    return is_personal_name(name)


@lru_cache(maxsize=4096)
def is_id_of(parent: str, name: str) -> bool:
    """Whether ``name`` is personal only because of its ``parent`` (``device.id``)."""
    return _normalize(name) in _IDS_OF.get(_normalize(parent), ())


def is_personal_path(path: str) -> bool:
    """Whether a dotted path (``contact.email``, ``$set.Email``) has a personal part, or
    a run of parts that names one together (``user.id``, ``$set.first.name``);
    ``context.library.name`` has none (the name of a thing)."""
    parts = path.split(".")[:32]
    if any(is_personal_field(parts[i - 1] if i else None, part)
           for i, part in enumerate(parts)):
        return True
    return any(is_personal_name(".".join(parts[i:j]))
               for i in range(len(parts)) for j in range(i + 2, len(parts) + 1))
