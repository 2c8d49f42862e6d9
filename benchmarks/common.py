"""What the benchmarks share: the machine they run on, its load, CPU seconds from
``/proc``, percentiles and the PASS/MISS verdict."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

BUSY_WARNING = 0.10
"""Above this fraction of all cores busy before a benchmark starts, it warns that its
figures will be low and noisy."""


def verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]MISS[/red]"


def percentile(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return float("nan")
    k = min(len(sorted_ms) - 1, max(0, round(p / 100.0 * len(sorted_ms) + 0.5) - 1))
    return sorted_ms[k]


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command's name (state, ppid, pgrp, …,
    utime at 11, stime at 12), or ``None`` when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def all_proc_stats() -> dict[int, list[str]]:
    """:func:`proc_stat` of every process now."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (fields := proc_stat(int(d))) is not None:
            out[int(d)] = fields
    return out


def cpu_seconds(pids: list[int]) -> float:
    """Seconds of CPU used so far by ``pids`` (user + system)."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        if (fields := proc_stat(pid)) is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / hz


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    vals = [float(v) for v in first[:8]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def idle_check(seconds: float = 1.0) -> float:
    """Fraction of all cores busy over ``seconds`` before anything of ours runs."""
    b0, t0 = machine_busy()
    time.sleep(seconds)
    b1, t1 = machine_busy()
    return (b1 - b0) / (t1 - t0) if t1 > t0 else float("nan")


_ECHO = "import os\nwhile os.read(0, 1): os.write(1, b'x')"


def speed_probe(rounds: int = 3000) -> dict[str, float]:
    """How fast this machine runs Python, and how fast it hands work over, in µs: a step
    of a plain loop, and the round trip of a message between two threads
    (``queue.Queue``) and of a byte between two processes (pipes). A VM can be slow at
    the hand-offs while its loop is as fast as ever (README, Performance): the cluster's
    roles hand every request over, a loop does not."""
    import queue
    import subprocess
    import sys
    import threading

    t = time.perf_counter()
    for _ in range(2_000_000):
        pass
    loop = (time.perf_counter() - t) / 2_000_000 * 1e6
    there: queue.Queue[int | None] = queue.Queue()
    back: queue.Queue[int] = queue.Queue()

    def echo() -> None:
        while (x := there.get()) is not None:
            back.put(x)

    th = threading.Thread(target=echo, daemon=True)
    th.start()
    there.put(0)
    back.get()
    t = time.perf_counter()
    for i in range(rounds):
        there.put(i)
        back.get()
    threads = (time.perf_counter() - t) / rounds * 1e6
    there.put(None)
    th.join()
    p = subprocess.Popen([sys.executable, "-c", _ECHO], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, bufsize=0)
    assert p.stdin is not None and p.stdout is not None
    w, r = p.stdin.fileno(), p.stdout.fileno()
    try:
        os.write(w, b"x")
        os.read(r, 1)
        t = time.perf_counter()
        for _ in range(rounds):
            os.write(w, b"x")
            os.read(r, 1)
        procs = (time.perf_counter() - t) / rounds * 1e6
    finally:
        p.stdin.close()
        p.wait(timeout=30)
        p.stdout.close()
    return {"loop_step_us": loop, "threads_rtt_us": threads, "processes_rtt_us": procs}


def check_idle(console: Any, info: dict[str, Any]) -> None:
    """Measure how busy the machine is before the start (``info["busy_before"]``) and
    how fast it is (:func:`speed_probe`, ``info["speed"]``), print both, and warn when
    something else is using the CPU."""
    info["busy_before"] = idle_check()
    console.print(f"  machine busy before start: {info['busy_before']:.0%} of all cores",
                  style="dim")
    info["speed"] = s = speed_probe()
    console.print(f"  machine speed: a loop step {s['loop_step_us'] * 1000:.0f} ns; a round trip"
                  f" between two threads {s['threads_rtt_us']:.1f} µs, between two processes"
                  f" {s['processes_rtt_us']:.1f} µs", style="dim")
    if info["busy_before"] > BUSY_WARNING:
        console.print("  [yellow]warning: something else is using the CPU; the figures will be "
                      "lower and noisier than on an idle machine[/yellow]")


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        granian = version("granian")
    except Exception:
        granian = "?"
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "granian": granian,
    }
