"""A deterministic generator of product-analytics traffic for the query benchmark.

``generate(events, persons, days, seed)`` yields one Arrow table per day (the warehouse's
event schema) plus the persons and the identity merges. Skew: per-person activity is
log-normal (a few heavy users, a long tail), activity decays after a person's first day
(so retention has a shape), page paths and countries are Zipf-like, and sessions walk a
shop funnel (Product Viewed → Product Added → Checkout Started → Order Completed) with
drop-off at every step. Every tenth person browsed anonymously before signing up: the
events of their first session carry an anonymous person id that a merge (a
``person_overrides`` row) maps to the person, exactly as identity stitching does.
Timestamps are whole seconds, so events of a person often tie in time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aap.store.schema import EVENT_ARROW_SCHEMA

START = datetime(2026, 8, 3)  # a Monday
FUNNEL = ("Product Viewed", "Product Added", "Checkout Started", "Order Completed")
OTHER = ("$page", "Search", "Button Clicked", "Video Played", "$identify")
OTHER_P = (0.70, 0.10, 0.10, 0.08, 0.02)
PATHS = ("/", "/pricing", "/docs", "/blog", "/features", "/about", "/shop", "/cart",
         "/checkout", "/account", "/login", "/signup", "/search", "/help", "/careers",
         "/blog/launch", "/blog/tips", "/docs/api", "/docs/sdk", "/shop/new")
COUNTRIES = ("US", "DE", "GB", "FR", "IN", "BR", "CA", "NL", "ES", "IT", "JP", "AU", "SE",
             "PL", "MX", "CH", "BE", "AT", "DK", "NO")
BROWSERS = ("Chrome", "Safari", "Firefox", "Edge", "Samsung Internet")
DEVICES = ("Desktop", "Mobile", "Tablet")
PLANS = ("free", "pro", "team")


@dataclass
class Dataset:
    days: list[tuple[datetime, pa.Table]]
    persons: list[tuple[int, datetime, datetime, bool, str | None]]
    overrides: dict[int, int]
    total_events: int


def _zipf(rng: np.random.Generator, n: int, size: int, s: float = 1.1) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return rng.choice(n, size=size, p=w / w.sum())


def generate(events: int = 20_000_000, persons: int = 500_000, days: int = 90,
             seed: int = 42) -> Dataset:
    rng = np.random.default_rng(seed)
    people = _people(rng, persons, days)
    sessions = _sessions(rng, events, persons, days, people)
    sess, t, pid, event, overrides = _events(rng, sessions)
    table = _event_table(rng, people, sessions.owner, sess, t, pid, event)
    person_rows = _person_rows(persons, people.plan, sessions.owner[sess], t)
    return Dataset(_by_day(table, t, days), person_rows, overrides, len(sess))


@dataclass
class _People:
    """Per person: activity weight, first day, fixed country/browser/device/plan."""

    weight: np.ndarray
    first_day: np.ndarray
    country: np.ndarray
    browser: np.ndarray
    device: np.ndarray
    plan: np.ndarray


def _people(rng: np.random.Generator, persons: int, days: int) -> _People:
    # persons: activity weight, first day, fixed country/browser/device/plan
    weight = rng.lognormal(0.0, 1.2, persons)
    first_day = np.minimum((days * rng.beta(1.0, 1.6, persons)).astype(np.int64), days - 1)
    country = _zipf(rng, len(COUNTRIES), persons)
    browser = _zipf(rng, len(BROWSERS), persons, 1.5)
    device = rng.choice(len(DEVICES), persons, p=[0.55, 0.4, 0.05])
    plan = rng.choice(len(PLANS), persons, p=[0.7, 0.25, 0.05])
    return _People(weight, first_day, country, browser, device, plan)


@dataclass
class _Sessions:
    """Per session: its events, its person, whether it is the person's first, its start
    (seconds from ``START``) and how far it walks the shop funnel."""

    lengths: np.ndarray
    owner: np.ndarray
    first_of_person: np.ndarray
    start_s: np.ndarray
    stage: np.ndarray


def _sessions(rng: np.random.Generator, events: int, persons: int, days: int,
              people: _People) -> _Sessions:
    weight, first_day = people.weight, people.first_day
    # sessions: lengths 1 + geometric, assigned to persons by weight
    mean_len = 7.0
    n_sessions = int(events / mean_len * 1.05) + 10
    lengths = np.minimum(rng.geometric(1.0 / (mean_len - 0.5), n_sessions), 60).astype(np.int64)
    cum = np.cumsum(lengths)
    n_sessions = int(np.searchsorted(cum, events)) + 1
    lengths = lengths[:n_sessions]
    lengths[-1] -= int(lengths.sum() - events)
    lengths = lengths[lengths > 0]
    n_sessions = len(lengths)
    # every person has at least one session; the rest go by weight
    owner = np.concatenate([np.arange(min(persons, n_sessions)),
                            rng.choice(persons, n_sessions - min(persons, n_sessions),
                                       p=weight / weight.sum())])
    rng.shuffle(owner)
    fd = first_day[owner]
    # activity decays after the first day: day = first + (remaining) * u^2
    day = fd + ((days - fd) * rng.random(n_sessions) ** 2.0).astype(np.int64)
    day = np.minimum(day, days - 1)
    # the first session of a person is on their first day
    order = np.lexsort((day, owner))
    first_of_person = np.ones(n_sessions, dtype=bool)
    first_of_person[order[1:]] = owner[order[1:]] != owner[order[:-1]]
    day[first_of_person] = fd[first_of_person]
    hour = rng.choice(24, n_sessions, p=_diurnal())
    start_s = day * 86400 + hour * 3600 + rng.integers(0, 3600, n_sessions)
    stage = rng.choice(5, n_sessions, p=[0.45, 0.25, 0.13, 0.09, 0.08])
    return _Sessions(lengths, owner, first_of_person, start_s, stage)


def _events(rng: np.random.Generator, s: _Sessions
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, int]]:
    """(session, seconds from ``START``, person id and name) of every event, and the
    merges of the anonymous ids."""
    lengths, owner, first_of_person, start_s, stage = (
        s.lengths, s.owner, s.first_of_person, s.start_s, s.stage)
    n_sessions = len(lengths)
    # events
    sess = np.repeat(np.arange(n_sessions), lengths)
    pos = np.arange(len(sess)) - np.repeat(cum_start(lengths), lengths)
    k = lengths[sess]
    m = stage[sess]
    gaps = np.floor(rng.exponential(35.0, len(sess))).astype(np.int64)
    gaps[pos == 0] = 0
    t = start_s[sess] + _segment_cumsum(gaps, lengths)
    seg = pos * (m + 1) // k
    is_funnel = (seg >= 1) & ((pos * (m + 1)) % k < (m + 1)) & (k > m)
    names = np.array(FUNNEL + OTHER, dtype=object)
    idx = rng.choice(len(OTHER), len(sess), p=OTHER_P) + len(FUNNEL)
    idx[is_funnel] = np.minimum(seg[is_funnel], 4) - 1
    person = owner[sess].astype(np.int64) + 1
    # anonymous browsing before signing up: every tenth person's first session
    anon = first_of_person[sess] & (person % 10 == 3)
    pid = np.where(anon, person + 10_000_000, person)
    overrides = {int(p) + 10_000_000: int(p) for p in np.unique(person[anon])}
    # one "Signed Up" on the last event of every first session of a person
    last_in_session = pos == k - 1
    signed = first_of_person[sess] & last_in_session & (k > 1)
    event = names[idx]
    event[signed] = "Signed Up"
    return sess, t, pid, event, overrides


def _event_table(rng: np.random.Generator, people: _People, owner: np.ndarray,
                 sess: np.ndarray, t: np.ndarray, pid: np.ndarray, event: np.ndarray
                 ) -> pa.Table:
    browser, device, country = people.browser, people.device, people.country
    n = len(sess)
    is_page = event == "$page"
    path_idx = _zipf(rng, len(PATHS), n, 1.2)
    paths = np.array(PATHS, dtype=object)[path_idx]
    paths[~is_page] = None
    ts = (np.datetime64(START, "s") + t.astype("timedelta64[s]")).astype("datetime64[us]")
    revenue = np.round(rng.lognormal(3.5, 0.8, n), 2)
    props = pa.array(np.where(event == "Order Completed", revenue, np.nan))
    props_s = pc.binary_join_element_wise('{"revenue": ', pc.cast(props, pa.string()),
                                          ', "currency": "EUR"}', "")
    prod = pc.binary_join_element_wise('{"product_id": "sku-', pc.cast(
        pa.array(_zipf(rng, 200, n)), pa.string()), '"}', "")
    is_prod = np.isin(event, ("Product Viewed", "Product Added"))
    properties = pc.if_else(pa.array(is_prod), prod, props_s)
    msg = pc.binary_join_element_wise("m", pc.cast(pa.array(np.arange(n)), pa.string()), "")
    sid = pc.binary_join_element_wise("s", pc.cast(pa.array(sess), pa.string()), "")
    typ = np.where(is_page, "page", np.where(event == "$identify", "identify", "track"))
    cols = {
        "message_id": msg, "source": pa.array(np.full(n, "src_bench", dtype=object)),
        "type": pa.array(typ), "event": pa.array(event, pa.string()),
        "timestamp": pa.array(ts, pa.timestamp("us")),
        "sent_at": pa.array(ts, pa.timestamp("us")), "received_at": pa.array(ts, pa.timestamp("us")),
        "person_id": pa.array(pid), "session_id": sid,
        "name": pa.array(paths, pa.string()),
        "path": pa.array(paths, pa.string()),
        "browser": pa.array(np.array(BROWSERS, dtype=object)[browser[owner[sess]]], pa.string()),
        "device_type": pa.array(np.array(DEVICES, dtype=object)[device[owner[sess]]], pa.string()),
        "country": pa.array(np.array(COUNTRIES, dtype=object)[country[owner[sess]]], pa.string()),
        "properties": properties,
    }
    return pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)).cast(f.type)
                     for f in EVENT_ARROW_SCHEMA}, schema=EVENT_ARROW_SCHEMA)


def _person_rows(persons: int, plan: np.ndarray, owner_of_event: np.ndarray, t: np.ndarray
                 ) -> list[tuple[int, datetime, datetime, bool, str | None]]:
    # persons: first/last seen, identified, plan
    first = np.full(persons, np.iinfo(np.int64).max)
    last = np.zeros(persons, dtype=np.int64)
    np.minimum.at(first, owner_of_event, t)
    np.maximum.at(last, owner_of_event, t)
    seen = first < np.iinfo(np.int64).max
    person_rows: list[tuple[int, datetime, datetime, bool, str | None]] = [
        (int(p) + 1, START + timedelta(seconds=int(first[p])),
         START + timedelta(seconds=int(last[p])), bool(p % 10 == 3),
         f'{{"plan": "{PLANS[plan[p]]}"}}') for p in np.flatnonzero(seen)]
    return person_rows


def _by_day(table: pa.Table, t: np.ndarray, days: int) -> list[tuple[datetime, pa.Table]]:
    """The events of each day that has some, in their order."""
    day_of_event = t // 86400
    order_e = np.argsort(day_of_event, kind="stable")
    bounds = np.searchsorted(day_of_event[order_e], np.arange(days + 1))
    out = []
    for d in range(days):
        sel = order_e[bounds[d]:bounds[d + 1]]
        if len(sel):
            out.append((START + timedelta(days=d), table.take(pa.array(sel))))
    return out


def cum_start(lengths: np.ndarray) -> np.ndarray:
    c = np.cumsum(lengths)
    return np.concatenate([[0], c[:-1]])


def _segment_cumsum(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    c = np.cumsum(values)
    starts = cum_start(lengths)
    base = np.repeat(c[starts] - values[starts], lengths)
    return c - base


def _diurnal() -> np.ndarray:
    h = np.arange(24)
    w = 0.3 + np.exp(-((h - 14) ** 2) / 30.0)
    return w / w.sum()


def load(directory: object, data: Dataset, *, hot_days: int = 7, cold_days: int = 60,
         log: object = print) -> dict[str, tuple[int, int, int]]:
    """Load into the data dir ``directory`` (warehouse and tiers where ``aap serve`` has
    them) through the store's own write path: one ``Warehouse.write`` chunk per day
    (events, and with the first chunk the persons and merges), then the tiering
    operations: days older than ``hot_days`` (before the last day) move to the warm tier,
    and whole months older than ``cold_days`` are compacted into the cold tier."""
    from pathlib import Path

    from aap.store import tiering
    from aap.store.tiers import TierConfig, TierStore
    from aap.store.warehouse import Chunk, Warehouse

    data_dir = Path(str(directory))
    wh = Warehouse(data_dir / "warehouse", tiers=TierStore(TierConfig(str(data_dir / "tiers"))))
    try:
        for i, (_, table) in enumerate(data.days):
            chunk = Chunk(events=table, position=i + 1, next_person=20_000_000)
            if i == 0:
                chunk.persons = data.persons
                chunk.overrides = data.overrides
            if i == 0 and data.overrides:
                # many merges: write them in one statement rather than one by one
                import pyarrow as pa_

                ov = pa_.table({"old": list(data.overrides), "new": list(data.overrides.values())})
                with wh.transaction() as cur:
                    cur.register("ov", ov)
                    cur.execute("INSERT INTO person_overrides SELECT old, new FROM ov"
                                " ON CONFLICT DO NOTHING")
                chunk.overrides = {}
            wh.write(chunk)
        last = data.days[-1][0].date()
        for day in tiering.hot_days(wh):
            if (last - day).days >= hot_days:
                tiering.move_day_to_warm(wh, day)
        cutoff = last - timedelta(days=cold_days)
        for month, _ in tiering.warm_months(wh):
            y, m = map(int, month.split("-"))
            nxt = datetime(y + m // 12, m % 12 + 1, 1).date()
            if nxt <= cutoff:
                tiering.compact_to_cold(wh, month, nxt, timedelta(0))
        tiering.empty_trash(wh)
        return wh.tier_stats()
    finally:
        wh.close()
