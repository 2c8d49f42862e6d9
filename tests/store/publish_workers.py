"""What the processes of tests/store/test_publish.py run (spawned: kept free of pytest's
imports so that they start quickly), and the helpers both share."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from aap.store.meta import open_meta
from aap.store.publish import Publisher
from aap.store.schema import EVENT_ARROW_SCHEMA, EVENT_COLUMNS
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Chunk, Warehouse

DAY0 = datetime(2026, 3, 1, 9)


def events(n: int, tag: str, start: datetime = DAY0, *, days: int = 3, person: int = 0,
           note: str = "") -> pa.Table:
    """``n`` events spread over ``days`` days, message ids ``tag``-i, persons 1 to 7 (or
    ``person``)."""
    cols: dict[str, list[Any]] = {name: [None] * n for name, _, _ in EVENT_COLUMNS}
    cols["message_id"] = [f"{tag}-{i}" for i in range(n)]
    cols["source"] = ["src"] * n
    cols["type"] = ["track"] * n
    cols["event"] = [f"E{i % 3}" for i in range(n)]
    cols["timestamp"] = [start + timedelta(days=i % days, minutes=i) for i in range(n)]
    cols["received_at"] = cols["timestamp"]
    cols["person_id"] = [person or 1 + i % 7 for i in range(n)]
    cols["session_id"] = [f"s{i % 5}" for i in range(n)]
    cols["properties"] = [json.dumps({"note": note or "n"}) for _ in range(n)]
    cols["purposes"] = [["analytics"]] * n
    return pa.table({name: pa.array(cols[name], t) for name, _, t in EVENT_COLUMNS},
                    schema=EVENT_ARROW_SCHEMA)


def open_wh(tmp: Path, meta_url: str = "", tiers: TierStore | None = None) -> Warehouse:
    """A warehouse under ``tmp`` whose list is on the shared store (``tmp/tiers.db``, or
    PostgreSQL at ``meta_url``)."""
    return Warehouse(tmp / "wh", tiers=tiers or TierStore(TierConfig(str(tmp / "tiers"))),
                     shared_list=open_meta(tmp / "tiers.db", meta_url))


def write_and_publish(tmp: str, url: str, first: int, out: Any) -> None:
    """Until killed: write chunk ``r`` (ids ``r<r>-i``, over two days), say so on ``out``
    once committed, publish it; ``r`` from ``first`` on."""
    wh = open_wh(Path(tmp), url)
    pub = Publisher(wh, 1)
    pub.recover()
    r = first
    while True:
        wh.write(Chunk(events(40, f"r{r}", days=2), position=r, next_person=1000))
        out.put(r)
        pub.publish_once()
        r += 1
