"""Child processes die with their parent, and stop in bounded time.

Every process AAP starts (``aap serve`` from ``aap demo``, the benchmarks and the tests;
the core and the collector workers from ``aap serve``; the prepare workers from the
core) is told its parent's pid in :data:`PARENT_ENV` and calls :func:`die_with_parent`
as it starts: Linux sends it SIGKILL when the parent dies (``PR_SET_PDEATHSIG``), and it
kills itself at once if the parent died before it asked. So a ``kill -9`` of ``aap
demo``, of ``aap serve`` or of a test process leaves no AAP process behind. SIGKILL is
safe for each of them: the log is durable when a request is answered, and the core
commits its log position with each chunk, so a chunk it was working on is done again
by the next core.

A stop (Ctrl-C, SIGTERM) is forwarded to the children, waited for at most
:data:`STOP_GRACE_S` seconds, and what is left is killed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from types import FrameType

PARENT_ENV = "AAP_PARENT_PID"
"""The pid of the process that started this one, set by the parent in the child's
environment (:func:`child_env`)."""

STOP_GRACE_S = 5.0
"""How long a stopping process waits for its children before it kills them."""

_PR_SET_PDEATHSIG = 1


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that must die with this process."""
    return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def die_with_parent() -> None:
    """If :data:`PARENT_ENV` names a parent, die (SIGKILL) when it dies, or now if it
    is already gone; then name this process as the parent of its own children.

    The kernel signals the death of the *thread* that started the child: start
    children from a thread that lives as long as they should."""
    want = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = str(os.getpid())
    if not want or not want.isdigit():
        return
    parent = int(want)
    if not _pdeathsig(signal.SIGKILL):
        threading.Thread(target=_watch, args=(parent,), name="aap-parent-watch",
                         daemon=True).start()
    if os.getppid() != parent:  # it died before we asked (we were adopted)
        os.kill(os.getpid(), signal.SIGKILL)


def _pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    """Where there is no ``PR_SET_PDEATHSIG``: poll the parent."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)


def interrupt_on_sigterm() -> None:
    """SIGTERM raises :class:`KeyboardInterrupt` in the main thread, as Ctrl-C does, so
    that the same clean-up runs (stopping the children) instead of an instant exit."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def stop(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_S,
         sig: int = signal.SIGTERM) -> int | None:
    """Send ``sig``, wait up to ``grace`` seconds, then SIGKILL; the exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            return proc.wait(max(grace, 0.0))
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
