"""The insights ``aap demo`` ends with, asked through the real query API."""

from __future__ import annotations

from typing import Any

import httpx
from rich.console import Console

from aap.query.render import render

DEMO_INSIGHTS: list[tuple[str, dict[str, Any]]] = [
    ("Trend: daily visitors and sign-ups, last 7 days", {
        "kind": "trends", "interval": "day", "date_from": "-6d",
        "series": [{"event": "$page", "math": "persons", "label": "visitors"},
                   {"event": "Signed Up", "label": "sign-ups"}]}),
    ("Funnel: visit → sign-up → cart → checkout → order, within a day", {
        "kind": "funnel", "window": "1d", "date_from": "-7d",
        "steps": [{"event": "$page", "label": "visited"}, {"event": "Signed Up"},
                  {"event": "Product Added"}, {"event": "Checkout Started"},
                  {"event": "Order Completed"}]}),
    ("Retention: visitors coming back, by day of first visit", {
        "kind": "retention", "start_event": "$page", "return_event": "$page",
        "period": "day", "periods": 7}),
    ("Top paths from the first page view of a visit", {
        "kind": "paths", "start_event": "$page", "depth": 4, "limit": 5, "date_from": "-7d"}),
]


def fetch(url: str, api_key: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"},
                      timeout=120) as client:
        for title, doc in DEMO_INSIGHTS:
            r = client.post("/api/v1/query", json=doc)
            r.raise_for_status()
            out.append((title, r.json()))
    return out


def show(results: list[tuple[str, dict[str, Any]]], console: Console) -> None:
    console.rule("[bold]What the analytics say[/bold] (POST /api/v1/query)")
    for title, result in results:
        console.print(render(result, title=title))
