"""Orders, items and products as the prepare half reads them and the stateful half keeps
them (src/aap/process/shop.py)."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pyarrow as pa

from aap.process import shop


def _extract(events: list[tuple[str, dict]]) -> shop.Rows:
    names = pa.array([n for n, _ in events], pa.string())
    return shop.extract(names, pa.array([f"m{i}" for i in range(len(events))]),
                        pa.array(["src"] * len(events)),
                        pa.array([json.dumps(p) for _, p in events]))


EVENTS = [
    ("Product Viewed", {"product_id": "p1", "name": "Old name", "price": 10}),
    ("$page", {"product_id": "p9"}),  # not a track event: no product
    ("Product Added", {"sku": "p1", "name": None, "price": "12.5"}),
    ("Order Completed", {"order_id": "o1", "revenue": 30, "currency": "EUR", "products": [
        {"product_id": "p1", "name": "New name", "quantity": 2},
        {"sku": "p2", "price": 5, "category": "misc"},
        "not a line"]}),
    ("Order Completed", {"total": "7", "products": [{"product_id": "p3"}]}),
    ("Signed Up", {"product_id": "p4"}),
]


def test_extract_reads_orders_items_and_products() -> None:
    rows = _extract(EVENTS)
    assert rows.orders.to_pylist() == [
        {"row": 3, "order_id": "o1", "message_id": "m3", "source": "src", "revenue": 30.0,
         "currency": "EUR", "items": 2},
        {"row": 4, "order_id": "m4", "message_id": "m4", "source": "src", "revenue": 7.0,
         "currency": None, "items": 1},
    ]
    assert [(r["row"], r["product_id"], r["quantity"]) for r in rows.items.to_pylist()] == [
        (3, "p1", 2.0), (3, "p2", 1.0), (4, "p3", 1.0)]
    assert [(r["row"], r["product_id"]) for r in rows.products.to_pylist()] == [
        (0, "p1"), (2, "p1"), (3, "p1"), (3, "p2"), (4, "p3")]


def test_attach_keeps_rows_of_kept_events_and_merges_products_in_log_order() -> None:
    rows = _extract(EVENTS)
    times = pa.array([datetime(2026, 1, d) for d in range(1, 7)], pa.timestamp("us"))
    # event 4 (the second order) was dropped, e.g. as a duplicate; the others are kept
    kept = np.array([0, 1, 2, 3, 5])
    keep = pa.array(kept)
    orders, items, products = shop.attach(rows, kept, 6, [10, 11, 12, 13, 15],
                                          ["s0", "s1", "s2", "s3", "s5"], times.take(keep))
    assert orders.to_pylist() == [{
        "order_id": "o1", "message_id": "m3", "source": "src", "person_id": 13,
        "session_id": "s3", "timestamp": datetime(2026, 1, 4), "revenue": 30.0,
        "currency": "EUR", "items": 2}]
    assert [r["product_id"] for r in items.to_pylist()] == ["p1", "p2"]
    by_id = {r["product_id"]: r for r in products.to_pylist()}
    assert set(by_id) == {"p1", "p2"}  # p3 came only with the dropped order
    assert by_id["p1"] == {"product_id": "p1", "name": "New name", "category": None,
                           "price": 12.5, "first_seen": datetime(2026, 1, 1),
                           "last_seen": datetime(2026, 1, 4)}
    assert by_id["p2"]["category"] == "misc" and by_id["p2"]["price"] == 5.0


def test_attach_with_nothing_kept_gives_empty_tables() -> None:
    rows = _extract(EVENTS)
    orders, items, products = shop.attach(rows, np.array([], np.int64), 6, [], [],
                                          pa.array([], pa.timestamp("us")))
    assert orders.num_rows == items.num_rows == products.num_rows == 0
