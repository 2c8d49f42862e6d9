"""Prometheus metrics of the collector, shared by every worker process.

``aap serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at ``DATA_DIR/run/metrics`` before the
workers start, so each worker's counters land in that directory and any worker can
answer ``GET /metrics`` with the sum. Label values are source ids and reason codes only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aap.log.base import LogStats

EVENTS_ACCEPTED = Counter("aap_events_accepted", "Events durably appended to the log.", ["source"])
EVENTS_REJECTED = Counter("aap_events_rejected", "Events refused, by reason.", ["reason"])
EVENTS_NOT_STORED = Counter(
    "aap_events_not_stored", "Valid events not written anywhere, by reason (no lawful basis).",
    ["reason"])
CONSENT_STATEMENTS = Counter("aap_consent_statements", "Statements appended by POST /v1/consent.")
REQUESTS = Counter("aap_requests", "HTTP requests answered, by route and status.",
                   ["route", "status"])
BYTES_IN = Counter("aap_bytes_received", "Request body bytes received (before decompression).")
LATENCY = Histogram(
    "aap_request_duration_seconds", "Time from request start to answer.", ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

KEY_LOOKUPS = Counter(
    "aap_key_lookups", "Reads of a write or device key the worker had not remembered, by"
    " kind and result: found, unknown, limited (not read: over AAP_KEY_LOOKUPS_PER_SECOND).",
    ["kind", "result"])
SHARED_CALLS = Counter(
    "aap_shared_state_calls", "Calls a worker made to the shared state on PostgreSQL"
    " (AAP_META_URL) from its thread of its own; an ingested batch is one.")
SHARED_GROUPS = Counter(
    "aap_shared_state_groups", "Groups those calls were made in: the batches that waited"
    " together are one group (one keystore write); calls / groups is the mean group size.")
SHARED_QUEUED = Gauge(
    "aap_shared_state_queued", "Calls waiting for a worker's shared-state thread now.",
    multiprocess_mode="livesum")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _LogCollector(Collector):
    def __init__(self, stats: Callable[[], LogStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self._stats()
        yield GaugeMetricFamily("aap_log_size_bytes", "Bytes the log takes on disk.",
                                value=st.size_bytes)
        yield GaugeMetricFamily("aap_log_head_offset", "Offset of the newest log record.",
                                value=st.head_offset)
        yield GaugeMetricFamily("aap_log_events", "Events ever appended to the log.",
                                value=st.total_events)
        lag = GaugeMetricFamily("aap_consumer_lag_events",
                                "Events in the log not yet consumed, per consumer group.",
                                labels=["group"])
        for group, n in sorted(st.lag_events.items()):
            lag.add_metric([group], n)
        yield lag


def render(stats: Callable[[], LogStats]) -> bytes:
    log_registry = CollectorRegistry()
    log_registry.register(_LogCollector(stats))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry
    return generate_latest(registry) + generate_latest(log_registry)
