"""Orders, order items and products from the events of the Segment e-commerce spec
(``Order Completed`` with ``products[]``; ``Product Viewed``, ``Added``, ``Clicked``,
``Removed``).

:func:`extract` runs in the stateless half of the processor and decodes the properties
of these events only; each row carries ``row``, the index of its event in the chunk,
so that the stateful half keeps only the rows of events it stores and adds what it
knows (person, session, time) by that index (:func:`attach`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aap.store.warehouse import ORDER_ITEMS, ORDERS, PRODUCTS, rows_table

ORDER_EVENTS = frozenset({"Order Completed"})
PRODUCT_EVENTS = frozenset({"Product Viewed", "Product Added", "Product Clicked",
                            "Product Removed"})

ORDER_ROWS = pa.schema([("row", pa.int32()), ("order_id", pa.string()),
                        ("message_id", pa.string()), ("source", pa.string()),
                        ("revenue", pa.float64()), ("currency", pa.string()),
                        ("items", pa.int32())])
ITEM_ROWS = pa.schema([("row", pa.int32()), *ORDER_ITEMS])
PRODUCT_ROWS = pa.schema([("row", pa.int32()),
                          *(PRODUCTS.field(n) for n in ("product_id", "name", "category", "price"))])
"""One row per mention of a product, in log order."""


class Rows:
    """What :func:`extract` found in one chunk: three tables (see the schemas above)."""

    __slots__ = ("items", "orders", "products")

    def __init__(self, orders: pa.Table, items: pa.Table, products: pa.Table) -> None:
        self.orders = orders
        self.items = items
        self.products = products

    @classmethod
    def empty(cls) -> Rows:
        return cls(ORDER_ROWS.empty_table(), ITEM_ROWS.empty_table(),
                   PRODUCT_ROWS.empty_table())


def _num(v: Any) -> float | None:
    if v.__class__ is bool:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _str(v: Any) -> str | None:
    if v is None or v.__class__ is bool:
        return None
    return str(v) if isinstance(v, (str, int, float)) and str(v) else None


def _product(row: int, p: dict[str, Any], out: list[tuple[Any, ...]]) -> None:
    pid = _str(p.get("product_id")) or _str(p.get("sku")) or _str(p.get("id"))
    if pid is not None:
        out.append((row, pid, _str(p.get("name")), _str(p.get("category")),
                    _num(p.get("price"))))


_EVENTS = pa.array(sorted(ORDER_EVENTS | PRODUCT_EVENTS))
_json = msgspec.json.Decoder()


def _decode(doc: str | None) -> dict[str, Any]:
    p = _json.decode(doc) if doc else None
    return p if isinstance(p, dict) else {}


def extract(names: pa.Array, message_ids: pa.Array, sources: pa.Array,
            properties: pa.Array) -> Rows:
    """The shop rows of a chunk's events; ``names`` are the event names as the warehouse
    stores them (only ``track`` events have names without ``$``), ``properties`` their
    JSON text (decoded here only for the events of the shop)."""
    orders: list[tuple[Any, ...]] = []
    items: list[tuple[Any, ...]] = []
    products: list[tuple[Any, ...]] = []
    found = pc.indices_nonzero(pc.is_in(names, value_set=_EVENTS))
    if not len(found):
        return Rows.empty()
    for row, name, message_id, source, doc in zip(
            found.to_pylist(), names.take(found).to_pylist(),
            message_ids.take(found).to_pylist(), sources.take(found).to_pylist(),
            properties.take(found).to_pylist(), strict=True):
        p = _decode(doc)
        if name in PRODUCT_EVENTS:
            _product(row, p, products)
            continue
        order_id = _str(p.get("order_id")) or message_id
        lines = p.get("products")
        n = 0
        for line in lines if isinstance(lines, list) else ():
            if not isinstance(line, dict):
                continue
            n += 1
            qty = _num(line.get("quantity"))
            items.append((row, order_id, message_id,
                          _str(line.get("product_id")) or _str(line.get("sku")),
                          _str(line.get("name")), _str(line.get("category")),
                          _num(line.get("price")), qty if qty is not None else 1.0))
            _product(row, line, products)
        revenue = _num(p.get("revenue"))
        if revenue is None:
            revenue = _num(p.get("total"))
        orders.append((row, order_id, message_id, source, revenue,
                       _str(p.get("currency")), n))
    return Rows(rows_table(orders, ORDER_ROWS), rows_table(items, ITEM_ROWS),
                rows_table(products, PRODUCT_ROWS))


def attach(rows: Rows, kept: np.ndarray, size: int, person_id: Sequence[int],
           session_id: Sequence[str], timestamp: pa.ChunkedArray | pa.Array
           ) -> tuple[pa.Table, pa.Table, pa.Table]:
    """The warehouse's orders, order items and products (one row per product, merged in
    log order: the latest name, category and price given win, first and last seen) of the
    events the chunk keeps. ``kept``: the original index (``row``) of each kept event, in
    order; ``size``: the number of events the chunk had."""
    if not len(kept) or not (rows.orders.num_rows or rows.products.num_rows):
        return ORDERS.empty_table(), ORDER_ITEMS.empty_table(), PRODUCTS.empty_table()
    pos = np.full(size, -1, np.int64)
    pos[np.asarray(kept, np.int64)] = np.arange(len(kept))
    orders, at = _alive(rows.orders, pos)
    idx = pa.array(at, pa.int64())
    orders = pa.table({
        "order_id": orders.column("order_id"), "message_id": orders.column("message_id"),
        "source": orders.column("source"),
        "person_id": pa.array(np.asarray(person_id, np.int64)[at] if len(at) else [], pa.int64()),
        "session_id": pa.array(session_id, pa.string()).take(idx),
        "timestamp": timestamp.take(idx),
        "revenue": orders.column("revenue"), "currency": orders.column("currency"),
        "items": orders.column("items"),
    })
    items, _ = _alive(rows.items, pos)
    items = items.drop_columns(["row"])
    mentions, at = _alive(rows.products, pos)
    return orders, items, _products(mentions, timestamp.take(pa.array(at, pa.int64())))


def _alive(t: pa.Table, pos: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """The rows of ``t`` whose event is kept, and the kept event's position of each."""
    at = pos[t.column("row").to_numpy()] if t.num_rows else np.empty(0, np.int64)
    keep = at >= 0
    return t.filter(pa.array(keep)), at[keep]


def _products(mentions: pa.Table, seen: pa.ChunkedArray | pa.Array) -> pa.Table:
    """One row per product mentioned (seen at ``seen``): the latest name, category and
    price given, first and last seen."""
    mentions = mentions.drop_columns(["row"]).append_column("t", seen)
    products = mentions.group_by("product_id", use_threads=False).aggregate([
        ("name", "last"), ("category", "last"), ("price", "last"), ("t", "min"), ("t", "max")])
    return pa.table({
        "product_id": products.column("product_id"),
        "name": products.column("name_last"), "category": products.column("category_last"),
        "price": products.column("price_last"),
        "first_seen": pc.cast(products.column("t_min"), pa.timestamp("us")),
        "last_seen": pc.cast(products.column("t_max"), pa.timestamp("us")),
    })
