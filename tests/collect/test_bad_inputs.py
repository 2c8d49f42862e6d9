"""Every bad input gets a clear 4xx with a JSON body naming the problem, never a 5xx,
and the server stays healthy afterwards."""

from __future__ import annotations

import gzip
import json
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aap.runner import create_source
from tests.conftest import Running, assert_refused, examples

MiB = 1024 * 1024


def event(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Clicked", "userId": f"u{i}", "messageId": f"m-{i}",
            **extra}


def batch(*events: dict[str, Any]) -> bytes:
    return json.dumps({"batch": list(events)}).encode()


def bomb(size: int) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zero = bytes(MiB)
    return b"".join([*(comp.compress(zero) for _ in range(size // MiB)), comp.flush()])


Case = tuple[str, Callable[[Running], httpx.Response], int, str]

CASES: list[Case] = [
    ("empty body", lambda r: r.post("/v1/batch", b""), 400, "empty_body"),
    ("whitespace body", lambda r: r.post("/v1/batch", b"  \n"), 400, "empty_body"),
    ("invalid JSON", lambda r: r.post("/v1/batch", b'{"batch": [}'), 400, "invalid_json"),
    ("JSON array, not object", lambda r: r.post("/v1/batch", b"[1, 2]"), 400, "invalid_batch"),
    ("batch is not a list", lambda r: r.post("/v1/batch", b'{"batch": "x"}'), 400,
     "invalid_batch"),
    ("no batch key", lambda r: r.post("/v1/batch", b'{"events": []}'), 400, "invalid_batch"),
    ("wrong types in every event",
     lambda r: r.post("/v1/batch", batch(event(userId=[1]), event(properties=3))), 400,
     "invalid_events"),
    ("single event of wrong type",
     lambda r: r.post("/v1/track", b'{"event": 5, "userId": "u"}'), 400, "wrong_type"),
    ("no identity", lambda r: r.post("/v1/track", b'{"event": "x"}'), 400, "invalid_events"),
    ("50 MiB body", lambda r: r.post("/v1/batch", b"x" * (50 * MiB)), 413, "payload_too_large"),
    ("gzip bomb", lambda r: r.post("/v1/batch", bomb(200 * MiB),
                                   headers={"Content-Encoding": "gzip"}), 413,
     "payload_too_large"),
    ("gzip bomb as text/plain", lambda r: r.post("/v1/batch", bomb(64 * MiB),
                                                 headers={"Content-Type": "text/plain"}), 413,
     "payload_too_large"),
    ("truncated gzip", lambda r: r.post("/v1/batch", gzip.compress(batch(event()))[:-12],
                                        headers={"Content-Encoding": "gzip"}), 400,
     "bad_encoding"),
    ("gzip header but garbage", lambda r: r.post("/v1/batch", b"\x1f\x8bnot gzip at all"), 400,
     "bad_encoding"),
    ("unsupported encoding", lambda r: r.post("/v1/batch", batch(event()),
                                              headers={"Content-Encoding": "br"}), 400,
     "bad_encoding"),
    ("missing key", lambda r: r.post("/v1/batch", batch(event()), auth=False), 401,
     "missing_write_key"),
    ("wrong key", lambda r: r.post("/v1/batch", batch(event()), auth=False,
                                   headers={"Authorization": "Basic d3Jvbmc6"}), 401,
     "unknown_write_key"),
    ("wrong key in body", lambda r: r.post(
        "/v1/batch", json.dumps({"batch": [event()], "writeKey": "nope"}).encode(), auth=False),
     401, "unknown_write_key"),
    ("bearer instead of basic", lambda r: r.post("/v1/batch", batch(event()), auth=False,
                                                 headers={"Authorization": "Bearer x"}), 401,
     "bad_auth_scheme"),
    ("basic auth not base64", lambda r: r.post("/v1/batch", batch(event()), auth=False,
                                               headers={"Authorization": "Basic %%%"}), 401,
     "bad_auth"),
    ("wrong method", lambda r: httpx.get(r.url + "/v1/batch"), 405, "method_not_allowed"),
    ("unknown path", lambda r: r.post("/v2/nothing", batch(event())), 404, "not_found"),
    ("invalid UTF-8", lambda r: r.post("/v1/batch", b'{"batch": [{"type": "track", '
                                       b'"event": "\xff\xfe", "userId": "u"}]}'), 400,
     "invalid_json"),
    ("lone surrogate escape", lambda r: r.post(
        "/v1/batch", b'{"batch": [{"type": "track", "event": "\\ud800", "userId": "u"}]}'), 400,
     "invalid_json"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_answer(running: Running, case: Case) -> None:
    _, send, status, code = case
    assert_refused(running, send, status, code)


def test_one_oversized_event_is_rejected_alone(running: Running) -> None:
    big = event(1, properties={"blob": "x" * (1024 * 1024 + 10)})
    r = running.post("/v1/batch", batch(event(0), big, event(2)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 2
    assert body["rejected"] == [{"index": 1, "reason": "event_too_large",
                                 "detail": body["rejected"][0]["detail"]}]
    ids = {e.message_id for e in running.stored()}
    assert {"m-0", "m-2"} <= ids and "m-1" not in ids


def test_invalid_events_are_listed_and_the_rest_stored(running: Running) -> None:
    r = running.post("/v1/batch", batch(
        event(10), {"type": "track", "event": "x"}, event(11, userId=["not", "a", "string"]),
        {"type": "teleport", "userId": "u"}, {"type": "alias", "userId": "u"}, event(12)))
    assert r.status_code == 200
    rej = {x["index"]: x["reason"] for x in r.json()["rejected"]}
    assert rej == {1: "missing_identity", 2: "wrong_type", 3: "invalid_type",
                   4: "missing_previous_id"}
    assert r.json()["accepted"] == 2


def test_ten_thousand_event_batch(running: Running) -> None:
    events = [event(i, messageId=f"big-{i}") for i in range(10_000)]
    r = running.post("/v1/batch", batch(*events))
    assert r.status_code == 200 and r.json()["accepted"] == 10_000
    stored = [e.message_id for e in running.stored() if e.message_id.startswith("big-")]
    assert stored == [f"big-{i}" for i in range(10_000)]  # order within a request is kept


ODD = ["😀👩‍👩‍👧‍👦", "\u202eRTL override", "zero\u200bwidth", "nul\u0000byte", "e\u0301 combining",
       "\ufeffBOM", "\U0010fffd private plane", "\U0001d56c\U0001d586\U0001d595 fraktur"]


def test_odd_unicode_is_stored_intact(running: Running) -> None:
    events = [event(i, messageId=f"odd-{i}", properties={"s": s, s: i}) for i, s in enumerate(ODD)]
    r = running.post("/v1/batch", json.dumps({"batch": events}, ensure_ascii=False).encode())
    assert r.status_code == 200 and r.json()["accepted"] == len(ODD)
    got = {e.message_id: e.properties for e in running.stored() if e.message_id.startswith("odd")}
    for i, s in enumerate(ODD):
        assert got[f"odd-{i}"] == {"s": s, s: i}


def test_gzip_deflate_and_magic_bytes(running: Running) -> None:
    body = batch(event(1, messageId="gz-1"))
    assert running.post("/v1/batch", gzip.compress(body),
                        headers={"Content-Encoding": "gzip"}).status_code == 200
    assert running.post("/v1/batch", gzip.compress(batch(event(2, messageId="gz-2"))),
                        headers={"Content-Type": "text/plain"}).status_code == 200
    assert running.post("/v1/batch", zlib.compress(batch(event(3, messageId="gz-3"))),
                        headers={"Content-Encoding": "deflate"}).status_code == 200
    ids = {e.message_id for e in running.stored()}
    assert {"gz-1", "gz-2", "gz-3"} <= ids


def test_write_key_in_the_body_is_enough(running: Running) -> None:
    body = {"batch": [event(0, messageId="bodykey-0")], "writeKey": running.key}
    r = running.post("/v1/batch", json.dumps(body).encode(), auth=False)
    assert r.status_code == 200, r.text
    single = running.post("/v1/page", json.dumps(
        {"anonymousId": "a", "name": "Home", "messageId": "bodykey-1",
         "writeKey": running.key}).encode(), auth=False)
    assert single.status_code == 200, single.text
    stored = {e.message_id: e for e in running.stored()}
    assert stored["bodykey-1"].type == "page"
    assert "bodykey-0" in stored


def test_missing_message_id_gets_a_uuid7(running: Running) -> None:
    r = running.post("/v1/track", b'{"userId": "no-mid", "event": "E", "messageId": null,'
                                  b' "properties": null, "context": null}')
    assert r.status_code == 200
    (ev,) = [e for e in running.stored() if e.user_id == "no-mid"]
    assert uuid.UUID(ev.message_id).version == 7
    assert ev.properties == {} and ev.context == {}


# -- event times: refused per event when out of bounds -----------------------------------

def _rejected_times(r: httpx.Response) -> dict[int, str]:
    body = r.json()
    items = body.get("rejected", []) if r.status_code == 200 else body["detail"]
    return {x["index"]: x["reason"] for x in items}


def test_year_1_and_year_9999_are_refused_per_event(running: Running) -> None:
    before = _metric(running, 'aap_events_rejected_total{reason="timestamp_out_of_range"}')
    r = running.post("/v1/batch", batch(
        event(20, messageId="t-ok", timestamp="2026-01-01T00:00:00Z"),
        event(21, messageId="t-1", timestamp="0001-01-01T00:00:00Z",
              sentAt="9999-12-31T23:59:59Z"),
        event(22, messageId="t-9999", timestamp="9999-12-31T23:59:59Z"),
        event(23, messageId="t-1999", timestamp="1999-12-31T23:59:59Z"),
        event(24, messageId="t-sent", sentAt="1970-01-01T00:00:00Z"),
        event(25, messageId="t-orig", originalTimestamp="0001-01-01T00:00:00Z"),
        # a clock set far ahead, the skew correction would take it before 2000
        event(26, messageId="t-skew", timestamp="2001-01-01T00:00:00Z",
              sentAt="2100-01-01T00:00:00Z")))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1
    assert _rejected_times(r) == dict.fromkeys(range(1, 7), "timestamp_out_of_range")
    assert all(x["detail"] for x in r.json()["rejected"])
    stored = {e.message_id for e in running.stored()}
    assert "t-ok" in stored and not stored & {"t-1", "t-9999", "t-1999", "t-sent", "t-orig",
                                              "t-skew"}
    after = _metric(running, 'aap_events_rejected_total{reason="timestamp_out_of_range"}')
    assert after - before == 6


def test_absurd_times_are_refused_in_every_wire_format(running: Running) -> None:
    payload = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
    sp = {"e": "pv", "aid": running.key, "duid": "d-time"}
    sends = [
        httpx.post(running.url + "/batch/", json={"api_key": running.key, "batch": [
            {"event": "E", "distinct_id": "d", "timestamp": "0001-01-01T00:00:00Z"},
            {"event": "E", "distinct_id": "d", "timestamp": "9999-12-31T23:59:59+00:00"},
            {"event": "E", "distinct_id": "d", "timestamp": 1, "sent_at": 99999999999999}]},
            timeout=30),
        httpx.post(running.url + "/com.snowplowanalytics.snowplow/tp2", json={
            "schema": payload, "data": [{**sp, "dtm": "-1"}, {**sp, "ttm": "0"},
                                        {**sp, "dtm": "1000", "stm": str(10**15)},
                                        {**sp, "ttm": "253402300799000"}]}, timeout=30),
        httpx.get(running.url + "/i", params={**sp, "dtm": "946684799999"}, timeout=30),
    ]
    for r in sends:
        assert r.status_code == 400, r.text
        assert set(_rejected_times(r).values()) == {"timestamp_out_of_range"}
    # a PostHog time that is no time at all is refused too, not replaced by the receive time
    r = httpx.post(running.url + "/batch/", timeout=30, json={"api_key": running.key, "batch": [
        {"event": "E", "distinct_id": "d", "timestamp": t} for t in (-5, "yesterday", True,
                                                                     10**20, "2026-13-01")]})
    assert r.status_code == 400, r.text
    assert _rejected_times(r) == dict.fromkeys(range(5), "invalid_time")


def test_a_historical_source_keeps_times_as_sent_within_bounds(running: Running) -> None:
    key = create_source(running.data_dir, "hist", "--historical", "--basis",
                        "legitimate_interest")
    future = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    r = httpx.post(running.url + "/v1/batch", auth=(key, ""), timeout=30, json={"batch": [
        event(30, messageId="h-ok", timestamp="2003-05-01T00:00:00Z"),
        event(31, messageId="h-future", timestamp=future),
        event(32, messageId="h-1999", timestamp="1999-01-01T00:00:00Z")]})
    assert r.status_code == 200, r.text
    assert _rejected_times(r) == {1: "timestamp_out_of_range", 2: "timestamp_out_of_range"}
    stored = {e.message_id: e for e in running.stored()}
    assert stored["h-ok"].timestamp == datetime(2003, 5, 1, tzinfo=UTC)
    assert "h-future" not in stored and "h-1999" not in stored


def _metric(running: Running, sample: str) -> float:
    text = httpx.get(running.url + "/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(sample))


REGIONS = {  # (first, last) of each region, far from the bounds' edges
    "before_2000": (datetime(1, 1, 1, tzinfo=UTC), datetime(1999, 12, 30, tzinfo=UTC)),
    "past": (datetime(2000, 1, 3, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)),
    "year_ahead": (datetime.now(UTC) + timedelta(days=2), datetime.now(UTC) + timedelta(days=360)),
    "far_future": (datetime.now(UTC) + timedelta(days=370), datetime(9999, 12, 31, tzinfo=UTC)),
}


@settings(max_examples=examples(60),  # each example: requests to a live server
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ts=st.none() | st.sampled_from(sorted(REGIONS)), sent=st.none() | st.sampled_from(
    sorted(REGIONS)), data=st.data())
def test_times_are_accepted_exactly_within_bounds(running: Running, ts: str | None,
                                                  sent: str | None, data: st.DataObject) -> None:
    def draw(region: str | None) -> datetime | None:
        if region is None:
            return None
        lo, hi = REGIONS[region]
        return data.draw(st.datetimes(min_value=lo.replace(tzinfo=None),
                                      max_value=hi.replace(tzinfo=None), timezones=st.just(UTC)))

    t, s = draw(ts), draw(sent)
    now = datetime.now(UTC)
    # the rule, restated: each time as sent in [2000-01-01, a year ahead]; the corrected
    # time (t + now - s) not before 2000
    y2k = datetime(2000, 1, 1, tzinfo=UTC)
    ok = all(x is None or y2k <= x <= now + timedelta(days=365) for x in (t, s))
    if ok and t is not None and s is not None:
        corrected = t + (now - s)
        assume(abs(corrected - y2k) > timedelta(days=1))  # not seconds from the edge
        ok = corrected >= y2k
    m = event(40, messageId=str(uuid.uuid4()))
    if t is not None:
        m["timestamp"] = t.isoformat()
    if s is not None:
        m["sentAt"] = s.isoformat()
    r = running.post("/v1/track", json.dumps(m).encode())
    if ok:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 400, r.text
        assert _rejected_times(r) == {0: "timestamp_out_of_range"}
