"""Fixtures of the web app's browser tests (every page's tests use them).

- ``web`` (session): a real ``aap serve`` on a temp data dir filled with the demo's
  traffic (``aap.demo.simulate`` + ``send_all``: 300 people, their consent as the demo
  gives it), processed; one API key per role.
- ``signed_in(role, path="/")`` → a Playwright page in a new context, signed in through
  ``POST /api/v1/session``, at ``path``; console and page errors are collected and
  asserted empty at teardown (``watch(page).errors`` to look earlier).
- ``axe_check(page)``, ``screenshot(page, name)``: see :mod:`tests.e2e.web.helpers`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rich.console import Console

from aap.api.keys import ApiKeys
from aap.demo import send_all, simulate
from aap.runner import ServerProcess, create_source
from tests.conftest import slow_fixture
from tests.e2e.web import helpers
from tests.e2e.web.helpers import ROLES, STATIC, TIMEOUT_MS, Watch, Web

PEOPLE = 300
SOURCE = "demo-site"


@slow_fixture(scope="session")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    if not (STATIC / "main.js").is_file():
        pytest.fail("the web app is not built: run scripts/setup (or node web/build.mjs)")
    data = tmp_path_factory.mktemp("web") / "data"
    write_key = create_source(data, SOURCE)
    keys, key_ids = {}, {}
    registry = ApiKeys(data)
    for role in ROLES:
        record, secret = registry.create(role, f"test-{role}")
        keys[role], key_ids[role] = secret, record.id
    registry.close()
    server = ServerProcess(data, workers=1).start()
    try:
        events = list(simulate(PEOPLE, seed=7, returning=0.45))
        stored = send_all(server.url, write_key, events, Console(file=io.StringIO()))
        server.wait_processed(timeout=180)
        yield Web(server, write_key, SOURCE, keys, key_ids, PEOPLE, len(events), stored)
    finally:
        server.stop()


@slow_fixture(scope="module")
def web_browser(browser: Any) -> Any:
    """The module's Chromium (tests/e2e/conftest.py)."""
    return browser


_WATCHES: dict[int, Watch] = {}


def watch(page: Any) -> Watch:
    """The errors collected for a page made by ``signed_in``."""
    return _WATCHES[id(page)]


@pytest.fixture
def signed_in(web: Web, web_browser: Any) -> Iterator[Callable[..., Any]]:
    contexts: list[tuple[Any, Any]] = []

    def make(role: str, path: str = "/", *, width: int = 1280) -> Any:
        ctx = web_browser.new_context(viewport={"width": width, "height": 800})
        ctx.set_default_timeout(TIMEOUT_MS)
        page = ctx.new_page()
        w = Watch()
        w.attach(page)
        _WATCHES[id(page)] = w
        contexts.append((ctx, page))
        r = page.request.post(web.url + "/api/v1/session", data={"key": web.keys[role]})
        assert r.ok, r.text()
        page.goto(web.url + path)
        return page

    yield make
    problems = []
    for ctx, page in contexts:
        problems += watch(page).errors
        _WATCHES.pop(id(page), None)
        ctx.close()
    assert problems == [], problems


@pytest.fixture
def axe_check() -> Callable[..., list[dict[str, Any]]]:
    return helpers.axe_check


@pytest.fixture
def screenshot() -> Callable[..., Any]:
    return helpers.screenshot
