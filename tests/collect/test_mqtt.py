"""The MQTT bridge end to end, against Debian's mosquitto started by the tests: devices
registered with the CLI (the broker's password and ACL files come from the registry),
``aap serve`` starting the bridge because ``AAP_MQTT_BROKER`` is set, readings published
at QoS 1 by a device client (paho), stored through the collector's ingestion path; on
both engines of the shared state (the files under the data dir, then PostgreSQL), where
the device registry the broker's files and the bridge read lives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from aap.events import Event
from aap.runner import ServerProcess, create_source
from aap.store.meta import unavailable
from tests.conftest import Running, slow_fixture
from tests.mosquitto import Broker
from tests.privacy.test_ip_canary import scan

OWNER = "mqtt.owner.canary@example.com"
LAT, LON = 43.296482, 5.369780
DAY = (datetime.now(UTC) - timedelta(days=1)).replace(hour=9, minute=0, second=0,
                                                      microsecond=0)
WAIT_S = 120.0


def aap(data: Path, *args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "aap", *args, "--data-dir", str(data)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def register(data: Path, name: str, *args: str) -> tuple[str, str]:
    """The device's id (its MQTT user name) and key (its password)."""
    lines = aap(data, "devices", "register", "--source", "home", "--name", name, *args)
    return lines[-2].split("(")[1].split(")")[0], lines[-1]


class Device:
    """A device's MQTT client (MQTT 5, so a refused publish has a reason code)."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.acks: dict[int, ReasonCode] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"c-{user}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, password)
        self.client.on_publish = self._on_publish
        self.connected = threading.Event()
        self.connack: ReasonCode | None = None
        self.client.on_connect = self._on_connect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(30)

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        self.connack = rc
        self.connected.set()

    def _on_publish(self, c: Any, u: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        self.acks[mid] = rc

    def publish(self, topic: str, payload: Any) -> ReasonCode:
        """Publish at QoS 1; the broker's PUBACK reason code."""
        info = self.client.publish(topic, json.dumps(payload), qos=1)
        info.wait_for_publish(60)
        return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Setup:
    def __init__(self, running: Running, broker: Broker, devices: dict[str, tuple[str, str]]
                 ) -> None:
        self.running, self.broker, self.devices = running, broker, devices

    def device(self, name: str) -> Device:
        return Device(self.broker.port, *self.devices[name])

    def wait_stored(self, pred: Any, n: int) -> list[Event]:
        """The stored events ``pred`` selects, once there are ``n``; the test fails with
        the server's (and the bridge's) log when they do not come in time."""
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                found = [e for e in self.running.stored() if pred(e)]
            except Exception as exc:  # this process's own connection to a restarted
                if not unavailable(exc):  # PostgreSQL: it leaves the pool; asked again
                    raise
                found = []
            if len(found) >= n:
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"{len(found)} of {n} events stored after {WAIT_S:.0f} s; the end"
                            f" of the server's log:\n{_tail(self.running.server.log_file)}")
            time.sleep(0.1)


SUBSCRIBED = b"MQTT bridge subscribed"
"""What the bridge logs (into the server's log) once its subscription stands."""


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


def wait_subscribed(server: ServerProcess) -> None:
    """Until the bridge has subscribed. ``/healthz`` does not wait for it, and a reading
    published before the bridge's first subscription finds no session at the broker to
    keep it for: it is dropped, and the test waits for it in vain."""
    deadline = time.monotonic() + WAIT_S
    while SUBSCRIBED not in server.log_file.read_bytes():
        assert time.monotonic() < deadline, (
            f"the bridge did not subscribe in {WAIT_S:.0f} s:\n{_tail(server.log_file)}")
        time.sleep(0.1)


@slow_fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, meta_url_module: str) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("mqtt")
    data = tmp / "data"
    key = create_source(data, "home", "--purpose", "device_diagnostics:legitimate_interest")
    devices = {"a": register(data, "sensor-a"), "b": register(data, "sensor-b"),
               "walker": register(data, "walker-1", "--owner-user-id", OWNER),
               "gone": register(data, "gone-1")}
    password = aap(data, "devices", "bridge-password")[-1]
    broker = Broker(tmp, data).start()
    server = ServerProcess(data, env={
        "AAP_MQTT_BROKER": f"mqtt://aap-bridge:{password}@127.0.0.1:{broker.port}"}).start()
    wait_subscribed(server)
    yield Setup(Running(server, key), broker, devices)
    server.stop()
    broker.stop()


def reading(name: str, minutes: float, **values: Any) -> dict[str, Any]:
    return {"name": name, "ts": (DAY + timedelta(minutes=minutes)).timestamp(), "values": values}


def test_readings_published_at_qos1_are_stored(setup: Setup) -> None:
    dev = setup.device("a")
    assert dev.publish("aap/home/sensor-a/events",
                       [reading("co2", 0, ppm=410), reading("co2", 1, ppm=415)]).value == 0
    assert dev.publish("aap/home/sensor-a/events", reading("co2", 2, ppm=420)).value == 0
    dev.close()
    got = setup.wait_stored(lambda e: e.event == "co2", 3)
    assert sorted(e.properties["ppm"] for e in got) == [410, 415, 420]
    assert {e.anonymous_id for e in got} == {setup.devices["a"][0]}


def test_a_device_cannot_publish_to_another_devices_topic(setup: Setup) -> None:
    b = setup.device("b")
    refused = b.publish("aap/home/sensor-a/events", reading("spoof", 0, v=1))
    assert refused.value == 135, refused  # Not authorized: the broker's ACL
    assert b.publish("aap/home/sensor-b/events", reading("own", 0, v=2)).value == 0
    b.close()
    assert len(setup.wait_stored(lambda e: e.event == "own", 1)) == 1
    assert [e for e in setup.running.stored() if e.event == "spoof"] == []
    # a wrong password does not get in at all
    bad = Device(setup.broker.port, setup.devices["b"][0], "dk_wrong")
    assert bad.connack is not None and bad.connack.is_failure
    bad.client.loop_stop()


def _bridge_pid(data: Path) -> int | None:
    want = f"aap\0mqtt\0--data-dir\0{data}".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if want in (proc / "cmdline").read_bytes():
                    return int(proc.name)
            except OSError:
                continue
    return None


def test_a_bridge_killed_mid_stream_loses_nothing_and_doubles_nothing(setup: Setup) -> None:
    n = 300
    data = setup.running.data_dir
    pid = _bridge_pid(data)
    assert pid is not None, "aap serve started the bridge"
    dev = setup.device("a")
    for i in range(n):
        assert dev.publish("aap/home/sensor-a/events", reading("flow", i / 10, lpm=i)).value == 0
        if i == n // 3:
            os.kill(pid, signal.SIGKILL)  # the supervisor starts it again, same session
    dev.close()
    server = setup.running.server
    deadline = time.monotonic() + WAIT_S
    while True:
        server.wait_processed()
        rows = server.sql("SELECT count(*), count(DISTINCT message_id) FROM events"
                          " WHERE event = 'flow'")
        if rows[0][1] >= n or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows == [[n, n]]
    assert _bridge_pid(data) not in (None, pid)


def test_owned_device_over_mqtt_location_coarse_no_canary_on_disk(setup: Setup) -> None:
    dev = setup.device("walker")
    assert dev.publish("aap/home/walker-1/events",
                       reading("position", 0, lat=LAT, lon=LON, note="canary-mqtt")).value == 0
    dev.close()
    ev = setup.wait_stored(lambda e: e.event == "position", 1)[0]
    assert ev.user_id == OWNER and (ev.properties["lat"], ev.properties["lon"]) == (43.3, 5.4)
    root = setup.running.data_dir.parent  # data dir, server log, broker log
    assert scan(root, b"canary-mqtt"), "the scan must see stored events"
    for needle in (OWNER.encode(), b"43.29648", b"5.36978"):
        assert scan(root, needle) == [], needle


def test_bad_messages_are_dropped_and_the_bridge_goes_on(setup: Setup) -> None:
    dev = setup.device("b")
    topic = "aap/home/sensor-b/events"
    for payload in ("not json", [], [{"name": "bad", "ts": "never", "values": {"v": 1}}],
                    [reading("big", 0, v=1)] * 201):
        assert dev.publish(topic, payload).value == 0  # the broker took it
    assert dev.publish(topic, reading("after-bad", 0, v=3)).value == 0
    dev.close()
    assert len(setup.wait_stored(lambda e: e.event == "after-bad", 1)) == 1
    assert [e for e in setup.running.stored() if e.event in ("bad", "big")] == []


def test_a_revoked_device_is_out_of_the_broker_after_a_reload(setup: Setup) -> None:
    dev_id, key = setup.devices["gone"]
    first = Device(setup.broker.port, dev_id, key)
    assert first.connack is not None and not first.connack.is_failure
    first.close()
    aap(setup.running.data_dir, "devices", "revoke", dev_id)
    assert setup.broker.proc is not None
    setup.broker.proc.send_signal(signal.SIGHUP)  # mosquitto reads the files again
    deadline = time.monotonic() + WAIT_S
    while True:  # until the reload is done: then the device is refused
        d = Device(setup.broker.port, dev_id, key)
        d.client.loop_stop()
        if (d.connack is not None and d.connack.is_failure) or time.monotonic() > deadline:
            break
        d.client.disconnect()
        time.sleep(0.1)
    assert d.connack is not None and d.connack.is_failure
    passwd = (setup.running.data_dir / "devices" / "mosquitto.passwd").read_text()
    assert dev_id not in passwd and key not in passwd


def test_a_restart_of_the_shared_database_loses_no_reading_and_kills_no_bridge(
        setup: Setup, meta_url_module: str) -> None:
    """On PostgreSQL: every session of the shared database ends (a restart, a fail-over)
    again and again while a device publishes, so the bridge's device look-ups and its
    ingestion path meet dead connections. Every reading is stored once, and the bridge
    waits and tries again instead of dying (its process is the same)."""
    if not meta_url_module:
        pytest.skip("the shared state on PostgreSQL only (the files under the data dir"
                    " do not restart)")
    import psycopg

    n = 60
    data = setup.running.data_dir
    pid = _bridge_pid(data)
    assert pid is not None, "aap serve started the bridge"
    dev = setup.device("a")
    with psycopg.connect(meta_url_module, autocommit=True) as con:
        for i in range(n):
            if i % 10 == 0:
                con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = %s AND pid <> pg_backend_pid()",
                            (meta_url_module.rsplit("/", 1)[1],))
            assert dev.publish("aap/home/sensor-a/events",
                               reading("restarted", i / 10, v=i)).value == 0
    dev.close()
    got = setup.wait_stored(lambda e: e.event == "restarted", n)
    assert sorted(e.properties["v"] for e in got) == list(range(n))  # each once
    assert _bridge_pid(data) == pid, "the bridge died and was started again"
