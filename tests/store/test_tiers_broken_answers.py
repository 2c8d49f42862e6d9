"""A tier store that answers a read wrong: more bytes than the range asked for, as the
moto stand-in once did under load (the CI run of ae70649). Arrow's S3 client fails the
read with ``INTERNAL_FAILURE ... Failed to flush response stream`` and does not ask again;
AAP reads again, and answers 503 (the store's fault) rather than 400 or 500 when the
store keeps answering wrong.

The store is a real moto server; in front of it, on 127.0.0.1, a small HTTP relay that
pads the next ``pad`` ranged GET answers with 100 bytes the client did not ask for."""

from __future__ import annotations

import http.server
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aap import errors
from aap.api.rest import RestAPI
from aap.runner import free_port
from aap.settings import Settings
from aap.store.meta import transient
from aap.store.tiering import TierPolicy, run_tiering
from aap.store.tiers import (
    READ_ATTEMPTS,
    STORAGE_UNAVAILABLE,
    TierConfig,
    TierStore,
    broke_off,
    read_again,
)
from aap.store.warehouse import Warehouse
from tests.conftest import slow_fixture
from tests.store.test_tiers import DAYS, PER_DAY, TODAY, load, moto_with

pytestmark = pytest.mark.slow  # a moto server and a warehouse moved to its warm tier

_HOP = {"content-length", "transfer-encoding", "connection", "server", "date"}


class Relay(http.server.ThreadingHTTPServer):
    """Forwards every request to ``target``; pads the next ``pad`` ranged GET answers."""

    daemon_threads = True

    def __init__(self, target: str) -> None:
        super().__init__(("127.0.0.1", free_port()), _Handler)
        self.target = target
        self.pad = 0
        self.padded = 0
        self.lock = threading.Lock()
        self.busy = 0
        """Requests being answered."""
        self.last = time.monotonic()
        """When the last request was answered."""

    def take_pad(self) -> bool:
        with self.lock:
            if self.pad <= 0:
                return False
            self.pad -= 1
            self.padded += 1
            return True


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Relay

    def _relay(self) -> None:
        with self.server.lock:
            self.server.busy += 1
        try:
            self._answer()
        finally:
            with self.server.lock:
                self.server.busy -= 1
                self.server.last = time.monotonic()

    def _answer(self) -> None:
        req = urllib.request.Request(self.server.target + self.path, method=self.command)
        for k, v in self.headers.items():
            if k.lower() != "content-length":
                req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, data, headers = r.status, r.read(), r.getheaders()
        except urllib.error.HTTPError as exc:
            status, data, headers = exc.code, exc.read(), list(exc.headers.items())
        size = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
        if self.command == "GET" and self.headers.get("Range") and self.server.take_pad():
            data += b"x" * 100
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in _HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", size if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = _relay

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Stores:
    wh: Warehouse
    relay: Relay
    direct: TierConfig


@slow_fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    """A warehouse whose warm and cold days were written to moto directly, and that
    reads them through the relay (only reads pass it)."""
    server, endpoint = moto_with("aap-wrong")
    direct = TierConfig("s3://aap-wrong/t", s3_endpoint=endpoint, s3_access_key="test",
                        s3_secret_key="test")
    relay = Relay(endpoint)
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    tmp = tmp_path_factory.mktemp("wrong")
    wh, _ = load(tmp, TierStore(direct))
    # stored for analytics (load's events name no purpose): what insights may read
    wh.con.execute("UPDATE events_raw SET purposes = ['analytics']")
    run_tiering(wh, TierPolicy(hot_days=7, warm_days=60, cold_days=400,
                               grace=timedelta(0)), today=TODAY)
    wh.tiers = TierStore(TierConfig(direct.url, s3_endpoint=f"http://127.0.0.1:"
                                    f"{relay.server_address[1]}", s3_access_key="test",
                                    s3_secret_key="test"))
    yield Stores(wh, relay, direct)
    wh.close()
    relay.shutdown()
    server.stop()


def _pad(relay: Relay, n: int) -> None:
    """Pad the next ``n`` ranged GETs, once the reads a failed query left going have
    ended (Arrow's read-ahead goes on after DuckDB gave up the scan: a pad meant for the
    next query was taken by one of them, CI of 00ff1c4)."""
    deadline = time.monotonic() + 60
    while True:
        with relay.lock:
            if (relay.busy == 0 and time.monotonic() - relay.last > 0.5) or (
                    time.monotonic() > deadline):
                relay.pad, relay.padded = n, 0
                return
        time.sleep(0.05)


def test_a_read_answered_wrong_is_the_stores_fault(stores: Stores) -> None:
    """``broke_off`` names the failure; ``away`` and ``transient`` count it as the store's
    (loops that retry log one line), though the store answers a look at its root."""
    _pad(stores.relay, 10**6)
    path, rows = stores.wh.query(
        "SELECT path, rows FROM tier_files WHERE tier = 'warm' LIMIT 1")[1][0]
    with pytest.raises(OSError) as wrong:
        stores.wh.tiers.read_table([path])
    _pad(stores.relay, 0)
    assert "Failed to flush response stream" in str(wrong.value)
    assert broke_off(wrong.value)
    assert stores.wh.tiers.away(wrong.value) and transient(wrong.value, stores.wh.tiers)
    assert stores.wh.tiers.read_table([path]).num_rows == rows > 0  # the file is whole
    assert not broke_off(OSError("Could not open Parquet input source: file not found"))


def _again(caplog: pytest.LogCaptureFixture) -> int:
    return sum("broke off" in r.getMessage() for r in caplog.records)


def test_a_query_reads_again(stores: Stores, caplog: pytest.LogCaptureFixture) -> None:
    """A SELECT whose read was answered wrong once is read again and counts every row;
    answered wrong every time, the failure stands after ``READ_ATTEMPTS`` tries."""
    total = DAYS * PER_DAY
    _pad(stores.relay, 1)
    with caplog.at_level(logging.WARNING, logger="aap.store.tiers"):
        assert stores.wh.query("SELECT count(*) FROM events")[1][0][0] == total
    assert stores.relay.padded == 1 and _again(caplog) == 1  # met, and read again
    caplog.clear()
    _pad(stores.relay, 10**6)
    with caplog.at_level(logging.WARNING, logger="aap.store.tiers"), \
            pytest.raises(Exception) as wrong:
        stores.wh.query("SELECT count(*) FROM events")
    _pad(stores.relay, 0)
    assert broke_off(wrong.value) and _again(caplog) == READ_ATTEMPTS - 1
    assert stores.wh.query("SELECT count(*) FROM events")[1][0][0] == total


def test_a_read_inside_a_read_is_asked_again_by_the_outer_one_only(
        stores: Stores, caplog: pytest.LogCaptureFixture) -> None:
    """A route's ``read_again`` around a handler whose query has its own: answered wrong
    every time, ``READ_ATTEMPTS`` reads in all, not ``READ_ATTEMPTS`` squared."""
    _pad(stores.relay, 10**6)
    with caplog.at_level(logging.WARNING, logger="aap.store.tiers"), \
            pytest.raises(Exception) as wrong:
        read_again(lambda: stores.wh.query("SELECT count(*) FROM events"))
    _pad(stores.relay, 0)
    assert broke_off(wrong.value) and _again(caplog) == READ_ATTEMPTS - 1
    assert stores.wh.query("SELECT count(*) FROM events")[1][0][0] == DAYS * PER_DAY


def test_the_api_answers_again_then_503(stores: Stores, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """``POST /query`` (a trend over every day) met by one wrong answer answers 200 with
    every event; met by wrong answers every time, 503 ``storage_unavailable`` with
    Retry-After — not 400 ``invalid_value`` (the insight is not at fault) nor 500."""
    api = RestAPI(Settings(data_dir=str(tmp_path / "api"), query_cache=False), stores.wh)
    body = msgspec.json.encode({
        "kind": "trends", "series": [{"event": "E0"}], "interval": "month",
        "date_from": date(2025, 12, 1).isoformat(), "date_to": TODAY.isoformat()})
    _pad(stores.relay, 1)
    with caplog.at_level(logging.WARNING, logger="aap.store.tiers"):
        first = api.handle("POST", "/query", "analyst", body)
    assert stores.relay.padded == 1 and _again(caplog) == 1
    assert sum(first["series"][0]["values"]) == DAYS * PER_DAY // 3
    caplog.clear()
    _pad(stores.relay, 10**6)
    with caplog.at_level(logging.WARNING, logger="aap.store.tiers"), \
            pytest.raises(errors.AAPError) as refused:
        api.handle("POST", "/query", "analyst", body)
    _pad(stores.relay, 0)
    assert refused.value.status == 503 and refused.value.code == STORAGE_UNAVAILABLE
    assert refused.value.retry_after  # type: ignore[attr-defined]
    assert _again(caplog) == READ_ATTEMPTS - 1
    assert api.handle("POST", "/query", "analyst", body) == first



def test_the_sql_kind_never_answers_from_part_of_the_rows(
        stores: Stores, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The ``sql`` kind streams the views to its worker process: a view whose read broke
    off ends its stream broken (it counted 210 of 4,500 events before: Arrow takes the
    end of a pipe for the end of a stream), the read's failure is the answer's, read
    again once; wrong every time, 503."""
    api = RestAPI(Settings(data_dir=str(tmp_path / "api"), query_cache=False), stores.wh)
    body = msgspec.json.encode({"kind": "sql", "query": "SELECT count(*) FROM events"})
    _pad(stores.relay, 1)
    with caplog.at_level(logging.WARNING, logger="aap.store.tiers"):
        once = api.handle("POST", "/query", "analyst", body)
    assert stores.relay.padded == 1 and _again(caplog) == 1
    assert once["rows"] == [[DAYS * PER_DAY]]
    _pad(stores.relay, 10**6)
    with pytest.raises(errors.AAPError) as refused:
        api.handle("POST", "/query", "analyst", body)
    _pad(stores.relay, 0)
    assert refused.value.status == 503 and refused.value.code == STORAGE_UNAVAILABLE
    assert api.handle("POST", "/query", "analyst", body) == once
