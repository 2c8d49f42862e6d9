"""The CNIL audience-measurement mode: anonymous statistics without consent, a visitor id
that is a daily salted hash (same within a day and a source, different the next day and
on another source), salts gone after 48 hours, no raw id or IP on disk, and
`aap privacy check --cnil` reporting each condition."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.datadir import DataDir
from aap.events import Event
from aap.privacy.cnil import DailySalts, anonymize
from aap.runner import ServerProcess, create_source
from tests.privacy.test_ip_canary import forms as ip_forms
from tests.privacy.test_ip_canary import scan
from tests.privacy.test_personal_canary import forms, warehouse_text

USER = "cnil-canary-user-4e1a"
ANON = "cnil-canary-anon-90cd"
EMAIL = "cnil.canary.77@example.org"
V1, V2 = "203.0.113.77", "198.51.100.213"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0"
MARKER = "cnil-marker-2b8f"
CONDITIONS = ("purpose_audience_measurement_only", "anonymous_statistics_only",
              "no_cross_site_identifier", "daily_salted_hash_instead_of_an_id",
              "salts_deleted_after_48h", "ip_for_city_level_geo_only", "kept_at_most_25_months")


def aap(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aap", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def track(name: str, **kw: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "messageId": str(uuid.uuid4()),
            "properties": {"note": MARKER}, **kw}


def send(server: ServerProcess, key: str, ip: str, batch: list[dict[str, Any]]) -> dict[str, Any]:
    r = httpx.post(server.url + "/v1/batch", auth=(key, ""), json={"batch": batch},
                   headers={"X-Forwarded-For": ip, "User-Agent": UA}, timeout=30)
    assert r.status_code in (200, 400), r.text
    out: dict[str, Any] = r.json()
    return out


def persons(server: ServerProcess, source: str) -> dict[str, int]:
    return {m: p for m, p in server.sql(
        "SELECT message_id, person_id FROM events WHERE source = ?", [source])}


@pytest.mark.slow
def test_cnil_mode_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "data"
    web = create_source(data, "web", "--mode", "cnil")
    blog = create_source(data, "blog", "--mode", "cnil")
    shop = create_source(data, "shop")  # a standard source: consent still needed there
    ids = {s.split("\t")[1]: s.split("\t")[0] for s in
           aap("sources", "list", "--data-dir", str(data)).stdout.splitlines()}
    salts = DataDir(data).cnil_salts
    salts.mkdir(parents=True, mode=0o700)
    today = datetime.now(UTC).date()
    old = salts / f"{today - timedelta(days=3)}.salt"
    old.write_bytes(b"x" * 32)
    yesterday = salts / f"{today - timedelta(days=1)}.salt"
    yesterday.write_bytes(b"y" * 32)
    os.chmod(yesterday, 0o600)
    env = {"AAP_TRUSTED_PROXIES": "127.0.0.1/32"}
    with ServerProcess(data, workers=2, env=env) as server:
        first = [track("Viewed", userId=USER, anonymousId=ANON,
                       context={"traits": {"email": EMAIL}, "sessionId": "s-1"}),
                 {"type": "identify", "userId": USER, "traits": {"email": EMAIL}},
                 {"type": "alias", "userId": USER, "previousId": ANON},
                 track("Opted out", anonymousId=ANON,
                       context={"consent": {"categoryPreferences": {
                           "audience_measurement": False}}})]
        out = send(server, web, V1, first)
        # no consent statement, yet stored; identify and alias refused, the objection honoured
        assert out["accepted"] == 1 and out["not_stored"] == {"no_lawful_basis": 1}
        assert [(r["index"], r["reason"]) for r in out["rejected"]] == [
            (1, "not_anonymous"), (2, "not_anonymous")]
        # the same visitor again (maybe on the other worker), on another site, and another
        # visitor; a standard source still needs consent
        for _ in range(3):
            assert send(server, web, V1, [track("Again", anonymousId=str(uuid.uuid4()))]
                        )["accepted"] == 1
        assert send(server, blog, V1, [track("Viewed", userId=USER)])["accepted"] == 1
        assert send(server, web, V2, [track("Viewed", userId=USER)])["accepted"] == 1
        assert send(server, shop, V1, [track("Viewed", userId=USER)]) == {
            "success": True, "accepted": 0, "not_stored": {"no_lawful_basis": 1}}
        server.wait_processed()
        on_web = server.sql("SELECT person_id, count(*) FROM events WHERE source = ?"
                            " GROUP BY 1 ORDER BY 2 DESC", [ids["web"]])
        assert [n for _, n in on_web] == [4, 1]  # V1 four times under one id; V2 apart
        on_blog = server.sql("SELECT DISTINCT person_id FROM events WHERE source = ?",
                             [ids["blog"]])
        assert len(on_blog) == 1 and on_blog[0][0] not in {p for p, _ in on_web}
        assert server.sql("SELECT DISTINCT purposes FROM events") == [[["audience_measurement"]]]
        assert server.sql("SELECT count(*) FROM persons WHERE identified OR traits IS NOT NULL"
                          ) == [[0]]
        # salts: today's made 0600, the one older than 48 h deleted, yesterday's still there
        assert not old.exists() and yesterday.exists()
        mine = salts / f"{today}.salt"
        assert mine.exists() and mine.stat().st_mode & 0o777 == 0o600
        check = aap("privacy", "check", "--cnil", "--data-dir", str(data))
        assert check.returncode == 0, check.stdout + check.stderr
        for name in CONDITIONS:
            assert check.stdout.count(f"PASS  {name}") == 2, (name, check.stdout)
        assert "FAIL" not in check.stdout and "all conditions met" in check.stdout
        v1_id = on_web[0][0]
    # a restart within the day keeps the day's salt: the same visitor keeps today's id
    with ServerProcess(data, workers=2, env=env) as server:
        assert send(server, web, V1, [track("After restart")])["accepted"] == 1
        server.wait_processed()
        assert server.sql("SELECT person_id FROM events WHERE event = 'After restart'"
                          ) == [[v1_id]]
    # nothing personal on disk: no id, email or client address in any form
    contents = warehouse_text(data)
    assert MARKER in contents and scan(tmp_path, MARKER.encode())
    for canary in (USER, ANON, EMAIL):
        for form in forms(canary):
            assert scan(tmp_path, form) == [] and form.decode() not in contents, (canary, form)
    for ip in (V1, V2):
        for form in ip_forms(ip):
            assert scan(tmp_path, form) == [], (ip, form)
    for truncated in ("203.0.113.0", "198.51.100.0"):  # not even truncated, in CNIL mode
        assert scan(DataDir(data).log, truncated.encode()) == []

    # the check fails, naming the condition, on a salt left too long or readable by others
    old.write_bytes(b"x" * 32)
    os.chmod(old, 0o644)
    check = aap("privacy", "check", "--cnil", "--data-dir", str(data))
    assert check.returncode == 1 and "Traceback" not in check.stderr
    assert "FAIL  salts_deleted_after_48h" in check.stdout
    assert "FAIL  daily_salted_hash_instead_of_an_id" in check.stdout
    assert "PASS  no_cross_site_identifier" in check.stdout
    assert "condition(s) not met" in check.stderr


@pytest.mark.slow
def test_check_without_cnil_sources_and_without_the_flag(tmp_path: Path) -> None:
    r = aap("privacy", "check", "--cnil", "--data-dir", str(tmp_path))
    assert r.returncode == 0 and "no source in CNIL mode" in r.stdout
    r = aap("privacy", "check", "--data-dir", str(tmp_path))
    assert r.returncode != 0 and "--cnil" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), [
    (("--mode", "cnil", "--purpose", "analytics"), "may only serve consent-exempt"),
    (("--mode", "cnil", "--purpose", "audience_measurement:consent"), "legitimate_interest"),
    (("--purpose", "audience_measurement:legitimate_interest"), "--mode cnil"),
])
def test_cnil_sources_serve_the_exempt_purpose_only(tmp_path: Path, args: tuple[str, ...],
                                                    message: str) -> None:
    r = aap("sources", "create", "s", "--data-dir", str(tmp_path), *args)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def visit(salts: DailySalts, source: str, ip: str = "203.0.113.0", ua: str = UA) -> int | None:
    ev = Event(type="track", event="Viewed", message_id="m", user_id=USER, anonymous_id=ANON,
               received_at=salts.clock(), source=source, ip=ip)
    assert anonymize(ev, salts.today(), ua) is None
    assert ev.user_id is ev.anonymous_id is ev.ip is None
    return ev.anonymous_key


def test_the_visitor_id_changes_every_day_and_salts_go_after_48_hours(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 27, 0, 5, tzinfo=UTC))
    worker1, worker2 = DailySalts(tmp_path, clock), DailySalts(tmp_path, clock)
    day1 = visit(worker1, "src_a")
    assert visit(worker2, "src_a") == day1  # another worker process: the same salt file
    assert visit(worker1, "src_b") != day1  # another site
    assert visit(worker1, "src_a", ua="Other/1.0") != day1  # another visitor
    clock.t = datetime(2026, 11, 27, 23, 59, tzinfo=UTC)
    assert visit(worker1, "src_a") == day1  # all day long
    clock.t = datetime(2026, 11, 28, 0, 0, 1, tzinfo=UTC)
    day2 = visit(worker1, "src_a")
    assert day2 != day1 and visit(worker2, "src_a") == day2
    names = lambda: sorted(p.name for _, p in worker1.on_disk())  # noqa: E731
    assert names() == ["2026-11-27.salt", "2026-11-28.salt"]
    clock.t = datetime(2026, 11, 28, 23, 59, 59, tzinfo=UTC)  # 47:59:59 after day 1 began
    assert worker1.purge() == 0 and len(names()) == 2
    clock.t = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)  # 48 hours: day 1's salt goes
    visit(worker1, "src_a")  # the day changes: the worker purges
    assert names() == ["2026-11-28.salt", "2026-11-29.salt"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for _, p in worker1.on_disk())
    assert worker1.expired() == [] and date(2026, 11, 27).isoformat() not in str(names())
