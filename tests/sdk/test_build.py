"""The browser SDK's build (esbuild from npm, run by scripts/setup, which scripts/test runs):
at most 5 KB minified and gzipped, measured by the build and checked here on the file the
collector serves; and what the bundle must never contain."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SDK = ROOT / "sdk" / "js"
SERVED = ROOT / "src" / "aap" / "collect" / "static" / "aap.min.js"
BUDGET = 5 * 1024


@pytest.mark.slow
def test_build_measures_and_stays_under_5_kb() -> None:
    out = subprocess.run(["node", str(SDK / "build.mjs")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    m = re.search(r"aap\.min\.js: (\d+) bytes minified, (\d+) bytes gzipped \(budget 5120\)",
                  out.stdout)
    assert m, out.stdout
    size = json.loads((SDK / "build" / "size.json").read_text())
    js = SERVED.read_bytes()
    assert size["minified"] == len(js) == int(m.group(1))
    assert size["gzipped"] == int(m.group(2))
    assert len(gzip.compress(js, 9)) <= BUDGET
    assert size["gzipped"] <= BUDGET


def test_bundle_never_reads_field_values_or_pointer_streams() -> None:
    src = (SDK / "src" / "aap.js").read_text()
    code = "\n".join(line for line in src.splitlines() if not line.strip().startswith("//"))
    for forbidden in (".value", "keydown", "keyup", "keypress", "mousemove", "pointermove",
                      "document.cookie", "geolocation", "sessionStorage"):
        assert forbidden not in code, forbidden


@pytest.mark.slow
def test_the_banner_is_its_own_bundle_under_8_kb() -> None:
    """The consent banner (loaded by aap.consent.show()) is built beside the SDK, with its
    own budget; the SDK only names its URL."""
    out = subprocess.run(["node", str(SDK / "build.mjs")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    m = re.search(r"aap-banner\.min\.js: (\d+) bytes minified, (\d+) bytes gzipped"
                  r" \(budget 8192\)", out.stdout)
    assert m, out.stdout
    banner = (SERVED.parent / "aap-banner.min.js").read_bytes()
    assert len(banner) == int(m.group(1))
    assert len(gzip.compress(banner, 9)) <= 8 * 1024
    sdk = SERVED.read_text()
    assert "/sdk-banner.js" in sdk and "Accept all" not in sdk
