"""``AAP_LOG_URL``: where the durable log is (outside :mod:`aap.log`, which the settings
import nothing of)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl


@dataclass(frozen=True)
class KafkaUrl:
    servers: str
    topic: str
    options: dict[str, str] = field(default_factory=dict)


def parse_url(url: str) -> KafkaUrl:
    """``kafka://h1:9092,h2:9092/topic?linger.ms=5`` → its parts (ValueError if not one)."""
    if not url.startswith("kafka://"):
        raise ValueError(f"not a kafka:// URL: {url!r}")
    rest, _, query = url[len("kafka://"):].partition("?")
    servers, _, topic = rest.partition("/")
    if not servers or not topic or "/" in topic:
        raise ValueError(f"a Kafka log URL is kafka://host:port[,host:port…]/topic: {url!r}")
    for hp in servers.split(","):
        host, _, port = hp.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"not host:port in the Kafka log URL: {hp!r}")
    return KafkaUrl(servers, topic, dict(parse_qsl(query)))
