"""A temporary PostgreSQL server on 127.0.0.1 for tests: ``initdb`` and ``pg_ctl`` from
Debian's ``postgresql`` package (scripts/setup installs it) in a temporary directory.

PostgreSQL refuses to run as root: as root, the directory is given to the ``postgres``
user the package creates and the commands run as that user (``runuser``)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aap.runner import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run scripts/setup")
    return found[-1]


@dataclass(frozen=True)
class Cluster:
    url: str
    """``postgresql://aap:secret-pw@127.0.0.1:PORT/postgres``"""
    data: Path
    """The cluster's data directory (its table files and ``pg_wal``)."""

    def database_url(self, name: str) -> str:
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        """The server goes away as in a crash (``pg_ctl stop -m immediate``): every
        connection is cut, the port refuses new ones. :meth:`start` brings it back."""
        _ctl(self.data, "-m", "immediate", "stop")

    def start(self) -> None:
        """The server again, on the same port and data (after :meth:`stop`); waits until
        it answers."""
        port = self.url.rsplit(":", 1)[1].split("/")[0]
        _ctl(self.data, "-l", str(self.data.parent / "log"), "-w", "-o",
             f"-c listen_addresses=127.0.0.1 -p {port} -k {self.data.parent}", "start")
        _wait(self.url)


def _ctl(data: Path, *args: str) -> None:
    as_user = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    subprocess.run([*as_user, _bin("pg_ctl"), "-D", str(data), *args], check=True,
                   capture_output=True, cwd=data.parent)


@contextmanager
def postgres_server() -> Iterator[str]:
    """A running server; yields its URL (user ``aap``, password ``secret-pw``, db ``aap``)."""
    with postgres_cluster() as cluster:
        yield cluster.url


@contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    """A running server; yields its URL and data directory."""
    # under /tmp itself when run as root: the server runs as postgres, which may not
    # enter a TMPDIR of root's (0700), as `aap bench cluster`'s test sets one
    root = Path(tempfile.mkdtemp(prefix="aap-pg-", dir="/tmp" if os.getuid() == 0 else None))
    as_user: list[str] = []
    if os.getuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = root / "data"
    pwfile = root / "pw"
    pwfile.write_text("secret-pw\n")
    if as_user:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, cwd=root)

    run(_bin("initdb"), "-D", str(data), "-U", "aap", "--auth=scram-sha-256",
        f"--pwfile={pwfile}", "-E", "UTF8")
    cluster = Cluster(f"postgresql://aap:secret-pw@127.0.0.1:{port}/postgres", data)
    cluster.start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # a test stopped it
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(url: str) -> None:
    """Empty the database: every table of a previous test dropped."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        con.execute("DROP SCHEMA public CASCADE")
        con.execute("CREATE SCHEMA public")


def new_database(url: str) -> str:
    """A new, empty database on the server of ``url``; returns its URL."""
    import secrets

    import psycopg

    name = f"aap_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def _wait(url: str) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(url).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def every_row(url: str) -> list[Any]:
    """A pg_dump of the data: every row of every table, as ``(table, rows)``."""
    import psycopg

    out: list[Any] = []
    with psycopg.connect(url) as con:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
        for t in tables:
            out.append((t, con.execute(f'SELECT * FROM "{t}"').fetchall()))
    return out


def all_bytes(root: Path) -> bytes:
    """Every file under ``root`` (a cluster's data directory: tables and WAL), joined."""
    chunks = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            try:
                chunks.append(Path(dirpath, name).read_bytes())
            except OSError:
                continue
    return b"\0".join(chunks)
