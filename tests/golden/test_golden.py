"""Golden tests: input batches (tests/golden/*.json) → expected warehouse rows
(tests/golden/*.expected.json). Set AAP_UPDATE_GOLDEN=1 to rewrite the expectations,
then read the diff: a golden file is only as right as the person who checked it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.runner import ServerProcess, create_source
from tests.conftest import slow_fixture

HERE = Path(__file__).parent
CASES = sorted(p for p in HERE.glob("*.json") if not p.name.endswith(".expected.json"))
_NOW = re.compile(r"^\$NOW([+-]\d+)?$")


def _fill(value: Any, now: datetime) -> Any:
    if isinstance(value, str) and (m := _NOW.match(value)):
        return (now + timedelta(seconds=int(m.group(1) or 0))).isoformat()
    if isinstance(value, dict):
        return {k: _fill(v, now) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, now) for v in value]
    return value


@slow_fixture(params=CASES, ids=[p.stem for p in CASES])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, dict[str, Any],
                                                                          ServerProcess]]:
    spec = json.loads(request.param.read_text())
    data = tmp_path / "data"
    key = create_source(data, "golden", "--basis", "legitimate_interest",
                        *(["--historical"] if spec["historical"] else []))
    server = ServerProcess(data, workers=1).start()
    try:
        now = datetime.now(UTC)
        for req in spec["requests"]:
            r = httpx.post(server.url + req["path"], json=_fill(req["body"], now),
                           auth=(key, ""), headers=req.get("headers", {}))
            assert r.status_code == 200, r.text
        server.wait_processed()
        yield request.param, spec, server
    finally:
        server.stop()


def test_golden(case: tuple[Path, dict[str, Any], ServerProcess]) -> None:
    path, spec, server = case
    got = {name: server.sql(sql) for name, sql in spec["queries"].items()}
    expected_path = path.with_suffix(".expected.json")
    if os.environ.get("AAP_UPDATE_GOLDEN"):
        expected_path.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n")
    assert expected_path.exists(), f"no {expected_path.name}: run with AAP_UPDATE_GOLDEN=1"
    assert got == json.loads(expected_path.read_text())
