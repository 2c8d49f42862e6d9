"""Micro-benchmark: the collector's scrubbing (:mod:`aap.privacy.scrub`) per event, in µs.

    python -m benchmarks.scrub [--events 20000]      (or: aap bench scrub)

Three kinds of realistic events: the ingest benchmark's track events (clean), a browser
page view with a user agent, URL and referrer (clean), and the same with an email in
the URL's query, an IP in the properties and a personal trait (dirty). Prints CPU µs
per event for :func:`~aap.privacy.scrub.take_personal_all` alone (100-event requests),
on one core, next to
msgspec's typed decode of the same events (the ratio holds on a busy machine, where
both are slower).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import click
import msgspec

from aap.events import Event
from aap.privacy.scrub import take_personal_all

UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/120.0.0.0 Safari/537.36")


def track(i: int) -> dict[str, Any]:
    return {"type": "track", "event": "Product Viewed", "messageId": f"m-{i}",
            "userId": f"user-{i:07d}",
            "properties": {"sku": f"sku-{i % 10_000:05d}", "price": 12.5, "qty": 2},
            "context": {"library": {"name": "analytics.js", "version": "2.4.0"},
                        "page": {"path": f"/shop/{i}", "title": "Shop"}}}


def page(i: int) -> dict[str, Any]:
    return {"type": "page", "name": "Pricing", "messageId": f"m-{i}", "anonymousId": f"a-{i}",
            "properties": {"path": "/pricing", "url": f"https://shop.example/pricing?utm_source=news&v={i}",
                           "referrer": "https://www.google.com/", "title": "Pricing"},
            "context": {"library": {"name": "analytics.js", "version": "next-1.70.0"},
                        "userAgent": UA, "locale": "fr-FR", "timezone": "Europe/Paris",
                        "page": {"path": "/pricing", "referrer": "https://www.google.com/",
                                 "url": f"https://shop.example/pricing?utm_source=news&v={i}",
                                 "title": "Pricing", "search": "?utm_source=news"},
                        "screen": {"width": 1920, "height": 1080}}}


def dirty(i: int) -> dict[str, Any]:
    ev = page(i)
    ev["context"]["page"]["url"] = f"https://shop.example/pricing?email=p{i}%40example.org"
    ev["properties"]["client"] = f"203.0.113.{i % 250}"
    ev["traits"] = {"Email": f"p{i}@example.org", "plan": "pro"}
    return ev


def measure(make: Any, n: int) -> tuple[float, float]:
    """(scrubbing, msgspec's typed decode of the same events): CPU µs per event."""
    now = datetime.now(UTC).isoformat()
    raw = msgspec.json.encode([{**make(i), "receivedAt": now, "source": "s"} for i in range(n)])
    t0 = time.process_time()
    events = msgspec.json.decode(raw, type=list[Event])
    t1 = time.process_time()
    for i in range(0, len(events), 100):  # as the collector does: a request at a time
        take_personal_all(events[i:i + 100], hash)
    t2 = time.process_time()
    return (t2 - t1) / n * 1e6, (t1 - t0) / n * 1e6


@click.command("scrub")
@click.option("--events", type=int, default=20_000, show_default=True,
              help="Events of each kind per run (best of 5 runs).")
def main(events: int) -> None:
    """The collector's scrubbing per event, next to msgspec's typed decode, in µs."""
    for label, make in (("track, clean (bench ingest's events)", track),
                        ("browser page view, clean", page),
                        ("browser page view, dirty (email in URL, IP, Email trait)", dirty)):
        runs = [measure(make, events) for _ in range(5)]
        scrub, decode = min(r[0] for r in runs), min(r[1] for r in runs)
        print(f"{label}: {scrub:.2f} µs/event (msgspec typed decode of the same events:"
              f" {decode:.2f} µs/event; ratio {scrub / decode:.2f})")


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="python -m benchmarks.scrub")
