"""The processor role's ``GET /healthz`` on TCP (``aap serve --role processor --port P``).

The core (processor, warehouse, queries) listens on its Unix socket only; probes of an
orchestrator (Kubernetes, compose) ask a TCP port. The role's parent process therefore
answers ``/healthz`` on ``--port`` itself, from a check it runs every
:data:`CHECK_INTERVAL_S` seconds in a thread of its own (so a probe never waits on the
log or the core):

- the core answers its health call on its socket, its processor thread runs, and that
  thread's loop turned less than :data:`STUCK_AFTER_S` ago (a chunk that takes longer
  than that is stuck: a restart does it again from the committed position);
- the log answers (its ``stats()``: Kafka's watermarks and committed offsets, or the
  SQLite file).

200 ``{"ok": true, "role": "processor", "position", "loop_age_s", "failures",
"publishing_stopped", "log", "checked_age_s"}`` while all hold (``publishing_stopped``: why
the publisher lists nothing more, erasures lost here, else null; said but not failed on,
since a restart would not mend it); 503 ``{"ok": false, …}`` with the house error body
beside those fields (``code`` ``processor_unhealthy``, ``message`` the reason) otherwise — also
while the core is starting, and when the check itself has not finished for
:data:`STALE_AFTER_S` (a log call that hangs). Plain HTTP, ``GET``/``HEAD /healthz``
only; nothing about events or persons is in it, and no request is logged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aap.core.client import CoreClient, core_socket
from aap.log.base import Log
from aap.settings import Settings
from aap.store.meta import log_failure

logger = logging.getLogger("aap.serve")

CHECK_INTERVAL_S = 2.0
"""How often the core and the log are checked."""
STUCK_AFTER_S = 120.0
"""A processor loop that has not turned for this long is stuck."""
STALE_AFTER_S = 15.0
"""A check older than this (the last one has not finished) makes the answer 503."""
CALL_TIMEOUT_S = 3.0
"""How long the check waits for the core's answer."""


class ProcessorHealth:
    """The latest check of the core and the log (:meth:`check_once`), refreshed by
    :meth:`start`'s thread; :meth:`answer` is what ``/healthz`` sends."""

    def __init__(self, settings: Settings, open_log: Callable[[], Log],
                 stuck_after_s: float = STUCK_AFTER_S) -> None:
        self.settings = settings
        self.open_log = open_log
        self.stuck_after_s = stuck_after_s
        self._log: Log | None = None
        self._state: dict[str, Any] = {"reason": "starting: not checked yet"}
        self._checked_at = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aap-processor-health",
                                        daemon=True)

    def check_once(self) -> None:
        state = self._core()
        log_problem = self._log_problem()
        if log_problem and "reason" not in state:
            state["reason"] = log_problem
        state["log"] = log_problem or "ok"
        with self._lock:
            self._state, self._checked_at = state, time.monotonic()

    def _core(self) -> dict[str, Any]:
        data = self.settings.data_path
        if not core_socket(data).exists():
            return {"reason": "starting: the core is not listening yet"}
        try:
            with CoreClient(data, timeout=CALL_TIMEOUT_S) as c:
                r = c.get("/healthz")
        except Exception as exc:  # httpx errors, a half-written answer
            return {"reason": f"the core does not answer ({type(exc).__name__})"}
        if r.status_code != 200:
            return {"reason": f"the core answers {r.status_code} (starting or failing)"}
        body = r.json()
        proc = body.get("processor") or {}
        out: dict[str, Any] = {"position": body.get("position"),
                               "loop_age_s": proc.get("loop_age_s"),
                               "failures": proc.get("failures"),
                               # said, not failed on: a restart would not mend it
                               "publishing_stopped": body.get("publishing_stopped")}
        if not proc.get("running", False):
            out["reason"] = "the processor's thread has stopped"
        elif (proc.get("loop_age_s") or 0.0) > self.stuck_after_s:
            out["reason"] = (f"the processor's loop has not turned for {proc['loop_age_s']:.0f} s"
                             f" (stuck: more than {self.stuck_after_s:.0f} s)")
        return out

    def _log_problem(self) -> str:
        try:
            if self._log is None:
                self._log = self.open_log()
            self._log.stats()
        except Exception as exc:  # a broker down, a file gone: the reason, not a traceback
            self._close_log()
            return f"the log does not answer ({type(exc).__name__})"
        return ""

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            try:
                log.close()
            except Exception:
                pass

    def answer(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            state, age = dict(self._state), time.monotonic() - self._checked_at
        body: dict[str, Any] = {"role": "processor", **state,
                                "checked_age_s": round(age, 3)}
        if age > STALE_AFTER_S and "reason" not in state:
            body["reason"] = f"the last check did not finish in {age:.0f} s"
        reason = body.pop("reason", None)
        if reason is None:
            return 200, {"ok": True, **body}
        return 503, {"ok": False, **body, "code": "processor_unhealthy", "message": reason,
                     "detail": reason}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_once()
            except Exception as exc:  # never let the checker die: the answer goes stale
                log_failure(logger, "the processor's health check failed", exc)
            self._stop.wait(CHECK_INTERVAL_S)
        self._close_log()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=CALL_TIMEOUT_S + 5)
        if not self._thread.is_alive():
            self._close_log()


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer
    timeout = 10  # a client that does not send its request line in time is cut off
    server_version = "aap"
    sys_version = ""

    def do_GET(self) -> None:
        self._reply(head=False)

    def do_HEAD(self) -> None:
        self._reply(head=True)

    def _reply(self, head: bool) -> None:
        if self.path.split("?", 1)[0] != "/healthz":
            status, body = 404, {"code": "not_found", "message": "only /healthz is here",
                                 "detail": "the processor role answers /healthz only"}
        else:
            status, body = self.server.health.answer()
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        if status == 503:
            self.send_header("Retry-After", str(int(CHECK_INTERVAL_S)))
        self.end_headers()
        if not head:
            self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing: an access log would hold client addresses."""


class HealthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, health: ProcessorHealth) -> None:
        self.health = health
        super().__init__((host, port), _Handler)


def serve_health(settings: Settings, health: ProcessorHealth) -> HealthServer:
    """Bind ``settings.server.host:port`` (an error naming the port if it is taken) and
    answer ``/healthz`` in a thread until ``shutdown()``."""
    host, port = settings.server.host, settings.server.port
    try:
        server = HealthServer(host, port, health)
    except OSError as exc:
        raise OSError(exc.errno, f"the processor's /healthz cannot listen on {host}:{port}:"
                                 f" {exc.strerror} (choose another with --port)") from None
    threading.Thread(target=server.serve_forever, name="aap-processor-healthz",
                     daemon=True).start()
    return server
