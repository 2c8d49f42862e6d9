"""Choosing the Kafka log (no broker needed: the log connects on first use)."""

from __future__ import annotations

import pytest

from aap.log import open_log
from aap.log.kafka import KafkaLog
from aap.logurl import parse_url
from aap.settings import Settings


def test_url_parsing() -> None:
    u = parse_url("kafka://a:1,b:2/events?linger.ms=5")
    assert (u.servers, u.topic, u.options) == ("a:1,b:2", "events", {"linger.ms": "5"})
    for bad in ("kafka://a:1", "kafka:///t", "kafka://a/t", "http://a:1/t", "kafka://a:1/t/x"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_the_setting_selects_the_kafka_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AAP_LOG_URL", "kafka://127.0.0.1:1/events")
    log = open_log(Settings())
    assert isinstance(log, KafkaLog) and log.topic == "events"
    log.close()
    monkeypatch.setenv("AAP_LOG_BACKEND", "null")
    assert not isinstance(open_log(Settings()), KafkaLog)
    monkeypatch.setenv("AAP_LOG_URL", "kafka://nowhere/events")
    with pytest.raises(ValueError, match="AAP_LOG_URL"):
        Settings()


def test_url_options_reach_the_clients_they_name() -> None:
    log = KafkaLog("kafka://a:1/t?client.rack=r1&producer.linger.ms=7"
                   "&consumer.fetch.min.bytes=3&consumer.group.id=not-this&producer.acks=1")
    prod, cons = log._producer_conf(), log._consumer_conf()
    assert prod["client.rack"] == cons["client.rack"] == "r1"
    assert prod["linger.ms"] == "7" and "fetch.min.bytes" not in prod
    assert cons["fetch.min.bytes"] == "3" and "linger.ms" not in cons
    # what the guarantees rest on cannot be changed from the URL
    assert cons["group.id"] == "processor" and cons["enable.auto.commit"] is False
    assert prod["enable.idempotence"] is True and prod["acks"] == "all"
