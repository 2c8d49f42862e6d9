"""Device telemetry over REST (``POST /v1/devices/telemetry``) end to end: a real server
on 127.0.0.1, devices registered with the CLI, readings through the collector's one
ingestion path and the processor, insights through ``POST /api/v1/query``; on both
engines of the shared state (the files under the data dir, then PostgreSQL), where the
device registry lives."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.runner import ServerProcess, create_source
from aap.sources import hash_key
from tests.conftest import Running, assert_refused, slow_fixture
from tests.pg import every_row
from tests.privacy.test_ip_canary import scan

OWNER = "owner.canary@example.com"  # a raw userId: sealed, never in clear on disk
OWNER2 = "second.owner@example.com"
LAT, LON = 48.858370, 2.294481  # precise coordinates: coarsened before anything is stored
DAY = (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0, second=0,
                                                      microsecond=0)


def aap(data: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "aap", *args, "--data-dir", str(data)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def register(data: Path, name: str, *args: str) -> str:
    return aap(data, "devices", "register", "--source", "home", "--name", name, *args)


class Fleet:
    def __init__(self, running: Running, keys: dict[str, str], api_key: str) -> None:
        self.running = running
        self.keys = keys
        self.api_key = api_key

    def send(self, device: str, body: Any, *, gz: bool = True,
             headers: dict[str, str] | None = None) -> httpx.Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        h = {"Authorization": f"Bearer {self.keys[device]}", "Content-Type": "application/json"}
        if gz:
            raw = gzip.compress(raw)
            h["Content-Encoding"] = "gzip"
        h.update(headers or {})
        return httpx.post(self.running.url + "/v1/devices/telemetry", content=raw, headers=h)

    def query(self, doc: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(self.running.url + "/api/v1/query", json=doc,
                       headers={"Authorization": f"Bearer {self.api_key}"})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


@slow_fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, meta_url_module: str) -> Iterator[Fleet]:
    data = tmp_path_factory.mktemp("devices") / "data"
    key = create_source(data, "home", "--purpose", "device_diagnostics:legitimate_interest")
    keys = {"thermo": register(data, "thermostat-12"), "thermo2": register(data, "thermostat-13"),
            "tracker": register(data, "tracker-1", "--owner-user-id", OWNER),
            # two devices of one person: one person, two devices active
            "pair1": register(data, "watch-1", "--owner-user-id", OWNER2),
            "pair2": register(data, "scale-1", "--owner-user-id", OWNER2)}
    api_key = aap(data, "keys", "create", "--role", "analyst")
    server = ServerProcess(data).start()
    yield Fleet(Running(server, key), keys, api_key)
    server.stop()


def reading(name: str, minutes: int, **values: Any) -> dict[str, Any]:
    return {"name": name, "ts": (DAY + timedelta(minutes=minutes)).timestamp(), "values": values}


def test_readings_become_events_of_the_device(fleet: Fleet) -> None:
    r = fleet.send("thermo", [reading("temperature", 0, celsius=20.5),
                              reading("temperature", 1, celsius=21.5)])
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "accepted": 2}
    mine = [e for e in fleet.running.stored() if e.event == "temperature"
            and e.properties.get("celsius") in (20.5, 21.5)]
    assert len(mine) == 2
    dev = mine[0].properties["device_id"]
    assert dev.startswith("dev_") and all(e.anonymous_id == dev for e in mine)
    handle = mine[0].properties["device"]  # a keyed hash, the same for each reading
    assert handle.startswith("dh_") and dev[4:] not in handle
    assert all(e.properties["device"] == handle for e in mine)
    assert all(e.user_id is None and e.message_id.startswith("rd_") for e in mine)
    assert mine[0].timestamp == DAY


def test_bad_inputs_get_a_4xx_naming_the_problem(fleet: Fleet) -> None:
    def post(body: bytes, headers: dict[str, str]) -> Callable[[Running], httpx.Response]:
        return lambda r: httpx.post(r.url + "/v1/devices/telemetry", content=body,
                                    headers=headers)

    good = json.dumps([reading("temperature", 2, celsius=1)]).encode()
    bearer = {"Authorization": f"Bearer {fleet.keys['thermo']}"}
    cases: list[tuple[bytes, dict[str, str], int, str]] = [
        (good, {}, 401, "missing_device_key"),
        (good, {"Authorization": "Basic eDo="}, 401, "bad_auth_scheme"),
        (good, {"Authorization": "Bearer dk_nobody"}, 401, "unknown_device_key"),
        (b"", bearer, 400, "empty_body"),
        (b"[{", bearer, 400, "invalid_json"),
        (b'"hello"', bearer, 400, "invalid_batch"),
        (json.dumps([reading("t", 0, v=1)] * 201).encode(), bearer, 413, "too_many_readings"),
        (b"[" + b" " * (64 * 1024) + b"]", bearer, 413, "payload_too_large"),
        (json.dumps([{"name": "t", "ts": "yesterday", "values": {"v": 1}}]).encode(), bearer,
         400, "invalid_events"),
        (json.dumps([{"name": "t", "ts": 1, "values": {}}]).encode(), bearer, 400,
         "invalid_events"),
    ]
    for body, headers, status, code in cases:
        assert_refused(fleet.running, post(body, headers), status, code)
    # a bad reading among good ones: the good ones are stored, the bad one named
    r = fleet.send("thermo", [reading("humidity", 3, pct=40), {"name": "x", "ts": 1,
                                                                 "values": {"a": [1]}}])
    assert r.status_code == 200
    assert r.json()["accepted"] == 1
    assert r.json()["rejected"][0]["index"] == 1


def test_a_revoked_device_key_is_refused(fleet: Fleet) -> None:
    data = fleet.running.data_dir
    key = register(data, "doomed-1")
    fleet.keys["doomed"] = key
    dev = next(line.split("\t")[0] for line in subprocess.run(
        [sys.executable, "-m", "aap", "devices", "list", "--data-dir", str(data)],
        capture_output=True, text=True, check=True).stdout.splitlines() if "doomed-1" in line)
    aap(data, "devices", "revoke", dev)
    r = fleet.send("doomed", [reading("temperature", 0, celsius=1)])
    assert r.status_code == 401 and r.json()["code"] == "unknown_device_key"


def test_the_owners_consent_governs_an_owned_device(fleet: Fleet) -> None:
    r = fleet.send("tracker", [reading("battery", 5, pct=80)])
    assert r.json() == {"success": True, "accepted": 1}
    mine = [e for e in fleet.running.stored() if e.event == "battery"]
    assert [e.user_id for e in mine] == [OWNER]  # unsealed here: the owner is the person
    consent = fleet.running.post("/v1/consent", json={
        "userId": OWNER, "purposes": {"device_diagnostics": False}})
    assert consent.status_code == 200, consent.text
    r = fleet.send("tracker", [reading("battery", 6, pct=79)])
    assert r.json() == {"success": True, "accepted": 0, "not_stored": {"no_lawful_basis": 1}}
    assert len([e for e in fleet.running.stored() if e.event == "battery"]) == 1
    # the unowned device is no one's: the owner's withdrawal does not touch it
    assert fleet.send("thermo", [reading("temperature", 7, celsius=3)]).json()["accepted"] == 1


def test_location_is_coarsened_and_no_canary_is_on_disk(fleet: Fleet) -> None:
    r = fleet.send("thermo2", [reading("position", 8, lat=LAT, lon=LON, note="canary-dev")],
                   headers={"X-Forwarded-For": "203.0.113.77"})
    assert r.json()["accepted"] == 1
    ev = next(e for e in fleet.running.stored() if e.event == "position")
    assert (ev.properties["lat"], ev.properties["lon"]) == (48.9, 2.3)
    assert scan(fleet.running.data_dir, b"canary-dev"), "the scan must see stored events"
    for needle in (b"48.85837", b"2.294481", OWNER.encode(), b"203.0.113.77"):
        assert scan(fleet.running.data_dir.parent, needle) == [], needle


def test_the_same_reading_sent_twice_is_one_event(fleet: Fleet) -> None:
    once = [reading("pressure", 9, hpa=1013)]
    assert fleet.send("thermo", once).json()["accepted"] == 1
    assert fleet.send("thermo", once).json()["accepted"] == 1  # a retry
    fleet.running.server.wait_processed()
    rows = fleet.running.server.sql("SELECT count(*) FROM events WHERE event = 'pressure'")
    assert rows == [[1]]


def test_insights_trend_a_reading_and_count_devices_active_per_day(fleet: Fleet) -> None:
    for device, values in (("thermo", (10.0, 12.0)), ("thermo2", (20.0,)), ("pair1", (4.0,)),
                           ("pair2", (6.0,))):
        batch = [reading("outdoor", 30 + i, celsius=v) for i, v in enumerate(values)]
        assert fleet.send(device, batch).json()["accepted"] == len(values)
    fleet.running.server.wait_processed()
    day = DAY.date().isoformat()
    trend = fleet.query({"kind": "trends", "date_from": day, "date_to": day, "series": [
        {"event": "outdoor", "math": "avg", "property": "celsius"},
        {"event": "outdoor", "math": "max", "property": "celsius"}]})
    assert [s["values"] for s in trend["series"]] == [[10.4], [20.0]]
    active = fleet.query({"kind": "trends", "date_from": day, "date_to": day, "series": [
        {"event": "outdoor", "math": "unique", "property": "device"},
        {"event": "outdoor", "math": "persons"}, {"event": "outdoor"}]})
    # four devices active that day (five readings); watch-1 and scale-1 are one person's
    assert [s["values"] for s in active["series"]] == [[4], [3], [5]]
    r = httpx.post(fleet.running.url + "/api/v1/query", headers={
        "Authorization": f"Bearer {fleet.api_key}"}, json={
        "kind": "trends", "series": [{"event": "outdoor", "math": "unique"}]})
    assert r.status_code == 400 and "needs the `property`" in r.json()["message"], r.text


@pytest.mark.slow  # the CLI in subprocesses
def test_register_refuses_bad_input_and_keeps_only_hashes(tmp_path: Path, meta_url: str
                                                           ) -> None:
    data = tmp_path / "data"
    create_source(data, "home", "--purpose", "device_diagnostics:legitimate_interest")
    run = [sys.executable, "-m", "aap", "devices", "register", "--data-dir", str(data)]
    for args, message in ((["--source", "nowhere", "--name", "t1"], "no source named"),
                          (["--source", "home", "--name", "a/b"], "a device name is"),
                          (["--source", "home", "--name", "t1", "--owner-user-id", " "],
                           "must not be empty")):
        out = subprocess.run([*run, *args], capture_output=True, text=True)
        assert out.returncode == 1 and message in out.stderr, out.stderr
    key = register(data, "t1", "--owner-user-id", OWNER)
    again = subprocess.run([*run, "--source", "home", "--name", "t1"], capture_output=True,
                           text=True)
    assert again.returncode == 1 and "already has a device named" in again.stderr
    assert scan(data, key.encode()) == [] and scan(data, OWNER.encode()) == []
    if meta_url:  # the registry is in PostgreSQL: its rows hold the key's digest only
        rows = repr(every_row(meta_url))
        assert hash_key(key) in rows and key not in rows and OWNER not in rows
