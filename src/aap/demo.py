"""``aap demo``: the real server on a temporary data dir, realistic traffic through the
real HTTP API, and a look at what arrived."""

from __future__ import annotations

import gzip
import random
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aap.api.keys import ApiKeys
from aap.datadir import DataDir
from aap.events import decode_events
from aap.lifecycle import interrupt_on_sigterm
from aap.log.sqlite import SQLiteLog
from aap.query import showcase
from aap.runner import ServerProcess, create_source
from aap.web.sessions import LINK_TTL_S, create_link

DEMO_SOURCE = "demo-site"
"""The demo's one source (its portal is ``/portal/demo-site``)."""
PAGES = [("Home", "/"), ("Pricing", "/pricing"), ("Docs", "/docs"), ("Blog", "/blog"),
         ("Features", "/features"), ("About", "/about")]
PRODUCTS = [("sku-1", "Starter kit", 19.0), ("sku-2", "Pro licence", 99.0),
            ("sku-3", "Sticker pack", 4.5), ("sku-4", "Team plan", 249.0)]
CAMPAIGNS = [None, None, None, ("newsletter", "email", "autumn"), ("google", "cpc", "brand")]
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
]
# First octets of networks allocated in different parts of the world (for coarse geo).
NETWORKS = ["81.2.69", "85.214.132", "151.101.1", "200.147.67", "202.12.27", "41.203.18",
            "95.31.18", "62.210.16", "133.242.187", "24.48.0"]


class Visitor:
    """One simulated person: an anonymous id, an address, a browser, maybe a campaign."""

    def __init__(self, rng: random.Random, now: datetime) -> None:
        self.rng = rng
        self.anon = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.ip = f"{rng.choice(NETWORKS)}.{rng.randrange(1, 255)}"
        self.ua = rng.choice(USER_AGENTS)
        self.campaign = rng.choice(CAMPAIGNS)
        self.t = now - timedelta(days=rng.uniform(0, 7))
        self.user_id: str | None = None
        # what the site's consent banner reports: most accept analytics, some decline
        self.consent = {"analytics": rng.random() < 0.85, "marketing": rng.random() < 0.4}

    def msg(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.t += timedelta(seconds=self.rng.expovariate(1 / 40))
        ctx: dict[str, Any] = {"ip": self.ip, "userAgent": self.ua,
                               "library": {"name": "aap-demo", "version": "1"},
                               "consent": {"categoryPreferences": self.consent}}
        if self.campaign:
            ctx["campaign"] = dict(zip(("source", "medium", "name"), self.campaign, strict=True))
        m = {"type": kind, "messageId": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
             "anonymousId": self.anon, "timestamp": self.t.isoformat(), "context": ctx, **fields}
        if self.user_id:
            m["userId"] = self.user_id
        return m


def simulate(people: int, seed: int, returning: float = 0.0) -> Iterator[dict[str, Any]]:
    """Events of ``people`` simulated visitors over the last week, person by person.
    With ``returning`` > 0, that share of visitors comes back on later days."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    for _ in range(people):
        v = Visitor(rng, now)
        for _ in range(rng.randint(1, 8)):
            name, path = rng.choice(PAGES)
            yield v.msg("page", name=name, properties={"path": path, "title": name,
                                                       "url": "https://shop.example" + path})
        if rng.random() < 0.35:
            # 14 hex digits: 8 gave two visitors one userId by chance at 140k visitors
            v.user_id = "user-" + v.anon[:18]
            yield v.msg("identify", traits={"plan": rng.choice(["free", "pro"])})
            yield v.msg("track", event="Signed Up", properties={"method": "email"})
            if rng.random() < 0.5:
                items = rng.sample(PRODUCTS, rng.randint(1, 3))
                for sku, title, price in items:
                    yield v.msg("track", event="Product Added",
                                properties={"product_id": sku, "name": title, "price": price})
                yield v.msg("track", event="Checkout Started", properties={"currency": "EUR"})
                if rng.random() < 0.7:
                    yield v.msg("track", event="Order Completed", properties={
                        "order_id": "o-" + v.anon[:10], "currency": "EUR",
                        "revenue": round(sum(p for _, _, p in items), 2),
                        "products": [{"product_id": s, "name": n, "price": p, "quantity": 1}
                                     for s, n, p in items]})
        while returning and rng.random() < returning:
            v.t += timedelta(days=rng.uniform(0.8, 2.5))
            if v.t > now:
                break
            for _ in range(rng.randint(1, 4)):
                name, path = rng.choice(PAGES)
                yield v.msg("page", name=name, properties={"path": path, "title": name,
                                                           "url": "https://shop.example" + path})


def send_all(url: str, key: str, events: list[dict[str, Any]], console: Console,
             not_stored: Counter[str] | None = None) -> int:
    """Send in batches of 100; returns how many were stored (and counts, by reason, the
    valid events not stored into ``not_stored``)."""
    batches = [events[i:i + 100] for i in range(0, len(events), 100)]
    accepted = 0
    with httpx.Client(base_url=url, auth=(key, ""), timeout=30) as client, Progress(
        TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TextColumn("events"),
        TimeElapsedColumn(), console=console,
    ) as progress:
        task = progress.add_task("send", total=len(events))
        for i, batch in enumerate(batches):
            body = msgspec.json.encode({"batch": batch, "sentAt": datetime.now(UTC).isoformat()})
            headers = {"Content-Type": "application/json"}
            if i % 2:  # half of the requests gzip their body, as browser SDKs do
                body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
            r = client.post("/v1/batch", content=body, headers=headers)
            r.raise_for_status()
            answer = r.json()
            accepted += answer["accepted"]
            if not_stored is not None:
                not_stored.update(answer.get("not_stored", {}))
            progress.advance(task, len(batch))
    return accepted


WAREHOUSE_COUNTS = (
    ("events", "SELECT count(*) FROM events"),
    ("persons", "SELECT count(*) FROM persons"),
    ("identified persons", "SELECT count(*) FROM persons WHERE identified"),
    ("sessions", "SELECT count(*) FROM sessions"),
    ("orders", "SELECT count(*) FROM orders"),
    ("revenue (EUR)", "SELECT round(sum(revenue), 2) FROM orders"),
    ("products", "SELECT count(*) FROM products"),
)


def warehouse_report(server: ServerProcess, console: Console) -> None:
    table = Table(title="The warehouse")
    table.add_column("entity")
    table.add_column("count", justify="right")
    for label, sql in WAREHOUSE_COUNTS:
        (value,) = server.sql(sql)[0]
        table.add_row(label, f"{value:,}" if isinstance(value, (int, float)) else str(value))
    console.print(table)
    rows = server.sql("SELECT device_type, browser, count(*) FROM events GROUP BY ALL"
                      " ORDER BY 3 DESC LIMIT 4")
    console.print("top devices: " + ", ".join(f"{d} {b} ({n:,})" for d, b, n in rows))


def report(data_dir: Path, console: Console) -> None:
    log = SQLiteLog(DataDir(data_dir).log)
    types: Counter[str] = Counter()
    names: Counter[str] = Counter()
    countries: Counter[str] = Counter()
    people: set[int] = set()
    after = 0
    sample = None
    while recs := log.read(after, 500):
        for rec in recs:
            for ev in decode_events(rec.payload):
                types[ev.type] += 1
                if ev.event:
                    names[ev.event] += 1
                countries[(ev.geo.country if ev.geo else None) or "unknown"] += 1
                people.add(ev.anonymous_key or 0)
                sample = sample or ev
        after = recs[-1].offset
    st = log.stats()
    table = Table(title="What arrived in the durable log")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("events", f"{st.total_events:,}")
    table.add_row("log records (one per request)", f"{st.head_offset:,}")
    table.add_row("distinct anonymous ids", f"{len(people):,}")
    table.add_row("log size on disk", f"{st.size_bytes / 1e6:.1f} MB")
    for t, n in types.most_common():
        table.add_row(f"type {t}", f"{n:,}")
    for e, n in names.most_common():
        table.add_row(f"event {e}", f"{n:,}")
    console.print(table)
    console.print("countries (from truncated IPs): " +
                  ", ".join(f"{c} {n}" for c, n in countries.most_common(8)))
    if sample is not None:
        console.print("one stored event (note the truncated `ip`, the coarse `geo`, and the"
                      " ids: only keyed hashes and sealed bytes, never the raw id):")
        console.print_json(msgspec.json.encode(sample).decode())
    log.close()


def consent_demo(server: ServerProcess, key: str, events: list[dict[str, Any]],
                 console: Console) -> None:
    """One visitor withdraws analytics; their very next event is not stored."""
    anon = next(e["anonymousId"] for e in events
                if e.get("context", {}).get("consent", {}).get("categoryPreferences", {}).get(
                    "analytics"))
    with httpx.Client(base_url=server.url, auth=(key, ""), timeout=30) as client:
        def count() -> int:
            server.wait_processed()
            return int(server.sql("SELECT count(*) FROM events")[0][0])  # type: ignore[call-overload]
        before = count()
        r = client.post("/v1/consent", json={"anonymousId": anon, "purposes": {"analytics": False},
                                              "policy_version": "demo-1", "channel": "banner"})
        r.raise_for_status()
        after = client.post("/v1/batch", json={"batch": [{
            "type": "track", "event": "Viewed After Withdrawal", "anonymousId": anon}]}).json()
    deadline = time.monotonic() + 10  # their stored events lose the purpose: erased
    while (now := count()) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    console.print(f"consent: visitor {anon[:8]}… withdrew analytics (POST /v1/consent → "
                  f"{r.json()}); their next event → {after}; their stored events, left with"
                  f" no purpose, are erased: events in the warehouse {before:,} → {now:,}")


def erasure_demo(server: ServerProcess, privacy_key: str, events: list[dict[str, Any]],
                 console: Console) -> None:
    """One signed-up visitor asks to be forgotten: a privacy request, then its receipt."""
    user = next(e["userId"] for e in events if e.get("userId") and e.get("context", {}).get(
        "consent", {}).get("categoryPreferences", {}).get("analytics"))
    auth = {"Authorization": f"Bearer {privacy_key}"}
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as client:
        r = client.post("/api/v1/privacy/requests",
                        json={"type": "erasure", "subject": {"userId": user}})
        r.raise_for_status()
        rid = r.json()["id"]
        deadline = time.monotonic() + 60
        while (got := client.get(f"/api/v1/privacy/requests/{rid}").json())["status"] in (
                "pending", "running") and time.monotonic() < deadline:
            time.sleep(0.05)
    receipt = got.get("result", {})
    removed = {k: v for k, v in receipt.get("removed", {}).items() if v}
    console.print(f"erasure: {user} asked to be forgotten (POST /api/v1/privacy/requests → "
                  f"{got['status']} in {receipt.get('seconds', '?')} s): removed {removed}, "
                  f"{receipt.get('data_keys_destroyed', 0)} data keys destroyed; receipt "
                  f"digest {str(receipt.get('digest', ''))[:16]}…")


def serve_dashboard(server: ServerProcess, data: Path, console: Console) -> None:
    """Keeps the server running with the demo's data: an admin key, a one-time sign-in
    link to the dashboard, then waits for Ctrl-C or SIGTERM (KeyboardInterrupt)."""
    key, _ = ApiKeys(data).create("admin", "demo-admin")
    token = create_link(data, key.id)
    console.print(f"[bold]The dashboard[/bold], signed in as an admin (the link works once,"
                  f" within {LINK_TTL_S // 60} minutes; `aap keys create` makes keys to sign"
                  " in with later):")
    print(f"Dashboard: {server.url}/#signin={token}", flush=True)
    console.print("The privacy portal the demo site links to as \"Your data\" (public, no"
                  " sign-in):")
    print(f"Portal: {server.url}/portal/{DEMO_SOURCE}", flush=True)
    console.print("Serving until Ctrl-C.")
    while True:
        time.sleep(1)


def run_demo(people: int = 3000, seed: int = 7, keep: bool = False, serve: bool = True) -> int:
    """The demo; Ctrl-C or SIGTERM stops it and its server (in at most ten seconds).
    With ``serve``, it ends by serving the dashboard until Ctrl-C (then exits 0)."""
    interrupt_on_sigterm()
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="aap-demo-"))
    data = tmp / "data"
    try:
        key = create_source(data, DEMO_SOURCE)
        _, api_key = ApiKeys(data).create("analyst", "demo")
        _, privacy_key = ApiKeys(data).create("privacy", "demo-dpo")
        console.print(f"[bold]AAP demo[/bold]: data dir {data}")
        with ServerProcess(data, workers=2) as server:
            console.print(f"server up at {server.url}; created source [cyan]demo-site[/cyan]")
            events = list(simulate(people, seed, returning=0.45))
            t0 = time.perf_counter()
            not_stored: Counter[str] = Counter()
            accepted = send_all(server.url, key, events, console, not_stored)
            took = time.perf_counter() - t0
            console.print(f"{accepted:,} of {len(events):,} events stored in {took:.1f} s "
                          f"({len(events) / took:,.0f} events/s from one client); "
                          f"{not_stored['no_lawful_basis']:,} not stored: their visitors "
                          "declined analytics in the consent banner")
            t0 = time.perf_counter()
            server.wait_processed(timeout=120)
            console.print(f"processed into the warehouse {time.perf_counter() - t0:.1f} s later")
            warehouse_report(server, console)
            insights = showcase.fetch(server.url, api_key)
            consent_demo(server, key, events, console)
            erasure_demo(server, privacy_key, events, console)
            report(data, console)
            showcase.show(insights, console)
            ok = accepted + sum(not_stored.values()) == len(events)
            if serve and ok:
                try:
                    serve_dashboard(server, data, console)
                except KeyboardInterrupt:
                    console.print("stopping the server")
        return 0 if ok else 1
    finally:
        if keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
