"""The warehouse schema (DuckDB). Timestamps are UTC ``TIMESTAMP``s.

Tables are what the processor writes; views are what analysts query. Events live in
three tiers: the hot table ``events_raw`` and the warm and cold Parquet files listed
in ``tier_files``; each query cursor registers those files as ``warm_events`` and
``cold_events`` and gets the views below as temporary views, so every query reads one
logical ``events`` across the tiers. The hot table keeps the person id an event had
when it was processed; the ``events`` view resolves merges through
``person_overrides``, so an event sent before a person identified themselves counts
for that person everywhere, without rewriting history at query time. (Moving a day to
the warm tier writes the resolved ids, so the join rarely matches there.)
"""

from __future__ import annotations

import pyarrow as pa

EVENT_COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    ("message_id", "VARCHAR", pa.string()),
    ("source", "VARCHAR", pa.string()),
    ("type", "VARCHAR", pa.string()),
    ("event", "VARCHAR", pa.string()),
    ("timestamp", "TIMESTAMP", pa.timestamp("us")),
    ("sent_at", "TIMESTAMP", pa.timestamp("us")),
    ("received_at", "TIMESTAMP", pa.timestamp("us")),
    ("person_id", "BIGINT", pa.int64()),
    ("session_id", "VARCHAR", pa.string()),
    ("name", "VARCHAR", pa.string()),
    ("category", "VARCHAR", pa.string()),
    ("url", "VARCHAR", pa.string()),
    ("host", "VARCHAR", pa.string()),
    ("path", "VARCHAR", pa.string()),
    ("referrer", "VARCHAR", pa.string()),
    ("referrer_domain", "VARCHAR", pa.string()),
    ("utm_source", "VARCHAR", pa.string()),
    ("utm_medium", "VARCHAR", pa.string()),
    ("utm_campaign", "VARCHAR", pa.string()),
    ("utm_term", "VARCHAR", pa.string()),
    ("utm_content", "VARCHAR", pa.string()),
    ("browser", "VARCHAR", pa.string()),
    ("browser_version", "VARCHAR", pa.string()),
    ("os", "VARCHAR", pa.string()),
    ("os_version", "VARCHAR", pa.string()),
    ("device_type", "VARCHAR", pa.string()),
    ("country", "VARCHAR", pa.string()),
    ("region", "VARCHAR", pa.string()),
    ("city", "VARCHAR", pa.string()),
    ("library_name", "VARCHAR", pa.string()),
    ("library_version", "VARCHAR", pa.string()),
    ("properties", "JSON", pa.string()),
    ("gpc", "BOOLEAN", pa.bool_()),
    ("dnt", "BOOLEAN", pa.bool_()),
    ("purposes", "VARCHAR[]", pa.list_(pa.string())),
)

EVENT_ARROW_SCHEMA = pa.schema([(n, t) for n, _, t in EVENT_COLUMNS])

SESSION_STREAMS_DDL = """
CREATE TABLE IF NOT EXISTS session_streams (
    stream_key BIGINT NOT NULL,
    last_ts TIMESTAMP NOT NULL,
    session_id VARCHAR NOT NULL,
    seen_ms BIGINT NOT NULL,
    log_partition INTEGER NOT NULL
);
"""
"""The processor's open device streams (:func:`aap.process.steps.sessions`), written with
each chunk: ``stream_key`` is the keyed anonymousId, else the keyed userId (a keyed hash,
as ``person_ids.id_key``); ``last_ts`` the time of the stream's latest event and
``session_id`` its session; ``seen_ms`` the latest time of receipt (ms since the epoch);
``log_partition`` the stream's partition of the log. One row per stream (the writer
deletes a stream's row before it inserts the new one; no primary key: see
:func:`aap.store.warehouse._write_streams`). Streams idle longer than the inactivity and
the late margin are deleted; erasure and retention delete a person's."""

PUBLISH_BATCH = "publish_batch"
"""The hot table's last column, after the events' columns: NULL for a hot row, the batch's
number once publishing has marked the row (:mod:`aap.store.publish`). Marking writes this
one column instead of copying every column of the row to another table: ~25 instead of
~890 bytes an event in DuckDB's WAL (with the chunks' own, about half the checkpoints) and
an 11th to a 15th of the time the mark keeps the processor's chunks out (``aap bench
publishmark``, 2026-12-06)."""
HOT = f"SELECT * EXCLUDE ({PUBLISH_BATCH}) FROM events_raw WHERE {PUBLISH_BATCH} IS NULL"
"""The hot rows not marked for publishing, with the events' columns: what queries read as
the hot tier (a marked row is read with the warm files until its batch is listed)."""

DDL = f"""
CREATE TABLE IF NOT EXISTS events_raw (
    {", ".join(f'"{n}" {t}' for n, t, _ in EVENT_COLUMNS)},
    {PUBLISH_BATCH} BIGINT
);
CREATE TABLE IF NOT EXISTS persons (
    person_id BIGINT PRIMARY KEY,
    first_seen TIMESTAMP,
    last_seen TIMESTAMP,
    identified BOOLEAN NOT NULL DEFAULT false,
    traits JSON
);
CREATE TABLE IF NOT EXISTS person_ids (
    id_key BIGINT PRIMARY KEY,
    person_id BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS person_overrides (
    old_person_id BIGINT PRIMARY KEY,
    person_id BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    order_id VARCHAR,
    message_id VARCHAR,
    source VARCHAR,
    person_id BIGINT,
    session_id VARCHAR,
    timestamp TIMESTAMP,
    revenue DOUBLE,
    currency VARCHAR,
    items INTEGER
);
CREATE TABLE IF NOT EXISTS order_items (
    order_id VARCHAR,
    message_id VARCHAR,
    product_id VARCHAR,
    name VARCHAR,
    category VARCHAR,
    price DOUBLE,
    quantity DOUBLE
);
CREATE TABLE IF NOT EXISTS products (
    product_id VARCHAR PRIMARY KEY,
    name VARCHAR,
    category VARCHAR,
    price DOUBLE,
    first_seen TIMESTAMP,
    last_seen TIMESTAMP
);
CREATE TABLE IF NOT EXISTS processor_state (
    name VARCHAR PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS tier_files (
    path VARCHAR PRIMARY KEY,
    tier VARCHAR NOT NULL,
    part VARCHAR NOT NULL,
    rows BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    log_offset BIGINT PRIMARY KEY,
    events INTEGER NOT NULL,
    set_aside_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS person_flags (
    person_id BIGINT NOT NULL,
    flag VARCHAR NOT NULL,
    set_at TIMESTAMP NOT NULL,
    PRIMARY KEY (person_id, flag)
);
CREATE TABLE IF NOT EXISTS tier_trash (
    path VARCHAR PRIMARY KEY,
    delete_after TIMESTAMP NOT NULL
);
""" + SESSION_STREAMS_DDL

VIEWS = f"""
CREATE OR REPLACE TEMP VIEW events_all AS
    {HOT}
    UNION ALL SELECT * FROM warm_events
    UNION ALL SELECT * FROM cold_events;
CREATE OR REPLACE TEMP VIEW events_visible AS
    SELECT * FROM (
        SELECT e.* REPLACE (coalesce(o.person_id, e.person_id) AS person_id)
        FROM events_all e LEFT JOIN person_overrides o ON o.old_person_id = e.person_id)
    WHERE person_id NOT IN (SELECT person_id FROM person_flags WHERE flag = 'restricted');
CREATE OR REPLACE TEMP VIEW events AS SELECT * FROM events_visible;
CREATE OR REPLACE TEMP VIEW sessions AS
    SELECT session_id, any_value(person_id) AS person_id,
           min(timestamp) AS started_at, max(timestamp) AS ended_at,
           count(*) AS events,
           count(*) FILTER (WHERE type IN ('page', 'screen')) AS views,
           arg_min(path, timestamp) AS entry_path, arg_max(path, timestamp) AS exit_path,
           arg_min(referrer_domain, timestamp) AS referrer_domain,
           arg_min(utm_campaign, timestamp) AS utm_campaign
    FROM events GROUP BY session_id;
CREATE OR REPLACE TEMP VIEW devices AS
    SELECT device_type, os, os_version, browser, browser_version,
           count(*) AS events, count(DISTINCT person_id) AS persons
    FROM events GROUP BY ALL;
CREATE OR REPLACE TEMP VIEW locations AS
    SELECT country, region, city, count(*) AS events, count(DISTINCT person_id) AS persons
    FROM events GROUP BY ALL;
CREATE OR REPLACE TEMP VIEW content AS
    SELECT message_id, type, coalesce(name, path) AS title, url, host, path, person_id,
           session_id, timestamp
    FROM events WHERE type IN ('page', 'screen');
CREATE OR REPLACE TEMP VIEW orders_resolved AS
    SELECT o.* REPLACE (coalesce(po.person_id, o.person_id) AS person_id)
    FROM orders o LEFT JOIN person_overrides po ON po.old_person_id = o.person_id;
"""

OLD_VIEWS = ("events", "sessions", "devices", "locations", "content", "orders_resolved")

DEDUP_KEY_SQL = "hash(source, message_id)"
"""An event's dedup key, from its source and message id, as DuckDB computes it: 64 bits
of a fast non-cryptographic hash (a false match needs ~4·10⁹ stored events for even odds
of one). DuckDB does not promise the same values across its versions; the keys are never
stored, only computed from the stored events when the processor starts."""

ROLLUP_DIMS = ("type", "browser", "os", "device_type", "country", "region", "city")
"""Event columns kept in the query cache's daily rollup (:mod:`aap.query.rollup`):
attributes of the device and place, which rarely change within a person's day."""

ROLLUP_COLUMNS = ["file_no", "event", "day", "person_id", "n", "t_min", *ROLLUP_DIMS]

ROLLUP_DDL = f"""
CREATE TABLE IF NOT EXISTS query_cache_rollup (
    file_no INTEGER NOT NULL,
    event VARCHAR,
    day DATE,
    person_id BIGINT,
    n BIGINT NOT NULL,
    t_min TIMESTAMP,
    {", ".join(f'"{d}" VARCHAR' for d in ROLLUP_DIMS)}
);
"""

PAGES_COLUMNS = ["file_no", "day", "path", "person_id", "n"]

PAGES_DDL = """
CREATE TABLE IF NOT EXISTS query_cache_pages (
    file_no INTEGER NOT NULL,
    day DATE,
    path VARCHAR,
    person_id BIGINT,
    n BIGINT NOT NULL
);
"""
"""The query cache's page views per (file, UTC day, path, person) (:mod:`aap.query.sessions`),
created and filled like the session summary."""

SESSIONS_COLUMNS = ["file_no", "day", "session_id", "session_hash", "person_id", "t0", "t1", "views",
                    "entry", "entry_key", "exit", "exit_key", "alone"]

SESSIONS_DDL = """
CREATE TABLE IF NOT EXISTS query_cache_sessions (
    file_no INTEGER NOT NULL,
    day DATE,
    session_id VARCHAR,
    session_hash UBIGINT,
    person_id BIGINT,
    t0 TIMESTAMP,
    t1 TIMESTAMP,
    views BIGINT NOT NULL,
    entry VARCHAR,
    entry_key HUGEINT,
    exit VARCHAR,
    exit_key HUGEINT,
    alone BOOLEAN NOT NULL
);
"""
"""The query cache's session summary (:mod:`aap.query.sessions`): created by the cache's
sync, filled for every cached file in one transaction."""

CACHE_DDL = f"""
CREATE TABLE IF NOT EXISTS query_cache_files (
    path VARCHAR PRIMARY KEY,
    file_no INTEGER NOT NULL,
    rows BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS query_cache_overrides (
    old_person_id BIGINT PRIMARY KEY,
    person_id BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS query_cache_names (
    code INTEGER PRIMARY KEY,
    name VARCHAR NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS query_cache (
    file_no INTEGER NOT NULL,
    session_hash UBIGINT,
    event_code INTEGER,
    {", ".join(f'"{n}" {t}' for n, t, _ in EVENT_COLUMNS)}
);
{ROLLUP_DDL}
"""
"""The query cache's tables (:mod:`aap.query.cache`), its daily rollup included."""

CACHE_COLUMNS = ["file_no", "session_hash", "event_code", *(n for n, _, _ in EVENT_COLUMNS)]
