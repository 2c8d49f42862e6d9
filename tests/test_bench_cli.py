"""``aap bench``: the benchmarks of ``benchmarks/`` in a source checkout, and a clear
error without them (an installed wheel has no ``benchmarks/``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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
    from benchmarks import (
        cluster,
        devices,
        handover,
        imports,
        ingest,
        pipeline,
        privacy,
        publishmark,
        publishturn,
        query,
        scale,
        scrub,
        sharedstate,
        stream,
        web,
    )

    modules = {p.stem for p in (Path(__file__).parents[1] / "benchmarks").glob("*.py")}
    assert modules - {"__init__", "common"} == set(cli.BENCHMARKS)  # aap bench runs them all
    group = cli.bench
    ctx = click.Context(group)
    for module in (cluster, devices, handover, imports, ingest, pipeline, privacy, publishmark,
                   publishturn, query, scale, scrub, sharedstate, stream, web):
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


def bench_prints(args: list[str], names: tuple[str, ...]) -> None:
    """``aap bench ARGS`` exits 0 and prints each of ``names``."""
    root = Path(__file__).parents[1]
    env = {**os.environ, "COLUMNS": "220", "PYTHONPATH": str(root / "src")}
    r = subprocess.run([sys.executable, "-m", "aap", "bench", *args], capture_output=True,
                       text=True, timeout=600, cwd=root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in names:
        assert name in r.stdout, (name, r.stdout)


@pytest.mark.slow  # a PostgreSQL server
def test_bench_handover_runs_and_prints_the_figures_it_names() -> None:
    bench_prints(["handover", "--events", "2000", "--rounds", "3"], (
        "write lock held without the handover (baseline)", "write lock held with the handover",
        "added by the handover per batch", "ratio", "files written and listed, chunks let in",
        "chunks kept out", "fold of 6,000 staged stream rows"))


@pytest.mark.slow  # runs `aap bench` in a subprocess
def test_bench_publishmark_runs_and_prints_the_figures_it_names() -> None:
    bench_prints(["publishmark", "--events", "2000", "--rounds", "2"], (
        "mark, in place (publish_batch)", "mark, copy to hot_publishing (baseline)",
        "bytes/event", "forget", "ratio copy / in place: mark time", "a 64 MB checkpoint every"))


@pytest.mark.slow  # runs `aap bench` in a subprocess
def test_bench_publishturn_runs_and_prints_the_figures_it_names() -> None:
    bench_prints(["publishturn", "--events", "500", "--seconds", "4"], (
        "first come (baseline)", "turn p50", "p95", "waits p50 ms: mark", "steps 2-3",
        "before step 4", "chunks/s", "ratio first come / now: turn p50"))


@pytest.mark.slow  # a PostgreSQL server and two servers
def test_bench_sharedstate_runs_and_prints_the_figures_it_names() -> None:
    bench_prints(["sharedstate", "--duration", "2", "--clients", "4", "--rounds", "1",
                  "--consent"], (
        "on the event loop (baseline)", "on its own thread, grouped", "events/s", "requests/s",
        "PostgreSQL commits a request", "ratio to the baseline"))


@pytest.mark.slow  # clusters of processes, a mock Kafka cluster, the embedded server
def test_bench_cluster_runs_and_prints_the_figures_it_names() -> None:
    root = Path(__file__).parents[1]
    # its own temporary directory, short: the data dirs hold the core's Unix socket
    tmp = Path(tempfile.mkdtemp(prefix="bc-", dir="/tmp"))
    env = {**os.environ, "COLUMNS": "220", "PYTHONPATH": str(root / "src"), "TMPDIR": str(tmp)}
    try:
        r = subprocess.run([sys.executable, "-m", "aap", "bench", "cluster", "--duration", "2",
                            "--rate", "2000", "--collectors", "1,2"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=900)
        left = list(tmp.glob("aap-bench-cluster-*"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "Traceback" not in out
    # the throughput table: one row per collector count, the ratio and CPU per role
    for name in ("acked/s", "ratio to 1", "processed/s", "collectors µs", "processor µs",
                 "kafka µs", "generators µs"):
        assert name in out, name
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert any(line.split("│")[1].strip() == "1" for line in rows)
    assert any(line.split("│")[1].strip() == "2" for line in rows)
    assert "overhead of more processes, not the scale-up" in out
    # freshness on both deployments, with the verdict and the ratio
    for name in ("p50 ms", "p95 ms", "max ms", "p95 ≤ 5 s", "cluster, 2 collectors",
                 "embedded (aap serve)", "freshness p95, cluster / embedded",
                 "freshness measured at"):
        assert name in out, name
    assert "200 → visible to a query node" in out
    # how fast the machine was: the loop and the hand-offs, before and with the figures
    assert "machine speed: a loop step" in out
    assert "a round trip between two threads" in out and "between two processes" in out
    assert not left, "its data dirs are removed"


@pytest.mark.slow  # a child process (the pipe's round trip)
def test_the_speed_probe_measures_each_hand_off_and_leaves_no_process() -> None:
    from benchmarks.common import all_proc_stats, speed_probe

    def children() -> set[int]:
        return {pid for pid, f in all_proc_stats().items() if int(f[1]) == os.getpid()}

    before = children()
    got = speed_probe(rounds=200)
    assert set(got) == {"loop_step_us", "threads_rtt_us", "processes_rtt_us"}
    # a round trip crosses the kernel or the GIL twice: never as fast as a loop step
    assert all(0 < v < 1e6 for v in got.values()), got
    assert got["threads_rtt_us"] > got["loop_step_us"] < got["processes_rtt_us"], got
    assert children() <= before
