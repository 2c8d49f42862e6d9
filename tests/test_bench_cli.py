"""``aap bench``: the benchmarks of ``benchmarks/`` in a source checkout, and a clear
error without them (an installed wheel has no ``benchmarks/``)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from aap import cli


def test_bench_lists_every_benchmark_with_its_own_options() -> None:
    runner = CliRunner()
    listing = runner.invoke(cli.cli, ["bench", "--help"])
    assert listing.exit_code == 0, listing.output
    for name in cli.BENCHMARKS:
        assert name in listing.output
    ingest = runner.invoke(cli.cli, ["bench", "ingest", "--help"])
    assert ingest.exit_code == 0, ingest.output
    assert "--duration" in ingest.output and "[default: 10.0]" in ingest.output


def test_the_commands_are_the_benchmarks_own() -> None:
    from benchmarks import devices, imports, ingest, pipeline, privacy, query, scale, scrub, stream, web

    modules = {p.stem for p in (Path(__file__).parents[1] / "benchmarks").glob("*.py")}
    assert modules - {"__init__", "common"} == set(cli.BENCHMARKS)  # aap bench runs them all
    group = cli.bench
    ctx = click.Context(group)
    for module in (devices, imports, ingest, pipeline, privacy, query, scale, scrub, stream,
                   web):
        assert group.get_command(ctx, module.__name__.rsplit(".", 1)[1]) is module.main


def test_without_a_checkout_bench_says_so_and_fails(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setattr(cli, "_benchmarks_root", lambda: None)
    r = CliRunner().invoke(cli.cli, ["bench", "ingest", "--duration", "5"])
    assert r.exit_code != 0
    assert "benchmarks ship only with the source" in r.output


def test_the_wheel_leaves_the_benchmarks_out() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]
    assert not (Path(__file__).parents[1] / "src" / "benchmarks").exists()
