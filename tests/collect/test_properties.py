"""Property tests against the real server: no input gets a 5xx; valid batches come
back out of the log unchanged."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Running, examples

# each example: requests to a live server
SETTINGS = settings(max_examples=examples(150),
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

PATHS = ["/v1/batch", "/v1/track", "/v1/identify", "/v1/p", "/v1/b"]

json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(body=st.binary(max_size=2048), path=st.sampled_from(PATHS), gz=st.booleans())
def test_arbitrary_bytes_never_5xx(running: Running, body: bytes, path: str, gz: bool) -> None:
    headers = {"Content-Encoding": "gzip"} if gz else {}
    r = running.post(path, body, headers=headers)
    assert r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/json")
    r.json()


@SETTINGS
@given(doc=json_values, path=st.sampled_from(PATHS))
def test_arbitrary_json_never_5xx(running: Running, doc: Any, path: str) -> None:
    r = running.post(path, json.dumps(doc).encode())
    assert r.status_code < 500, r.text


@SETTINGS
@given(events=st.lists(json_values, max_size=5))
def test_arbitrary_events_in_a_batch_never_5xx(running: Running, events: list[Any]) -> None:
    r = running.post("/v1/batch", json.dumps({"batch": events}).encode())
    assert r.status_code < 500, r.text


ids = st.text(min_size=1, max_size=30).filter(lambda s: s.strip() != "")
# the collector refuses times before 2000 or more than a year ahead (test_bad_inputs.py)
timestamps = st.datetimes(min_value=datetime(2000, 1, 1),
                          max_value=datetime.now() + timedelta(days=300),
                          timezones=st.just(UTC))
props = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    mtype = draw(st.sampled_from(["track", "identify", "page", "screen", "group", "alias"]))
    m: dict[str, Any] = {"type": mtype, "messageId": str(uuid.uuid4())}
    who = draw(st.sampled_from(["user", "anon", "both"]))
    if who in ("user", "both"):
        m["userId"] = draw(ids)
    if who in ("anon", "both"):
        m["anonymousId"] = draw(ids)
    if mtype == "track":
        m["event"] = draw(ids)
    if mtype == "alias":
        m["previousId"] = draw(ids)
    if mtype == "group":
        m["groupId"] = draw(ids)
    if mtype in ("page", "screen"):
        m["name"] = draw(st.none() | st.text(max_size=20))
    m["timestamp"] = draw(timestamps).isoformat()
    m["properties"] = draw(props)
    m["traits"] = draw(props)
    m["context"] = draw(st.dictionaries(st.text(max_size=10).filter(lambda k: k != "ip"),
                                        json_values, max_size=3))
    return m


@SETTINGS
@given(batch=st.lists(messages(), min_size=1, max_size=8), gz=st.booleans())
def test_valid_batches_come_back_unchanged(running: Running, batch: list[dict[str, Any]],
                                           gz: bool) -> None:
    body = json.dumps({"batch": batch}).encode()
    headers = {}
    if gz:
        body, headers = gzip.compress(body), {"Content-Encoding": "gzip"}
    r = running.post("/v1/batch", body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "accepted": len(batch)}
    stored = {e.message_id: e for e in running.stored()[-len(batch):]}
    assert list(stored) == [m["messageId"] for m in batch]  # same order
    for m in batch:
        e = stored[m["messageId"]]
        assert e.type == m["type"]
        assert e.user_id == m.get("userId") and e.anonymous_id == m.get("anonymousId")
        assert e.event == m.get("event") and e.name == m.get("name")
        assert e.previous_id == m.get("previousId") and e.group_id == m.get("groupId")
        assert e.timestamp == datetime.fromisoformat(m["timestamp"])
        assert e.properties == m["properties"] and e.traits == m["traits"]
        assert e.context == m["context"]


def test_server_still_healthy(running: Running) -> None:
    assert httpx.get(running.url + "/healthz").status_code == 200
