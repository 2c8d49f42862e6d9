"""Every setting of AAP as a ``(name, default, help)`` record, and the typed, frozen
:class:`Settings` built from them.

A setting named ``max_event_bytes`` is read from the environment variable
``AAP_MAX_EVENT_BYTES`` and otherwise takes its default. The README's
"Settings" table lists every record here; a test fails when one is missing.

Each setting belongs to exactly one section (:class:`CollectorSettings`,
:class:`TierSettings`, :class:`QuerySettings` ...), a frozen dataclass whose fields
carry the settings' names and types; it is read only through it
(``settings.collector.max_event_bytes``). A section checks its values when it is
made, so a :class:`Settings` that exists is valid: a bad value is a ``ValueError``
naming the variable, which the CLI prints before it starts anything. Secrets
(``secret=True``) are left out of ``repr`` and of :meth:`Settings.as_env`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from aap.datadir import DataDir
from aap.logurl import parse_url
from aap.privacy.purposes import MAX_RETENTION_DAYS

MiB = 1024 * 1024


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    secret: bool = False
    """Never printed, logged, or handed on by :meth:`Settings.as_env`."""

    @property
    def env(self) -> str:
        return "AAP_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", "./aap-data", "Directory holding the log, the source registry and run files."),
    Setting("host", "127.0.0.1", "Address the server binds to."),
    Setting("port", 8000, "TCP port the server listens on."),
    Setting("workers", 0, "Collector worker processes; 0 means one per CPU core."),
    Setting("meta_url", "", "Shared state on PostgreSQL (`postgresql://user:password@host:5432/db`), for several collectors and processors: the stores README's Shared state on PostgreSQL lists as covered; empty: SQLite files under the data dir.", secret=True),
    Setting("log_backend", "sqlite", "Durable log: `sqlite` (embedded) or `null` (no durability, benchmarks only)."),
    Setting("log_url", "sqlite:", "Where the durable log is: `sqlite:` (embedded, DATA_DIR/log) or `kafka://host:port[,host:port…]/topic` (see README, Log on Kafka); `AAP_LOG_BACKEND=null` overrides it."),
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
    Setting("key_lookups_per_second", 200.0, "Reads of write and device keys a collector has not seen before, per second, split across its workers (one second's worth may come at once); over it such a request gets 429 `key_lookups_limited` without a read, so a spray of random keys costs the registry (PostgreSQL with `AAP_META_URL`) at most this. Keys in use are not counted; 0 means no limit."),
    Setting("max_pending_appends", 2000, "Batches waiting for a group commit in one worker before new ones get 503."),
    Setting("shared_state_thread", True, "With `AAP_META_URL`: each collector worker calls PostgreSQL (consent gate, keystore, privacy requests) from a thread of its own, and the batches that waited together share its transactions; `false`: on the worker's event loop, one request at a time (the way before 2026-12-05, for comparison: `aap bench sharedstate`)."),
    Setting("session_inactivity_minutes", 30, "A device's session (per stream: the anonymousId, else the userId) ends after this long without events (when the SDK sends no session id)."),
    Setting("session_late_minutes", 60, "An event received more than this long (plus the inactivity) after its stream's previous event starts a new session, whatever its own time: the processor forgets streams idle for longer."),
    Setting("processor_worker", True, "Prepare log chunks (decode, enrichment) in a child process of the core, in parallel with the processor's stateful steps; `false` does all in one thread."),
    Setting("prepare_processes", 2, "Child processes preparing log chunks (with `processor_worker`), taking chunks in turn: more than one lets a processor draining a backlog use more cores."),
    Setting("warehouse_memory", "1GB", "Memory limit of the warehouse's DuckDB (e.g. `1GB`, `512MB`)."),
    Setting("hot_days", 7, "Days events stay in the hot tier (DuckDB) before moving to the warm tier."),
    Setting("warm_days", 90, "Days events stay in the warm tier (daily Parquet) before they are archived to the cold tier."),
    Setting("cold_days", 760, "Days events are kept at all, whatever their purposes (at most 760, 25 months); older ones are erased by the retention job."),
    Setting("tiering_interval_s", 300.0, "How often the tiering job runs (seconds)."),
    Setting("publish_seconds", 0.0, "Publish the hot rows as batch files to the tier store every this many seconds, listed on the shared-state database (see README, Storage: batch files); 0: off, hot rows move after AAP_HOT_DAYS as before."),
    Setting("retention_interval_s", 300.0, "How often the retention job takes expired purposes off events and erases expired events (seconds; at most 1800, so data goes at most an hour late)."),
    Setting("tier_url", "", "Where warm and cold files go: a path or `s3://bucket/prefix` (default DATA_DIR/tiers)."),
    Setting("s3_endpoint_url", "", "Endpoint of an S3-compatible store (e.g. `http://127.0.0.1:9000`); empty for AWS."),
    Setting("s3_access_key", "", "Access key for `s3://` tier URLs and imports."),
    Setting("s3_secret_key", "", "Secret key for `s3://` tier URLs and imports.", secret=True),
    Setting("s3_region", "us-east-1", "Region for `s3://` tier URLs and imports."),
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
    Setting("health_interval_ms", 500, "How often a worker re-checks free disk and consumer lag (ms), in a thread of its own that requests wait for; an answer never comes from a check begun longer ago."),
    Setting("public_url", "", "Base URL at which SDKs reach the collector (e.g. `https://aap.example.com`), for the settings it hands to Segment's browser SDK; empty: taken from the request's Host when that host is allowed (see `AAP_ALLOWED_HOSTS`)."),
    Setting("allowed_hosts", "", "Comma-separated host names (with `:port` or without) that the Segment settings endpoint may name as `apiHost` when `AAP_PUBLIC_URL` is empty; empty: `localhost`, `127.0.0.1`, `[::1]` and the address the server binds to. Any other Host gets 400."),
    Setting("stream_max_message_bytes", 1 * MiB, "Largest message `GET /v1/stream` (WebSocket) takes (bytes); a larger one closes the connection with 1009."),
    Setting("stream_max_events", 500, "Most events in one `/v1/stream` message; more close the connection with 1009."),
    Setting("stream_max_unacked", 16, "Messages of one `/v1/stream` connection being stored at once; the server reads no further message from it until one is acknowledged (back-pressure on the socket)."),
    Setting("stream_idle_timeout_s", 60.0, "A `/v1/stream` connection that sent no batch (nor its `auth` message) for this long, with nothing waiting for its ack, is closed with 1000 (seconds)."),
    Setting("stream_ping_interval_s", 20.0, "After this long without a message from a `/v1/stream` client the server sends `{\"ping\": n}`; one that sends nothing in the next interval either is closed with 1001 (seconds)."),
    Setting("stream_connections_per_source", 64, "Open `/v1/stream` connections of one source in one worker; one more is closed with 1008."),
    Setting("stream_connections_per_worker", 1024, "Open `/v1/stream` connections in one worker, all sources together; one more is closed with 1008."),
    Setting("device_max_request_bytes", 64 * 1024, "Largest `POST /v1/devices/telemetry` body, after decompression (bytes): small devices send small batches."),
    Setting("device_max_readings", 200, "Most readings in one telemetry batch (REST body or MQTT message); more are refused with 413."),
    Setting("device_location_decimals", 1, "Decimals a device's `lat`/`lon` reading keeps (1: about 11 km); precise coordinates are never stored. 0 to 2."),
    Setting("mqtt_broker", "", "MQTT broker the bridge subscribes to (`mqtt://user:password@host:1883`); when set, `aap serve` starts the bridge. Empty: no bridge.", secret=True),
    Setting("mqtt_client_id", "aap-bridge", "The bridge's MQTT client id: fixed, so its persistent session (QoS 1 readings not yet acknowledged) survives a restart."),
    Setting("metrics_token", "", "When set, `GET /metrics` needs `Authorization: Bearer <token>` (401 otherwise).", secret=True),
    Setting("default_source_rate_limit", 1000.0, "Rate limit (events/s) of a source created without `--rate-limit`; 0 means unlimited."),
    Setting("header_timeout_s", 10.0, "Longest time a client may take to send a request's headers before the connection is closed (seconds)."),
    Setting("body_timeout_s", 30.0, "Longest time a client may take to send a request's body before it is answered 408 (seconds)."),
    Setting("tls_cert", "", "PEM certificate (chain) file: with `AAP_TLS_KEY`, the server speaks HTTPS only and sends `Strict-Transport-Security` (also `aap serve --tls-cert`)."),
    Setting("tls_key", "", "PEM private key file of `AAP_TLS_CERT` (also `aap serve --tls-key`)."),
    Setting("hsts_max_age", 31536000, "`max-age` of the `Strict-Transport-Security` header sent when TLS is on (seconds)."),
    Setting("session_ttl_s", 43200, "How long a web app session (the `aap_session` cookie made from an API key) lasts before its holder signs in again (seconds; default 12 h)."),
    Setting("master_key", "", "Master key wrapping every person's data key (32 bytes, base64); empty: the file DATA_DIR/keys/master.key, made on first use. Never printed, logged or written by AAP.", secret=True),
    Setting("id_hash_key", "", "Key of the keyed hashes of userIds and anonymousIds (32 bytes, base64); empty: the file DATA_DIR/keys/id-hash.key, made on first use. Every collector and processor of one deployment needs the same key (give it as a Secret). Never printed, logged or written by AAP.", secret=True),
    Setting("audit_key", "", "Key of the audit chain's MACs (32 bytes, base64); empty: the file DATA_DIR/keys/audit.key, made on first use. With AAP_META_URL every process needs the same key, or it is refused at start. Never printed, logged or written by AAP.", secret=True),
    Setting("subject_token_key", "", "Root key of the sources' subject secrets, which sign the privacy center's subject tokens (32 bytes, base64); empty: the file DATA_DIR/keys/subject-token.key, made on first use. Never printed, logged or written by AAP.", secret=True),
    Setting("api_key", "", "API key `aap query --url` sends (also `aap query --key`).", secret=True),
)

_BY_NAME = {s.name: s for s in SETTINGS}

MIN_SQL_MEMORY = 384 * 2**20
"""Least ``AAP_SQL_MEMORY``: a worker's Python, DuckDB and Arrow take about 250 MB."""
MIN_RESPONSE_BYTES = 1024
MAX_RETENTION_INTERVAL_S = 1800.0
"""The retention job's longest interval: with a run taking well under half an hour, data
is gone at most an hour after its limit."""


def parse_bytes(text: str) -> int:
    """``1GB``, ``512MB``, ``2GiB``, ``1048576`` → bytes."""
    t = text.strip().upper().replace(" ", "")
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
             "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
    unit = next((u for u in units if t.endswith(u)), "")
    num, mult = (t[: -len(unit)], units[unit]) if unit else (t, 1)
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 1GB, 512MB)") from None
    if not 0 < value < 2**50:
        raise ValueError(f"not a size: {text!r}")
    return int(value * mult)


def _coerce(setting: Setting, raw: str) -> Any:
    if isinstance(setting.default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(setting.default, int):
        return int(raw)
    if isinstance(setting.default, float):
        return float(raw)
    return raw


def _given(setting: Setting, value: object) -> Any:
    """An explicit override (a CLI option) as the setting's type."""
    if isinstance(setting.default, bool):
        return bool(value)
    return type(setting.default)(value)


def _resolve(setting: Setting, overrides: Mapping[str, object]) -> Any:
    if overrides.get(setting.name) is not None:
        return _given(setting, overrides[setting.name])
    if setting.env in os.environ:
        try:
            return _coerce(setting, os.environ[setting.env])
        except ValueError as exc:
            raise ValueError(f"{setting.env}={os.environ[setting.env]!r} is not valid: {exc}"
                             ) from None
    return setting.default


S = TypeVar("S", bound="Section")


@dataclass(frozen=True)
class Section:
    """A group of settings; its fields are named as the settings are."""

    @classmethod
    def load(cls: type[S], overrides: Mapping[str, object] | None = None) -> S:
        """The section from ``overrides``, then ``AAP_*`` variables, then defaults."""
        given = overrides or {}
        return cls(**{f.name: _resolve(_BY_NAME[f.name], given) for f in fields(cls)})

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """ValueError naming the variable when a value cannot work."""

    def env(self) -> dict[str, str]:
        """The section's settings as ``AAP_*`` variables, secrets left out."""
        records = (_BY_NAME[f.name] for f in fields(self))
        return {s.env: str(getattr(self, s.name)) for s in records if not s.secret}


def _secret() -> Any:
    return field(repr=False)


@dataclass(frozen=True)
class StorageSettings(Section):
    data_dir: str
    log_backend: str
    log_url: str
    warehouse_memory: str
    meta_url: str = _secret()

    def check(self) -> None:
        if self.log_backend not in ("sqlite", "null"):
            raise ValueError(f"unknown log backend {self.log_backend!r} (use sqlite or null)")
        if self.meta_url and not self.meta_url.startswith(("postgresql://", "postgres://")):
            raise ValueError("AAP_META_URL must be a postgresql:// URL (or empty: files"
                             " under the data dir)")
        if self.log_url != "sqlite:":
            try:
                parse_url(self.log_url)
            except ValueError as exc:
                raise ValueError(f"AAP_LOG_URL: {exc} (or `sqlite:`)") from None

    @property
    def kafka(self) -> bool:
        """Whether the log is on Kafka (``AAP_LOG_URL=kafka://…``)."""
        return self.log_backend != "null" and self.log_url.startswith("kafka://")

    @property
    def data(self) -> DataDir:
        return DataDir(Path(self.data_dir).resolve())


@dataclass(frozen=True)
class ServerSettings(Section):
    host: str
    port: int
    workers: int
    header_timeout_s: float
    body_timeout_s: float
    public_url: str
    allowed_hosts: str
    retry_after_seconds: int
    session_ttl_s: int
    metrics_token: str = _secret()

    def check(self) -> None:
        if self.session_ttl_s <= 0:
            raise ValueError("AAP_SESSION_TTL_S must be more than 0")


@dataclass(frozen=True)
class TlsSettings(Section):
    tls_cert: str
    tls_key: str
    hsts_max_age: int

    def check(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both a certificate and its key"
                             " (--tls-cert and --tls-key)")

    @property
    def on(self) -> bool:
        return bool(self.tls_cert)


@dataclass(frozen=True)
class CollectorSettings(Section):
    max_event_bytes: int
    max_request_bytes: int
    trusted_proxies: str
    min_free_disk_mb: int
    max_consumer_lag: int
    consent_per_subject_per_minute: int
    max_pending_appends: int
    key_lookups_per_second: float
    shared_state_thread: bool
    health_interval_ms: int
    default_source_rate_limit: float

    def check(self) -> None:
        if self.key_lookups_per_second < 0:
            raise ValueError("AAP_KEY_LOOKUPS_PER_SECOND: 0 (no limit) or more")
        for part in self.trusted_proxies.split(","):
            try:
                if part.strip():
                    ipaddress.ip_network(part.strip(), strict=False)
            except ValueError:
                raise ValueError(f"AAP_TRUSTED_PROXIES: not an IP network: {part.strip()!r}"
                                 ) from None


@dataclass(frozen=True)
class StreamSettings(Section):
    """The limits of WebSocket ingestion (``GET /v1/stream``, :mod:`aap.collect.stream`)."""

    stream_max_message_bytes: int
    stream_max_events: int
    stream_max_unacked: int
    stream_idle_timeout_s: float
    stream_ping_interval_s: float
    stream_connections_per_source: int
    stream_connections_per_worker: int

    def check(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"AAP_{f.name.upper()} must be more than 0")


@dataclass(frozen=True)
class DeviceSettings(Section):
    """IoT devices: REST telemetry limits, location coarsening, the MQTT bridge."""

    device_max_request_bytes: int
    device_max_readings: int
    device_location_decimals: int
    mqtt_client_id: str
    mqtt_broker: str = _secret()

    def check(self) -> None:
        if self.device_max_request_bytes <= 0 or self.device_max_readings <= 0:
            raise ValueError("AAP_DEVICE_MAX_REQUEST_BYTES and AAP_DEVICE_MAX_READINGS must be"
                             " more than 0")
        if not 0 <= self.device_location_decimals <= 2:
            raise ValueError("AAP_DEVICE_LOCATION_DECIMALS must be 0, 1 or 2 (no precise"
                             " coordinates are stored)")
        if self.mqtt_broker and not self.mqtt_broker.startswith(("mqtt://", "mqtts://")):
            raise ValueError("AAP_MQTT_BROKER must be an mqtt:// or mqtts:// URL")
        if not self.mqtt_client_id:
            raise ValueError("AAP_MQTT_CLIENT_ID must not be empty")


@dataclass(frozen=True)
class ProcessorSettings(Section):
    session_inactivity_minutes: int
    session_late_minutes: int
    processor_worker: bool
    prepare_processes: int

    def check(self) -> None:
        if self.session_inactivity_minutes <= 0:
            raise ValueError("AAP_SESSION_INACTIVITY_MINUTES must be more than 0")
        if self.session_late_minutes < 0:
            raise ValueError("AAP_SESSION_LATE_MINUTES must be 0 or more")


@dataclass(frozen=True)
class TierSettings(Section):
    """The tiers, and how long events and log records are kept."""

    hot_days: int
    warm_days: int
    cold_days: int
    tiering_interval_s: float
    retention_interval_s: float
    log_retention_hours: float
    tier_url: str
    publish_seconds: float

    def check(self) -> None:
        """Refuse a configuration that keeps personal data unlimited or over 25 months,
        or that cannot enforce retention within an hour."""
        if not 0 <= self.publish_seconds <= 3600:
            raise ValueError(f"AAP_PUBLISH_SECONDS={self.publish_seconds:g}: must be 0 (off)"
                             " or a number of seconds up to 3600")
        cold = self.cold_days
        if not 1 <= cold <= MAX_RETENTION_DAYS:
            raise ValueError(f"AAP_COLD_DAYS={cold}: events must be kept between 1 and"
                             f" {MAX_RETENTION_DAYS} days (25 months); it cannot be unlimited")
        interval = self.retention_interval_s
        if not 0 < interval <= MAX_RETENTION_INTERVAL_S:
            raise ValueError(f"AAP_RETENTION_INTERVAL_S={interval:g}: must be more than 0 and"
                             f" at most {MAX_RETENTION_INTERVAL_S:g} seconds, so data goes at"
                             " most an hour late")
        self.check_log_retention(())

    def check_log_retention(self, purpose_days: Iterable[int]) -> None:
        """The log holds events of every purpose: it keeps them at most as long as the
        shortest retention of a purpose (``purpose_days``), and of AAP_COLD_DAYS."""
        hours = self.log_retention_hours
        shortest = min(purpose_days, default=MAX_RETENTION_DAYS)
        if not 0 < hours <= 24 * min(shortest, self.cold_days):
            raise ValueError(
                f"AAP_LOG_RETENTION_HOURS={hours:g}: the log holds events of every purpose, so"
                f" it must keep them more than 0 and at most {24 * min(shortest, self.cold_days)}"
                " hours (the shortest retention of a purpose, or AAP_COLD_DAYS); 0 (forever)"
                " is refused")


@dataclass(frozen=True)
class S3Settings(Section):
    s3_endpoint_url: str
    s3_access_key: str
    s3_region: str
    s3_secret_key: str = _secret()


@dataclass(frozen=True)
class QuerySettings(Section):
    query_timeout_s: float
    sql_max_rows: int
    query_concurrency: int
    query_concurrency_per_key: int
    query_queue_per_key: int
    max_insight_cells: int
    max_response_bytes: int
    sql_memory: str
    sql_workers: int
    query_cache: bool
    query_cache_interval_s: float

    def check(self) -> None:
        """The query limits can work (ValueError naming the setting)."""
        total, per_key = self.query_concurrency, self.query_concurrency_per_key
        if per_key < 1 or total < per_key:
            raise ValueError(f"AAP_QUERY_CONCURRENCY={total}, AAP_QUERY_CONCURRENCY_PER_KEY="
                             f"{per_key}: need 1 <= per key <= all keys together")
        if self.query_queue_per_key < 0:
            raise ValueError("AAP_QUERY_QUEUE_PER_KEY must be 0 or more")
        if self.max_insight_cells < 1:
            raise ValueError("AAP_MAX_INSIGHT_CELLS must be at least 1")
        if self.sql_memory_bytes < MIN_SQL_MEMORY:
            raise ValueError(f"AAP_SQL_MEMORY={self.sql_memory}: at least "
                             f"{MIN_SQL_MEMORY // 2**20} MiB (a worker's Python, DuckDB and"
                             " Arrow take about 250 MB of it before any query)")
        if self.max_response_bytes < MIN_RESPONSE_BYTES:
            raise ValueError(f"AAP_MAX_RESPONSE_BYTES={self.max_response_bytes}: at least"
                             f" {MIN_RESPONSE_BYTES}")

    @property
    def sql_memory_bytes(self) -> int:
        try:
            return parse_bytes(self.sql_memory)
        except ValueError as exc:
            raise ValueError(f"AAP_SQL_MEMORY: {exc}") from None


@dataclass(frozen=True)
class PrivacySettings(Section):
    ipv4_prefix: int
    ipv6_prefix: int
    master_key: str = _secret()
    id_hash_key: str = _secret()
    audit_key: str = _secret()
    subject_token_key: str = _secret()

    KEYS = ("master_key", "id_hash_key", "audit_key", "subject_token_key")
    """The secret keys that may be given in the environment instead of files."""

    def check(self) -> None:
        if not 0 <= self.ipv4_prefix <= 32 or not 0 <= self.ipv6_prefix <= 128:
            raise ValueError(f"AAP_IPV4_PREFIX={self.ipv4_prefix}, AAP_IPV6_PREFIX="
                             f"{self.ipv6_prefix}: must be 0..32 and 0..128")
        for name in self.KEYS:
            self.key_bytes(name)

    def key_bytes(self, name: str) -> bytes | None:
        """The key ``name`` (one of :attr:`KEYS`) decoded, or None when it is not set;
        a clear error naming the setting when it is not 32 bytes of base64."""
        text = getattr(self, name)
        if not text:
            return None
        env = "AAP_" + name.upper()
        try:
            key = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise ValueError(f"{env}: not base64") from None
        if len(key) != 32:
            raise ValueError(f"{env}: the key must be 32 bytes (base64), not {len(key)}")
        return key

    @property
    def master_key_bytes(self) -> bytes | None:
        """``AAP_MASTER_KEY`` decoded, or None when it is not set."""
        return self.key_bytes("master_key")


@dataclass(frozen=True)
class ClientSettings(Section):
    """What the CLI sends when it asks a server (``aap query --url``)."""

    api_key: str = _secret()


@dataclass(frozen=True, init=False)
class Settings:
    """Resolved and checked settings: explicit overrides, then ``AAP_*`` variables, then
    defaults; one typed section per group."""

    storage: StorageSettings
    server: ServerSettings
    tls: TlsSettings
    collector: CollectorSettings
    stream: StreamSettings
    devices: DeviceSettings
    processor: ProcessorSettings
    tiers: TierSettings
    s3: S3Settings
    query: QuerySettings
    privacy: PrivacySettings
    client: ClientSettings

    def __init__(self, **overrides: object) -> None:
        unknown = set(overrides) - set(_BY_NAME)
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        for f in fields(self):
            object.__setattr__(self, f.name, SECTIONS[f.name].load(overrides))

    @property
    def data(self) -> DataDir:
        """The paths under the data dir."""
        return self.storage.data

    @property
    def data_path(self) -> Path:
        return self.storage.data.root

    @property
    def tier_url(self) -> str:
        """Where warm and cold files go: ``AAP_TIER_URL``, else DATA_DIR/tiers."""
        return self.tiers.tier_url or str(self.data.tiers)

    def sections(self) -> tuple[Section, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    def as_env(self) -> dict[str, str]:
        """The settings as ``AAP_*`` variables, to hand to worker processes; secrets are
        left out (a child has them from the environment it inherits, if they were set)."""
        return {k: v for section in self.sections() for k, v in section.env().items()}


SECTIONS: dict[str, type[Section]] = {
    "storage": StorageSettings, "server": ServerSettings, "tls": TlsSettings,
    "collector": CollectorSettings, "stream": StreamSettings,
    "devices": DeviceSettings, "processor": ProcessorSettings, "tiers": TierSettings,
    "s3": S3Settings, "query": QuerySettings, "privacy": PrivacySettings,
    "client": ClientSettings}
