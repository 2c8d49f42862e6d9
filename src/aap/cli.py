"""The ``aap`` command."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from aap.datadir import UNIX_PATH_MAX
from aap.settings import Settings


def data_dir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Data directory (default: $AAP_DATA_DIR or ./aap-data).",
    )(f)


def _actor() -> str:
    from aap.privacy.audit import local_actor

    return local_actor()


def _settings(**kw: Any) -> Settings:
    try:
        return Settings(**kw)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _checked(settings: Settings) -> Settings:
    """Refuse a configuration that would keep personal data longer than a purpose of the
    data dir's registry allows (a clear message); the values alone were checked when the
    settings were made."""
    from aap.privacy.purposes import Registry
    from aap.privacy.retention import check_settings

    try:
        check_settings(settings, Registry.for_data_dir(settings.data_path))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    return settings


def _servable(settings: Settings) -> Settings:
    """:func:`_checked`, and a data dir whose core socket's path fits a Unix socket; with
    the shared state on PostgreSQL, once it takes a connection (a server started while it
    is away waits for it: :func:`aap.store.meta.wait_until_reachable`)."""
    import os

    from aap.datadir import DataDir
    from aap.store.meta import wait_until_reachable

    if settings.storage.meta_url:
        wait_until_reachable(settings.storage.meta_url, lambda msg: click.echo(msg, err=True))

    sock = DataDir(settings.data_path).core_socket
    if len(os.fsencode(sock)) > UNIX_PATH_MAX:
        raise click.ClickException(
            f"the data dir's path is too long: the core's socket {sock} would be"
            f" {len(os.fsencode(sock))} bytes, and a Unix socket's path is at most"
            f" {UNIX_PATH_MAX}; use a shorter --data-dir (AAP_DATA_DIR)")
    if settings.tiers.publish_seconds <= 0:
        from aap.store.publish import unshared_refusal

        refused = unshared_refusal(settings.data.hot_db)
        if refused:
            raise click.ClickException(refused)
    return _checked(settings)


@click.group()
@click.version_option(package_name="aap")
def cli() -> None:
    """AAP: a privacy-first event analytics pipeline."""
    from aap.datadir import restrict_umask

    restrict_umask()  # whatever a command writes in the data dir: owner only


@cli.command()
@data_dir_option
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8000).")
@click.option("--workers", type=int, default=None, help="Worker processes (default: one per core).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM certificate (chain): serve HTTPS only, with HSTS (needs --tls-key).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM private key of --tls-cert.")
@click.option("--role", type=click.Choice(("all", "collector", "processor", "query")),
              default="all", show_default=True,
              help="Run a part: the collector workers alone (any number, each on its own"
                   " port), the processor (with the queries and the MQTT bridge), a query"
                   " node (the REST API and web app over the published files: needs"
                   " AAP_PUBLISH_SECONDS and AAP_META_URL), or all.")
def serve(data_dir: Path | None, host: str | None, port: int | None, workers: int | None,
          tls_cert: str | None, tls_key: str | None, role: str) -> None:
    """Run the collector, the processor and the API."""
    from aap.core.supervisor import RoleUnavailable
    from aap.core.supervisor import serve as run

    settings = _settings(data_dir=data_dir, host=host, port=port, workers=workers,
                         tls_cert=tls_cert and str(Path(tls_cert).resolve()),
                         tls_key=tls_key and str(Path(tls_key).resolve()))
    try:
        run(_servable(settings), role)
    except RoleUnavailable as exc:
        raise click.ClickException(str(exc)) from None


@cli.group()
def cluster() -> None:
    """Run several collector processes and a processor on this machine (development,
    tests)."""


@cluster.command("up")
@data_dir_option
@click.option("--collectors", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Collector processes, on consecutive ports from --port.")
@click.option("--processors", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processor processes; N > 1 needs Kafka (AAP_LOG_URL), AAP_META_URL and"
                   " AAP_PUBLISH_SECONDS, and runs them on DATA_DIR/processor-I.")
@click.option("--query", type=click.IntRange(0, 64), default=0, show_default=True,
              help="Query nodes of their own, on the ports after the processor's (0: the"
                   " processor answers the queries through the collectors; N > 0 needs"
                   " AAP_PUBLISH_SECONDS and AAP_META_URL).")
@click.option("--port", type=int, default=None,
              help="The first collector's port (default 8000); the processor's /healthz"
                   " answers on the port after the last collector's.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes of each collector.")
def cluster_up(data_dir: Path | None, collectors: int, processors: int, query: int,
               port: int | None, workers: int) -> None:
    """Start the topology as processes on 127.0.0.1 until Ctrl-C; each is started again
    if it dies."""
    from aap.cluster import Topology, TopologyRefused, up

    settings = _servable(_settings(data_dir=data_dir, port=port))
    try:
        up(settings, Topology(collectors, processors, query, workers))
    except TopologyRefused as exc:
        raise click.ClickException(str(exc)) from None


def _erasure_record(data_dir: Path | None) -> Any:
    """The record of erasures on the shared-state database of the list of live files."""
    from aap.datadir import DataDir
    from aap.store import erasures, filelist
    from aap.store.meta import MetaUnavailable
    from aap.store.publish import shared_list

    settings = _settings(data_dir=data_dir)
    if settings.tiers.publish_seconds <= 0:
        raise click.ClickException(
            "publishing is off (AAP_PUBLISH_SECONDS=0): no writer publishes to a shared"
            " list of live files, and none holds a record of erasures")
    where = DataDir(settings.data_path).tier_list_db
    if not settings.storage.meta_url and not where.exists():
        raise click.ClickException(f"no list of live files at {where}: no warehouse of this"
                                   " data dir has published yet (or set AAP_META_URL)")
    try:
        db = shared_list(settings.data_path, settings.tiers.publish_seconds,
                         settings.storage.meta_url)
        assert db is not None
        db.migrate(filelist.SCHEMA)
        return erasures.SharedErasures(db)
    except (MetaUnavailable, erasures.ErasuresUnavailable) as exc:
        raise click.ClickException(str(exc)) from None


@cluster.command("writers")
@data_dir_option
def cluster_writers(data_dir: Path | None) -> None:
    """List the warehouses that publish batch files (writers) and the last erasure each
    applied: the record of erasures keeps a row until every writer listed applied it."""
    from datetime import UTC, datetime

    record = _erasure_record(data_dir)
    position, kept = record.read(0)
    click.echo(f"record of erasures: {position} recorded, {len(kept)} kept"
               + (f" ({kept[0].seq} to {kept[-1].seq})" if kept else ""))
    for w in record.writers():
        at = datetime.fromtimestamp(w.at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        behind = position - w.applied
        click.echo(f"{w.writer}\tlast batch listed {w.published}\terasures applied"
                   f" {w.applied} ({behind} behind)\tnoted {at} UTC")


@cluster.command("retire")
@click.argument("writer")
@data_dir_option
def cluster_retire(writer: str, data_dir: Path | None) -> None:
    """Stop waiting for WRITER (see `aap cluster writers`), a warehouse gone for good: the
    record's rows every other writer applied are deleted. If it comes back, it applies
    the erasures it missed as every destroyed id of the shared keystore, or, without
    one, publishes nothing more (README, "Erasure in every processor's hot rows")."""
    from aap.privacy.audit import AuditLog
    from aap.store.erasures import UnknownWriter

    record = _erasure_record(data_dir)
    try:
        pruned = record.retire(writer)
    except UnknownWriter:
        raise click.ClickException(f"no writer {writer!r} counts for the record of erasures"
                                   " (see `aap cluster writers`)") from None
    AuditLog(_settings(data_dir=data_dir).data_path).append(
        _actor(), "writer.retired", {"writer": writer, "erasures_pruned": pruned})
    click.echo(f"retired writer {writer}: {pruned} erasure(s) left the record")


@cli.command()
@data_dir_option
@click.option("--query", "reader", is_flag=True,
              help="A query node's core instead (no processor: the REST API over the"
                   " published files; `aap serve --role query` starts it).")
def process(data_dir: Path | None, reader: bool) -> None:
    """Run the processor as its own process, without the collector.

    It is the core process (processor, tiering, and queries on DATA_DIR/run/core.sock):
    the warehouse has one owner, so do not run it beside `aap serve` on the same data dir.
    """
    from aap.core.supervisor import serve_core

    serve_core(_servable(_settings(data_dir=data_dir)), reader)


@cli.group()
def sources() -> None:
    """Manage sources and their write keys."""


@sources.command("create")
@click.argument("name")
@data_dir_option
@click.option("--origin", "origins", multiple=True,
              help="Browser origin allowed to send events (repeatable; default any).")
@click.option("--rate-limit", type=float, default=None,
              help="Events per second the source may send; 0 means unlimited"
                   " (default: $AAP_DEFAULT_SOURCE_RATE_LIMIT, 1000).")
@click.option("--historical", is_flag=True,
              help="A historical import: keep timestamps as sent (no clock-skew correction).")
@click.option("--purpose", "purposes", multiple=True, metavar="ID[:BASIS]",
              help="A purpose the source's events serve (repeatable; default analytics),"
                   " optionally with its own lawful basis.")
@click.option("--basis", default="consent", show_default=True,
              help="Lawful basis of the purposes given without one: consent,"
                   " legitimate_interest, contract or legal_obligation.")
@click.option("--mode", type=click.Choice(["standard", "cnil"]), default="standard",
              show_default=True, help="cnil: consent-exempt anonymous audience measurement"
              " (daily salted visitor hash, no ids; see the README).")
@click.option("--controller", default=None, metavar="GROUP",
              help="The controller group the source belongs to: consent and self-service"
                   " requests made through it apply to every source of the group"
                   " (default: the source is its own controller).")
@click.option("--server-key", is_flag=True,
              help="Also make a server (secret) key, printed before the write key.")
def sources_create(name: str, data_dir: Path | None, origins: tuple[str, ...],
                   rate_limit: float | None, historical: bool, purposes: tuple[str, ...],
                   basis: str, mode: str, controller: str | None, server_key: bool) -> None:
    """Create a source; prints its write key (public) alone on the last line."""
    from aap.sources import Sources

    reg = Sources(_settings(data_dir=data_dir).data_path)
    declared = {}
    for item in purposes or (() if mode == "cnil" else ("analytics",)):
        pid, _, own = item.partition(":")
        declared[pid.strip()] = own.strip() or basis
    try:
        src, key = reg.create(name, allowed_origins=origins or ("*",), rate_limit=rate_limit,
                              historical=historical, purposes=declared, mode=mode,
                              actor=_actor(), controller=controller)
        secret = reg.new_server_key(name, _actor())[1] if server_key else None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if secret:
        click.echo(f"server key (secret: for the site's backend only): {secret}")
    click.echo(f"created source {src.name} ({src.id}); keep the write key below, it is shown once")
    click.echo(key)


@sources.command("server-key")
@click.argument("name")
@data_dir_option
def sources_server_key(name: str, data_dir: Path | None) -> None:
    """Make a new server (secret) key for the source, replacing the old one; prints it
    alone on the last line. Events and consent sent with it come from the site's backend:
    a withdrawal sent with it also takes the purpose off the person's stored events."""
    from aap.sources import Sources

    try:
        src, key = Sources(_settings(data_dir=data_dir).data_path).new_server_key(name, _actor())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"server key of {src.name} ({src.id}); keep it secret, it is shown once")
    click.echo(key)


@sources.command("controller")
@click.argument("name")
@click.argument("group", required=False)
@data_dir_option
def sources_controller(name: str, group: str | None, data_dir: Path | None) -> None:
    """Put the source in controller group GROUP (without GROUP: it is its own controller
    again). Consent given through a source of a group applies to the whole group."""
    from aap.sources import Sources

    try:
        src = Sources(_settings(data_dir=data_dir).data_path).set_controller(name, group, _actor())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"source {src.name} ({src.id}): consent scope {src.scope}")


@sources.command("update")
@click.argument("name")
@data_dir_option
@click.option("--rate-limit", type=float, required=True,
              help="Events per second the source may send; 0 means unlimited.")
def sources_update(name: str, data_dir: Path | None, rate_limit: float) -> None:
    """Change a source's rate limit (a running server applies it within 10 s)."""
    from aap.sources import Sources

    try:
        src = Sources(_settings(data_dir=data_dir).data_path).set_rate_limit(
            name, rate_limit, actor=_actor())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    limit = f"{src.rate_limit:g}/s" if src.rate_limit else "unlimited"
    click.echo(f"source {src.name} ({src.id}): rate {limit}")


@sources.command("secret")
@click.argument("name")
@data_dir_option
def sources_secret(name: str, data_dir: Path | None) -> None:
    """Print the source's subject secret (base64url), which its backend signs subject
    tokens with; alone on the last line."""
    import base64

    from aap.privacy.tokens import SubjectTokens
    from aap.sources import Sources

    path = _settings(data_dir=data_dir).data_path
    src = next((s for s in Sources(path).list() if s.name == name), None)
    if src is None:
        raise click.ClickException(f"no source named {name!r}")
    secret = SubjectTokens(path).secret(src.id)
    from aap.privacy.audit import AuditLog

    AuditLog(path).append(_actor(), "source.secret_shown", {"source": src.id})
    click.echo(f"subject secret of {src.name} ({src.id}); sign tokens with HMAC-SHA256,"
               " see the README")
    click.echo(base64.urlsafe_b64encode(secret).rstrip(b"=").decode())


@sources.command("list")
@data_dir_option
def sources_list(data_dir: Path | None) -> None:
    """List sources (never their keys)."""
    from aap.sources import Sources

    for s in Sources(_settings(data_dir=data_dir).data_path).list():
        origins = ",".join(s.allowed_origins)
        limit = f"{s.rate_limit:g}/s" if s.rate_limit else "unlimited"
        purposes = ",".join(f"{p}:{b}" for p, b in s.purposes)
        click.echo(f"{s.id}\t{s.name}\tkey {s.key_hint}\torigins {origins}\trate {limit}"
                   f"\tpurposes {purposes}\tmode {s.mode}"
                   f"\tcontroller {s.controller or '-'}"
                   f"\tserver key {s.server_key_hint or '-'}")


@cli.group()
def keys() -> None:
    """Manage API keys (roles: viewer, analyst, privacy, admin)."""


@keys.command("create")
@click.option("--role", required=True, type=click.Choice(("viewer", "analyst", "privacy", "admin")),
              help="What the key may do.")
@click.option("--name", default="", help="A name to recognise the key by.")
@data_dir_option
def keys_create(role: str, name: str, data_dir: Path | None) -> None:
    """Create an API key; prints the key alone on the last line."""
    from aap.api.keys import ApiKeys

    k, key = ApiKeys(_settings(data_dir=data_dir).data_path).create(role, name, actor=_actor())
    click.echo(f"created API key {k.id} ({k.name}, role {k.role}); keep the key below, it is"
               " shown once")
    click.echo(key)


@keys.command("list")
@data_dir_option
def keys_list(data_dir: Path | None) -> None:
    """List API keys (never the keys themselves)."""
    from datetime import UTC, datetime

    from aap.api.keys import ApiKeys

    for k in ApiKeys(_settings(data_dir=data_dir).data_path).list():
        created = datetime.fromtimestamp(k.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        state = "revoked" if k.revoked_at else "active"
        click.echo(f"{k.id}\t{k.name}\trole {k.role}\tcreated {created}\t{state}")


@keys.command("revoke")
@click.argument("key_id")
@data_dir_option
def keys_revoke(key_id: str, data_dir: Path | None) -> None:
    """Revoke an API key by its id (see `aap keys list`)."""
    from aap.api.keys import ApiKeys

    if not ApiKeys(_settings(data_dir=data_dir).data_path).revoke(key_id, actor=_actor()):
        raise click.ClickException(f"no active key with id {key_id}")
    click.echo(f"revoked {key_id}")


@cli.group()
def devices() -> None:
    """Manage IoT devices: their keys, owners and broker access (see README, Devices)."""


@devices.command("register")
@click.option("--source", "source", required=True, help="The source the device sends to.")
@click.option("--name", required=True, help="The device's name in its source (thermostat-12).")
@click.option("--owner-user-id", default=None,
              help="The userId of the person who owns the device: their consent governs"
                   " its events.")
@data_dir_option
def devices_register(source: str, name: str, owner_user_id: str | None,
                     data_dir: Path | None) -> None:
    """Register a device; prints its key (REST bearer token and MQTT password) alone on
    the last line: it is shown once."""
    from aap.devices import TOPIC, Devices

    reg = Devices(_settings(data_dir=data_dir).data_path)
    try:
        dev, key = reg.register(source, name, owner_user_id, actor=_actor())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"registered device {dev.name} ({dev.id}); MQTT user {dev.id}, topic "
               f"{TOPIC.format(source=source, device=dev.name)}; keep the key below, it is"
               " shown once")
    click.echo(key)


@devices.command("revoke")
@click.argument("device_id")
@data_dir_option
def devices_revoke(device_id: str, data_dir: Path | None) -> None:
    """Revoke a device by its id: its key stops working (within 5 s), its broker access
    is removed from the password and ACL files (send mosquitto SIGHUP)."""
    from aap.devices import Devices

    try:
        dev = Devices(_settings(data_dir=data_dir).data_path).revoke(device_id, _actor())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"revoked {dev.id} ({dev.name})")


@devices.command("list")
@data_dir_option
def devices_list(data_dir: Path | None) -> None:
    """List devices (never their keys nor their owners' ids)."""
    from aap.devices import Devices

    for d in Devices(_settings(data_dir=data_dir).data_path).list():
        state = "revoked" if d.revoked_at else "active"
        owned = "owned" if d.owner_subject is not None else "no owner"
        click.echo(f"{d.id}\t{d.name}\tsource {d.source_id}\t{owned}\t{state}")


@devices.command("bridge-password")
@data_dir_option
def devices_bridge_password(data_dir: Path | None) -> None:
    """Make a new broker password for the MQTT bridge's user (aap-bridge), written to the
    password file; prints it alone on the last line (put it in AAP_MQTT_BROKER)."""
    from aap.devices import BRIDGE_USER, Devices

    reg = Devices(_settings(data_dir=data_dir).data_path)
    password = reg.bridge_password(_actor())
    click.echo(f"broker files: {reg.broker_dir}; user {BRIDGE_USER}, password below (shown"
               " once)")
    click.echo(password)


@cli.command("mqtt")
@data_dir_option
@click.option("--broker", default=None,
              help="mqtt://user:password@host:1883 (default: $AAP_MQTT_BROKER).")
def mqtt_cmd(data_dir: Path | None, broker: str | None) -> None:
    """Run the MQTT bridge: device readings from aap/{source}/{device}/events into the
    collector's ingestion path, each acknowledged to the broker once durable."""
    import asyncio

    from aap.collect.mqtt import run_bridge

    settings = _settings(data_dir=data_dir, mqtt_broker=broker)
    if not settings.devices.mqtt_broker:
        raise click.ClickException("no broker: give --broker or set AAP_MQTT_BROKER")
    asyncio.run(run_bridge(settings))


@cli.command("query")
@click.argument("file", type=click.File("rb"))
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--url", default=None, help="Ask a server's API instead (needs --key).")
@click.option("--key", default=None, help="API key for --url ($AAP_API_KEY).")
@click.option("--role", default="analyst", show_default=True,
              type=click.Choice(("viewer", "analyst", "privacy", "admin")),
              help="Role for a local query (reading personal data needs privacy; audited as cli:<user>).")
def query_cmd(file: Any, data_dir: Path | None, as_json: bool, url: str | None,
              key: str | None, role: str) -> None:
    """Run an insight (a JSON file, `-` for stdin) and print the result.

    With --url, through the server's API; otherwise on the local data dir: through the
    running core process if there is one, else by opening the warehouse.
    """
    import msgspec

    from aap.errors import AAPError
    from aap.jsonlimits import check_depth
    from aap.query.client import Client, QueryError
    from aap.query.models import parse_insight

    raw = file.read()
    try:
        check_depth(raw, "the insight")
        doc = msgspec.json.decode(raw)
        parse_insight(raw)
    except (msgspec.DecodeError, AAPError) as exc:
        raise click.ClickException(getattr(exc, "message", str(exc))) from None
    settings = _settings(data_dir=data_dir, api_key=key)
    key = settings.client.api_key
    try:
        if url:
            if not key:
                raise click.ClickException("--url needs --key (or $AAP_API_KEY)")
            with Client(url, key) as c:
                result = c.query(doc)
        elif _core_alive(settings):
            with Client.local(settings.data_path, role=role) as c:
                result = c.query(doc)
        else:
            result = _query_directly(settings, doc, role)
    except QueryError as exc:
        raise click.ClickException(f"{exc.status} {exc.body.get('code')}: "
                                   f"{exc.body.get('message')}") from None
    except AAPError as exc:
        raise click.ClickException(f"{exc.status} {exc.code}: {exc.message}") from None
    if as_json:
        click.echo(msgspec.json.encode(result).decode())
    else:
        from rich.console import Console

        from aap.query.render import render

        Console().print(render(result))


def _core_alive(settings: Settings) -> bool:
    from aap.core.client import core_alive

    return core_alive(settings.data_path, timeout=2)


def _query_directly(settings: Settings, doc: Any, role: str) -> Any:
    import duckdb

    from aap.query.cohorts import Cohorts
    from aap.query.runner import run_insight
    from aap.query.sandbox import Limits
    from aap.store.tiers import TierConfig, TierStore
    from aap.store.warehouse import Warehouse

    data, query = settings.data_path, settings.query
    limits = Limits.from_settings(query)
    if not settings.data.hot_db.exists():
        raise click.ClickException(f"no warehouse under {data}")
    tiers = TierStore(TierConfig.from_settings(settings))
    from aap.store.publish import shared_list

    try:
        wh = Warehouse(settings.data.warehouse, tiers=tiers,
                       memory_limit=settings.storage.warehouse_memory,
                       shared_list=shared_list(data, settings.tiers.publish_seconds,
                                               settings.storage.meta_url))
    except duckdb.IOException as exc:
        raise click.ClickException(f"the warehouse is in use by another process: {exc}") from None
    from aap.privacy.audit import AuditLog
    from aap.store import flags

    try:
        flags.attach(wh, data, settings.storage.meta_url)  # shared flags, mirrored
        return run_insight(wh, doc, role=role, cohort=Cohorts(data).get,
                           timeout_s=query.query_timeout_s,
                           sql_max_rows=query.sql_max_rows,
                           on_personal_read=lambda d: AuditLog(data).append(
                               _actor(), "data.read", d),
                           max_cells=query.max_insight_cells,
                           sql_limits=limits, sql_idle_workers=0)
    finally:
        wh.close()


@cli.group("log")
def log_group() -> None:
    """Look into the durable log."""


@log_group.command("show")
@data_dir_option
@click.option("--limit", type=int, default=20, show_default=True, help="Newest N events.")
def log_show(data_dir: Path | None, limit: int) -> None:
    """Print the newest events as JSON lines."""
    import msgspec

    from aap.events import decode_events

    log = _open_existing_log(data_dir)
    if getattr(log, "keyed", False):
        raise click.ClickException("`aap log show` reads the embedded log; on Kafka read the"
                                   " topic with a Kafka client (e.g. kcat -C -t TOPIC)")
    head = log.stats().head_offset
    events: list[Any] = []
    after = head
    while len(events) < limit and after > 0:
        after = max(0, after - 100)
        recs = log.read(after, 100)
        batch = [e for r in recs for e in decode_events(r.payload)]
        events = batch + events
        if not recs:
            break
    for ev in events[-limit:]:
        click.echo(msgspec.json.encode(ev).decode())


@log_group.command("stats")
@data_dir_option
def log_stats(data_dir: Path | None) -> None:
    """Print the log's size, head offset, event count and consumer lag."""
    st = _open_existing_log(data_dir).stats()
    click.echo(f"records {st.head_offset}\nevents {st.total_events}\nbytes {st.size_bytes}")
    for g, lag in st.lag_events.items():
        click.echo(f"lag[{g}] {lag}")


def _open_existing_log(data_dir: Path | None) -> Any:
    from aap.log import open_log

    settings = _settings(data_dir=data_dir)
    if not settings.storage.kafka and not settings.data.log_db.exists():
        raise click.ClickException(f"no log under {settings.data_path}")
    return open_log(settings)


@cli.command()
@click.option("--people", type=int, default=3000, show_default=True,
              help="Simulated people.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the temporary data dir and print its path.")
@click.option("--page", is_flag=True,
              help="Serve a small demo page that uses AAP's browser SDK, instead of simulated traffic.")
@click.option("--page-port", type=int, default=8080, show_default=True,
              help="Port of the demo page (with --page).")
@click.option("--duration", type=float, default=None,
              help="With --page: stop after this many seconds (default: at Ctrl-C).")
@click.option("--serve/--no-serve", default=True, show_default=True,
              help="End by serving the web app with the demo's data (a one-time sign-in"
                   " link is printed) until Ctrl-C; --no-serve exits after the report.")
def demo(people: int, seed: int, keep: bool, page: bool, page_port: int,
         duration: float | None, serve: bool) -> None:
    """Start a server on a temporary data dir, send realistic traffic, show what arrived,
    then serve the dashboard on that data until Ctrl-C (--no-serve: exit instead).

    With --page: serve a demo page that uses AAP's browser SDK, and show what it sends."""
    if page:
        from aap.demo_page import run_page_demo

        sys.exit(run_page_demo(page_port=page_port, duration=duration, keep=keep))
    from aap.demo import run_demo

    sys.exit(run_demo(people=people, seed=seed, keep=keep, serve=serve))


BENCHMARKS = ("ingest", "query", "pipeline", "privacy", "scrub", "stream", "web", "devices",
              "imports", "scale", "cluster", "handover", "sharedstate", "publishmark",
              "publishturn")
"""The modules of ``benchmarks/`` that ``aap bench`` runs (each defines its command)."""


def _benchmarks_root() -> Path | None:
    """The source checkout this ``aap`` runs from (``src/aap`` → its root), if it holds
    the ``benchmarks`` package; an installed wheel has none."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "benchmarks" / "__init__.py").is_file() else None


class _Benchmarks(click.Group):
    """The commands of ``benchmarks/``, imported when one is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(BENCHMARKS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in BENCHMARKS:
            return None
        root = _benchmarks_root()
        if root is None:
            return _no_benchmarks(name)
        import importlib

        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        command: click.Command = importlib.import_module(f"benchmarks.{name}").main
        return command


def _no_benchmarks(name: str) -> click.Command:
    def fail(args: tuple[str, ...]) -> None:
        raise click.ClickException(
            "the benchmarks ship only with the source, not in the installed package: from "
            f"the root of a checkout of the repository run `python -m benchmarks.{name}`, "
            "or `aap bench` of an editable install of it (`pip install -e .`)")

    return click.Command(name, callback=fail, help="(source checkout only)",
                         params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
                         context_settings={"ignore_unknown_options": True},
                         add_help_option=False)


@cli.group(cls=_Benchmarks)
def bench() -> None:
    """Benchmarks (from benchmarks/ of a source checkout; not in the installed package)."""


@cli.group()
def privacy() -> None:
    """Data-subject rights."""


@privacy.command("register")
@data_dir_option
def privacy_register(data_dir: Path | None) -> None:
    """Print the record of processing (Art. 30) from the purposes registry and sources."""
    from aap.privacy.purposes import Registry, record_of_processing
    from aap.sources import Sources

    settings = _checked(_settings(data_dir=data_dir))
    path = settings.data_path
    click.echo(record_of_processing(
        Registry.for_data_dir(path), [(s.name, s.purposes) for s in Sources(path).list()],
        (settings.tiers.hot_days, settings.tiers.warm_days, settings.tiers.cold_days),
        settings.tiers.log_retention_hours))


@privacy.command("check")
@data_dir_option
@click.option("--cnil", is_flag=True, help="The CNIL's conditions for consent-exempt"
              " audience measurement, per source in CNIL mode.")
def privacy_check(data_dir: Path | None, cnil: bool) -> None:
    """Check conditions from the configuration and the data on disk; exit 1 if one fails."""
    from aap.privacy.cnil_check import check_all
    from aap.privacy.salt_table import SaltsUnavailable

    if not cnil:
        raise click.UsageError("name what to check: --cnil")
    settings = _settings(data_dir=data_dir)
    try:
        report = check_all(settings, _core_alive(settings))
    except (ValueError, SaltsUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    if not report:
        click.echo("no source in CNIL mode: nothing to check")
        return
    failed = 0
    for source, checks in report:
        click.echo(f"CNIL audience-measurement exemption: source {source.name} ({source.id})")
        for name, ok, found in checks:
            failed += not ok
            click.echo(f"  {'PASS' if ok else 'FAIL'}  {name:<36} {found}")
    if failed:
        raise click.ClickException(f"{failed} condition(s) not met")
    click.echo("all conditions met")


def _privacy_request(data_dir: Path | None, action: str, user_ids: tuple[str, ...],
                     anonymous_ids: tuple[str, ...], **extra: Any) -> dict[str, Any]:
    import httpx

    from aap.core.client import CoreClient, core_socket

    if not user_ids and not anonymous_ids:
        raise click.UsageError("name the person with --user-id or --anonymous-id")
    data = _settings(data_dir=data_dir).data_path
    sock = core_socket(data)
    if not sock.exists():
        raise click.ClickException(f"the server is not running (no {sock}): start `aap serve`")
    try:
        with CoreClient(data, timeout=600) as core:
            r = core.post(f"/internal/privacy/{action}", json={
                "userIds": list(user_ids), "anonymousIds": list(anonymous_ids),
                "actor": _actor(), **extra})
    except httpx.TransportError as exc:
        raise click.ClickException(f"the server does not answer on {sock}: {exc}") from None
    if r.status_code != 200:
        raise click.ClickException(r.json().get("message", r.text))
    out: dict[str, Any] = r.json()
    return out


_subject_options = [
    click.option("--user-id", "user_ids", multiple=True, help="A userId of the person (repeatable)."),
    click.option("--anonymous-id", "anonymous_ids", multiple=True,
                 help="An anonymousId of the person (repeatable)."),
]


def subject_options(f: Any) -> Any:
    for opt in reversed(_subject_options):
        f = opt(f)
    return f


@privacy.command("erase")
@data_dir_option
@subject_options
def privacy_erase(data_dir: Path | None, user_ids: tuple[str, ...],
                  anonymous_ids: tuple[str, ...]) -> None:
    """Erase a person everywhere (Art. 17); prints the receipt as JSON."""
    import json

    click.echo(json.dumps(_privacy_request(data_dir, "erase", user_ids, anonymous_ids), indent=1))


@privacy.command("export")
@data_dir_option
@subject_options
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True,
              help="Where to write the zip.")
def privacy_export(data_dir: Path | None, user_ids: tuple[str, ...],
                   anonymous_ids: tuple[str, ...], out_path: Path) -> None:
    """Everything about a person (Art. 15, 20) as a zip of JSON and CSV files."""
    import json

    from aap.privacy import exports
    from aap.privacy.audit import AuditLog
    from aap.privacy.keystore import KeyDestroyed, Keystore

    summary = _privacy_request(data_dir, "access", user_ids, anonymous_ids)
    if not summary.get("path"):
        raise click.ClickException(summary.get("note", "nothing to export"))
    data = _settings(data_dir=data_dir).data_path
    try:  # the copy in the data dir is sealed; the one handed out is the plain zip
        zipped = exports.read(Keystore(data), Path(summary["path"]))
        out_path.write_bytes(zipped)
    except (KeyDestroyed, OSError) as exc:
        raise click.ClickException(f"cannot write the export: {exc}") from None
    AuditLog(data).append(_actor(), "privacy.export_written", {
        "export": summary["id"], "bytes": len(zipped)})
    click.echo(json.dumps({**summary, "path": str(out_path)}, indent=1))


def _traits(items: tuple[str, ...]) -> dict[str, Any]:
    import json

    out: dict[str, Any] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise click.BadParameter(f"{item!r}: use NAME=VALUE", param_hint="--trait")
        try:  # numbers, true/false, null (removes the trait), quoted strings, objects
            out[name.strip()] = json.loads(value)
        except ValueError:
            out[name.strip()] = value
        except RecursionError:
            raise click.BadParameter(f"{name.strip()!r}: the value is nested too deep",
                                     param_hint="--trait") from None
    return out


@privacy.command("rectify")
@data_dir_option
@subject_options
@click.option("--trait", "traits", multiple=True, required=True, metavar="NAME=VALUE",
              help="A corrected trait (repeatable); VALUE is read as JSON if it parses"
                   " (null removes the trait), else as text.")
def privacy_rectify(data_dir: Path | None, user_ids: tuple[str, ...],
                    anonymous_ids: tuple[str, ...], traits: tuple[str, ...]) -> None:
    """Correct a person's traits (Art. 16); personal ones (email, name, …) kept sealed."""
    import json

    click.echo(json.dumps(_privacy_request(data_dir, "rectify", user_ids, anonymous_ids,
                                           traits=_traits(traits)), indent=1))


@privacy.command("restrict")
@data_dir_option
@subject_options
@click.option("--lift", is_flag=True, help="Lift the restriction (tell the person first).")
def privacy_restrict(data_dir: Path | None, user_ids: tuple[str, ...],
                     anonymous_ids: tuple[str, ...], lift: bool) -> None:
    """Restrict processing (Art. 18): kept, out of every query and further processing."""
    import json

    click.echo(json.dumps(_privacy_request(data_dir, "restrict", user_ids, anonymous_ids,
                                           lift=lift), indent=1))


@privacy.command("object")
@data_dir_option
@subject_options
@click.option("--lift", is_flag=True, help="The person withdrew their objection.")
def privacy_object(data_dir: Path | None, user_ids: tuple[str, ...],
                   anonymous_ids: tuple[str, ...], lift: bool) -> None:
    """Record an objection to profiling (Art. 21): out of behavioural cohorts."""
    import json

    click.echo(json.dumps(_privacy_request(data_dir, "object", user_ids, anonymous_ids,
                                           lift=lift), indent=1))


@cli.group()
def audit() -> None:
    """The hash-chained audit log (DATA_DIR/privacy/audit.jsonl; with AAP_META_URL, rows in
    PostgreSQL)."""


@audit.command("verify")
@data_dir_option
def audit_verify(data_dir: Path | None) -> None:
    """Recompute the chain: exit 1 if any entry was edited, removed, reordered or cut off."""
    from aap.privacy.audit import AuditLog

    verdict = AuditLog(_settings(data_dir=data_dir).data_path).verify()
    if not verdict.ok:
        raise click.ClickException(f"audit log tampered: {verdict.message}")
    click.echo(f"ok: {verdict.message}")


@audit.command("show")
@data_dir_option
@click.option("--limit", type=int, default=20, show_default=True, help="Newest N entries.")
def audit_show(data_dir: Path | None, limit: int) -> None:
    """Print the newest entries as JSON lines."""
    import json

    from aap.privacy.audit import AuditLog

    for entry in AuditLog(_settings(data_dir=data_dir).data_path).entries()[-limit:]:
        click.echo(json.dumps(entry, ensure_ascii=False))


def _register_import() -> None:
    from aap.imports.command import import_cmd

    cli.add_command(import_cmd)


_register_import()


def main() -> None:
    from aap.store.meta import MetaUnavailable

    try:
        cli(prog_name="aap")
    except MetaUnavailable as exc:  # AAP_META_URL's database cannot be used: say why
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
