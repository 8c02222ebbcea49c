"""Shared by the Lakehouse tests: a small orders table, writing it, and rows in order."""

from __future__ import annotations

import pyarrow as pa

from faas.store import Lakehouse

ORDERS = pa.table(
    {
        "OrderId": [1, 2, 3, 4],
        "Region": ["Europe", "Asia", "Europe", "America"],
        "OrderQuantity": [1, 5, 3, 2],
    }
)


def sorted_rows(table: pa.Table, by: str) -> list[dict[str, object]]:
    return table.sort_by(by).to_pylist()


def write_table(lake: Lakehouse, key: str, data: pa.Table) -> str:
    transaction = lake.begin()
    transaction.write(key, data)
    return transaction.publish(f"write {key}")
