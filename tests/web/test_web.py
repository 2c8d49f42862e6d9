"""The web app's server side without a server: sessions (hashed at rest, ended, expired,
revoked with their key), one-time links, cookies and CSRF, the static files' index, and
the pages' answer without a build. The sessions' tests run on both engines of the shared
state (``meta_url``: the SQLite file, then PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from aap import errors
from aap.api.keys import ApiKeys
from aap.asgi import Request
from aap.datadir import DataDir
from aap.store.meta import MetaDB, open_meta
from aap.web.app import IMMUTABLE, WebApp, csp, load_assets
from aap.web.sessions import Sessions, cookie_token, create_link, cross_site, csrf_ok
from tests.pg import every_row


@pytest.fixture
def reg(tmp_path: Path, meta_url: str) -> tuple[Path, ApiKeys, Sessions]:
    data = tmp_path / "data"
    keys = ApiKeys(data)
    return data, keys, Sessions(data, keys, ttl_s=3600)


def _db(data: Path) -> MetaDB:
    """The registry the sessions are in (the file, or PostgreSQL with ``AAP_META_URL``)."""
    return open_meta(DataDir(data).meta_db)


def _audit(keys: ApiKeys) -> str:
    return json.dumps(keys.audit.entries())


def test_a_session_is_stored_only_as_a_hash(reg: tuple[Path, ApiKeys, Sessions],
                                            meta_url: str) -> None:
    data, keys, sessions = reg
    key, _ = keys.create("analyst", "ana")
    token, live = sessions.create(key, "key")
    assert len(token) >= 43 and live.key.id == key.id and live.public()["role"] == "analyst"
    if meta_url:  # every row of PostgreSQL (tests/store/test_meta_stores.py scans its files)
        raw = repr(every_row(meta_url)).encode()
    else:
        raw = DataDir(data).meta_db.read_bytes() + (DataDir(data).meta_db.parent / "meta.db-wal"
                                                    ).read_bytes()
    assert token.encode() not in raw and live.csrf.encode() not in raw
    (stored,) = _db(data).fetchone("SELECT token_hash FROM web_sessions") or (None,)
    assert bytes(stored) == hashlib.sha256(token.encode()).digest()
    assert sessions.get(token) == live
    audit = _audit(keys)
    assert "session.created" in audit and token not in audit


def test_ended_expired_and_revoked_sessions(reg: tuple[Path, ApiKeys, Sessions]) -> None:
    data, keys, sessions = reg
    key, _ = keys.create("privacy")
    a, _ = sessions.create(key, "key")
    b, _ = sessions.create(key, "key")
    c, _ = sessions.create(key, "key")
    assert sessions.end(a) and sessions.get(a) is None and not sessions.end(a)
    _db(data).execute("UPDATE web_sessions SET expires_at = 1 WHERE token_hash = ?",
                      (hashlib.sha256(b.encode()).digest(),))
    assert sessions.get(b) is None
    assert sessions.get(c) is not None
    keys.revoke(key.id)
    assert sessions.get(c) is None
    assert "session.ended" in _audit(keys)


def test_the_role_is_read_again_on_each_request(reg: tuple[Path, ApiKeys, Sessions]) -> None:
    data, keys, sessions = reg
    key, _ = keys.create("admin")
    token, _ = sessions.create(key, "key")
    _db(data).execute("UPDATE api_keys SET role = 'viewer' WHERE id = ?", (key.id,))
    live = sessions.get(token)
    assert live is not None and live.key.role == "viewer"


def test_a_link_works_once_and_expires(reg: tuple[Path, ApiKeys, Sessions]) -> None:
    data, keys, sessions = reg
    key, _ = keys.create("admin")
    link = create_link(data, key.id)
    got = sessions.consume_link(link)
    assert got is not None and got.id == key.id
    assert sessions.consume_link(link) is None
    old = create_link(data, key.id, ttl=-1)
    assert sessions.consume_link(old) is None
    revoked = create_link(data, key.id)
    keys.revoke(key.id)
    assert sessions.consume_link(revoked) is None
    for bad in ("", "x", "<script>", "A" * 43, "A" * 500):
        assert sessions.consume_link(bad) is None and sessions.get(bad) is None


def test_cookie_csrf_and_origin_checks(reg: tuple[Path, ApiKeys, Sessions]) -> None:
    _, keys, sessions = reg
    key, _ = keys.create("analyst")
    token, live = sessions.create(key, "key")
    assert cookie_token({"cookie": f"a=1; aap_session={token}; b=2"}) == token
    assert cookie_token({"cookie": "aap_sessionx=1"}) is None and cookie_token({}) is None
    assert csrf_ok({"x-csrf-token": live.csrf}, live)
    assert not csrf_ok({"x-csrf-token": live.csrf[:-1]}, live) and not csrf_ok({}, live)
    assert not csrf_ok({"x-csrf-token": "é" * 64}, live)
    _, other_live = sessions.create(key, "key")
    assert other_live.csrf != live.csrf  # one token per session
    for site, refused in (("same-origin", False), ("none", False), ("same-site", True),
                          ("cross-site", True)):
        assert cross_site({"sec-fetch-site": site}) is refused
    assert not cross_site({})


def test_static_index_and_cache_headers(tmp_path: Path) -> None:
    (tmp_path / "chunks").mkdir()
    (tmp_path / "main.js").write_text("1")
    (tmp_path / "main.css").write_text("a{}")
    (tmp_path / "index.html").write_text("<p>")
    (tmp_path / "chunks" / "x-ABC.js").write_text("2")
    (tmp_path / "secret.py").write_text("no")
    assets = load_assets(tmp_path)
    assert set(assets) == {"main.js", "main.css", "chunks/x-ABC.js"}
    assert assets["chunks/x-ABC.js"].cache == IMMUTABLE and assets["main.js"].cache == "no-cache"
    assert assets["main.css"].content_type.startswith("text/css")


def _page(web: WebApp, path: str, method: str = "GET") -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def run() -> Any:
        return await web.page(Request({"method": method, "path": path, "headers": []},
                                      receive))

    return asyncio.run(run())


def test_pages_answer_503_without_a_build(tmp_path: Path) -> None:
    class Proxy:
        sessions = None
        keys = None

    web = WebApp(Proxy(), secure_cookie=False, static=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(errors.ServiceUnavailable, match="scripts/setup"):
        _page(web, "/")
    (tmp_path / "main.js").write_text("1")
    (tmp_path / "index.html").write_text('<meta name="csp-nonce" content="{{nonce}}">')
    web = WebApp(Proxy(), secure_cookie=False, static=tmp_path)  # type: ignore[arg-type]
    r = _page(web, "/")
    headers = dict(r.headers)
    nonce = headers["content-security-policy"].split("'nonce-")[1].split("'")[0]
    assert r.body == f'<meta name="csp-nonce" content="{nonce}">'.encode()
    assert headers["content-security-policy"] == csp(nonce)
    assert _page(web, "/", "HEAD").body == b""


def test_the_cookie_is_secure_under_tls(reg: tuple[Path, ApiKeys, Sessions]) -> None:
    class Proxy:
        sessions = reg[2]
        keys = reg[1]

    plain = WebApp(Proxy(), secure_cookie=False)  # type: ignore[arg-type]
    tls = WebApp(Proxy(), secure_cookie=True)  # type: ignore[arg-type]
    assert "Secure" not in plain.cookie_header("t", 60).split("; ")
    assert tls.cookie_header("t", 60).split("; ") == ["aap_session=t", "HttpOnly", "SameSite=Strict",
                                                "Path=/", "Max-Age=60", "Secure"]
