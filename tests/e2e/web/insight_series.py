"""What the insight pages' charts must carry in ``data-series``, computed here from the
API's answer (the mapping of ``web/src/insights/series.ts``, written again), and helpers
that read charts, tables and downloads of a page and call the API as the page's session."""

from __future__ import annotations

import csv
import io
import json
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Page

TIMEOUT = 60_000


def value_text(v: Any) -> str:
    if v is None:
        return "(not set)"
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def trend_name(s: dict[str, Any], broken_down: bool) -> str:
    parts = [s["label"]]
    if broken_down:
        parts.append(value_text(s["breakdown_value"]))
    if s.get("compare"):
        parts.append(s["compare"])
    return " · ".join(parts)


def step_name(s: dict[str, Any], i: int) -> str:
    return f"{i + 1}. {s.get('label') or s.get('event') or 'any event'}"


def expected(r: dict[str, Any]) -> dict[str, Any]:
    """The main chart's ``data-series`` for the API's answer ``r``."""
    kind = r["kind"]
    if kind == "trends":
        first = next((s for s in r["series"] if s.get("compare") != "previous"), r["series"][0])
        broken_down = any(s.get("breakdown_value") is not None for s in r["series"])
        return {"labels": first["dates"],
                "series": [{"name": trend_name(s, broken_down), "values": s["values"]}
                           for s in r["series"]]}
    if kind == "funnel":
        return {"labels": [step_name(s, i) for i, s in enumerate(r["steps"])],
                "series": [{"name": "count", "values": [s["count"] for s in r["steps"]]}]}
    if kind == "retention":
        n = max([len(c["values"]) for c in r["cohorts"]] + [0])
        return {"labels": [c["start"] for c in r["cohorts"]],
                "series": [{"name": "size", "values": [c["size"] for c in r["cohorts"]]}] + [
                    {"name": f"{r['period']} {i}",
                     "values": [c["values"][i] if i < len(c["values"]) else None
                                for c in r["cohorts"]]} for i in range(n)]}
    if kind == "paths":
        return {"labels": [" → ".join(p["steps"]) for p in r["paths"]],
                "series": [{"name": "sessions", "values": [p["count"] for p in r["paths"]]}]}
    if kind == "stickiness":
        return {"labels": r["series"][0]["intervals"] if r["series"] else [],
                "series": [{"name": s["label"], "values": s["values"]} for s in r["series"]]}
    if kind == "lifecycle":
        return {"labels": r["dates"], "series": [
            {"name": k, "values": r[k]} for k in ("new", "returning", "resurrecting", "dormant")]}
    raise AssertionError(f"no chart for {kind}")


def path_links(r: dict[str, Any]) -> list[dict[str, Any]]:
    sums: dict[tuple[str, str], int] = {}
    for p in r["paths"]:
        for i in range(len(p["steps"]) - 1):
            key = (f"{i}:{p['steps'][i]}", f"{i + 1}:{p['steps'][i + 1]}")
            sums[key] = sums.get(key, 0) + p["count"]
    return [{"source": s, "target": t, "value": v} for (s, t), v in sums.items()]


def origin(page: Page) -> str:
    u = urlsplit(page.url)
    return f"{u.scheme}://{u.netloc}"


def csrf(page: Page) -> str:
    r = page.request.get(origin(page) + "/api/v1/session")
    assert r.ok, r.text()
    token: str = r.json()["csrf"]
    return token


def api_post(page: Page, path: str, body: Any, status: int = 200) -> Any:
    """``POST /api/v1{path}`` with the page's session cookie and CSRF token."""
    r = page.request.post(origin(page) + "/api/v1" + path, data=body, headers={"X-CSRF-Token": csrf(page)},
                          timeout=TIMEOUT)
    assert r.status == status, r.text()
    return r.json()


def api_get(page: Page, path: str, status: int = 200) -> Any:
    r = page.request.get(origin(page) + "/api/v1" + path, timeout=TIMEOUT)
    assert r.status == status, r.text()
    return r.json()


def wait_series(page: Page, selector: str, want: Any, attr: str = "data-series") -> None:
    """Waits until the element's ``attr`` holds (as JSON) exactly ``want``."""
    page.wait_for_function(
        """([sel, attr, want]) => {
            const el = document.querySelector(sel);
            if (!el || !el.hasAttribute(attr)) return false;
            return JSON.stringify(JSON.parse(el.getAttribute(attr))) === JSON.stringify(want);
        }""", arg=[selector, attr, want], timeout=TIMEOUT)


def read_series(page: Page, selector: str, attr: str = "data-series") -> Any:
    return json.loads(page.locator(selector).first.get_attribute(attr) or "null")


def table_rows(page: Page, scope: str) -> tuple[list[str], list[list[str]]]:
    """The header and the cells of the DataTable under ``scope``, as shown."""
    table = page.locator(f"{scope} .data-table table").first
    head = [t.strip() for t in table.locator("thead th").all_inner_texts()]
    rows = [[c.strip() for c in tr.locator("td").all_inner_texts()]
            for tr in table.locator("tbody tr").all()]
    return [h.rstrip(" ▲▼") for h in head], rows


def download_text(page: Page, button: Any) -> tuple[str, bytes]:
    with page.expect_download(timeout=TIMEOUT) as info:
        button.click()
    d = info.value
    path = d.path()
    return d.suggested_filename, open(path, "rb").read()


def parse_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"))))


PNG = b"\x89PNG\r\n\x1a\n"
