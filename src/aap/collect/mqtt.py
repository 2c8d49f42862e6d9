"""The MQTT bridge (``aap mqtt``, started by ``aap serve`` when ``AAP_MQTT_BROKER`` is set).

It subscribes (QoS 1) to ``aap/{source}/{device}/events`` with a fixed client id and a
persistent session (``clean_session=False``), and hands each message, a device's batch of
readings (:mod:`aap.collect.telemetry`), to the collector's one ingestion path in this
process. A message is acknowledged to the broker (PUBACK, paho's manual acks) only once
its readings are durable in the log, and acknowledgements go out in the order the
messages came, as MQTT requires. A bridge that stops before a PUBACK gets the message
again from its session when it reconnects; the reading's derived messageId makes the
second copy the same event (the processor's dedup): nothing lost, nothing doubled.

Devices are authenticated by the broker: the registry's password and ACL files
(:mod:`aap.devices`) let a device publish only to its own topic, so the topic names the
device. A message for an unknown or revoked device, or one that is not a valid batch, is
acknowledged and dropped (logged without its content); one the collector cannot take now
(503, 429) is tried again, not acknowledged meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import unquote, urlparse

import aiomqtt

from aap import errors
from aap.asgi import Connection
from aap.collect.body import decode_content
from aap.collect.telemetry import Telemetry
from aap.devices import TOPIC
from aap.settings import Settings
from aap.store.meta import unavailable

logger = logging.getLogger("aap.mqtt")
MAX_INFLIGHT = 20
"""Messages being stored at once (mosquitto's default ``max_inflight_messages``)."""
RECONNECT_S = 1.0


def _conn() -> Connection:
    """What the ingestion path knows of an MQTT message's sender: no address, no headers
    (the broker saw the device's address; the bridge never does)."""
    return Connection({"type": "mqtt", "path": "/mqtt", "headers": [], "client": None})


class AckingClient(aiomqtt.Client):
    """aiomqtt's client with paho's manual acknowledgements (aiomqtt has none): a QoS 1
    message gets its PUBACK only when :meth:`ack` is called."""

    def manual_acks(self) -> None:
        # before connecting: the session's pending messages arrive right after CONNACK
        self._client.manual_ack_set(True)

    def ack(self, message: aiomqtt.Message) -> None:
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)


class Bridge:
    def __init__(self, settings: Settings, telemetry: Telemetry,
                 check_health: Callable[[], Awaitable[None]]) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.check_health = check_health
        """Back-pressure: raises 503 (a TransientError) while the log is not healthy."""
        url = urlparse(settings.devices.mqtt_broker)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        self.tls = url.scheme == "mqtts"
        self.username = unquote(url.username) if url.username else None
        self.password = unquote(url.password) if url.password else None
        self.stored = 0
        """Messages stored (and acknowledged) since start."""

    async def run(self) -> None:
        """Subscribe, store, acknowledge; reconnect (same session) when the broker goes."""
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                logger.warning("MQTT broker %s:%s: %s; reconnecting", self.host, self.port, exc)
                await asyncio.sleep(RECONNECT_S)

    async def _session(self) -> None:
        client = AckingClient(
            self.host, self.port, username=self.username, password=self.password,
            identifier=self.settings.devices.mqtt_client_id, clean_session=False,
            protocol=aiomqtt.ProtocolVersion.V311,
            tls_params=aiomqtt.TLSParameters() if self.tls else None)
        client.manual_acks()
        async with client:
            await client.subscribe(TOPIC.format(source="+", device="+"), qos=1)
            logger.info("MQTT bridge subscribed at %s:%s", self.host, self.port)
            pending: asyncio.Queue[tuple[aiomqtt.Message, asyncio.Task[None]]] = (
                asyncio.Queue())
            room = asyncio.Semaphore(MAX_INFLIGHT)
            acker = asyncio.create_task(self._ack_in_order(client, pending, room))
            tasks: set[asyncio.Task[None]] = set()
            try:
                async for message in client.messages:
                    await room.acquire()
                    task = asyncio.create_task(self.store(message))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    pending.put_nowait((message, task))
                    if acker.done():
                        acker.result()
            finally:
                acker.cancel()
                for task in tasks:
                    task.cancel()

    async def _ack_in_order(self, client: AckingClient,
                            pending: asyncio.Queue[tuple[aiomqtt.Message, asyncio.Task[None]]],
                            room: asyncio.Semaphore) -> None:
        """PUBACK each message once stored, in the order the messages came."""
        while True:
            message, task = await pending.get()
            await task
            client.ack(message)
            room.release()

    async def store(self, message: aiomqtt.Message) -> None:
        """Store one message's readings (returns once durable, or once dropped)."""
        levels = message.topic.value.split("/")
        payload = message.payload
        raw = payload if isinstance(payload, bytes) else str(payload).encode()
        limit = self.settings.devices.device_max_request_bytes
        device = None
        while True:
            try:
                # the registry lives in the shared state too: its look-up waits with the rest
                device = (self.telemetry.devices.by_topic(levels[1], levels[2])
                          if len(levels) == 4 else None)
                if device is None:
                    logger.warning("MQTT message on a topic of no live device: dropped")
                    return
                await self.check_health()
                if len(raw) > limit:
                    raise errors.PayloadTooLarge(f"message of {len(raw)} bytes; limit {limit}")
                body = decode_content(raw, "", limit)
                await self.telemetry.accept(_conn(), device, body)
                self.stored += 1
                return
            except errors.TransientError as exc:  # back-pressure, rate limit: later
                await asyncio.sleep(max(0.05, min(float(exc.retry_after), 5.0)))
            except errors.AAPError as exc:
                logger.warning("MQTT message of device %s refused (%s): dropped",
                               device.id if device is not None else "?", exc.code)
                return
            except Exception as exc:  # the shared state out of reach: later, as above
                if not unavailable(exc):
                    raise
                logger.warning("an MQTT message waits for the shared state: %s",
                               errors.one_line(exc))
                await asyncio.sleep(1.0)


async def run_bridge(settings: Settings) -> None:
    """``aap mqtt``: the bridge, with a collector of its own for the ingestion path."""
    from aap.collect.app import Collector
    from aap.lifecycle import die_with_parent

    die_with_parent()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    collector = Collector(settings)
    try:
        await Bridge(settings, collector.telemetry, collector.check_health).run()
    finally:
        collector.close()
