"""The shell's shared components in Chromium, outside any page: <Chart> (uPlot) carries
exactly the numbers it is given in data-series, sets data-render-ms once drawn, and
resizes with its container; <DataTable> sorts by its header buttons."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import slow_fixture
from tests.e2e.browser import PageServer
from tests.e2e.web.helpers import ROOT, TIMEOUT_MS

SERIES = [{"name": "new", "values": [3, 4, 0, 2.5]},
          {"name": "<b>returning</b>", "values": [1, None, 2, 3]},
          {"name": "dormant", "values": [-1, -2, 0, -1]}]
LABELS = ["2026-11-28", "2026-11-29", "2026-11-30", "2026-12-01"]
HARNESS = """
import { render } from "preact";
import "uplot/dist/uPlot.min.css";
import { Chart } from "WEB/components/chart";
import { DataTable } from "WEB/components/table";
const data = JSON.parse(document.getElementById("data").textContent);
render(<div style={{ width: "100%" }}>
  <Chart kind="line" labels={data.labels} series={data.series.slice(0, 2)} title="Line" />
  <Chart kind="bar" labels={data.labels} series={data.series.slice(0, 2)} title="Bars" />
  <Chart kind="stacked" labels={data.labels} series={data.series} title="Stacked" />
  <DataTable columns={["name", "n"]} rows={[["b", 10], ["a", 9], ["c", 100]]} name="t" />
</div>, document.getElementById("root"));
"""


@slow_fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    out = tmp_path_factory.mktemp("components")
    entry = out / "_harness_test.tsx"
    entry.write_text(HARNESS.replace("WEB/", str(ROOT / "web" / "src") + "/"))
    subprocess.run([str(ROOT / "web" / "node_modules" / ".bin" / "esbuild"), str(entry),
                    "--bundle", "--format=esm", "--jsx=automatic", "--jsx-import-source=preact",
                    f"--outdir={out}", "--log-level=warning"], check=True, timeout=120,
                   env={**os.environ, "NODE_PATH": str(ROOT / "web" / "node_modules")})
    js = (out / "_harness_test.js").read_text()
    css = (out / "_harness_test.css").read_text()
    data = json.dumps({"labels": LABELS, "series": SERIES})

    def page(q: dict[str, str]) -> str:
        return (f"<!doctype html><html lang=en><title>c</title><style>{css}</style>"
                f"<script id=data type=application/json>{data}</script><div id=root></div>"
                f"<script type=module>{js}</script>")

    server = PageServer({"c": page})
    try:
        yield server.url + "/c"
    finally:
        server.close()


def _open(browser: Any, url: str) -> Any:
    ctx = browser.new_context(viewport={"width": 1000, "height": 900}, accept_downloads=True)
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.errors = errors
    return page


def test_chart_carries_its_numbers_and_its_render_time(browser: Any, harness: str) -> None:
    page = _open(browser, harness)
    try:
        charts = page.locator("figure.chart")
        expect(charts).to_have_count(3)
        for i, expected in enumerate((SERIES[:2], SERIES[:2], SERIES)):
            chart = charts.nth(i)
            expect(chart).to_have_attribute("data-render-ms", timeout=TIMEOUT_MS)
            assert float(chart.get_attribute("data-render-ms") or "x") >= 0
            assert json.loads(chart.get_attribute("data-series") or "") == {
                "labels": LABELS, "series": expected}
            assert chart.locator("canvas").count() >= 1
            # the legend and the hidden table give the same names and numbers as text
            legend = chart.locator(".chart-legend li").all_inner_texts()
            assert [t.strip() for t in legend] == [s["name"] for s in expected]
            cells = chart.locator("table tbody tr").first.locator("td").all_inner_texts()
            assert cells == [str(s["values"][0]) for s in expected]
        # a name with markup is text, never an element
        assert page.locator("figure.chart b").count() == 0
        assert page.errors == []
    finally:
        page.context.close()


def test_chart_resizes_with_its_container(browser: Any, harness: str) -> None:
    page = _open(browser, harness)
    try:
        canvas = page.locator("figure.chart").first.locator("canvas").first
        expect(canvas).to_be_visible()
        wide = canvas.bounding_box()["width"]
        page.set_viewport_size({"width": 375, "height": 900})
        page.wait_for_function("(w) => document.querySelector('figure.chart canvas')"
                               ".getBoundingClientRect().width < w - 200", arg=wide)
        assert canvas.bounding_box()["width"] <= 375
    finally:
        page.context.close()


def test_data_table_sorts_and_downloads(browser: Any, harness: str, tmp_path: Path) -> None:
    page = _open(browser, harness)
    try:
        table = page.locator(".data-table")
        first = table.locator("tbody tr td:first-child")
        expect(first).to_have_text(["b", "a", "c"])
        table.get_by_role("button", name="n", exact=True).click()
        expect(first).to_have_text(["a", "b", "c"])  # 9, 10, 100: numbers, not text
        expect(table.locator("th").nth(1)).to_have_attribute("aria-sort", "ascending")
        table.get_by_role("button", name="n", exact=True).click()
        expect(first).to_have_text(["c", "b", "a"])
        with page.expect_download() as dl:
            table.get_by_role("button", name="Download CSV").click()
        assert dl.value.suggested_filename == "t.csv"
        assert Path(dl.value.path()).read_bytes() == b"name,n\r\nc,100\r\nb,10\r\na,9\r\n"
    finally:
        page.context.close()
