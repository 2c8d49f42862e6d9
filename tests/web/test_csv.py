"""web/src/components/download.ts's CSV, run in Node (bundled by the project's esbuild):
quoting as RFC 4180 wants it, and no cell a spreadsheet would evaluate as a formula."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import slow_fixture

WEB = Path(__file__).parents[2] / "web"
ESBUILD = WEB / "node_modules" / ".bin" / "esbuild"


@slow_fixture(scope="module")
def to_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not ESBUILD.exists() or shutil.which("node") is None:
        pytest.fail("web/node_modules is missing: run scripts/setup")
    out = tmp_path_factory.mktemp("csv") / "download.mjs"
    subprocess.run([str(ESBUILD), str(WEB / "src" / "components" / "download.ts"), "--bundle",
                    "--format=esm", f"--outfile={out}", "--log-level=warning"], check=True)
    return out


def _run(module: Path, columns: list[str], rows: list[list[object]]) -> str:
    script = (f"import {{ toCsv }} from {json.dumps(str(module))};"
              f"process.stdout.write(toCsv(...{json.dumps([columns, rows])}));")
    return subprocess.run(["node", "--input-type=module", "-e", script], check=True,
                          capture_output=True, timeout=60).stdout.decode()


def test_csv_quotes_and_round_trips(to_csv: Path) -> None:
    rows: list[list[object]] = [["plain", 1], ['a "quoted", value', 2.5], ["line\nbreak", None],
                                [" padded ", True], ["<img src=x onerror=alert(1)>", 0]]
    text = _run(to_csv, ["name", "n"], rows)
    back = list(csv.reader(io.StringIO(text, newline="")))
    assert back[0] == ["name", "n"]
    assert back[1:] == [["plain", "1"], ['a "quoted", value', "2.5"], ["line\nbreak", ""],
                        [" padded ", "true"], ["<img src=x onerror=alert(1)>", "0"]]
    assert text.endswith("\r\n")


def test_csv_defuses_formulas(to_csv: Path) -> None:
    cells = ["=1+1", "+SUM(A1)", "-2+3", "@cmd", "\t=x", "=HYPERLINK(\"http://x\")"]
    text = _run(to_csv, ["v"], [[c] for c in cells] + [[-5]])
    back = [r[0] for r in csv.reader(io.StringIO(text, newline=""))][1:]
    assert back[:-1] == ["'" + c for c in cells]
    assert back[-1] == "-5"  # a number stays a number
