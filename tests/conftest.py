from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import settings

from aap.datadir import DataDir
from aap.events import Event, decode_events
from aap.log.sqlite import SQLiteLog
from aap.privacy.sealing import Sealer
from aap.runner import ServerProcess, create_source

# httpx's default timeout (5 s) would make every httpx.get/post without one a latency
# assertion that a loaded machine breaks: tests wait generously instead.
_default_timeout = httpx._config.DEFAULT_TIMEOUT_CONFIG
_default_timeout.connect = _default_timeout.read = _default_timeout.write = 120.0
_default_timeout.pool = 120.0
# nor is hypothesis's per-example deadline (200 ms) a thing a loaded machine keeps
settings.register_profile("aap", deadline=None)
settings.load_profile("aap")


class Running:
    """A running server with one source, and helpers to read what it stored."""

    def __init__(self, server: ServerProcess, key: str) -> None:
        self.server = server
        self.key = key
        self.url = server.url
        self.data_dir = server.data_dir

    @property
    def auth_header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.key}:".encode()).decode()

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)  # type: ignore[arg-type]

    def post(self, path: str, content: bytes | None = None, *, json: object = None,
             headers: dict[str, str] | None = None, auth: bool = True) -> httpx.Response:
        h = {"Authorization": self.auth_header} if auth else {}
        h.update(headers or {})
        return httpx.post(self.url + path, content=content, json=json, headers=h, timeout=30)

    def stored(self) -> list[Event]:
        """Every event in the log, unsealed (raw ids and personal traits back, with the
        data dir's keys) so tests can compare them with what was sent."""
        return unsealed_log(self.data_dir)


def start(tmp: Path, env: dict[str, str] | None = None, source_args: tuple[str, ...] = (),
          workers: int = 2, healthy: bool = True) -> Running:
    data = tmp / "data"
    # These tests are about ingestion, not consent: the source's purpose rests on
    # legitimate interest, so events need no consent statement (tests/privacy/ cover that).
    key = create_source(data, "test-source", "--basis", "legitimate_interest", *source_args)
    server = ServerProcess(data, workers=workers, env=env).start(healthy=healthy)
    return Running(server, key)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = start(tmp_path_factory.mktemp("srv"))
    yield r
    r.server.stop()


@pytest.fixture(scope="session")
def sdk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One server shared by the tests of the SDKs' wire formats (each test uses its own
    ids, so they do not see each other's events): saves a start-up per module."""
    r = start(tmp_path_factory.mktemp("sdk-srv"))
    yield r
    r.server.stop()


def assert_refused(running: Running, send: Callable[[Running], httpx.Response], status: int,
                   code: str) -> None:
    """A bad request is answered ``status`` with a JSON body naming the problem
    (``code``, ``message``, ``detail``), nothing of it is stored, and the server stays up."""
    before = len(running.stored())
    r = send(running)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code
    assert body["message"] and "detail" in body
    assert len(running.stored()) == before  # nothing of a refused request was stored
    assert httpx.get(running.url + "/healthz").status_code == 200


def unsealed_log(data_dir: Path) -> list[Event]:
    """Every event in a data dir's log, unsealed with the data dir's keys (raw ids and
    every sealed field back)."""
    log = SQLiteLog(DataDir(data_dir).log)
    sealer = Sealer(data_dir)
    out: list[Event] = []
    after = 0
    while recs := log.read(after, 1000):
        for r in recs:
            out.extend(sealer.unseal(e) for e in decode_events(r.payload))
        after = recs[-1].offset
    log.close()
    return out
