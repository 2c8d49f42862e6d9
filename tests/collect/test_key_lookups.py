"""A spray of random write or device keys costs the key registry a bounded number of reads
(:mod:`aap.collect.keys`): keys the worker has not seen before are read at most
``AAP_KEY_LOOKUPS_PER_SECOND``; over it they get ``429 key_lookups_limited`` without a
read, while keys in use go on working, and are read again when their time runs out
without waiting for the budget."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap import errors
from aap.collect import keys
from aap.collect.keys import KeyLookups
from aap.collect.ratelimit import RateLimiter
from aap.runner import ServerProcess, create_source

# -- the lookups alone ----------------------------------------------------------------------


class Registry:
    def __init__(self, known: dict[str, str]) -> None:
        self.known = known
        self.reads: list[str] = []

    def read(self, key: str) -> str | None:
        self.reads.append(key)
        return self.known.get(key)


def test_new_keys_over_the_budget_are_refused_without_a_read() -> None:
    reg = Registry({"wk_good": "shop"})
    # a budget of one read (rate 0.001/s: the next token is 1,000 s away)
    lookups = KeyLookups("write", reg.read, RateLimiter(), 0.001)
    assert lookups.get("wk_good") == "shop"
    for _ in range(50):
        with pytest.raises(errors.TooManyRequests) as exc:
            lookups.get("wk_" + secrets.token_urlsafe(16))
        assert exc.value.code == "key_lookups_limited" and exc.value.retry_after >= 1
    assert reg.reads == ["wk_good"]
    assert lookups.get("wk_good") == "shop"  # remembered: no read, no token
    assert reg.reads == ["wk_good"]


def test_a_known_key_is_read_again_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry({"wk_good": "shop"})
    lookups = KeyLookups("write", reg.read, RateLimiter(), 0.001)
    assert lookups.get("wk_good") == "shop"
    with pytest.raises(errors.TooManyRequests):
        lookups.get("wk_random")  # the budget is spent
    monkeypatch.setattr(keys, "KNOWN_TTL_S", 0.0)  # its time ran out
    reg.known["wk_good"] = "shop, renamed"
    assert lookups.get("wk_good") == "shop, renamed"
    assert reg.reads == ["wk_good", "wk_good"]
    del reg.known["wk_good"]  # revoked: refused at the next read, which needs no token
    assert lookups.get("wk_good") is None
    assert reg.reads == ["wk_good"] * 3


def test_an_unknown_key_is_remembered_and_a_new_one_found_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry({})
    lookups = KeyLookups("device", reg.read, RateLimiter(), 1000.0)
    monkeypatch.setattr(keys, "UNKNOWN_TTL_S", 3600.0)
    assert lookups.get("dk_new") is None
    reg.known["dk_new"] = "thermostat"  # created just after the first try
    assert lookups.get("dk_new") is None  # still remembered as unknown: no read
    assert reg.reads == ["dk_new"]
    monkeypatch.setattr(keys, "UNKNOWN_TTL_S", 0.0)
    assert lookups.get("dk_new") == "thermostat"
    assert reg.reads == ["dk_new", "dk_new"]


def test_an_overlong_key_is_unknown_without_a_read() -> None:
    reg = Registry({})
    lookups = KeyLookups("write", reg.read, RateLimiter(), 1000.0)
    for i in range(100):
        assert lookups.get(f"wk_{i}" + "x" * keys.MAX_KEY_CHARS) is None
    assert reg.reads == [] and not lookups._unknown


def test_no_limit_with_zero() -> None:
    reg = Registry({})
    lookups = KeyLookups("write", reg.read, RateLimiter(), 0.0)
    for i in range(500):
        assert lookups.get(f"wk_{i}") is None
    assert len(reg.reads) == 500


# -- through a real server ------------------------------------------------------------------


def _metrics(url: str) -> dict[str, float]:
    r = httpx.get(url + "/metrics", timeout=60)
    assert r.status_code == 200, r.text
    return {name: float(v) for name, _, v in (line.rpartition(" ") for line in r.text.splitlines()
                                              if line and not line.startswith("#"))}


def _lookups(url: str, kind: str, result: str) -> float:
    return _metrics(url).get(f'aap_key_lookups_total{{kind="{kind}",result="{result}"}}', 0.0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    key = create_source(tmp_path, "shop", "--basis", "legitimate_interest")
    srv = ServerProcess(tmp_path, workers=1,
                        env={"AAP_KEY_LOOKUPS_PER_SECOND": "0.001"}).start()
    try:
        yield srv, key
    finally:
        srv.stop()


def _batch() -> dict[str, Any]:
    return {"batch": [{"type": "track", "event": "Sprayed", "anonymousId": "a-1",
                       "messageId": str(uuid.uuid4())}]}


@pytest.mark.slow  # a server
def test_a_spray_of_random_keys_is_not_read_and_good_keys_keep_working(
        server: tuple[ServerProcess, str]) -> None:
    srv, key = server
    client = httpx.Client(timeout=60)  # one client: the sprays take well under the TTL
    post = lambda k: client.post(srv.url + "/v1/batch", json=_batch(),  # noqa: E731
                                 auth=(k, ""))
    t0 = time.monotonic()
    assert post(key).status_code == 200  # the worker's one read of a new key
    t0_end = time.monotonic()
    for _ in range(20):
        r = post("wk_" + secrets.token_urlsafe(24))
        assert r.status_code == 429, r.text
        assert r.json()["code"] == "key_lookups_limited" and int(r.headers["retry-after"]) >= 1
    r = httpx.post(srv.url + "/v1/devices/telemetry", json=[],
                   headers={"Authorization": "Bearer dk_" + secrets.token_urlsafe(24)},
                   timeout=60)
    assert r.status_code == 429 and r.json()["code"] == "key_lookups_limited", r.text
    t1 = time.monotonic()
    assert post(key).status_code == 200
    t1_end = time.monotonic()
    # the good key is remembered for KNOWN_TTL_S from its read: on a loaded machine the
    # sprays may take longer, and then it is read again (both when it cannot be told)
    found = _lookups(srv.url, "write", "found")
    if t1_end < t0 + keys.KNOWN_TTL_S:
        assert found == 1
    elif t1 > t0_end + keys.KNOWN_TTL_S:
        assert found == 2
    else:
        assert found in (1, 2)
    assert _lookups(srv.url, "write", "limited") == 20
    assert _lookups(srv.url, "write", "unknown") == 0
    assert _lookups(srv.url, "device", "limited") == 1
    time.sleep(keys.KNOWN_TTL_S + 0.5)  # the good key's time runs out: read again, no token
    assert post(key).status_code == 200
    assert _lookups(srv.url, "write", "found") == found + 1
    client.close()
