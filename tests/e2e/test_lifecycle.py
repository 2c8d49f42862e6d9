"""No AAP process outlives its parent, and Ctrl-C stops everything within 10 s, also on
a loaded machine (two processes spin beside the tests).

Every process of a tree (``aap demo`` → ``aap serve`` → the core, the collector
workers, the core's prepare workers) is found by walking /proc; a process counts as
gone when its pid is free, reused (another start time) or a zombie."""

from __future__ import annotations

import gc
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aap.runner import ServerProcess, free_port
from tests.conftest import slow_fixture

STOP_S = 10.0
"""The promise: everything gone within this after SIGINT or SIGTERM."""
ORPHAN_S = 30.0
"""After a kill -9 of a parent (generous: the kernel's signal is immediate)."""


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(ppid, state, start time) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], fields[19]


def tree(root: int) -> dict[int, str]:
    """The process ``root`` and all its descendants: pid → start time."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            children.setdefault(st[0], []).append(int(name))
            starts[int(name)] = st[2]
    out: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in starts and pid not in out:
            out[pid] = starts[pid]
            todo.extend(children.get(pid, []))
    return out


def alive(procs: dict[int, str]) -> list[int]:
    left = []
    for pid, start in procs.items():
        st = _stat(pid)
        if st is not None and st[2] == start and st[1] != "Z":
            left.append(pid)
    return left


def gone_within(procs: dict[int, str], seconds: float) -> list[int]:
    """Poll until every process is gone or ``seconds`` passed; what is left."""
    deadline = time.monotonic() + seconds
    while (left := alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def names(procs: dict[int, str]) -> list[str]:
    out = []
    for pid in procs:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                       .decode(errors="replace")[:120])
        except OSError:
            out.append(f"{pid} (gone)")
    return out


def full_tree(root: int) -> dict[int, str]:
    """The tree once the server is fully up: the serve process, at least one collector
    worker (forked from it: the same command line) and the core (waits for them)."""
    def up() -> bool:
        cmds = names(tree(root))
        return (sum("-m aap serve" in c for c in cmds) >= 2
                and any("-m aap process" in c for c in cmds))
    wait_until(up, "the server's processes")
    return tree(root)


@slow_fixture(scope="module", autouse=True)
def cpu_hog() -> Iterator[None]:
    """Two processes spinning beside the tests: the stop must hold on a loaded machine."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for h in hogs:
        h.kill()
        h.wait()


SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM],
                                  ids=["SIGINT", "SIGTERM"])


def _demo(tmp: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp / "demo.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "aap", "demo", *args], stdout=f,
                                stderr=subprocess.STDOUT)
    return proc, out


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@SIGNALS
def test_serve_stops_everything_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    server = ServerProcess(tmp_path / "data", workers=2).start(timeout=180)
    try:
        assert server.proc is not None
        procs = full_tree(server.proc.pid)
        assert len(procs) >= 4, names(procs)  # serve, core, two workers (+ prepare workers)
        os.kill(server.proc.pid, sig)  # the serve process only: it forwards the stop
        left = gone_within(procs, STOP_S)
        assert not left, f"still running {STOP_S:.0f} s after {sig.name}: {names(dict.fromkeys(left, ''))}"
    finally:
        server.kill()


@SIGNALS
def test_demo_stops_everything_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    proc, out = _demo(tmp_path, "--people", "20000")
    try:
        wait_until(lambda: b"server up at" in out.read_bytes() or proc.poll() is not None,
                   "the demo's server")
        assert proc.poll() is None, out.read_text()
        procs = full_tree(proc.pid)
        proc.send_signal(sig)  # while it sends traffic and the core processes it
        left = gone_within(procs, STOP_S)
        assert not left, f"still running {STOP_S:.0f} s after {sig.name}: {names(dict.fromkeys(left, ''))}"
    finally:
        _reap(proc)


@SIGNALS
def test_demo_page_stops_everything_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    proc, out = _demo(tmp_path, "--page", "--page-port", str(free_port()))
    try:
        wait_until(lambda: b"events in the warehouse" in out.read_bytes()
                   or proc.poll() is not None, "the demo page's first count")
        assert proc.poll() is None, out.read_text()
        procs = full_tree(proc.pid)
        proc.send_signal(sig)
        left = gone_within(procs, STOP_S)
        assert not left, f"still running {STOP_S:.0f} s after {sig.name}: {names(dict.fromkeys(left, ''))}"
        assert proc.wait() == 0, out.read_text()
        assert "What the page sent" in out.read_text()  # the report, then the stop
    finally:
        _reap(proc)


def test_kill_9_of_the_demo_leaves_no_process(tmp_path: Path) -> None:
    proc, out = _demo(tmp_path, "--people", "20000")
    try:
        wait_until(lambda: b"server up at" in out.read_bytes() or proc.poll() is not None,
                   "the demo's server")
        assert proc.poll() is None, out.read_text()
        procs = full_tree(proc.pid)
        proc.kill()
        proc.wait()
        left = gone_within(procs, ORPHAN_S)
        assert not left, f"orphans of a killed demo: {names(dict.fromkeys(left, ''))}"
    finally:
        _reap(proc)
        # a killed demo cannot remove its temporary data dir ("data dir /tmp/aap-demo-…/data")
        said = re.search(r"data dir (\S+)/data", out.read_text().replace("\n", ""))
        if said and Path(said[1]).name.startswith("aap-demo-"):
            shutil.rmtree(said[1], ignore_errors=True)


def test_kill_9_of_serve_leaves_no_process(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", workers=2).start(timeout=180)
    try:
        assert server.proc is not None
        procs = full_tree(server.proc.pid)
        os.kill(server.proc.pid, signal.SIGKILL)  # the serve process only, not its group
        server.proc.wait()
        left = gone_within(procs, ORPHAN_S)
        assert not left, f"orphans of a killed server: {names(dict.fromkeys(left, ''))}"
    finally:
        server.kill()


def test_kill_9_of_the_test_process_leaves_no_process(tmp_path: Path) -> None:
    """A process that started a server (as a test does) dies: the server goes with it."""
    script = ("import sys, time\nfrom pathlib import Path\nfrom aap.runner import ServerProcess\n"
              "s = ServerProcess(Path(sys.argv[1]), workers=1).start(timeout=180)\n"
              "print(s.proc.pid, flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "data")],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip().isdigit(), line
        procs = full_tree(proc.pid)
        assert int(line) in procs
        proc.kill()
        proc.wait()
        left = gone_within(procs, ORPHAN_S)
        assert not left, f"orphans of a killed test process: {names(dict.fromkeys(left, ''))}"
    finally:
        _reap(proc)


def test_a_garbage_collected_server_is_killed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", workers=1).start(timeout=180)
    assert server.proc is not None
    procs = full_tree(server.proc.pid)
    del server
    gc.collect()
    left = gone_within(procs, ORPHAN_S)
    assert not left, f"a collected ServerProcess left: {names(dict.fromkeys(left, ''))}"


_CHILD = ("import os\nfrom aap.lifecycle import PARENT_ENV, die_with_parent\n"
          "die_with_parent()\nprint('alive', os.environ[PARENT_ENV] == str(os.getpid()))\n")


def test_a_child_whose_parent_is_already_gone_dies_at_once() -> None:
    """The re-check after PR_SET_PDEATHSIG: a child told of a parent that is not its
    parent (as when the parent died between the fork and the prctl, and the child was
    adopted) kills itself."""
    from aap.lifecycle import PARENT_ENV, child_env

    done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          env=child_env())
    assert done.returncode == 0 and done.stdout.split() == ["alive", "True"], done.stderr
    not_the_parent = {**os.environ, PARENT_ENV: str(os.getppid())}  # our parent, not its
    done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          env=not_the_parent)
    assert done.returncode == -signal.SIGKILL and "alive" not in done.stdout, done
