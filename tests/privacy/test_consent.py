"""Consent is enforced at the door: no event of a person without a lawful basis is ever
stored; a withdrawal stops the very next event, also one already in the log; GPC
withdraws sale/sharing and marketing; the ledger keeps proof and is append-only."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.datadir import DataDir
from aap.privacy.consent import ConsentLedger
from aap.runner import ServerProcess, create_source
from aap.store.meta import is_database_error
from aap.store.warehouse import Warehouse
from tests.conftest import slow_fixture
from tests.pg import Cluster, new_database
from tests.privacy.test_ip_canary import scan

pytestmark = pytest.mark.slow  # each test starts a server


def ev(anon: str, event: str = "Viewed", prefs: dict[str, bool] | None = None,
       **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"type": "track", "event": event, "anonymousId": anon,
                         "messageId": str(uuid.uuid4()), **extra}
    if prefs is not None:
        m["context"] = {"consent": {"categoryPreferences": prefs}}
    return m


class Site:
    def __init__(self, server: ServerProcess, key: str) -> None:
        self.server, self.key = server, key

    def send(self, *events: dict[str, Any], headers: dict[str, str] | None = None
             ) -> httpx.Response:
        r = httpx.post(self.server.url + "/v1/batch", json={"batch": list(events)},
                       auth=(self.key, ""), headers=headers or {}, timeout=30)
        assert r.status_code == 200, r.text
        return r

    def consent(self, body: dict[str, Any], headers: dict[str, str] | None = None,
                auth: bool = True) -> httpx.Response:
        return httpx.post(self.server.url + "/v1/consent", json=body, headers=headers or {},
                          auth=(self.key, "") if auth else None, timeout=30)

    def stored(self, where: str, params: list[object]) -> list[list[object]]:
        self.server.wait_processed()
        return self.server.sql(f"SELECT event, purposes FROM events WHERE {where}", params)


@slow_fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, meta_url_module: str) -> Iterator[Site]:
    """A shop and its server, on each engine of the shared state."""
    data = tmp_path_factory.mktemp("consent") / "data"
    key = create_source(data, "shop", "--purpose", "analytics",
                        "--purpose", "marketing:legitimate_interest")
    server = ServerProcess(data, workers=2).start()
    try:
        yield Site(server, key)
    finally:
        server.stop()


def test_event_without_consent_is_not_stored_anywhere(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = create_source(data, "shop")  # analytics, on consent: the default
    canary = "canary-no-consent-7d41"
    with ServerProcess(data, workers=1) as server:
        r = httpx.post(server.url + "/v1/batch", auth=(key, ""), json={"batch": [
            ev("anon-nc", properties={"note": canary}),
            ev("anon-nc2", prefs={"analytics": False}, properties={"note": canary}),
            ev("anon-yes", prefs={"analytics": True}, properties={"note": "stored-marker-19ab"}),
        ]})
        assert r.status_code == 200
        assert r.json() == {"success": True, "accepted": 1,
                            "not_stored": {"no_lawful_basis": 2}}
        server.wait_processed()
        assert server.sql("SELECT count(*) FROM events") == [[1]]
        metrics = httpx.get(server.url + "/metrics").text
        assert 'aap_events_not_stored_total{reason="no_lawful_basis"}' in metrics
    assert scan(tmp_path, b"stored-marker-19ab"), "the scan must see what was stored"
    assert scan(tmp_path, canary.encode()) == []


def test_consent_on_the_event_and_through_the_api_both_count(site: Site) -> None:
    site.send(ev("anon-a", "First", prefs={"analytics": True}))
    site.send(ev("anon-a", "Second"))  # no statement on it: the ledger remembers the first
    site.send(ev("anon-b", "Before"))  # no consent yet: kept for marketing only
    assert site.consent({"anonymousId": "anon-b", "purposes": {"analytics": True},
                         "policy_version": "2026-10", "channel": "banner"}).json() == {
        "success": True, "recorded": 1}
    site.send(ev("anon-b", "After"))
    got = site.stored("event IN (?, ?, ?, ?) ORDER BY event",
                      ["First", "Second", "Before", "After"])
    assert got == [["After", ["analytics", "marketing"]], ["Before", ["marketing"]],
                   ["First", ["analytics", "marketing"]], ["Second", ["analytics", "marketing"]]]


def test_legitimate_interest_needs_no_consent_but_consent_purposes_do(site: Site) -> None:
    site.send(ev("anon-li", "Only marketing"))
    assert site.stored("event = ?", ["Only marketing"]) == [["Only marketing", ["marketing"]]]


def test_the_first_event_after_a_withdrawal_is_not_stored(site: Site) -> None:
    # two collector workers: the withdrawal and the next event may meet different ones
    for i in range(10):
        anon = f"anon-w{i}"
        site.send(ev(anon, f"granted {i}", prefs={"analytics": True}))
        site.server.wait_processed()  # stored before the withdrawal (the next test: after)
        assert site.consent({"anonymousId": anon, "purposes": {"analytics": False}}
                            ).status_code == 200
        r = site.send(ev(anon, f"withdrawn {i}"))
        assert r.json()["accepted"] == 1  # still stored for marketing (legitimate interest)
        # the next event does not serve analytics (nor does the stored one any more,
        # see test_withdrawal_takes_the_purpose_off_stored_events…)
        assert site.stored("event = ?", [f"withdrawn {i}"]) == [[f"withdrawn {i}", ["marketing"]]]


def test_withdrawal_reaches_events_already_in_the_log(tmp_path: Path, meta_url: str) -> None:
    data = tmp_path / "data"
    key = create_source(data, "shop")
    with ServerProcess(data, workers=1) as server:
        s = Site(server, key)
        s.send(ev("anon-late", "warm-up", prefs={"analytics": True}))
        server.wait_processed()
        core = server.core_pid()
        assert core is not None
        os.kill(core, signal.SIGSTOP)  # the processor falls behind the log
        try:
            r = s.send(*[ev("anon-late", f"queued {i}") for i in range(5)])
            assert r.json()["accepted"] == 5  # consent was given when they arrived
            time.sleep(0.01)
            assert s.consent({"anonymousId": "anon-late", "purposes": {"analytics": False}}
                             ).status_code == 200
        finally:
            os.kill(core, signal.SIGCONT)
        server.wait_processed()
        # the queued events were dropped; the stored one, left with no purpose, erased
        deadline = time.monotonic() + 180
        while server.sql("SELECT count(*) FROM events_raw") != [[0]] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.sql("SELECT count(*) FROM events_raw") == [[0]]
        metrics = httpx.get(server.url + "/metrics").text
        assert 'aap_processor_dropped_total{reason="consent_withdrawn"} 5.0' in metrics


def test_a_data_dir_moved_to_postgresql_applies_its_new_ledger_from_the_start(
        tmp_path: Path, pg: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The processor had applied its file ledger up to ``seq`` 1,000,000; the data dir
    then moves to ``AAP_META_URL``, whose new ledger starts at ``seq`` 1: a withdrawal
    there still reaches the stored events (the position is kept per ledger)."""
    data = tmp_path / "data"
    wh = Warehouse(DataDir(data).warehouse)
    wh.set_state("consent_applied", 1_000_000)  # the file ledger's position
    wh.close()
    monkeypatch.setenv("AAP_META_URL", new_database(pg.url))
    key = create_source(data, "shop")
    with ServerProcess(data, workers=1) as server:
        s = Site(server, key)
        s.send(ev("anon-moved", "stored", prefs={"analytics": True}))
        server.wait_processed()
        assert server.sql("SELECT count(*) FROM events_raw") == [[1]]
        assert s.consent({"anonymousId": "anon-moved", "purposes": {"analytics": False}}
                         ).status_code == 200
        deadline = time.monotonic() + 120
        while server.sql("SELECT count(*) FROM events_raw") != [[0]] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.sql("SELECT count(*) FROM events_raw") == [[0]]  # left bare: erased


def test_gpc_withdraws_sale_and_marketing(site: Site) -> None:
    r = site.send(ev("anon-gpc", "With GPC", prefs={"analytics": True, "marketing": True}),
                  headers={"Sec-GPC": "1"})
    assert r.json()["accepted"] == 1
    assert site.stored("event = ?", ["With GPC"]) == [["With GPC", ["analytics"]]]
    # and it sticks for the person: a later event without the header serves analytics only
    site.send(ev("anon-gpc", "Later"))
    assert site.stored("event = ?", ["Later"]) == [["Later", ["analytics"]]]


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"purposes": {"analytics": True}}, 400, "missing_identity"),
    ({"userId": "u", "purposes": {}}, 400, "invalid_consent"),
    ({"userId": "u", "purposes": {"astrology": True}}, 400, "unknown_purpose"),
    ({"userId": "u", "purposes": {"analytics": "yes"}}, 400, "invalid_consent"),
    ({"userId": "u", "purposes": {"analytics": True}, "channel": ""}, 400, "invalid_consent"),
])
def test_bad_consent_requests_get_clear_errors(site: Site, body: dict[str, Any], status: int,
                                               code: str) -> None:
    r = site.consent(body)
    assert r.status_code == status
    assert r.json()["code"] == code and r.json()["message"]


def test_consent_needs_a_write_key_and_json(site: Site) -> None:
    r = site.consent({"userId": "u", "purposes": {"analytics": True}}, auth=False)
    assert r.status_code == 401 and r.json()["code"] == "missing_write_key"
    r = httpx.post(site.server.url + "/v1/consent", content=b"{nope", auth=(site.key, ""))
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"
    # GET /v1/consent is the portal's read of one person's choices: it needs a subject
    # token, and a write key (public, in every page) does not read anybody's consent
    r = httpx.get(site.server.url + "/v1/consent")
    assert r.status_code == 401 and r.json()["message"]
    r = httpx.get(site.server.url + "/v1/consent", auth=(site.key, ""))
    assert r.status_code == 401 and r.json()["message"]
    r = httpx.put(site.server.url + "/v1/consent", content=b"{}", auth=(site.key, ""))
    assert r.status_code == 405


def test_the_ledger_keeps_proof_and_refuses_edits(site: Site, meta_url_module: str) -> None:
    site.consent({"userId": "proof-user", "purposes": {"analytics": True},
                  "policy_version": "v7", "channel": "settings-page"})
    ledger = ConsentLedger(site.server.data_dir)  # the file, or PostgreSQL
    try:
        rows = ledger.db.fetchall("SELECT source, subject, purposes, policy_version, channel,"
                                  " at_ms FROM statements WHERE policy_version = 'v7'")
        assert len(rows) == 1
        source, subject, purposes, policy, channel, at_ms = rows[0]
        assert policy == "v7"
        assert source.startswith("src_") and isinstance(subject, int)
        assert purposes == '{"analytics": true}' and channel == "settings-page"
        assert abs(at_ms / 1000 - time.time()) < 60
        for edit in ("UPDATE statements SET purposes = '{}'", "DELETE FROM statements"):
            with pytest.raises(Exception, match="append-only") as refused:
                ledger.db.execute(edit)
            assert is_database_error(refused.value)
        every = repr(ledger.db.fetchall("SELECT * FROM statements"))
    finally:
        ledger.close()
    assert "proof-user" not in every  # ids are kept as keyed hashes
    if not meta_url_module:  # (PostgreSQL's files: tests/store/test_meta_pg.py's canary)
        assert b"proof-user" not in DataDir(site.server.data_dir).consent_db.read_bytes()


def test_withdrawal_takes_the_purpose_off_stored_events_and_erases_those_left_bare(
        site: Site) -> None:
    site.send(ev("anon-strip", "Kept for marketing", prefs={"analytics": True}))
    site.send(ev("anon-other", "Someone else's", prefs={"analytics": True}))
    assert site.stored("event = ?", ["Kept for marketing"]) == [
        ["Kept for marketing", ["analytics", "marketing"]]]

    def wait_for(where: str, params: list[object], want: list[list[object]]) -> None:
        deadline = time.monotonic() + 180
        while (got := site.stored(where, params)) != want and time.monotonic() < deadline:
            time.sleep(0.1)
        assert got == want

    assert site.consent({"anonymousId": "anon-strip", "purposes": {"analytics": False}}
                        ).status_code == 200
    wait_for("event = ?", ["Kept for marketing"], [["Kept for marketing", ["marketing"]]])
    # an objection to the last purpose leaves the event none: it is erased (Art. 17(1)(b))
    assert site.consent({"anonymousId": "anon-strip", "purposes": {"marketing": False}}
                        ).status_code == 200
    wait_for("event = ?", ["Kept for marketing"], [])
    assert site.stored("event = ?", ["Someone else's"]) == [
        ["Someone else's", ["analytics", "marketing"]]]
