"""Bad input on every endpoint of the other vendors' formats, consent and /sdk.js: a clear
4xx with a JSON body (`code`, `message`, `detail`), never a 5xx, nothing stored; and
property tests (hypothesis) that arbitrary bytes, JSON and string maps never get a 5xx."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Running, assert_refused, examples


@pytest.fixture(scope="module")
def running(sdk_server: Running) -> Running:
    return sdk_server


Case = tuple[str, Callable[[Running], httpx.Response], int, str]
TP2 = "/com.snowplowanalytics.snowplow/tp2"
PAYLOAD = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"


def post(r: Running, path: str, body: Any, headers: dict[str, str] | None = None
         ) -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(r.url + path, content=data, headers=headers or {}, timeout=30)


def ph(r: Running, **ev: Any) -> dict[str, Any]:
    return {"api_key": r.key, "batch": [{"event": "E", "distinct_id": "d", **ev}]}


def sp(r: Running, **ev: str) -> dict[str, Any]:
    return {"schema": PAYLOAD, "data": [{"e": "pv", "aid": r.key, "duid": "d", **ev}]}


CASES: list[Case] = [
    # PostHog
    ("posthog empty body", lambda r: post(r, "/batch/", b""), 400, "empty_body"),
    ("posthog invalid JSON", lambda r: post(r, "/e/", b"{nope"), 400, "invalid_json"),
    ("posthog JSON scalar", lambda r: post(r, "/e/", b"42"), 400, "invalid_batch"),
    ("posthog empty batch", lambda r: post(r, "/batch/", {"api_key": r.key, "batch": []}), 400,
     "invalid_batch"),
    ("posthog no key", lambda r: post(r, "/batch/", {"batch": [{"event": "E",
                                                                "distinct_id": "d"}]}),
     401, "missing_write_key"),
    ("posthog unknown key", lambda r: post(r, "/e/", {"event": "E", "distinct_id": "d",
                                                      "api_key": "phc_nope"}), 401,
     "unknown_write_key"),
    ("posthog key not a string", lambda r: post(r, "/batch/", {"api_key": 5, "batch": [{}]}),
     400, "wrong_type"),
    ("posthog no distinct_id", lambda r: post(r, "/batch/", {"api_key": r.key, "batch": [
        {"event": "E"}]}), 400, "invalid_events"),
    ("posthog no event name", lambda r: post(r, "/batch/", ph(r, event="")), 400,
     "invalid_events"),
    ("posthog event not an object", lambda r: post(r, "/batch/", {"api_key": r.key,
                                                                  "batch": [1, "x"]}), 400,
     "invalid_events"),
    ("posthog bad base64 form", lambda r: post(r, "/e/", b"data=%%%%", {
        "Content-Type": "application/x-www-form-urlencoded"}), 400, "bad_encoding"),
    ("posthog form without data", lambda r: post(r, "/e/", b"x=1", {
        "Content-Type": "application/x-www-form-urlencoded"}), 400, "invalid_form"),
    ("posthog lz64", lambda r: post(r, "/e/?compression=lz64", b"N4Ig", {}), 400,
     "bad_encoding"),
    ("posthog truncated gzip", lambda r: post(r, "/e/", gzip.compress(b'[{"event": 1}]')[:-9]),
     400, "bad_encoding"),
    ("posthog GET without data", lambda r: httpx.get(r.url + "/e/"), 400, "empty_body"),
    ("posthog wrong method", lambda r: httpx.put(r.url + "/batch/"), 405, "method_not_allowed"),
    ("flags without token", lambda r: post(r, "/flags/?v=2", {"distinct_id": "d"}), 401,
     "missing_write_key"),
    ("flags unknown token", lambda r: post(r, "/decide/", {"token": "nope"}), 401,
     "unknown_write_key"),
    ("flags invalid JSON", lambda r: post(r, "/flags/", b"{"), 400, "invalid_json"),
    ("flags body not an object", lambda r: post(r, "/flags/", b"[]"), 400, "invalid_body"),
    ("remote config unknown token", lambda r: httpx.get(r.url + "/array/nope/config"), 401,
     "unknown_write_key"),
    ("remote config unknown file", lambda r: httpx.get(r.url + f"/array/{r.key}/x.js"), 404,
     "not_found"),
    # Segment's browser SDK
    ("settings unknown key", lambda r: httpx.get(r.url + "/v1/projects/nope/settings"), 401,
     "unknown_write_key"),
    ("settings wrong sub-path", lambda r: httpx.get(r.url + f"/v1/projects/{r.key}/x"), 404,
     "not_found"),
    ("settings wrong method", lambda r: post(r, f"/v1/projects/{r.key}/settings", {}), 405,
     "method_not_allowed"),
    ("metrics bomb", lambda r: post(r, "/v1/m", b"x" * (21 * 1024 * 1024)), 413,
     "payload_too_large"),
    # Snowplow
    ("tp2 empty body", lambda r: post(r, TP2, b""), 400, "empty_body"),
    ("tp2 invalid JSON", lambda r: post(r, TP2, b"{"), 400, "invalid_json"),
    ("tp2 not payload_data", lambda r: post(r, TP2, {"schema": "iglu:x/y/jsonschema/1-0-0",
                                                     "data": [{}]}), 400, "invalid_batch"),
    ("tp2 no data", lambda r: post(r, TP2, {"schema": PAYLOAD, "data": []}), 400,
     "invalid_batch"),
    ("tp2 no aid", lambda r: post(r, TP2, {"schema": PAYLOAD, "data": [{"e": "pv",
                                                                         "duid": "d"}]}),
     401, "missing_write_key"),
    ("tp2 unknown aid", lambda r: post(r, TP2, {"schema": PAYLOAD, "data": [
        {"e": "pv", "duid": "d", "aid": "nope"}]}), 401, "unknown_write_key"),
    ("tp2 non-string values", lambda r: post(r, TP2, {"schema": PAYLOAD, "data": [
        {"e": "pv", "aid": r.key, "duid": "d", "dtm": 5}]}), 400, "invalid_events"),
    ("tp2 unknown event type", lambda r: post(r, TP2, sp(r, e="zz")), 400, "invalid_events"),
    ("tp2 no uid or duid", lambda r: post(r, TP2, sp(r, duid="")), 400, "invalid_events"),
    ("tp2 bad dtm", lambda r: post(r, TP2, sp(r, dtm="yesterday")), 400, "invalid_events"),
    ("tp2 bad ue_px", lambda r: post(r, TP2, sp(r, e="ue", ue_px="!!!")), 400,
     "invalid_events"),
    ("tp2 bad cx", lambda r: post(r, TP2, sp(r, cx=base64.urlsafe_b64encode(b"[1]").decode())),
     400, "invalid_events"),
    ("tp2 se without action", lambda r: post(r, TP2, sp(r, e="se", se_ca="c")), 400,
     "invalid_events"),
    ("GET /i without query", lambda r: httpx.get(r.url + "/i"), 400, "empty_body"),
    ("GET /i unknown aid", lambda r: httpx.get(r.url + "/i?e=pv&aid=nope&duid=d"), 401,
     "unknown_write_key"),
    ("GET /i bad event", lambda r: httpx.get(r.url + f"/i?e=pv&aid={r.key}"), 400,
     "invalid_events"),
    ("GET /i bad UTF-8", lambda r: httpx.get(r.url + "/i?e=%ff"), 400, "invalid_query"),
    # RudderStack's control plane
    ("sourceConfig no key", lambda r: httpx.get(r.url + "/sourceConfig?p=ios&v=1.31.0"), 401,
     "missing_write_key"),
    ("sourceConfig unknown key", lambda r: httpx.get(
        r.url + "/sourceConfig?p=android&v=1.28.0", auth=("wk_nope", "")), 401,
     "unknown_write_key"),
    ("sourceConfig bearer", lambda r: httpx.get(
        r.url + "/sourceConfig/", headers={"Authorization": "Bearer x"}), 401,
     "bad_auth_scheme"),
    ("sourceConfig bad base64", lambda r: httpx.get(
        r.url + "/sourceConfig/", headers={"Authorization": "Basic !!"}), 401, "bad_auth"),
    # consent
    ("consent no key", lambda r: post(r, "/v1/consent", {"anonymousId": "a",
                                                         "purposes": {"analytics": True}}),
     401, "missing_write_key"),
    ("consent no identity", lambda r: post(r, "/v1/consent", {
        "writeKey": r.key, "purposes": {"analytics": True}}), 400, "missing_identity"),
    ("consent no purposes", lambda r: post(r, "/v1/consent", {"writeKey": r.key,
                                                              "anonymousId": "a"}), 400,
     "invalid_consent"),
    ("consent empty purposes", lambda r: post(r, "/v1/consent", {
        "writeKey": r.key, "anonymousId": "a", "purposes": {}}), 400, "invalid_consent"),
    ("consent purpose not a bool", lambda r: post(r, "/v1/consent", {
        "writeKey": r.key, "anonymousId": "a", "purposes": {"analytics": "yes"}}), 400,
     "invalid_consent"),
    ("consent unknown purpose", lambda r: post(r, "/v1/consent", {
        "writeKey": r.key, "anonymousId": "a", "purposes": {"Ana lytics": True}}), 400,
     "unknown_purpose"),
    ("consent invalid JSON", lambda r: post(r, "/v1/consent", b"{"), 400, "invalid_json"),
    ("sdk.js wrong method", lambda r: post(r, "/sdk.js", b""), 405, "method_not_allowed"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_answer(running: Running, case: Case) -> None:
    _, send, status, code = case
    assert_refused(running, send, status, code)


def test_missing_keys_say_where_the_key_goes(running: Running) -> None:
    ph = post(running, "/batch/", {"batch": [{"event": "E", "distinct_id": "d"}]}).json()
    assert "`api_key`" in ph["message"]
    sp = post(running, TP2, {"schema": PAYLOAD, "data": [{"e": "pv", "duid": "d"}]}).json()
    assert "`aid`" in sp["message"]


def test_start_up_answers_of_posthog(running: Running) -> None:
    for path in ("/flags/?v=2", "/decide/?v=3"):
        flags = post(running, path, {"token": running.key, "distinct_id": "d"})
        assert flags.status_code == 200
        body = flags.json()
        assert body["featureFlags"] == {} and body["errorsWhileComputingFlags"] is False
        assert "quotaLimited" not in body and "quota_limited" not in flags.text
    cfg = httpx.get(f"{running.url}/array/{running.key}/config").json()
    assert "gzip-js" in cfg["supportedCompression"]
    js = httpx.get(f"{running.url}/array/{running.key}/config.js")
    assert js.headers["content-type"] == "application/javascript"
    assert "_POSTHOG_REMOTE_CONFIG" in js.text and "gzip-js" in js.text


def test_start_up_answer_of_rudderstack(running: Running) -> None:
    """The mobile SDKs send events only once their source config says the source is
    enabled; the JavaScript SDK sends the key in the query."""
    by_header = httpx.get(f"{running.url}/sourceConfig?p=android&v=1.28.0&bv=34",
                          auth=(running.key, ""))
    by_query = httpx.get(f"{running.url}/sourceConfig/?p=npm&v=3.7.0&writeKey={running.key}")
    for r in (by_header, by_query):
        assert r.status_code == 200, r.text
        source = r.json()["source"]
        assert source["enabled"] is True and source["destinations"] == []
        assert source["writeKey"] == running.key and source["id"] and source["workspaceId"]


def test_unknown_key_answer_stops_rudderstack_sdks(running: Running) -> None:
    """rudder-sdk-android and rudder-sdk-ios stop sending only when the error body says
    "invalid write key" (lower-cased); any other answer is retried forever."""
    r = post(running, "/v1/batch", {"batch": [{"type": "track", "event": "E",
                                               "anonymousId": "a"}]},
             {"Authorization": "Basic " + base64.b64encode(b"wk_nope:").decode()})
    assert r.status_code == 401
    assert "invalid write key" in r.text.lower()


def test_good_and_bad_events_of_one_request(running: Running) -> None:
    r = post(running, "/batch/", {"api_key": running.key, "batch": [
        {"event": "Good", "distinct_id": "mix-1", "uuid": "mix-good"},
        {"event": "Bad"},
        {"event": "Other", "distinct_id": "mix-1", "properties": {"token": "phc_other"}}]})
    assert r.status_code == 200
    assert r.json()["accepted"] == 1 and r.json()["status"] == 1
    assert [(x["index"], x["reason"]) for x in r.json()["rejected"]] == [
        (1, "missing_identity"), (2, "write_key_mismatch")]


def test_cors_on_vendor_endpoints(running: Running) -> None:
    pre = httpx.options(running.url + TP2, headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, sp-anonymous"})
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "https://shop.example"
    assert pre.headers["access-control-allow-credentials"] == "true"
    allowed = {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "sp-anonymous"} <= allowed  # a fixed list, not an echo
    r = post(running, "/e/", {"event": "E", "distinct_id": "cors", "api_key": running.key},
             {"Origin": "https://shop.example"})
    assert r.headers["access-control-allow-origin"] == "https://shop.example"
    assert httpx.get(running.url + "/metrics", headers={"Origin": "https://x.example"}
                     ).headers.get("access-control-allow-origin") is None


def test_sdk_js_is_served_with_an_etag(running: Running) -> None:
    r = httpx.get(running.url + "/sdk.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/javascript")
    assert b"aap.js" in r.content
    again = httpx.get(running.url + "/sdk.js", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


# -- property tests -------------------------------------------------------------------

# each example: requests to a live server
SETTINGS = settings(max_examples=examples(50),
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
BODY_PATHS = ["/batch/", "/e/", "/i/v0/e/", "/capture/", "/engage/", "/flags/?v=2", "/decide/",
              TP2, "/v1/consent", "/v1/m"]
json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["event", "distinct_id", "properties", "batch", "api_key", "token",
                         "$set", "timestamp", "uuid", "data", "schema", "e", "aid",
                         "purposes", "anonymousId", "offset"]) | st.text(max_size=6),
        inner, max_size=5),
    max_leaves=15,
)


def _no_5xx(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        body = r.json()
        assert body["code"] and body["message"] and "detail" in body


@SETTINGS
@given(body=st.binary(max_size=1024), path=st.sampled_from(BODY_PATHS), gz=st.booleans(),
       form=st.booleans())
def test_arbitrary_bytes_never_5xx(running: Running, body: bytes, path: str, gz: bool,
                                   form: bool) -> None:
    if form:
        body = b"data=" + base64.b64encode(body)
    if gz:
        body = gzip.compress(body)
    _no_5xx(post(running, path, body, {"Content-Type": "application/x-www-form-urlencoded"}
                 if form else {}))


@SETTINGS
@given(doc=json_values, path=st.sampled_from(BODY_PATHS))
def test_arbitrary_json_never_5xx(running: Running, doc: Any, path: str) -> None:
    if isinstance(doc, dict) and doc.get("api_key") == "KEY":
        doc["api_key"] = running.key
    _no_5xx(post(running, path, doc))


@SETTINGS
@given(events=st.lists(json_values, min_size=1, max_size=4), key_in=st.booleans())
def test_arbitrary_posthog_events_with_a_valid_key_never_5xx(running: Running,
                                                             events: list[Any],
                                                             key_in: bool) -> None:
    _no_5xx(post(running, "/batch/", {"api_key": running.key, "batch": events}
                 if key_in else events))


strings = st.text(max_size=30)
sp_fields = st.sampled_from(["e", "uid", "duid", "sid", "eid", "dtm", "stm", "ttm", "url",
                             "refr", "page", "se_ca", "se_ac", "se_va", "ue_pr", "ue_px", "co",
                             "cx", "tr_id", "tr_tt", "ti_qu", "ti_pr", "res", "ip", "pp_mix"])
sp_values = strings | st.sampled_from(["pv", "pp", "se", "ue", "tr", "ti", "1777888800000",
                                       "-1", "1e400", "NaN", "eyJ4IjoxfQ", "e30=", "{}",
                                       '{"data": {"schema": 1}}', "99999999999999999999"])


@SETTINGS
@given(ev=st.dictionaries(sp_fields | strings, sp_values, max_size=10), get=st.booleans())
def test_arbitrary_snowplow_events_never_5xx(running: Running, ev: dict[str, str],
                                             get: bool) -> None:
    ev = {**ev, "aid": running.key}
    if get:
        r = httpx.get(running.url + "/i", params=ev, timeout=30)
    else:
        r = post(running, TP2, {"schema": PAYLOAD, "data": [ev]})
    _no_5xx(r)
    if r.status_code == 200 and get:
        assert r.headers["content-type"] == "image/gif"


def test_server_still_healthy(running: Running) -> None:
    assert httpx.get(running.url + "/healthz").status_code == 200
