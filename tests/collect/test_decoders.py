"""The wire decoders, in-process: the SDKs' literal requests (tests/collect/wire/*.json)
decoded by the public entry points of :mod:`aap.collect.segment`,
:mod:`aap.collect.posthog` and :mod:`aap.collect.snowplow`, and properties of each
decoder on generated input (every message is stored or rejected by index; a body of any
bytes is an event list or a 4xx, never another error).

``tests/collect/test_wire_fixtures.py`` replays the same requests against a real server."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aap.collect import posthog, rudderstack, segment, snowplow
from aap.collect.body import decode_content
from aap.collect.segment import Parsed
from aap.errors import BadRequest, PayloadTooLarge, Unauthorized
from aap.privacy.ip import IpPolicy
from aap.sources import Source

WIRE = Path(__file__).parent / "wire"
KEY = "wk_test"
MAX_EVENT = 32 * 1024
LIMIT = 512 * 1024
NOW = datetime(2026, 5, 4, 10, 0, 30, tzinfo=UTC)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)


def _fill(value: Any) -> Any:
    subst = {"$KEY": KEY, "$BASIC": base64.b64encode(f"{KEY}:".encode()).decode()}
    if isinstance(value, str):
        for k, v in subst.items():
            value = value.replace(k, v)
        return value
    if isinstance(value, dict):
        return {_fill(k): _fill(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v) for v in value]
    return value


def _body(req: dict[str, Any]) -> bytes:
    if "body_base64" in req:
        body = base64.b64decode(req["body_base64"])
    elif isinstance(req.get("body"), str):
        body = req["body"].encode()
    else:
        body = json.dumps(req.get("body")).encode()
    if req.get("encoding") == "gzip":
        return gzip.compress(body)
    if req.get("encoding") == "form-base64":
        return b"data=" + quote(base64.b64encode(body).decode(), safe="").encode()
    return body


def decode(req: dict[str, Any]) -> Parsed:
    """A request as the collector's route for its path decodes it."""
    url = urlsplit(req["path"])
    query = parse_qs(url.query)
    headers = {k.lower(): v for k, v in req["headers"].items()}
    body = decode_content(_body(req), headers.get("content-encoding", ""), LIMIT)  # as the
    content_type = headers.get("content-type", "")  # collector does before any decoder
    if url.path in segment.SINGLE_PATHS:
        return segment.parse_single(body, segment.SINGLE_PATHS[url.path], MAX_EVENT)
    if url.path in segment.BATCH_PATHS:
        return segment.parse_batch(body, MAX_EVENT)
    if url.path in posthog.CAPTURE_PATHS:
        return posthog.parse(body, query, content_type, LIMIT, MAX_EVENT,
                             engage=url.path.startswith("/engage"))
    if url.path == snowplow.TP2_PATH:
        return snowplow.parse_post(body, MAX_EVENT)
    assert url.path in snowplow.GET_PATHS, url.path
    return snowplow.parse_query(query, MAX_EVENT)


def _get(doc: dict[str, Any], dotted: str) -> Any:
    cur: Any = doc
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


EVENT_FIXTURES = [p for p in sorted(WIRE.glob("*.json")) if json.loads(p.read_text()).get("events")]


@pytest.mark.parametrize("path", EVENT_FIXTURES, ids=[p.stem for p in EVENT_FIXTURES])
def test_literal_request_decodes_to_the_stored_events(path: Path) -> None:
    spec = _fill(json.loads(path.read_text()))
    parsed = decode(spec["request"])
    assert not parsed.rejected
    assert parsed.write_key in (KEY, None)
    events = [segment.to_event(m, source="src", received_at=NOW) for _, m in parsed.messages]
    assert len(events) == len(spec["events"])
    for event, want in zip(events, spec["events"], strict=True):
        assert not isinstance(event, str), event
        got = msgspec.to_builtins(event)
        for field, value in want.items():
            if field == "ip":  # the collector truncates context.ip into the event's ip
                assert IpPolicy().anonymize(event.context.get("ip"))[0] == value
            else:
                assert _get(got, field) == value, (field, got)


def _indexes(parsed: Parsed) -> list[int]:
    return sorted([i for i, _ in parsed.messages] + [r.index for r in parsed.rejected])


@given(st.lists(json_values, min_size=1, max_size=6))
def test_segment_batch_stores_or_rejects_each_message_by_index(batch: list[Any]) -> None:
    parsed = segment.parse_batch(json.dumps({"batch": batch, "writeKey": KEY}).encode(), 200)
    assert _indexes(parsed) == list(range(len(batch)))
    assert parsed.write_key == KEY
    for _, m in parsed.messages:
        outcome = segment.to_event(m, source="src", received_at=NOW)
        assert not isinstance(outcome, str) or outcome in segment.REASON_TEXT


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30),
       st.dictionaries(st.text(max_size=8), st.integers(), max_size=3))
def test_segment_track_keeps_its_fields(event: str, anon: str, props: dict[str, int]) -> None:
    body = json.dumps({"event": event, "anonymousId": anon, "properties": props}).encode()
    parsed = segment.parse_single(body, "track", MAX_EVENT)
    outcome = segment.to_event(parsed.messages[0][1], source="src", received_at=NOW)
    if not anon.strip():  # the identity is checked first
        assert outcome == "missing_identity"
    elif not event.strip():
        assert outcome == "missing_event"
    else:
        assert not isinstance(outcome, str)
        assert (outcome.type, outcome.event, outcome.anonymous_id, outcome.properties) == \
            ("track", event, anon, props)
        assert outcome.received_at == NOW and outcome.message_id


def test_segment_refuses_bodies_it_cannot_decode() -> None:
    for body, code in ((b"", "empty_body"), (b"\xff\xfe", "invalid_json"),
                       (b'{"batch": 3}', "invalid_batch"), (b"{}", "invalid_batch"),
                       (b"[" * 100 + b"]" * 100, "too_deep")):
        with pytest.raises(BadRequest) as err:
            segment.parse_batch(body, MAX_EVENT)
        assert err.value.code == code, body
    with pytest.raises(PayloadTooLarge):
        segment.parse_single(b'{"event": "%s"}' % (b"x" * 100), "track", 50)
    big = segment.parse_batch(json.dumps({"batch": [{"event": "x" * 300}, {}]}).encode(), 200)
    assert [(r.index, r.reason) for r in big.rejected] == [(0, "event_too_large")]


@given(st.binary(max_size=200))
def test_any_bytes_are_messages_or_a_400(body: bytes) -> None:
    for call in (lambda: segment.parse_batch(body, MAX_EVENT),
                 lambda: segment.parse_single(body, "track", MAX_EVENT),
                 lambda: posthog.parse(body, {}, "text/plain", LIMIT, MAX_EVENT),
                 lambda: snowplow.parse_post(body, MAX_EVENT)):
        try:
            call()
        except (BadRequest, PayloadTooLarge):
            pass


@given(st.lists(st.dictionaries(st.sampled_from(["event", "distinct_id", "properties", "$set",
                                                  "timestamp", "uuid", "api_key"]),
                                json_values, max_size=5), min_size=1, max_size=5))
def test_posthog_batch_stores_or_rejects_each_event_by_index(events: list[dict[str, Any]]
                                                            ) -> None:
    try:
        parsed = posthog.parse(json.dumps({"api_key": KEY, "batch": events}).encode(), {},
                               "application/json", LIMIT, MAX_EVENT)
    except BadRequest as exc:  # only an event's api_key of the wrong type fails them all
        assert exc.code in ("wrong_type", "invalid_batch"), exc
        return
    assert _indexes(parsed) == list(range(len(events)))


@given(json_values.filter(lambda v: isinstance(v, (dict, list))),
       st.sampled_from(["gzip", "form", "form-gzip-js", "base64-query"]))
def test_posthog_unwrap_undoes_every_encoding(doc: Any, how: str) -> None:
    text = json.dumps(doc).encode()
    if how == "gzip":
        body, query, ctype = gzip.compress(text), {}, "text/plain"
    elif how == "form":
        body, query = b"data=" + quote(base64.b64encode(text).decode(), safe="").encode(), {}
        ctype = "application/x-www-form-urlencoded"
    elif how == "form-gzip-js":
        body = b"data=" + quote(base64.b64encode(gzip.compress(text)).decode(), safe="").encode()
        query, ctype = {"compression": ["base64"]}, "application/x-www-form-urlencoded"
    else:
        body, query, ctype = base64.b64encode(text), {"compression": ["base64"]}, "text/plain"
    assert posthog.unwrap(body, query, ctype, LIMIT) == text


def test_posthog_refuses_what_it_cannot_read() -> None:
    for body, query, ctype, code in (
            (b"data=%ff", {}, "application/x-www-form-urlencoded", "bad_encoding"),
            (b"nothing=1", {}, "application/x-www-form-urlencoded", "invalid_form"),
            (b"abc", {"compression": ["lz64"]}, "text/plain", "bad_encoding"),
            (b"3", {}, "application/json", "invalid_batch"),
            (b"[]", {}, "application/json", "invalid_batch"),
            (b'{"api_key": 5, "batch": [{}]}', {}, "application/json", "wrong_type")):
        with pytest.raises(BadRequest) as err:
            posthog.parse(body, query, ctype, LIMIT, MAX_EVENT)
        assert err.value.code == code, body
    mixed = posthog.parse(json.dumps({"api_key": KEY, "batch": [
        {"event": "a", "distinct_id": "d", "properties": {"token": "other"}}, 7]}).encode(),
        {}, "application/json", LIMIT, MAX_EVENT)
    assert [(r.index, r.reason) for r in mixed.rejected] == [(0, "write_key_mismatch"),
                                                            (1, "wrong_type")]


def test_posthog_flags_key_from_query_or_body() -> None:
    assert posthog.flags_key(b"", {"token": [KEY]}, "", LIMIT) == KEY
    assert posthog.flags_key(json.dumps({"api_key": KEY}).encode(), {}, "application/json",
                             LIMIT) == KEY
    assert posthog.flags_key(b"", {}, "", LIMIT) is None


snowplow_values = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@given(st.dictionaries(st.sampled_from(["e", "aid", "uid", "duid", "eid", "dtm", "stm", "ttm",
                                        "res", "se_ac", "se_va", "tr_tt", "pp_mix", "ue_pr",
                                        "cx", "url", "page"]),
                       snowplow_values, max_size=10),
       st.sampled_from(["pv", "pp", "se", "ue", "tr", "ti", "xx"]))
def test_snowplow_event_is_a_message_or_rejected_with_a_code(ev: dict[str, str], e: str
                                                             ) -> None:
    ev = {**ev, "e": e}
    parsed = snowplow.parse_query({k: [v] for k, v in ev.items()}, MAX_EVENT)
    assert _indexes(parsed) == [0]
    if parsed.rejected:
        assert parsed.rejected[0].reason in ("invalid_type", "missing_identity", "missing_event",
                                             "wrong_type", "invalid_time", "invalid_json",
                                             "timestamp_out_of_range", "too_deep",
                                             "bad_encoding")
    else:
        (_, m), = parsed.messages
        assert m.user_id == (ev.get("uid") or None)
        assert m.anonymous_id == (ev.get("duid") or None)


@given(st.text(min_size=1, max_size=20).filter(str.strip), st.text(max_size=20),
       st.integers(0, 10**6))
def test_snowplow_structured_event_is_a_track_named_by_its_action(action: str, category: str,
                                                                 value: int) -> None:
    parsed = snowplow.parse_post(json.dumps({"data": [
        {"e": "se", "se_ac": action, "se_ca": category, "se_va": str(value), "duid": "d",
         "aid": KEY}]}).encode(), MAX_EVENT)
    (_, m), = parsed.messages
    assert parsed.write_key == KEY
    assert (m.type, m.event, m.category) == ("track", action, category or None)
    assert m.properties is not None and m.properties["value"] == value


def test_snowplow_refuses_what_is_not_payload_data() -> None:
    for body, code in ((b"", "empty_body"), (b"[]", "invalid_batch"),
                       (b'{"schema": "iglu:x/other/jsonschema/1-0-0", "data": [{}]}',
                        "invalid_batch"),
                       (b'{"data": []}', "invalid_batch"), (b"{", "invalid_json")):
        with pytest.raises(BadRequest) as err:
            snowplow.parse_post(body, MAX_EVENT)
        assert err.value.code == code, body
    with pytest.raises(BadRequest) as err:
        snowplow.parse_query({}, MAX_EVENT)
    assert err.value.code == "empty_body"
    two = snowplow.parse_post(json.dumps({"data": [{"e": "pv", "duid": "d", "aid": "a"},
                                                   {"e": "pv", "duid": "d", "aid": "b"},
                                                   {"e": "pv", "duid": 5}]}).encode(), MAX_EVENT)
    assert [(r.index, r.reason) for r in two.rejected] == [(1, "write_key_mismatch"),
                                                          (2, "wrong_type")]


def test_posthog_mobile_properties_fill_the_context() -> None:
    """What posthog-ios and posthog-android put in every event's properties lands where
    Segment's mobile SDKs put it; wrong types are left out, and the properties stay."""
    props = {"$os_name": "iOS", "$os_version": "18.5", "$device_model": "iPhone16,2",
             "$device_type": "Mobile", "$app_version": "2.4.0", "$app_build": 1045,
             "$screen_width": 430.0, "$screen_height": True, "$network_wifi": True,
             "$network_cellular": "no", "$locale": "en", "$timezone": "Europe/Paris",
             "$user_agent": "Dalvik/2.1.0", "$lib": "posthog-ios"}
    parsed = posthog.parse(json.dumps({"api_key": KEY, "batch": [
        {"event": "E", "distinct_id": "d", "properties": props}]}).encode(), {},
        "application/json", LIMIT, MAX_EVENT)
    m = parsed.messages[0][1]
    assert m.context is not None and m.properties is not None
    assert m.context["os"] == {"name": "iOS", "version": "18.5"}
    assert m.context["device"] == {"model": "iPhone16,2", "type": "Mobile"}
    assert m.context["app"] == {"version": "2.4.0", "build": 1045}
    assert m.context["screen"] == {"width": 430.0}
    assert m.context["network"] == {"wifi": True}
    assert (m.context["locale"], m.context["timezone"]) == ("en", "Europe/Paris")
    assert m.context["userAgent"] == "Dalvik/2.1.0"
    assert m.properties["$os_name"] == "iOS"
    web = posthog.parse(json.dumps({"api_key": KEY, "batch": [
        {"event": "E", "distinct_id": "d", "properties": {"$lib": "web"}}]}).encode(), {},
        "application/json", LIMIT, MAX_EVENT).messages[0][1]
    assert web.context is not None and set(web.context) == {"library"}


@pytest.mark.parametrize(("message", "name"), [
    ({"type": "screen", "event": "Checkout", "properties": {"name": "Checkout"}}, "Checkout"),
    ({"type": "screen", "event": "Main"}, "Main"),
    ({"type": "page", "properties": {"name": "Docs"}}, "Docs"),
    ({"type": "screen", "name": "Given", "event": "Other"}, "Given"),
    ({"type": "screen", "properties": {"name": 5}}, None),
    ({"type": "track", "event": "E", "properties": {"name": "x"}}, None),
])
def test_view_name_where_rudderstack_puts_it(message: dict[str, Any], name: str | None
                                             ) -> None:
    m = segment.parse_batch(json.dumps({"batch": [{**message, "anonymousId": "a"}]}).encode(),
                            MAX_EVENT).messages[0][1]
    event = segment.to_event(m, source="src", received_at=NOW)
    assert not isinstance(event, str) and event.name == name


def test_basic_write_key() -> None:
    assert segment.basic_write_key("Basic " + base64.b64encode(b"wk_1:").decode()) == "wk_1"
    assert segment.basic_write_key("basic " + base64.b64encode(b"wk_2").decode()) == "wk_2"
    for header, code in (("Bearer x", "bad_auth_scheme"), ("Basic !!", "bad_auth"),
                         ("Basic " + base64.b64encode(b":pw").decode(), "missing_write_key")):
        with pytest.raises(Unauthorized) as err:
            segment.basic_write_key(header)
        assert err.value.code == code


def test_rudderstack_source_config_enables_the_source() -> None:
    src = Source(id="src_1", name="shop-app", key_hint="wk_1…", created_at=1777888800,
                 controller="acme")
    cfg = rudderstack.source_config(src, "wk_1")["source"]
    assert (cfg["id"], cfg["name"], cfg["writeKey"], cfg["workspaceId"]) == (
        "src_1", "shop-app", "wk_1", "acme")
    assert cfg["enabled"] is True and cfg["destinations"] == []
    assert cfg["updatedAt"] == "2026-05-04T10:00:00Z"
    assert cfg["config"]["statsCollection"]["metrics"]["enabled"] is False
