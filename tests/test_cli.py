"""The CLI: contracts other tools rely on, and clear messages for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aap.datadir import DataDir
from aap.sources import Sources, hash_key

pytestmark = pytest.mark.slow  # each test runs the CLI in a subprocess


def aap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aap", *args], capture_output=True, text=True)


def test_sources_create_prints_the_key_alone_on_the_last_line(tmp_path: Path) -> None:
    r = aap("sources", "create", "web", "--data-dir", str(tmp_path))
    assert r.returncode == 0
    key = r.stdout.strip().splitlines()[-1]
    assert key.startswith("wk_") and " " not in key and len(key) > 30
    src = Sources(tmp_path).by_key(key)
    assert src is not None and src.name == "web"
    # only the hash is stored
    assert key.encode() not in DataDir(tmp_path).meta_db.read_bytes()
    assert hash_key(key).encode() in DataDir(tmp_path).meta_db.read_bytes()
    listed = aap("sources", "list", "--data-dir", str(tmp_path)).stdout
    assert "web" in listed and key not in listed


def test_duplicate_source_name_is_a_clear_error(tmp_path: Path) -> None:
    aap("sources", "create", "web", "--data-dir", str(tmp_path))
    r = aap("sources", "create", "web", "--data-dir", str(tmp_path))
    assert r.returncode != 0
    assert "already exists" in r.stderr and "Traceback" not in r.stderr


def test_bad_setting_value_is_a_clear_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "aap", "sources", "list", "--data-dir",
                        str(tmp_path)], capture_output=True, text=True,
                       env={"AAP_PORT": "eighty", "PATH": "/usr/bin:/bin"})
    assert r.returncode != 0
    assert "AAP_PORT" in r.stderr and "Traceback" not in r.stderr


def test_log_show_without_a_log(tmp_path: Path) -> None:
    r = aap("log", "show", "--data-dir", str(tmp_path / "none"))
    assert r.returncode != 0 and "no log" in r.stderr


def test_python_dash_m_and_version() -> None:
    r = aap("--version")
    assert r.returncode == 0 and "0.1.0" in r.stdout


def test_demo_sends_traffic_and_shows_what_arrived() -> None:
    r = aap("demo", "--people", "150", "--no-serve")
    assert r.returncode == 0, r.stderr
    assert "What arrived in the durable log" in r.stdout
    assert "The warehouse" in r.stdout and "sessions" in r.stdout and "orders" in r.stdout
    assert "Order Completed" in r.stdout and '"ip"' in r.stdout
    # it ends with a trend, a funnel, a retention table and the top paths
    tail = r.stdout[r.stdout.index("What the analytics say"):]
    for title in ("Trend: daily visitors", "Funnel: visit", "Retention: visitors",
                  "Top paths"):
        assert title in tail
    assert "Signed Up" in tail and "→" in tail and "%" in tail
    # and a consent withdrawal and an erasure with its receipt (issue 5's demo), however
    # the console wrapped their lines
    flat = " ".join(r.stdout.split())
    assert "withdrew analytics (POST /v1/consent" in flat
    assert "asked to be forgotten (POST /api/v1/privacy/requests" in flat
    assert "data keys destroyed; receipt digest" in flat


def test_privacy_register_lists_purposes_and_the_sources_collecting_for_them(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    run = [sys.executable, "-m", "aap"]
    subprocess.run([*run, "sources", "create", "web", "--data-dir", data, "--purpose",
                    "analytics", "--purpose", "marketing:legitimate_interest"], check=True,
                   capture_output=True)
    out = subprocess.run([*run, "privacy", "register", "--data-dir", data], check=True,
                         capture_output=True, text=True, env={**os.environ, "AAP_HOT_DAYS": "3"}
                         ).stdout
    assert out.startswith("# Record of processing activities (GDPR Art. 30)")
    sections = {s.split("\n", 1)[0]: s for s in out.split("\n## ")[1:]}
    assert set(sections) == {"analytics", "marketing", "personalization", "partner_sharing",
                             "audience_measurement", "device_diagnostics"}
    assert "coarse location (lat/lon to 0.1°" in sections["device_diagnostics"]
    assert "Sources collecting for it: web (consent)" in sections["analytics"]
    assert "Sources collecting for it: web (legitimate interest)" in sections["marketing"]
    assert "Sources collecting for it: none" in sections["partner_sharing"]
    assert "3 days hot" in sections["analytics"]
    assert "Profiling: yes" in sections["personalization"]


def test_hostile_query_files_get_a_message_not_a_traceback(tmp_path: Path) -> None:
    for name, text in [("deep", "[" * 5000 + "]" * 5000),
                       ("deep_object", '{"kind": "trends", "series": [' + '{"a":' * 900 + "1"
                        + "}" * 900 + "]}"),
                       ("huge_cohort", '{"kind": "trends", "series": [{"event": "E"}],'
                        ' "cohort": 9223372036854775808}')]:
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        out = aap("query", str(path), "--data-dir", str(tmp_path / "data"))
        assert out.returncode != 0, name
        assert "Traceback" not in out.stderr and "Error:" in out.stderr, out.stderr
