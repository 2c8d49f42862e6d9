"""Back-pressure, rate limits, CORS, trusted proxies and metrics on the real server."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from aap.datadir import DataDir
from aap.log.sqlite import SQLiteLog
from tests.conftest import Running, start

pytestmark = pytest.mark.slow  # each test starts its own server


def track(n: int, prefix: str = "e") -> dict[str, object]:
    return {"batch": [{"type": "track", "event": "E", "userId": "u", "messageId": f"{prefix}{i}"}
                      for i in range(n)]}


def health_becomes(url: str, status: int) -> None:
    """Poll ``/healthz`` until it answers ``status``: each worker process runs its own health
    check, and the request may reach one that has not run it since the change."""
    deadline = time.monotonic() + 120
    while (got := httpx.get(url + "/healthz").status_code) != status:
        assert time.monotonic() < deadline, f"/healthz still answers {got}, not {status}"
        time.sleep(0.1)


def test_consumer_lag_over_the_bound_gives_503_until_it_recovers(tmp_path: Path) -> None:
    r = start(tmp_path, env={"AAP_MAX_CONSUMER_LAG": "100", "AAP_HEALTH_INTERVAL_MS": "50"})
    try:
        log = SQLiteLog(DataDir(r.data_dir).log)
        log.commit("slow-consumer", 0)
        assert r.post("/v1/batch", json=track(150)).status_code == 200
        # the health check runs every 50 ms: poll (generously) until it has seen the lag
        deadline = time.monotonic() + 120
        n = 0
        while (refused := r.post("/v1/batch", json=track(1, f"late{n}-"))).status_code == 200:
            assert time.monotonic() < deadline, "the lag never gave a 503"
            n += 1
            time.sleep(0.1)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["code"] == "backpressure"
        health_becomes(r.url, 503)
        assert not any(e.message_id == f"late{n}-0" for e in r.stored())  # the refused one
        log.commit("slow-consumer", log.stats().head_offset)  # the consumer caught up
        deadline = time.monotonic() + 120
        while r.post("/v1/batch", json=track(1, "again")).status_code != 200:
            assert time.monotonic() < deadline, "still refused after the consumer caught up"
            time.sleep(0.1)
        health_becomes(r.url, 200)
        log.close()
    finally:
        r.server.stop()


def test_free_disk_below_the_floor_gives_503(tmp_path: Path) -> None:
    r = start(tmp_path, env={"AAP_MIN_FREE_DISK_MB": str(1 << 40)}, healthy=False)
    try:
        resp = r.post("/v1/batch", json=track(1))
        assert resp.status_code == 503 and "Retry-After" in resp.headers
        assert "free disk" in resp.json()["message"]
        assert httpx.get(r.url + "/healthz").status_code == 503
        assert r.stored() == []
    finally:
        r.server.stop()


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    r = start(tmp_path, source_args=("--rate-limit", "200"), workers=1)
    try:
        answers = []
        # a full bucket holds 200 events (refilled at 200/s): batches of a full bucket, so
        # that however slowly a loaded machine answers, a second batch within a second of
        # the first is refused
        for i in range(40):
            answers.append(r.post("/v1/batch", json=track(200, f"r{i}-")))
            if answers[-1].status_code == 429:
                break
        statuses = [a.status_code for a in answers]
        assert statuses[0] == 200
        limited = answers[-1]
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["code"] == "rate_limited"
        assert len(r.stored()) == statuses.count(200) * 200
        time.sleep(1.1)  # a second refills the bucket (a slower machine only refills more)
        assert r.post("/v1/batch", json=track(50, "later")).status_code == 200
    finally:
        r.server.stop()


def test_cors_preflight_and_allowed_origins(tmp_path: Path) -> None:
    r = start(tmp_path, source_args=("--origin", "https://shop.example"))
    try:
        pre = httpx.options(r.url + "/v1/batch", headers={
            "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-retry-count"})
        assert pre.status_code == 204
        allowed = {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "x-retry-count"} <= allowed
        assert "POST" in pre.headers["access-control-allow-methods"]
        ok = r.post("/v1/batch", json=track(1), headers={"Origin": "https://shop.example"})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://shop.example"
        bad = r.post("/v1/batch", json=track(1, "evil"), headers={"Origin": "https://evil.example"})
        assert bad.status_code == 403 and bad.json()["code"] == "origin_not_allowed"
        assert "access-control-allow-origin" not in bad.headers
        assert [e.message_id for e in r.stored()] == ["e0"]
    finally:
        r.server.stop()


def test_forwarded_for_is_ignored_from_untrusted_peers(running: Running) -> None:
    resp = running.post("/v1/batch", json=track(1, "xff"),
                        headers={"X-Forwarded-For": "81.2.69.142"})
    assert resp.status_code == 200
    (ev,) = [e for e in running.stored() if e.message_id == "xff0"]
    assert ev.ip == "127.0.0.0" and ev.geo is None


def test_gpc_and_dnt_are_recorded(running: Running) -> None:
    running.post("/v1/batch", json=track(1, "gpc"), headers={"Sec-GPC": "1", "DNT": "1"})
    running.post("/v1/batch", json=track(1, "nogpc"))
    by_id = {e.message_id: e for e in running.stored()}
    assert by_id["gpc0"].gpc and by_id["gpc0"].dnt
    assert not by_id["nogpc0"].gpc and not by_id["nogpc0"].dnt


def test_metrics_count_accepted_rejected_bytes_latency_and_log(running: Running) -> None:
    running.post("/v1/batch", json={"batch": [track(1, "m")["batch"][0],  # type: ignore[index]
                                              {"type": "track", "event": "no id"}]})
    text = httpx.get(running.url + "/metrics").text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, v = line.rpartition(" ")
            values[name] = float(v)
    accepted = sum(v for k, v in values.items() if k.startswith("aap_events_accepted_total"))
    assert accepted == len(running.stored())
    assert values['aap_events_rejected_total{reason="missing_identity"}'] >= 1
    assert values["aap_bytes_received_total"] > 0
    assert values['aap_request_duration_seconds_count{route="/v1/batch"}'] >= 1
    assert values["aap_log_size_bytes"] > 0
    assert values["aap_log_events"] == accepted
    assert "# TYPE aap_consumer_lag_events gauge" in text
