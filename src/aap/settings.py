"""Every setting of AAP as a ``(name, default, help)`` record.

A setting named ``max_event_bytes`` is read from the environment variable
``AAP_MAX_EVENT_BYTES`` and otherwise takes its default. The README's
"Settings" table lists every record here; a test fails when one is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str

    @property
    def env(self) -> str:
        return "AAP_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", "./aap-data", "Directory holding the log, the source registry and run files."),
    Setting("host", "127.0.0.1", "Address the server binds to."),
    Setting("port", 8000, "TCP port the server listens on."),
    Setting("workers", 0, "Collector worker processes; 0 means one per CPU core."),
    Setting("log_backend", "sqlite", "Durable log: `sqlite` (embedded) or `null` (no durability, benchmarks only)."),
    Setting("max_event_bytes", 1 * MiB, "Largest single event accepted, after decompression (bytes)."),
    Setting("max_request_bytes", 20 * MiB, "Largest request body accepted, after decompression (bytes)."),
    Setting("trusted_proxies", "", "Comma-separated CIDRs whose X-Forwarded-For header is believed."),
    Setting("ipv4_prefix", 24, "Bits of an IPv4 address kept when it is truncated."),
    Setting("ipv6_prefix", 48, "Bits of an IPv6 address kept when it is truncated."),
    Setting("min_free_disk_mb", 256, "Below this much free disk (MiB) under the data dir, ingestion answers 503."),
    Setting("max_consumer_lag", 50_000_000, "Above this many unconsumed events for a consumer group, ingestion answers 503."),
    Setting("log_retention_hours", 168.0, "Log records older than this are dropped (checked every minute by each worker); more than 0 and at most the shortest retention of a purpose."),
    Setting("retry_after_seconds", 1, "Value of the Retry-After header on 429 and 503 answers."),
    Setting("consent_per_subject_per_minute", 30, "Consent statements `POST /v1/consent` takes for one id in one scope per minute, per worker (then 429); 0 means no cap."),
    Setting("max_pending_appends", 2000, "Batches waiting for a group commit in one worker before new ones get 503."),
    Setting("session_inactivity_minutes", 30, "A person's session ends after this long without events (when the SDK sends no session id)."),
    Setting("processor_worker", True, "Prepare log chunks (decode, enrichment) in a child process of the core, in parallel with the processor's stateful steps; `false` does all in one thread."),
    Setting("prepare_processes", 2, "Child processes preparing log chunks (with `processor_worker`), taking chunks in turn: more than one lets a processor draining a backlog use more cores."),
    Setting("warehouse_memory", "1GB", "Memory limit of the warehouse's DuckDB (e.g. `1GB`, `512MB`)."),
    Setting("hot_days", 7, "Days events stay in the hot tier (DuckDB) before moving to the warm tier."),
    Setting("warm_days", 90, "Days events stay in the warm tier (daily Parquet) before they are archived to the cold tier."),
    Setting("cold_days", 760, "Days events are kept at all, whatever their purposes (at most 760, 25 months); older ones are erased by the retention job."),
    Setting("tiering_interval_s", 300.0, "How often the tiering job runs (seconds)."),
    Setting("retention_interval_s", 300.0, "How often the retention job takes expired purposes off events and erases expired events (seconds; at most 1800, so data goes at most an hour late)."),
    Setting("tier_url", "", "Where warm and cold files go: a path or `s3://bucket/prefix` (default DATA_DIR/tiers)."),
    Setting("s3_endpoint_url", "", "Endpoint of an S3-compatible store (e.g. `http://127.0.0.1:9000`); empty for AWS."),
    Setting("s3_access_key", "", "Access key for `s3://` tier URLs."),
    Setting("s3_secret_key", "", "Secret key for `s3://` tier URLs."),
    Setting("s3_region", "us-east-1", "Region for `s3://` tier URLs."),
    Setting("query_timeout_s", 60.0, "Longest an insight or SQL query may run before it is stopped (seconds)."),
    Setting("sql_max_rows", 100_000, "Most rows a `sql` query returns (it may ask for fewer with `limit`)."),
    Setting("query_concurrency", 4, "Queries (insights and `sql`) running at once in the core, all API keys together; more than `query_concurrency_per_key`, so that one key cannot take every slot."),
    Setting("query_concurrency_per_key", 2, "Queries of one API key running at once; further ones wait in the key's queue."),
    Setting("query_queue_per_key", 8, "Queries of one API key waiting for a slot; one more gets 429 with Retry-After."),
    Setting("max_insight_cells", 100_000, "Most cells (series x breakdown values x buckets) an insight's answer may have; checked before it runs (400 `too_many_cells`)."),
    Setting("max_response_bytes", 50 * MiB, "Largest answer of the query API (bytes); a larger one is a 400 `response_too_large`."),
    Setting("sql_memory", "1GB", "Memory limit of the worker process that runs one `sql` query (the OS limit of its data segment, e.g. `1GB`, `512MB`); DuckDB's own limit in it is 60% of this."),
    Setting("sql_workers", 2, "Idle worker processes kept started for `sql` queries (each runs one query); 0 starts one per query."),
    Setting("query_cache", True, "Keep a native DuckDB copy of the warm and cold tiers for queries (see README, Analytics)."),
    Setting("query_cache_interval_s", 10.0, "How often the query cache picks up new, retired and merged data (seconds)."),
    Setting("health_interval_ms", 500, "How often a worker re-checks free disk and consumer lag (ms)."),
    Setting("public_url", "", "Base URL at which SDKs reach the collector (e.g. `https://aap.example.com`), for the settings it hands to Segment's browser SDK; empty: taken from the request's Host when that host is allowed (see `AAP_ALLOWED_HOSTS`)."),
    Setting("allowed_hosts", "", "Comma-separated host names (with `:port` or without) that the Segment settings endpoint may name as `apiHost` when `AAP_PUBLIC_URL` is empty; empty: `localhost`, `127.0.0.1`, `[::1]` and the address the server binds to. Any other Host gets 400."),
    Setting("metrics_token", "", "When set, `GET /metrics` needs `Authorization: Bearer <token>` (401 otherwise)."),
    Setting("default_source_rate_limit", 1000.0, "Rate limit (events/s) of a source created without `--rate-limit`; 0 means unlimited."),
    Setting("header_timeout_s", 10.0, "Longest time a client may take to send a request's headers before the connection is closed (seconds)."),
    Setting("body_timeout_s", 30.0, "Longest time a client may take to send a request's body before it is answered 408 (seconds)."),
    Setting("tls_cert", "", "PEM certificate (chain) file: with `AAP_TLS_KEY`, the server speaks HTTPS only and sends `Strict-Transport-Security` (also `aap serve --tls-cert`)."),
    Setting("tls_key", "", "PEM private key file of `AAP_TLS_CERT` (also `aap serve --tls-key`)."),
    Setting("hsts_max_age", 31536000, "`max-age` of the `Strict-Transport-Security` header sent when TLS is on (seconds)."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def _coerce(setting: Setting, raw: str) -> Any:
    if isinstance(setting.default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(setting.default, int):
        return int(raw)
    if isinstance(setting.default, float):
        return float(raw)
    return raw


class Settings:
    """Resolved settings: explicit overrides, then ``AAP_*`` variables, then defaults."""

    def __init__(self, **overrides: Any) -> None:
        values: dict[str, Any] = {}
        for s in SETTINGS:
            if s.name in overrides and overrides[s.name] is not None:
                values[s.name] = overrides[s.name]
            elif s.env in os.environ:
                try:
                    values[s.name] = _coerce(s, os.environ[s.env])
                except ValueError as exc:
                    raise ValueError(f"{s.env}={os.environ[s.env]!r} is not valid: {exc}") from None
            else:
                values[s.name] = s.default
        unknown = set(overrides) - set(_BY_NAME)
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def data_path(self) -> Path:
        return Path(self._values["data_dir"]).resolve()

    def as_env(self) -> dict[str, str]:
        """The settings as ``AAP_*`` variables, to hand to worker processes."""
        return {_BY_NAME[k].env: str(v) for k, v in self._values.items()}
