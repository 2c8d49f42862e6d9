"""The real `snowplow-tracker` from PyPI against AAP's `/com.snowplowanalytics.snowplow/tp2`
(POST) and `/i` (GET): page view, structured and self-describing events with a custom
context, a transaction with an item, and the login that ties the domain user id to the
user id — exactly those events in the warehouse, one person, the right times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from snowplow_tracker import Emitter, SelfDescribingJson, Subject, Tracker
from snowplow_tracker.events import PageView, SelfDescribing, StructuredEvent

from tests.conftest import Running
from tests.e2e.warehouse import persons_rows


@pytest.fixture(scope="module")
def running(sdk_server: Running) -> Running:
    return sdk_server


CTX = SelfDescribingJson("iglu:com.acme/customer/jsonschema/1-0-0", {"tier": "gold"})


@pytest.mark.parametrize(("method", "b64"), [("post", True), ("get", False)],
                         ids=["post-tp2-base64", "get-i-plain"])
def test_snowplow_python_events_land_in_the_warehouse(running: Running, method: str,
                                                      b64: bool) -> None:
    failures: list[Any] = []
    host = running.url.removeprefix("http://")
    emitter = Emitter(host, protocol="http", method=method, batch_size=1,  # type: ignore[arg-type]
                      on_failure=lambda n, evs: failures.append((n, evs)))
    duid, uid = f"sp-duid-{method}", f"sp-user-{method}"
    subject = Subject().set_domain_user_id(duid).set_domain_session_id(f"sp-sess-{method}")
    subject.set_useragent("Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0")
    tracker = Tracker("aap-test", emitter, subject=subject, app_id=running.key,
                      encode_base64=b64)
    t0 = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    ms = lambda s: (t0 + timedelta(seconds=s)).timestamp() * 1000  # noqa: E731
    ids = {
        "pv": tracker.track(PageView("https://shop.example/docs?utm_source=sp", "Docs",
                                     referrer="https://search.example/", true_timestamp=ms(0))),
        "se": tracker.track(StructuredEvent("video", "play", label="intro", value=3.5,
                                            context=[CTX], true_timestamp=ms(4))),
        "ue": tracker.track(SelfDescribing(SelfDescribingJson(
            "iglu:com.acme/link_click/jsonschema/1-0-0", {"target": "/pricing", "n": 2}),
            true_timestamp=ms(8))),
    }
    subject.set_user_id(uid)  # the person logs in: same domain user id, now with a user id
    ids["login"] = tracker.track(StructuredEvent("account", "login", true_timestamp=ms(12)))
    emitter.flush()
    assert failures == []
    running.server.wait_processed()
    rows = persons_rows(running.server, [ids["pv"]])
    by_id = {r.message_id: r for r in rows}
    assert set(by_id) == set(ids.values())  # nothing missing, nothing extra
    assert len({r.person_id for r in rows}) == 1
    pv = by_id[ids["pv"]]
    assert (pv.type, pv.name, pv.path, pv.referrer) == ("page", "Docs", "/docs",
                                                        "https://search.example/")
    assert pv.session_id == f"s:sp-sess-{method}"
    se = by_id[ids["se"]]
    assert (se.event, se.properties) == ("play", {"category": "video", "action": "play",
                                                  "label": "intro", "value": 3.5})
    ue = by_id[ids["ue"]]
    assert ue.event == "link_click"
    assert ue.properties == {"target": "/pricing", "n": 2,
                             "schema": "iglu:com.acme/link_click/jsonschema/1-0-0"}
    assert by_id[ids["login"]].event == "login"
    for key, s in (("pv", 0), ("se", 4), ("ue", 8), ("login", 12)):
        assert by_id[ids[key]].timestamp == t0 + timedelta(seconds=s), key
    logged = {e.message_id: e for e in running.stored() if e.message_id in by_id}
    assert logged[ids["se"]].context["contexts"] == [
        {"schema": "iglu:com.acme/customer/jsonschema/1-0-0", "data": {"tier": "gold"}}]
    assert logged[ids["login"]].user_id == uid and logged[ids["login"]].anonymous_id == duid


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_snowplow_transaction_and_items(running: Running) -> None:
    emitter = Emitter(running.url.removeprefix("http://"), protocol="http", batch_size=1)
    tracker = Tracker("aap-test", emitter, subject=Subject().set_user_id("sp-buyer"),
                      app_id=running.key)
    tracker.track_ecommerce_transaction(
        "sp-order-1", 30.0, currency="EUR",
        items=[{"sku": "sku-9", "price": 10.0, "quantity": 3, "name": "Mug"}])
    emitter.flush()
    running.server.wait_processed()
    rows = running.server.sql("SELECT event, properties->>'order_id', properties->>'revenue',"
                              " properties->>'quantity' FROM events WHERE person_id = (SELECT"
                              " person_id FROM events WHERE properties->>'order_id' ="
                              " 'sp-order-1' LIMIT 1) ORDER BY event")
    assert rows == [["Order Completed", "sp-order-1", "30.0", None],
                    ["Order Item", "sp-order-1", None, "3"]]
