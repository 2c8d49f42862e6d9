"""Hostile input, as an attacker or a careless client sends it, on a real server: deep
nesting at random places, huge, negative and non-finite numbers, odd types and casings,
markup, over-long strings and random bytes, on every ingestion endpoint (with a write
key), on the query API (with an analyst key) and on privacy requests (with a privacy
key). Never a 5xx: every refusal is a 4xx with a JSON body naming the problem, and the
server stays healthy; what was accepted is processed without stopping the processor."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aap.runner import ServerProcess, create_source
from tests.conftest import examples, slow_fixture

# each example: requests to a live server
SETTINGS = settings(max_examples=examples(120),
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
TP2 = "/com.snowplowanalytics.snowplow/tp2"
MAX_URL = 30_000
PAYLOAD = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"


class Target:
    def __init__(self, server: ServerProcess, write_key: str, analyst: str, privacy: str
                 ) -> None:
        self.server = server
        self.url = server.url
        self.write_key = write_key
        self.analyst = analyst
        self.privacy = privacy

    @property
    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.write_key}:".encode()).decode()


def _key(data: Path, role: str) -> str:
    out = subprocess.run([sys.executable, "-m", "aap", "keys", "create", "--role", role,
                          "--data-dir", str(data)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@slow_fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    data = tmp_path_factory.mktemp("hostile") / "data"
    write_key = create_source(data, "web", "--basis", "legitimate_interest")
    analyst, privacy = _key(data, "analyst"), _key(data, "privacy")
    server = ServerProcess(data, workers=2).start()
    try:
        yield Target(server, write_key, analyst, privacy)
    finally:
        server.stop()


# -- hostile values -------------------------------------------------------------------

HUGE = ["1" + "0" * 400, "-" + "9" * 400, "1e400", "-1e400", "1e-400", "NaN", "Infinity",
        "-Infinity", "18446744073709551616", "-9223372036854775809", "9223372036854775808",
        "9" * 5000]
"""Numbers as raw JSON text (some are not JSON at all: NaN, Infinity)."""

ODD_STRINGS = st.sampled_from([
    "<script>alert(1)</script>", "\"><img src=x onerror=alert(1)>", "'; DROP TABLE events; --",
    "../../etc/passwd", "\u0000", "\ud7ff\ue000", "😀" * 50, "A" * 70_000, "0001-01-01",
    "9999-12-31T23:59:59Z", "-1", "NaN", "Infinity", "1e400", "9" * 400, "", " ",
    "0000-00-00T00:00:00Z", "2026-02-30", "1970-01-01T00:00:00Z", "posixrules", "%s%n",
]) | st.text(max_size=40)

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
           | ODD_STRINGS)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(ODD_STRINGS, inner, max_size=3), max_leaves=8)


def casing(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.upper(), name.lower(), name.capitalize(),
                            name.replace("Id", "_id"), f" {name}"])


@st.composite
def json_text(draw: st.DrawFn, obj: Any) -> str:
    """``obj`` as JSON, then maybe a huge number or a deep nest spliced in at a random
    place (each replaces one scalar of the text)."""
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()), allow_nan=True)
    how = draw(st.sampled_from(["plain", "huge", "deep", "deep"]))
    if how == "plain" or ("null" not in text and "0" not in text and "true" not in text):
        return text
    token = next(t for t in ("null", "true", "false", "0") if t in text)
    spots = [i for i in range(len(text)) if text.startswith(token, i)]
    at = draw(st.sampled_from(spots))
    if how == "huge":
        insert = draw(st.sampled_from(HUGE))
    else:
        n = draw(st.sampled_from([65, 100, 1000, 5000]))
        opener = draw(st.sampled_from(["[", '{"a":']))
        insert = opener * n + "1" + ("]" if opener == "[" else "}") * n
    return text[:at] + insert + text[at + len(token):]


SEGMENT_FIELDS = ["type", "event", "userId", "anonymousId", "messageId", "timestamp",
                  "sentAt", "originalTimestamp", "properties", "context", "traits",
                  "integrations", "previousId", "groupId", "name", "writeKey"]


@st.composite
def segment_message(draw: st.DrawFn) -> dict[str, Any]:
    m: dict[str, Any] = {"type": "track", "event": "E", "userId": "u-hostile"}
    for name in draw(st.lists(st.sampled_from(SEGMENT_FIELDS), max_size=5)):
        m[draw(casing(name))] = draw(values)
    return m


SNOWPLOW_FIELDS = ["e", "duid", "uid", "eid", "dtm", "stm", "ttm", "tr_tt", "tr_tx", "tr_sh",
                   "ti_qu", "ti_pr", "se_va", "se_ac", "pp_mix", "vp", "ds", "res", "cd",
                   "tz", "url", "refr", "ua", "ip", "ue_pr", "ue_px", "co", "cx", "sid"]


@st.composite
def snowplow_event(draw: st.DrawFn, key: str) -> dict[str, str]:
    ev = {"e": draw(st.sampled_from(["pv", "pp", "se", "ue", "tr", "ti"])), "aid": key,
          "duid": "d-hostile", "se_ac": "a", "tr_id": "o", "ti_id": "o", "ti_sk": "s"}
    for name in draw(st.lists(st.sampled_from(SNOWPLOW_FIELDS), max_size=5)):
        v = draw(st.sampled_from([*HUGE, "9" * 5000 + "x1", "1x" + "9" * 5000]) | ODD_STRINGS)
        if name in ("ue_pr", "co"):
            v = draw(json_text({"schema": "iglu:a/b/jsonschema/1-0-0",
                                "data": {"schema": "iglu:a/c/jsonschema/1-0-0",
                                         "data": {"x": None}}}))
        elif name in ("ue_px", "cx"):
            inner = draw(json_text({"schema": "iglu:a/b/jsonschema/1-0-0",
                                    "data": [{"schema": "iglu:a/c/jsonschema/1-0-0",
                                              "data": {"x": None}}]}))
            v = base64.urlsafe_b64encode(inner.encode("utf-8", "surrogatepass")).decode()
        ev[name] = v
    return ev


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


@st.composite
def ingestion(draw: st.DrawFn, t: Target) -> tuple[str, str, dict[str, str], bytes | None]:
    """(method, path, headers, body) of one hostile request to an ingestion endpoint."""
    kind = draw(st.sampled_from(["segment_batch", "segment_single", "posthog", "posthog_form",
                                 "posthog_get", "snowplow_post", "snowplow_get", "consent",
                                 "bytes"]))
    auth = {"Authorization": t.basic}
    if kind == "segment_batch":
        body = {"batch": draw(st.lists(segment_message(), min_size=1, max_size=4))}
        return "POST", draw(st.sampled_from(["/v1/batch", "/v1/b"])), auth, \
            _bytes(draw(json_text(body)))
    if kind == "segment_single":
        path = draw(st.sampled_from(["/v1/track", "/v1/identify", "/v1/page", "/v1/t",
                                     "/v1/alias", "/v1/group"]))
        return "POST", path, auth, _bytes(draw(json_text(draw(segment_message()))))
    if kind.startswith("posthog"):
        ev: dict[str, Any] = {"event": draw(st.sampled_from(["$pageview", "$identify", "E"])),
                              "distinct_id": "d-hostile", "properties": {"$ip": None}}
        for name in draw(st.lists(st.sampled_from(
                ["timestamp", "sent_at", "offset", "uuid", "$set", "properties", "event",
                 "distinct_id"]), max_size=4)):
            ev[draw(casing(name))] = draw(values)
        doc = {"api_key": t.write_key, "batch": [ev]} if draw(st.booleans()) \
            else {**ev, "api_key": t.write_key}
        text = draw(json_text(doc))
        path = draw(st.sampled_from(["/batch/", "/e/", "/capture/", "/i/v0/e/", "/engage/"]))
        if kind == "posthog":
            return "POST", path, {}, _bytes(text)
        data = base64.b64encode(_bytes(text)).decode()
        if kind == "posthog_form":
            return "POST", path, {"Content-Type": "application/x-www-form-urlencoded"}, \
                ("data=" + urllib.parse.quote(data)).encode()
        if len(data) > MAX_URL:  # no client sends such a URL (httpx refuses it)
            return "POST", path, {"Content-Type": "application/x-www-form-urlencoded"}, \
                ("data=" + urllib.parse.quote(data)).encode()
        return "GET", path + "?data=" + urllib.parse.quote(data), {}, None
    if kind == "snowplow_post":
        doc = {"schema": PAYLOAD, "data": draw(st.lists(snowplow_event(t.write_key),
                                                       min_size=1, max_size=3))}
        return "POST", TP2, {}, _bytes(draw(json_text(doc)))
    if kind == "snowplow_get":
        ev = draw(snowplow_event(t.write_key))
        query = urllib.parse.urlencode({k: v.encode("utf-8", "surrogatepass")[:MAX_URL // 8]
                                        for k, v in ev.items()})
        return "GET", "/i?" + query, {}, None
    if kind == "consent":
        doc = {"anonymousId": draw(values), "purposes": draw(st.dictionaries(
            ODD_STRINGS, values, max_size=3)), draw(casing("userId")): draw(values)}
        return "POST", "/v1/consent", auth, _bytes(draw(json_text(doc)))
    path = draw(st.sampled_from(["/v1/batch", "/e/", TP2, "/v1/consent",
                                 "/v1/privacy/requests", "/api/v1/query"]))
    return "POST", path, auth, draw(st.binary(max_size=512))


def _check(t: Target, r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.headers.get("content-type", "").startswith("image/"):
        assert r.status_code == 200  # Snowplow's pixel
        return
    body = r.json()
    if r.status_code >= 400:
        assert isinstance(body, dict) and body.get("code") and body.get("message"), body
        assert "detail" in body


def _send(method: str, url: str, headers: dict[str, str], body: bytes | None
          ) -> httpx.Response:
    return httpx.request(method, url, headers=headers, content=body, timeout=60)


@SETTINGS
@given(data=st.data())
def test_hostile_ingestion_never_5xx(target: Target, data: st.DataObject) -> None:
    method, path, headers, body = data.draw(ingestion(target))
    _check(target, _send(method, target.url + path, headers, body))


# -- the query API ----------------------------------------------------------------------

ZONES = st.sampled_from(["posixrules", "Factory", "localtime", "right/UTC", "posix/UTC",
                         "../etc", "", "x" * 65, "Europe/Berlin", "UTC", "Etc/GMT+14",
                         "Etc/GMT+99", "UTC\x00", "America/Argentina/ComodRivadavia"])
DATES = st.sampled_from(["-99999y", "-99999m", "-99999w", "-99999d", "-99999h", "-0d",
                         "0000-01-01", "0001-01-01", "9999-12-31", "9999-12-31T23:59:59",
                         "1969-12-31", "2026-13-45", "today", "now", "yesterday", "-1y",
                         "2026-01-01T00:00:00+02:00", "+5d", "1e400", ""])
FORMULAS = st.sampled_from(["A*" + "9" * 400, "(" * 60 + "A" + ")" * 60, "-" * 300 + "A",
                            "A**999999", "A/0", "A*1e400", "A*1e308*1e308", "__import__('os')",
                            "A if A else B", "[A]", "A+" * 150 + "A", "9" * 5000])
SQL = st.sampled_from(["SELECT 1 /* /* */", "SELECT 1 /*", "SELECT '", "SELECT \"", "/*",
                       "SELECT " + "(" * 3000 + "1" + ")" * 3000, "SELECT 1e400",
                       "SELECT 10::" + "DECIMAL(38,0)" * 1, "SELECT $$", "SELECT 1;;;",
                       "SELECT * FROM read_csv('/etc/passwd')", "SELECT 9" + "9" * 400,
                       "SELECT regexp_matches('a', '(')", "SELECT 'x' ~ '('", ""])
INTS = st.sampled_from([2**63, 2**64, -(2**63) - 1, -1, 0, 10**400, 2**53 + 1, 1.5, 1e400])
INSIGHT_FIELDS = {
    "date_from": DATES, "date_to": DATES, "timezone": ZONES, "cohort": INTS,
    "breakdown_limit": INTS, "breakdown_cohorts": st.lists(INTS, max_size=2),
    "formula": FORMULAS, "interval": st.sampled_from(["hour", "day", "week", "month", "year"]),
    "depth": INTS, "limit": INTS, "periods": INTS, "window": st.sampled_from(
        ["14d", "-1d", "99999999999d", "1e400d", "0s", ""]),
    "breakdown": ODD_STRINGS, "compare": st.booleans(), "query": SQL, "timeout_s": INTS,
    "filters": st.lists(st.fixed_dictionaries({
        "property": ODD_STRINGS, "operator": st.sampled_from(
            ["eq", "gt", "in", "regex", "contains", "is_set", "nope"]),
        "value": values | INTS}), max_size=2),
}


@st.composite
def insight(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["trends", "funnel", "retention", "paths", "stickiness",
                                 "lifecycle", "sql"]))
    doc: dict[str, Any] = {"kind": kind}
    if kind in ("trends", "stickiness"):
        doc["series"] = [{"event": "E"}]
    if kind == "funnel":
        doc["steps"] = [{"event": "E"}, {"event": "F"}]
    if kind == "sql":
        doc["query"] = draw(SQL)
    for name in draw(st.lists(st.sampled_from(sorted(INSIGHT_FIELDS)), max_size=4)):
        doc[name] = draw(INSIGHT_FIELDS[name])
    return draw(json_text(doc))


@st.composite
def api_request(draw: st.DrawFn) -> tuple[str, str, bytes | None]:
    kind = draw(st.sampled_from(["query", "query", "query", "cohort", "insight", "ids",
                                 "privacy"]))
    if kind == "query":
        return "POST", "/api/v1/query", _bytes(draw(insight()))
    if kind == "cohort":
        doc = {"name": draw(ODD_STRINGS), draw(st.sampled_from(["static", "behavioural"])): {
            "ids": draw(st.lists(ODD_STRINGS, max_size=3)), "event": draw(ODD_STRINGS),
            "min_count": draw(INTS), "days": draw(INTS)}}
        return "POST", "/api/v1/cohorts", _bytes(draw(json_text(doc)))
    if kind == "privacy":  # sent with the privacy key (below)
        doc = {"type": draw(st.sampled_from(["access", "erasure", "rectification",
                                             "restriction", "objection", "Erasure", "x"])),
               "subject": {draw(casing("userId")): draw(values)}, "traits": draw(values)}
        return "POST", "/api/v1/privacy/requests", _bytes(draw(json_text(doc)))
    if kind == "insight":
        return "POST", "/api/v1/insights", \
            _bytes('{"name": "x", "query": ' + draw(insight()) + "}")
    n = draw(st.sampled_from(["9" * 12, "0", str(2**63), "-1", "1e400", "x", "9" * 40]))
    method, path = draw(st.sampled_from([("GET", "/api/v1/insights/"),
                                         ("DELETE", "/api/v1/cohorts/"),
                                         ("DELETE", "/api/v1/keys/")]))
    return method, path + n, None


@SETTINGS
@given(req=api_request())
def test_hostile_queries_never_5xx(target: Target, req: tuple[str, str, bytes | None]) -> None:
    method, path, body = req
    key = target.privacy if path.startswith("/api/v1/privacy") else target.analyst
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    _check(target, _send(method, target.url + path, headers, body))


@SETTINGS
@given(payload=st.sampled_from(["[" * 1000 + "]" * 1000, '{"src":' * 500 + "1" + "}" * 500,
                                '{"src": "x", "sub": ' + "[" * 900 + "]" * 900 + "}",
                                '{"src": ' + "9" * 400 + "}", "NaN", "{}"]),
       mac=st.sampled_from(["", "x", "AAAA"]))
def test_hostile_subject_tokens_are_401(target: Target, payload: str, mac: str) -> None:
    token = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=") + "." + mac
    r = httpx.post(target.url + "/v1/privacy/requests", content=b'{"type": "access"}',
                   headers={"Authorization": f"Subject {token}"}, timeout=60)
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "bad_subject_token"


def test_the_server_stayed_healthy_and_the_processor_went_on(target: Target) -> None:
    assert httpx.get(target.url + "/healthz", timeout=30).status_code == 200
    target.server.wait_processed(timeout=120)  # every accepted event went through
    assert target.server.sql("SELECT count(*) FROM dead_letters") == [[0]]
    log = target.server.log_file.read_text(errors="replace")
    assert "unexpected error" not in log and "API error" not in log
