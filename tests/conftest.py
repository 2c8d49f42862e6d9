from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import pytest
from hypothesis import settings

from aap.datadir import DataDir
from aap.events import Event, decode_events
from aap.log.sqlite import SQLiteLog
from aap.privacy.sealing import Sealer
from aap.runner import ServerProcess, create_source
from tests.pg import Cluster, fresh_database, new_database, postgres_cluster

# httpx's default timeout (5 s) would make every httpx.get/post without one a latency
# assertion that a loaded machine breaks: tests wait generously instead.
_default_timeout = httpx._config.DEFAULT_TIMEOUT_CONFIG
_default_timeout.connect = _default_timeout.read = _default_timeout.write = 120.0
_default_timeout.pool = 120.0
# Hypothesis profiles, picked by HYPOTHESIS_PROFILE: ``ci`` (the default, and what
# scripts/test runs) and ``dev`` (scripts/test --fast: fewer examples, the same
# properties). Neither has a per-example deadline (200 ms by default): a loaded machine
# does not keep one.
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.register_profile("ci", deadline=None, derandomize=False, max_examples=300)
settings.register_profile("dev", deadline=None, max_examples=20)
settings.load_profile(PROFILE)


# Markers (registered in pyproject.toml): ``e2e`` for every test under tests/e2e/, ``slow``
# for every test that starts a server, a subprocess, a browser or Node, or takes over
# about a second. A fixture that starts one is declared with ``slow_fixture`` instead of
# ``pytest.fixture``, and every test using it, directly or through other fixtures, is
# marked; a test or module that starts one itself carries ``pytest.mark.slow``.
# ``scripts/test --fast`` deselects both, and fails a test that starts a server unmarked.
TESTS = Path(__file__).resolve().parent
SLOW_FIXTURES: set[str] = set()
F = TypeVar("F", bound=Callable[..., Any])


def slow_fixture(func: F | None = None, **kwargs: Any) -> Any:
    """``pytest.fixture`` (bare or with its arguments) for a fixture that starts a
    server, a subprocess, a browser or Node: the tests that use it are marked ``slow``."""

    def declare(func: F) -> F:
        SLOW_FIXTURES.add(kwargs.get("name") or func.__name__)
        return pytest.fixture(**kwargs)(func)  # type: ignore[no-any-return]

    return declare if func is None else declare(func)


LONGEST_FIRST = (
    "e2e/test_cluster_equivalence.py", "e2e/test_cluster_crash.py",
    "e2e/test_cluster_processors.py", "process/test_handover.py",
    "store/test_two_processors.py", "privacy/test_consent_scope.py", "api/test_openapi.py",
    "test_bench_cli.py", "e2e/test_processor_crash.py", "e2e/test_query_nodes.py",
)
"""The files that take longest (``scripts/test --durations=120``, 2026-12-05: the first
two 15 and 3 minutes on a slow 2-core VM), run first: the processes running the tests
side by side (pytest-xdist, a file's tests in one) take the files in this order, so a
long file does not start last and run alone at the end."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if TESTS / "e2e" in item.path.parents:
            item.add_marker(pytest.mark.e2e)
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if missing := [name for name in LONGEST_FIRST if not (TESTS / name).is_file()]:
        raise pytest.UsageError(f"LONGEST_FIRST (tests/conftest.py) names no file: {missing}")
    first = {TESTS / name: rank for rank, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.path, len(first)))  # stable: the rest as collected


@pytest.fixture(scope="session", autouse=True)
def _unmarked_tests_start_no_server(request: pytest.FixtureRequest) -> Iterator[None]:
    """When slow tests are deselected (``-m "not slow ..."``), a server started anyway
    comes from a test whose mark is missing: it fails, naming the fix."""
    if "not slow" not in (request.config.option.markexpr or ""):
        yield
        return

    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("this test starts a server or a subprocess but is not marked "
                             "slow: use slow_fixture or pytest.mark.slow (tests/conftest.py)")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess.Popen, "__init__", refuse)
        yield


def examples(ci: int) -> int:
    """The example count of a property whose examples are costly (a live server's round
    trips, a warehouse per example) or worth more than the profile's: ``ci`` under the
    ci profile, at most the profile's count under any other. Each use says why."""
    return ci if PROFILE == "ci" else min(ci, settings.default.max_examples)


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


@slow_fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = start(tmp_path_factory.mktemp("srv"))
    yield r
    r.server.stop()


@slow_fixture(scope="session")
def sdk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One server shared by the tests of the SDKs' wire formats (each test uses its own
    ids, so they do not see each other's events): saves a start-up per module."""
    r = start(tmp_path_factory.mktemp("sdk-srv"))
    yield r
    r.server.stop()


@slow_fixture(scope="session")
def pg() -> Iterator[Cluster]:
    """A PostgreSQL server (tests/pg.py) for the tests of the shared state."""
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def meta_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test on both engines of the shared state (``aap.store.meta``): sets
    ``AAP_META_URL`` to nothing (the SQLite files under the data dir), then to an empty
    PostgreSQL database (marked slow: it starts a server); returns it."""
    if request.param == "sqlite":
        monkeypatch.delenv("AAP_META_URL", raising=False)
        return ""
    cluster: Cluster = request.getfixturevalue("pg")
    fresh_database(cluster.url)
    monkeypatch.setenv("AAP_META_URL", cluster.url)
    return cluster.url


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def meta_url_module(request: pytest.FixtureRequest) -> Iterator[str]:
    """``meta_url`` for a module's shared fixture (a server the module's tests share):
    nothing, then a new PostgreSQL database of its own; ``AAP_META_URL`` is set for the
    whole module (the servers and CLI commands it starts inherit it)."""
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "sqlite":
            mp.delenv("AAP_META_URL", raising=False)
            yield ""
            return
        cluster: Cluster = request.getfixturevalue("pg")
        url = new_database(cluster.url)
        mp.setenv("AAP_META_URL", url)
        yield url


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
