"""The Kafka log's producer under failures injected through librdkafka's mock API
(:mod:`tests.kafka_mock`): errors pushed on the Produce API, a leader moved while its
broker is down. Each append that returned is in the topic once."""

from __future__ import annotations

import pytest

from aap.errors import ServiceUnavailable
from aap.log.base import Append
from aap.log.kafka import KafkaLog
from tests.kafka_mock import Cluster, MockError, new_group, topic_of
from tests.log.test_kafka import cluster, read_all  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow
PRODUCE = 0
"""The Produce API key."""


@pytest.mark.parametrize("error", ["NOT_LEADER_FOR_PARTITION", "REQUEST_TIMED_OUT"])
def test_pushed_produce_errors_are_retried_without_loss_or_double(
        cluster: Cluster, error: str) -> None:  # noqa: F811
    url = cluster.url()
    cluster.topic(topic_of(url), 4, 3)
    log = KafkaLog(url, group=new_group())
    try:
        log.append([Append("s", 1, b"warm", b"k")])  # the producer has its id and leaders
        cluster.track()
        log.append([Append("s", 1, b"a%d" % i, b"k%d" % i) for i in range(40)])
        clean = cluster.requests(PRODUCE)  # what 40 messages take without errors
        cluster.errors(PRODUCE, 5, error)  # the next 5 Produce requests fail with it
        offsets = log.append([Append("s", 1, b"b%d" % i, b"k%d" % i) for i in range(40)])
        assert len(offsets) == 40 and all(offsets)
        retried = cluster.requests(PRODUCE) - clean
        assert retried >= 5 + 1, "the errors were answered and the requests sent again"
        got, _ = read_all(log, 81)
        assert sorted(r.payload for r in got) == sorted(
            [b"warm"] + [b"a%d" % i for i in range(40)] + [b"b%d" % i for i in range(40)])
    finally:
        log.close()


def test_a_leader_down_fails_its_appends_until_the_leader_moves(
        cluster: Cluster) -> None:  # noqa: F811
    url = cluster.url("producer.message.timeout.ms=3000")
    topic = topic_of(url)
    cluster.topic(topic, 4, 3)
    for p in range(4):
        cluster.leader(topic, p, 1 if p < 2 else 2)
    log = KafkaLog(url, group=new_group())
    try:
        keys = [b"k%d" % i for i in range(20)]
        log.append([Append("s", 1, b"a" + k, k) for k in keys])
        got, pos = read_all(log, 20)
        where = {r.payload[1:]: r.partition for r in got}
        led_by_1 = [k for k in keys if where[k] < 2]
        led_by_2 = [k for k in keys if where[k] >= 2]
        assert led_by_1 and led_by_2

        cluster.down(1)
        log.append([Append("s", 1, b"b" + k, k) for k in led_by_2])  # untouched
        with pytest.raises(ServiceUnavailable):  # no leader reachable for these
            log.append([Append("s", 1, b"c" + k, k) for k in led_by_1])
        for p in (0, 1):
            cluster.leader(topic, p, 3)
        log.append([Append("s", 1, b"d" + k, k) for k in led_by_1])  # on the new leader
        cluster.up(1)
        log.append([Append("s", 1, b"e" + k, k) for k in keys])
        more, _ = read_all(log, len(led_by_2) + len(led_by_1) + 20, after=pos)
        every = [r.payload for r in got + more]
        expected = ([b"a" + k for k in keys] + [b"b" + k for k in led_by_2]
                    + [b"d" + k for k in led_by_1] + [b"e" + k for k in keys])
        assert sorted(p for p in every if not p.startswith(b"c")) == sorted(expected)
        assert {r.partition for r in more if r.payload[1:] in led_by_1} <= {0, 1}  # same keys,
        # same partitions: only their leader moved
    finally:
        log.close()


def test_the_holder_obeys_the_mock_api_and_says_what_it_refuses(
        cluster: Cluster) -> None:  # noqa: F811
    cluster.topic("known", 2, 3)
    cluster.leader("known", 0, 2)
    cluster.leader("known", 1, 3)
    assert cluster.leaders("known") == {0: 2, 1: 3}
    cluster.rtt(1, 5)
    cluster.coordinator("some-group", 2)
    cluster.down(3)
    cluster.down(3)  # already down: nothing to do
    cluster.up(3)
    with pytest.raises(MockError, match=r"leader known 2 1: error .*[Uu]nknown"):
        cluster.leader("known", 2, 1)  # no such partition
    with pytest.raises(MockError, match="Broker not available"):
        cluster.leader("known", 0, 9)  # no such broker
    with pytest.raises(MockError, match="unknown command"):
        cluster.command("reboot", 1)
    with pytest.raises(MockError, match="NO_SUCH_ERROR"):
        cluster.errors(PRODUCE, 1, "NO_SUCH_ERROR")
    cluster.track()
    assert cluster.requests(PRODUCE) == 0
