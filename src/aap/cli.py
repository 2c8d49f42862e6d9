"""The ``aap`` command."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from aap.settings import Settings


def data_dir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Data directory (default: $AAP_DATA_DIR or ./aap-data).",
    )(f)


def _settings(**kw: Any) -> Settings:
    try:
        return Settings(**kw)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.version_option(package_name="aap")
def cli() -> None:
    """AAP: a privacy-first event analytics pipeline."""


@cli.command()
@data_dir_option
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8000).")
@click.option("--workers", type=int, default=None, help="Worker processes (default: one per core).")
def serve(data_dir: Path | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the collector (and, later, processor, API and dashboard)."""
    from aap.collect.server import serve as run

    run(_settings(data_dir=data_dir, host=host, port=port, workers=workers))


@cli.command()
@data_dir_option
def process(data_dir: Path | None) -> None:
    """Run the processor as its own process, without the collector.

    It is the core process (processor, tiering, and queries on DATA_DIR/run/core.sock):
    the warehouse has one owner, so do not run it beside `aap serve` on the same data dir.
    """
    from aap.collect.server import serve_core

    serve_core(_settings(data_dir=data_dir))


@cli.group()
def sources() -> None:
    """Manage sources and their write keys."""


@sources.command("create")
@click.argument("name")
@data_dir_option
@click.option("--origin", "origins", multiple=True,
              help="Browser origin allowed to send events (repeatable; default any).")
@click.option("--rate-limit", type=float, default=0.0, show_default=True,
              help="Events per second the source may send; 0 means unlimited.")
@click.option("--historical", is_flag=True,
              help="A historical import: keep timestamps as sent (no clock-skew correction).")
def sources_create(name: str, data_dir: Path | None, origins: tuple[str, ...],
                   rate_limit: float, historical: bool) -> None:
    """Create a source; prints its write key alone on the last line."""
    from aap.sources import Sources

    reg = Sources(_settings(data_dir=data_dir).data_path)
    try:
        src, key = reg.create(name, allowed_origins=origins or ("*",), rate_limit=rate_limit,
                              historical=historical)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created source {src.name} ({src.id}); keep the write key below, it is shown once")
    click.echo(key)


@sources.command("list")
@data_dir_option
def sources_list(data_dir: Path | None) -> None:
    """List sources (never their keys)."""
    from aap.sources import Sources

    for s in Sources(_settings(data_dir=data_dir).data_path).list():
        origins = ",".join(s.allowed_origins)
        limit = f"{s.rate_limit:g}/s" if s.rate_limit else "unlimited"
        click.echo(f"{s.id}\t{s.name}\tkey {s.key_hint}\torigins {origins}\trate {limit}")


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
    if not (settings.data_path / "log" / "log.db").exists():
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
def demo(people: int, seed: int, keep: bool, page: bool, page_port: int,
         duration: float | None) -> None:
    """Start a server on a temporary data dir, send realistic traffic, show what arrived.

    With --page: serve a demo page that uses AAP's browser SDK, and show what it sends."""
    if page:
        from aap.demo_page import run_page_demo

        sys.exit(run_page_demo(page_port=page_port, duration=duration, keep=keep))
    from aap.demo import run_demo

    sys.exit(run_demo(people=people, seed=seed, keep=keep))


@cli.group()
def bench() -> None:
    """Benchmarks (see benchmarks/)."""


@bench.command("ingest")
@click.option("--duration", type=float, default=10.0, show_default=True,
              help="Seconds per measurement.")
@click.option("--rate", type=int, default=100_000, show_default=True,
              help="Offered events/s for the latency measurement.")
@click.option("--clients", type=int, default=2, show_default=True,
              help="Load-generator processes.")
def bench_ingest(duration: float, rate: int, clients: int) -> None:
    """Durable vs null-log ingest throughput and latency on /v1/batch."""
    from aap.bench.ingest import run

    run(duration=duration, rate=rate, clients=clients)


PIPELINE_PHASES = ("freshness", "backlog", "storage")


@bench.command("pipeline")
@click.option("--rate", type=int, default=50_000, show_default=True,
              help="Offered background events/s for the freshness probe.")
@click.option("--low-rate", type=int, default=10_000, show_default=True,
              help="A second, lower offered rate for the freshness probe.")
@click.option("--duration", type=float, default=20.0, show_default=True,
              help="Seconds of background load per freshness measurement.")
@click.option("--backlog", type=int, default=5_000_000, show_default=True,
              help="Events in the backlog the processor drains.")
@click.option("--people", type=int, default=20_000, show_default=True,
              help="Simulated people of the demo traffic measured for storage.")
@click.option("--clients", type=int, default=2, show_default=True,
              help="Load-generator processes.")
@click.option("--only", type=click.Choice(PIPELINE_PHASES), multiple=True,
              help="Run only this phase (repeatable).")
def bench_pipeline(rate: int, low_rate: int, duration: float, backlog: int, people: int,
                   clients: int, only: tuple[str, ...]) -> None:
    """Freshness, processor throughput, memory and warm-tier bytes per event."""
    from aap.bench.pipeline import run

    run(duration=duration, rate=rate, low_rate=low_rate, backlog_events=backlog,
        people=people, clients=clients, phases=only or PIPELINE_PHASES)


def main() -> None:
    cli(prog_name="aap")
