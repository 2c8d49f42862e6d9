"""Literal requests as each SDK sends them (tests/collect/wire/*.json), replayed against
the real server: the answer, and the canonical events appended to the log.

A fixture names the SDKs that send the request, the request (``body`` as JSON or text,
or ``body_base64`` for bytes; ``$KEY`` and ``$BASIC`` stand for the source's write key
and its Basic-auth value; ``encoding`` ``gzip`` or ``form-base64`` is applied to the
JSON body after that, as the SDK does), the expected status and a subset of the response, and for
each stored event the fields that must match (``a.b`` reaches into nested objects).

A fixture read from an SDK's public source also says where from: ``source`` (``repo``,
``version``, ``commit``, ``files``), and how the SDK answers AAP's status codes
(``retry``)."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest

from tests.conftest import Running


@pytest.fixture(scope="module")
def running(sdk_server: Running) -> Running:
    return sdk_server


WIRE = Path(__file__).parent / "wire"
FIXTURES = sorted(WIRE.glob("*.json"))


def _fill(value: Any, subst: dict[str, str]) -> Any:
    if isinstance(value, str):
        for k, v in subst.items():
            value = value.replace(k, v)
        return value
    if isinstance(value, dict):
        return {_fill(k, subst): _fill(v, subst) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, subst) for v in value]
    return value


def _get(doc: dict[str, Any], dotted: str) -> Any:
    cur: Any = doc
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def _subset(actual: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(_subset(actual.get(k), v)
                                                for k, v in expected.items())
    return bool(actual == expected)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_literal_request(running: Running, path: Path) -> None:
    spec = json.loads(path.read_text())
    assert spec["sdk"]
    if "source" in spec:
        assert {"repo", "version", "commit", "files"} <= spec["source"].keys()
        assert spec["source"]["files"] and spec["source"]["commit"]
    subst = {"$KEY": running.key, "$BASIC": base64.b64encode(f"{running.key}:".encode()).decode()}
    req = _fill(spec["request"], subst)
    if "body_base64" in req:
        body: bytes | None = base64.b64decode(req["body_base64"])
    elif isinstance(req.get("body"), str):
        body = req["body"].encode()
    elif "body" in req:
        body = json.dumps(req["body"]).encode()
    else:
        body = None
    if req.get("encoding") == "gzip":
        body = gzip.compress(body or b"")
    elif req.get("encoding") == "form-base64":
        body = b"data=" + quote(base64.b64encode(body or b"").decode(), safe="").encode()
    before = len(running.stored())
    r = httpx.request(req["method"], running.url + req["path"], content=body,
                      headers=req["headers"], timeout=30)
    assert r.status_code == spec["status"], r.text
    if "response_type" in spec:
        assert r.headers["content-type"] == spec["response_type"]
    if "response" in spec:
        assert _subset(r.json(), _fill(spec["response"], subst)), r.text
    stored = [msgspec.to_builtins(e) for e in running.stored()[before:]]
    expected = _fill(spec["events"], subst)
    assert len(stored) == len(expected), stored
    for got, want in zip(stored, expected, strict=True):
        for field, value in want.items():
            assert _get(got, field) == value, (field, got)
        assert "ip" not in got.get("context", {})  # raw addresses never reach the log
