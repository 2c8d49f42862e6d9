"""``aap import``: history from files, object stores, databases and the exports of other
tools, through the collector's one ingestion path (:mod:`aap.imports.run`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from aap.imports.readers import FORMATS


@click.command("import")
@click.argument("location")
@click.option("--source", "source_name", required=True, help="The (historical) source to import into.")
@click.option("--purpose", default=None,
              help="The purpose the history is imported for (one the source declares).")
@click.option("--basis", default=None, help="Its lawful basis, as the source declares it.")
@click.option("--mapping", "mapping_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="TOML: which columns become event, timestamp, ids, properties, traits.")
@click.option("--preset", type=click.Choice(("posthog", "segment", "mixpanel")), default=None,
              help="A built-in mapping for PostHog's event export, Segment's S3 archive or"
                   " Mixpanel's raw export.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="The files' format (default: from their names).")
@click.option("--table", default=None, help="A database table to read (with a database URL).")
@click.option("--query", default=None, help="A database query to read (ordered, to resume).")
@click.option("--key", default=None, help="With --table: the column that orders the rows.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=10_000, show_default=True,
              help="Rows per durable append.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Processes converting, sealing and appending in parallel (default: the"
                   " machine's cores, at most 4).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory (default: $AAP_DATA_DIR or ./aap-data).")
def import_cmd(location: str, source_name: str, purpose: str | None, basis: str | None,
               mapping_path: Path | None, preset: str | None, fmt: str | None,
               table: str | None, query: str | None, key: str | None, batch_size: int,
               workers: int | None, as_json: bool, data_dir: Path | None) -> None:
    """Import history from LOCATION: a CSV, JSON Lines or Parquet file (or s3://bucket/key,
    or every file under s3://bucket/prefix/), or a database (sqlite:///path,
    postgresql://…). Refused without a declared purpose and lawful basis. Re-running
    stores nothing twice; after a crash it resumes from its last durable position."""
    from aap.imports import run
    from aap.imports.mapping import MappingError
    from aap.imports.readers import InputError, open_input
    from aap.privacy.audit import AuditLog, local_actor
    from aap.settings import Settings

    settings = Settings(data_dir=data_dir) if data_dir else Settings()
    try:
        source = run.import_source(settings.data_path, source_name, purpose, basis)
        inp = open_input(location, fmt=fmt, table=table, query=query, key=key)
        recipe = _recipe(mapping_path, preset, inp.columns, location)
    except (run.Refused, MappingError, InputError) as exc:
        raise click.ClickException(str(exc)) from None
    ledger = run.Ledger(settings.data_path, run.identity(source, inp, recipe.text))
    try:
        with _progress(inp.total, ledger.position, not as_json) as advance:
            report = run.run(settings, source, inp, recipe, ledger, batch_size=batch_size,
                             progress=advance, workers=workers)
    except InputError as exc:
        raise click.ClickException(f"{exc} (what was stored is kept: fix the input and run"
                                   " the import again to go on from there)") from None
    except BrokenProcessPool:
        raise click.ClickException("a worker process of the import died (out of memory? killed?):"
                                   " what was stored is kept; run the import again to go on"
                                   " from there") from None
    out = {"import": ledger.id, **report.as_dict()}
    AuditLog(settings.data_path).append(local_actor(), "import.run", {
        "source": source.id, "purpose": purpose, "basis": basis, **out})
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"import {ledger.id}: {report.rows:,} rows read, {report.stored:,} stored,"
               f" {report.duplicates:,} skipped as duplicates (imported before)")
    for reason, n in sorted(report.refused.items()):
        click.echo(f"  refused: {n:,} {reason}")


def _recipe(mapping_path: Path | None, preset: str | None, columns: list[str] | None,
            location: str) -> Any:
    """The import's :class:`~aap.imports.convert.Recipe`, its mapping checked against the
    input's columns."""
    from aap.imports import mapping
    from aap.imports.convert import Recipe

    if (mapping_path is None) == (preset is None):
        raise mapping.MappingError("give --mapping FILE or --preset NAME (one of them)")
    if preset in ("segment", "posthog"):
        return Recipe(preset=preset)
    m = mapping.preset(preset) if preset else mapping.load(mapping_path)  # type: ignore[arg-type]
    if columns:
        mapping.check_columns(m, columns, str(mapping_path or f"preset {preset}"))
    return Recipe(mapping=m.text)


@contextmanager
def _progress(total: int | None, done: int, show: bool) -> Iterator[Any]:
    """A Rich progress bar on stderr: rows, rows/s and the time left."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr)
    with Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(),
                  TaskProgressColumn(), TextColumn("{task.fields[rate]} rows/s"),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                  console=console, disable=not show) as bar:
        task = bar.add_task("import", total=total, completed=done, rate="-")

        def advance(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.0f}" if speed else "-")
        yield advance
