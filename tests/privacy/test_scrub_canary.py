"""The class test of personal data by name and by shape (issue 12, §2): canary emails
and IP addresses (v4, v6, ``::ffff:``-mapped, bracketed with a port), unique per
example, planted by hypothesis at random paths — nested in properties, traits, context
and ``context.device``, in a page URL's query, fragment, path or host, in the referrer,
in an event's name, in PostHog's ``$set`` and properties, in Snowplow's ``ue_pr``,
``cx``, ``url``, ``refr`` and labels — under random casings and separators of personal
names, sent to one real server in every wire format (Segment batch, analytics.js's
single-event endpoints, AAP's browser SDK (text/plain batches with the key inside),
PostHog, Snowplow POST and GET, and a CNIL-mode source, which has no subject to seal
under and drops them). The processor then takes them into the hot store and the warm
tier (Parquet), and every file under the data dir, the log's records decompressed,
every DuckDB and Parquet row as text and the server's own log are scanned in plain, hex
and base64 forms: zero hits. A non-personal marker sent with each example is found (the
scans see what was stored), and unsealing the log with the data dir's keys gives each
personal value back (CNIL mode aside), except the addresses a client sends as the end
user's own (``context.ip``, PostHog's ``$ip``, Snowplow's ``ip``): those are truncated
and never kept whole, by design.
"""

from __future__ import annotations

import base64
import ipaddress
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aap.runner import ServerProcess, create_source
from tests.conftest import examples, slow_fixture, unsealed_log
from tests.privacy import test_ip_canary as ipc
from tests.privacy.test_personal_canary import forms, warehouse_text

EMAIL_NAMES = ("email", "Email", "e_mail", "E-Mail", "emailAddress", "EmailAddress",
               "email_address", "billing_email", "contactEmail", "$email", "mail", "e.mail")
IP_NAMES = ("ip", "$ip", "IP", "last_ip", "lastIp", "LASTIP", "IP_Address", "ipAddress",
            "client_ip", "ip-v6", "ipv4", "remote_addr", "X-Forwarded-For")
NEUTRAL = ("info", "meta", "details", "extra", "data", "nested", "block", "cfg")
MARKER = "scrub-marker-6d2e"  # not personal: proves the scans read what was stored
FORMATS = ("segment_batch", "segment_browser", "aap_sdk", "posthog", "snowplow_post",
           "snowplow_get", "segment_cnil")
PER_FORMAT = 12
"""Examples per format: 7 formats x 12, more than the 80 drawn over all formats before."""
PLACES = {
    "segment_batch": ("properties", "traits", "context", "device", "url", "referrer",
                      "event", "list", "request_ip"),
    "segment_browser": ("properties", "context", "device", "url", "referrer", "event"),
    "aap_sdk": ("properties", "traits", "context", "url", "referrer", "event", "list"),
    "posthog": ("properties", "set", "current_url", "referrer", "event", "request_ip"),
    "snowplow_post": ("ue_pr", "cx", "url", "refr", "label", "request_ip"),
    "snowplow_get": ("ue_pr", "url", "refr", "label"),
    "segment_cnil": ("properties", "context", "device", "url", "referrer", "event", "list"),
}
"""segment_cnil: a CNIL-mode source (anonymous, no subject key): what is personal is
dropped, not sealed."""
DROPPED = "request_ip"
"""The end user's own address, sent as such: truncated, never kept whole (not sealed)."""

_counter = itertools.count(1)


@dataclass
class Plant:
    canary: str
    kind: str  # "email" | "v4" | "v6" | "mapped"
    fmt: str
    place: str

    def needles(self) -> list[bytes]:
        if self.kind == "email":
            return forms(self.canary)
        addr = ipaddress.ip_address(self.canary)
        out = _text_forms(str(addr))
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            out += _text_forms(str(addr.ipv4_mapped))
        return out


def _text_forms(ip: str) -> list[bytes]:
    """An address's textual forms in plain, hex and base64 (packed 4-byte forms are left
    out: many random addresses against megabytes of binary files would match by chance)."""
    return [f for f in ipc.forms(ip) if len(f) > 4 and f != ipaddress.ip_address(ip).packed]


def canary(kind: str) -> str:
    n = next(_counter)
    tag = uuid.uuid4().hex[:6]
    if kind == "email":
        return f"canary.{tag}.{n}@scrub{n}.example.org"
    if kind == "v4":
        return f"198.18.{n // 250 % 256}.{n % 250 + 1}"
    if kind == "v6":
        return f"2001:db8:{n:x}:{tag[:4]}::{n % 9000 + 1:x}"
    return f"::ffff:198.19.{n // 250 % 256}.{n % 250 + 1}"


@st.composite
def casing(draw: st.DrawFn, name: str) -> str:
    style = draw(st.sampled_from(("as_is", "upper", "lower", "random")))
    if style == "upper":
        return name.upper()
    if style == "lower":
        return name.lower()
    if style == "random":
        flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
        return "".join(c.upper() if f else c.lower() for c, f in zip(name, flips, strict=True))
    return name


@st.composite
def plants(draw: st.DrawFn, fmt: str) -> tuple[Plant, dict[str, Any]]:
    place = draw(st.sampled_from(PLACES[fmt]))
    kind = draw(st.sampled_from(("email", "v4", "v6", "mapped")))
    if place == DROPPED:
        kind = draw(st.sampled_from(("v4", "v6", "mapped")))
    value = canary(kind)
    names = EMAIL_NAMES if kind == "email" else IP_NAMES
    personal_key = draw(st.booleans())
    key = draw(casing(draw(st.sampled_from(names)))) if personal_key else \
        draw(st.sampled_from(("note", "comment", "label", "text")))
    text = value if personal_key or draw(st.booleans()) else f"see {value} now"
    depth = draw(st.integers(0, 3))
    path = [draw(st.sampled_from(NEUTRAL)) for _ in range(depth)]
    url_part = draw(st.sampled_from(("query", "fragment", "path", "host", "encoded")))
    if url_part == "host" and kind == "email":
        url_part = "query"
    return Plant(value, kind, fmt, place), {"key": key, "text": text, "path": path,
                                            "url_part": url_part,
                                            "list": draw(st.booleans())}


def nest(path: list[str], key: str, value: Any, as_list: bool = False) -> dict[str, Any]:
    leaf: Any = {key: value}
    if as_list:
        leaf = {"items": ["plain", {key: value}]}
    for p in reversed(path):
        leaf = {p: leaf}
    return leaf


def url_with(value: str, part: str) -> str:
    host_value = value if ":" not in value else f"[{value}]"
    if part == "host":
        return f"http://{host_value}:8080/docs/page?x=1"
    if part == "path":
        return f"https://shop.example/u/{quote(value, safe='@:')}/orders?plan=pro"
    if part == "fragment":
        return f"https://shop.example/docs#contact={value}"
    if part == "encoded":
        return f"https://shop.example/login?next=%2Fhome&who={quote(value, safe='')}"
    return f"https://shop.example/docs?utm_source=mail&who={value}&x=1"


def ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def send(server: str, keys: dict[str, str], plant: Plant, how: dict[str, Any]
         ) -> httpx.Response:
    when = ago(3)
    fmt, place, v = plant.fmt, plant.place, how["text"]
    leaf = nest(how["path"], how["key"], v, how["list"])
    url = url_with(plant.canary, how["url_part"])
    mark = {"mark": MARKER}
    key = keys["cnil" if fmt == "segment_cnil" else "site"]
    if fmt.startswith("segment") or fmt == "aap_sdk":
        user = f"scrub-user-{uuid.uuid4().hex[:10]}"  # (a CNIL-mode source drops it)
        msg: dict[str, Any] = {"type": "track", "event": "Signed Up", "userId": user,
                               "messageId": str(uuid.uuid4()), "timestamp": when.isoformat(),
                               "properties": dict(mark), "context": {}}
        if place == "properties":
            msg["properties"].update(leaf)
        elif place == "traits":
            msg.update(type="identify", traits={**leaf, "plan": "pro"})
            del msg["event"]
        elif place == "context":
            msg["context"] = leaf
        elif place == "device":
            msg["context"] = {"device": {"type": "ios", **nest(how["path"], how["key"], v)}}
        elif place in ("url", "referrer"):
            msg["context"] = {"page": {"path": "/docs", place: url}}
            msg["properties"][place] = url
        elif place == "event":
            msg["event"] = f"Invited {plant.canary}"
        elif place == "list":
            msg["properties"]["tags"] = ["a", plant.canary, {"deep": [v]}]
        elif place == DROPPED:
            msg["context"] = {"ip": plant.canary}
        if fmt in ("segment_batch", "segment_cnil"):
            return httpx.post(server + "/v1/batch", auth=(key, ""), json={"batch": [msg]})
        if fmt == "aap_sdk":  # text/plain, the key in the body: no CORS preflight
            return httpx.post(server + "/v1/batch", content=json.dumps(
                {"batch": [msg], "writeKey": key, "sentAt": datetime.now(UTC).isoformat()}),
                headers={"Content-Type": "text/plain"})
        path = {"track": "/v1/t", "identify": "/v1/i"}[msg["type"]]
        return httpx.post(server + path, auth=(key, ""), content=json.dumps(msg),
                          headers={"Content-Type": "text/plain"})
    if fmt == "posthog":
        props: dict[str, Any] = {"distinct_id": f"ph-{uuid.uuid4().hex[:10]}", **mark}
        event = "clicked"
        if place == "properties":
            props.update(leaf)
        elif place == "set":
            props["$set"] = {**leaf, "plan": "pro"}
        elif place == "current_url":
            props["$current_url"] = url
        elif place == "referrer":
            props["$referrer"] = url
        elif place == "event":
            event = f"mailed {plant.canary}"
        elif place == DROPPED:
            props["$ip"] = plant.canary
        ev = {"event": event, "properties": props, "uuid": str(uuid.uuid4()),
              "timestamp": when.isoformat()}
        return httpx.post(server + "/batch/", json={"api_key": key, "batch": [ev]})
    sp: dict[str, str] = {"e": "se", "se_ca": "cat", "se_ac": "act", "se_pr": MARKER,
                          "uid": f"sp-{uuid.uuid4().hex[:10]}", "eid": str(uuid.uuid4()),
                          "ttm": str(int(when.timestamp() * 1000)), "aid": key, "p": "web"}
    if place == "ue_pr":
        sp.update(e="ue", ue_pr=json.dumps({"schema": "iglu:com.snowplowanalytics.snowplow/"
                                                      "unstruct_event/jsonschema/1-0-0",
                                            "data": {"schema": "iglu:com.acme/form/jsonschema/1-0-0",
                                                     "data": {**leaf, **mark}}}))
    elif place == "cx":
        doc = {"schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1",
               "data": [{"schema": "iglu:com.acme/user/jsonschema/1-0-0", "data": leaf}]}
        sp["cx"] = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
    elif place == "url":
        sp["url"] = url
    elif place == "refr":
        sp["refr"] = url
    elif place == "label":
        sp["se_la"] = v
    elif place == DROPPED:
        sp["ip"] = plant.canary
    if fmt == "snowplow_get":
        return httpx.get(server + "/i", params=sp)
    return httpx.post(server + "/com.snowplowanalytics.snowplow/tp2", json={
        "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": [sp]})


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


@slow_fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    root = tmp_path_factory.mktemp("scrub")
    data = root / "data"
    keys = {"site": create_source(data, "site", "--basis", "legitimate_interest",
                                  "--historical"),
            "cnil": create_source(data, "audience", "--mode", "cnil", "--historical")}
    srv = ServerProcess(data, workers=2, log_file=root / "server.log",
                        env={"AAP_HOT_DAYS": "1", "AAP_TIERING_INTERVAL_S": "0.5"}).start()
    yield srv, keys
    srv.stop()


def test_planted_emails_and_ips_are_only_sealed(
        server: tuple[ServerProcess, dict[str, str]]) -> None:
    srv, keys = server
    planted: list[Plant] = []

    # each example: events through a live server. Every format gets its own run, so
    # that none is left out by the draw (a single run of 80 once drew no posthog)
    for fmt in FORMATS:
        @settings(max_examples=examples(PER_FORMAT), database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture,
                                         HealthCheck.too_slow])
        @given(plants(fmt))
        def plant(example: tuple[Plant, dict[str, Any]]) -> None:
            p, how = example
            r = send(srv.url, keys, p, how)
            assert r.status_code == 200, (p, how, r.text)
            if p.fmt.startswith("segment") or p.fmt == "aap_sdk":
                assert r.json().get("accepted", 1) == 1, (p, how, r.text)
            planted.append(p)

        plant()
    assert {p.fmt for p in planted} == set(FORMATS)
    srv.wait_processed()
    deadline = time.monotonic() + 60
    data = srv.data_dir
    while not list(data.rglob("*.parquet")):
        assert time.monotonic() < deadline, "the events should reach the warm tier"
        time.sleep(0.2)
    srv.stop()
    try:
        rows = warehouse_text(data)
        root = data.parent
        assert MARKER in rows and ipc.scan(root, MARKER.encode()), "the scans must see rows"
        blobs = ipc.blobs(root)  # data dir, log records decompressed, server.log
        hits = [(p.fmt, p.place, p.canary, n, name) for p in planted for n in p.needles()
                for name, blob in blobs if n in blob]
        assert hits == []
        in_rows = [(p.fmt, p.place, p.canary) for p in planted
                   if any(n.decode(errors="replace") in rows for n in p.needles())]
        assert in_rows == []
        # the data dir's keys open what was sealed: every personal value is back
        opened = "\n".join(s for ev in unsealed_log(data)
                           for part in (ev.properties, ev.traits, ev.context, ev.event or "")
                           for s in strings(part))
        opened += "\n" + unquote(opened)  # a value sent percent-encoded comes back so
        lost = [(p.fmt, p.place, p.canary) for p in planted
                if p.place != DROPPED and p.fmt != "segment_cnil" and p.canary not in opened]
        assert lost == [], lost
    finally:
        srv.start()


def test_consent_statements_refuse_addresses(
        server: tuple[ServerProcess, dict[str, str]]) -> None:
    """The consent ledger and the audit log keep ``channel`` and ``policy_version`` in
    plain text: a statement with an address in them is refused with a 400 naming the
    field, and nothing of it is written."""
    srv, keys = server
    key = keys["site"]
    for field, value in (("policy_version", "v1 by canary.consent.4e1@example.org"),
                         ("channel", "198.51.100.201"), ("channel", "[2001:db8:77::1]:80")):
        r = httpx.post(srv.url + "/v1/consent", auth=(key, ""),
                       json={"userId": "consent-user", "purposes": {"analytics": True},
                             field: value})
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["code"] == "personal_data" and field in body["message"]
        assert body["detail"] == {"field": field}
    ok = httpx.post(srv.url + "/v1/consent", auth=(key, ""),
                    json={"userId": "consent-user", "purposes": {"analytics": True},
                          "policy_version": "v2026-12", "channel": "banner"})
    assert ok.status_code == 200, ok.text
    for needle in (b"canary.consent.4e1", b"198.51.100.201", b"2001:db8:77::1"):
        assert ipc.scan(srv.data_dir.parent, needle) == []
