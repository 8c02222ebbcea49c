"""SQL over lakehouse tables with DuckDB: name resolution, results, errors."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from faas.protocol.errors import InvalidInput, NotFound
from faas.store import Lakehouse, query_tables
from faas.store.query import referenced_tables
from tests.conftest import OpenLake

pytestmark = pytest.mark.timeout(60)

ORDERS = pa.table(
    {
        "OrderId": [1, 2, 3, 4, 5],
        "CustomerId": [10, 11, 10, 12, 11],
        "Amount": [5.0, 7.5, 1.25, 3.0, 10.0],
    }
)
CUSTOMERS = pa.table({"CustomerId": [10, 11, 12], "Name": ["ana", "bo", "cy"]})

JOIN = """
    SELECT c.Name, count(*) AS orders, sum(o.Amount) AS total
    FROM orders o JOIN customers c USING (CustomerId)
    GROUP BY c.Name ORDER BY c.Name
"""


@pytest.fixture
def lake(open_lake: OpenLake) -> Lakehouse:
    lakehouse = open_lake("shop", "crm")
    transaction = lakehouse.begin()
    transaction.write("shop.orders", ORDERS)
    transaction.write("shop.customers", CUSTOMERS)
    transaction.write("crm.customers", CUSTOMERS.slice(0, 1))
    transaction.publish("seed")
    return lakehouse


def _duckdb_direct(sql: str, **tables: pa.Table) -> pa.Table:
    with duckdb.connect() as con:
        for name, table in tables.items():
            con.register(name, table)
        return con.sql(sql).to_arrow_table()


def test_join_matches_duckdb_on_the_same_data(lake: Lakehouse) -> None:
    result = lake.query(JOIN, namespace="shop")
    expected = _duckdb_direct(JOIN, orders=ORDERS, customers=CUSTOMERS)
    assert result.to_pylist() == expected.to_pylist()
    assert result.column_names == ["Name", "orders", "total"]


def test_qualified_names_across_namespaces(lake: Lakehouse) -> None:
    result = lake.query(
        "SELECT s.Name, (SELECT count(*) FROM crm.customers) AS n "
        "FROM shop.customers s ORDER BY s.CustomerId"
    )
    assert result.to_pylist() == [
        {"Name": "ana", "n": 1},
        {"Name": "bo", "n": 1},
        {"Name": "cy", "n": 1},
    ]
    # A bare name and a qualified one in the same query.
    mixed = lake.query(
        "SELECT count(*) AS n FROM orders JOIN crm.customers USING (CustomerId)", namespace="shop"
    )
    assert mixed.to_pylist() == [{"n": 2}]


def test_cte_is_not_a_table(lake: Lakehouse) -> None:
    sql = "WITH big AS (SELECT * FROM orders WHERE Amount > 4) SELECT count(*) AS n FROM big"
    assert lake.query(sql, namespace="shop").to_pylist() == [{"n": 3}]


def test_query_at_old_ref(lake: Lakehouse) -> None:
    before = lake.catalog.head("main")
    transaction = lake.begin()
    transaction.write("shop.orders", ORDERS, mode="append")
    transaction.publish("more")
    sql = "SELECT count(*) AS n FROM orders"
    assert lake.query(sql, namespace="shop").to_pylist() == [{"n": 10}]
    assert lake.query(sql, namespace="shop", ref=f"main@{before[:12]}").to_pylist() == [{"n": 5}]


def test_unknown_table_is_not_found(lake: Lakehouse) -> None:
    with pytest.raises(NotFound, match=r"'shop\.ordrs'"):
        lake.query("SELECT * FROM ordrs", namespace="shop")
    with pytest.raises(NotFound, match=r"'nowhere\.t'"):
        lake.query("SELECT * FROM nowhere.t")
    with pytest.raises(NotFound, match="namespace"):
        lake.query("SELECT * FROM orders")


def test_syntax_error_is_invalid_input(lake: Lakehouse) -> None:
    with pytest.raises(InvalidInput) as caught:
        lake.query("SELEC * FROM orders", namespace="shop")
    message = str(caught.value)
    assert message.startswith("Parser Error") and "\n" not in message


def test_unknown_column_in_sql_is_invalid_input(lake: Lakehouse) -> None:
    with pytest.raises(InvalidInput, match="nope") as caught:
        lake.query("SELECT nope FROM orders", namespace="shop")
    assert "\n" not in str(caught.value)


def test_only_one_select(lake: Lakehouse) -> None:
    with pytest.raises(InvalidInput, match="SELECT"):
        lake.query("CREATE TABLE x AS SELECT 1")
    with pytest.raises(InvalidInput, match="one SQL statement"):
        lake.query("SELECT 1; SELECT 2")


def test_query_tables_for_workers() -> None:
    result = query_tables(JOIN, {"orders": ORDERS, "customers": CUSTOMERS})
    assert (
        result.to_pylist() == _duckdb_direct(JOIN, orders=ORDERS, customers=CUSTOMERS).to_pylist()
    )
    qualified = query_tables("SELECT count(*) AS n FROM shop.orders", {"shop.orders": ORDERS})
    assert qualified.to_pylist() == [{"n": 5}]
    with pytest.raises(NotFound, match="'missing'"):
        query_tables("SELECT * FROM missing", {"orders": ORDERS})


def test_query_cannot_read_files(tmp_path: Path) -> None:
    path = tmp_path / "secret.csv"
    path.write_text("a\n1\n")
    with pytest.raises(InvalidInput, match="disabled"):
        query_tables(f"SELECT * FROM read_csv('{path}')", {})


def test_referenced_tables() -> None:
    sql = "WITH c AS (SELECT 1) SELECT * FROM c, a JOIN ns.b USING (x) WHERE y IN (SELECT y FROM d)"
    assert sorted(referenced_tables(sql)) == ["a", "d", "ns.b"]
