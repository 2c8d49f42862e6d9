"""Debian's mosquitto, started by the tests on 127.0.0.1 on a free port in a temp dir,
with a generated config that uses a data dir's device password and ACL files
(:mod:`aap.devices`). ``scripts/setup`` installs mosquitto where it is missing."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from aap.runner import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    def __init__(self, tmp: Path, data_dir: Path) -> None:
        self.dir = tmp
        self.port = free_port()
        files = data_dir / "devices"
        self.log = tmp / "mosquitto.log"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous false",
                 f"password_file {files / 'mosquitto.passwd'}",
                 f"acl_file {files / 'mosquitto.acl'}",
                 "persistence false", f"log_dest file {self.log}", "log_type all",
                 "max_queued_messages 100000"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to `mosquitto`, who cannot read the data dir
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Broker:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start: {self.log.read_text()}"
                                       if self.log.exists() else "mosquitto did not start"
                                       ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
