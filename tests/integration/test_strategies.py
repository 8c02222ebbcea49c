"""Materialization strategies through real daemons: none, replace, append and
overwrite_partitions on a partitioned output, checked with scans that prune partitions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cluster

pytestmark = pytest.mark.timeout(300)

ORDERS_CSV = """order_date,country,order_id,amount
2024-05-01,US,1,10.0
2024-05-01,FR,2,20.0
2024-05-02,US,3,30.0
2024-05-03,US,4,40.0
2024-05-03,FR,5,50.0
"""

# One model per strategy, all returning the orders of the days --param days names (all
# of them by default), with amounts times --param factor.
MODELS = '''
import faas


def orders_of(orders, days, factor):
    import pyarrow as pa
    import pyarrow.compute as pc
    rows = orders
    if days:
        wanted = pa.array([d for d in days.split(",")]).cast(pa.date32())
        rows = orders.filter(pc.is_in(orders.column("order_date"), value_set=wanted))
    amount = pc.multiply(rows.column("amount"), factor)
    return rows.set_column(rows.schema.get_field_index("amount"), "amount", amount)


@faas.model()
@faas.python("3.11")
def in_memory(orders=faas.Model("orders"), days=faas.Parameter("days"),
              factor=faas.Parameter("factor")):
    return orders_of(orders, days, factor)


@faas.model(materialize="replace", partitioned_by="country")
@faas.python("3.11")
def replaced(orders=faas.Model("orders"), days=faas.Parameter("days"),
             factor=faas.Parameter("factor")):
    return orders_of(orders, days, factor)


@faas.model(materialize="append")
@faas.python("3.11")
def appended(orders=faas.Model("orders"), days=faas.Parameter("days"),
             factor=faas.Parameter("factor")):
    return orders_of(orders, days, factor)


@faas.model(materialize="overwrite_partitions", partitioned_by="day(order_date)")
@faas.python("3.11")
def daily(orders=faas.Model("orders"), days=faas.Parameter("days"),
          factor=faas.Parameter("factor")):
    return orders_of(orders, days, factor)


@faas.model(materialize="overwrite_partitions", partitioned_by=["day(order_date)", "country"],
            overwrite_filter="order_date >= '2024-05-03'")
@faas.python("3.11")
def recent(orders=faas.Model("orders"), days=faas.Parameter("days"),
           factor=faas.Parameter("factor")):
    return orders_of(orders, days, factor)
'''

PROJECT_TOML = '''
[parameters.days]
type = "str"
default = ""

[parameters.factor]
type = "float"
default = 1.0
'''


def _planned_files(c: Cluster, key: str, row_filter: str) -> int:
    """Data files a scan of ``key`` at main with ``row_filter`` reads, planned as workers
    plan it from the table's metadata alone."""
    from faas.store.scan import plan_metadata

    info = c.json("table", "get", key)
    plan = plan_metadata(info["metadata_location"], info["snapshot_id"], None, row_filter)
    return len(plan.files) if plan is not None else 0


def _rows(c: Cluster, table: str) -> list[tuple[str, int, float]]:
    got = c.json("query", f"SELECT CAST(order_date AS VARCHAR) AS d, order_id, amount FROM "
                 f"{table} ORDER BY order_id, amount", "-n", "shop")
    return [(r["d"], r["order_id"], r["amount"]) for r in got]


def test_each_strategy_and_partitions_a_scan_prunes(cluster: Cluster, tmp_path: Path) -> None:
    csv = tmp_path / "orders.csv"
    csv.write_text(ORDERS_CSV)
    cluster.faas("namespace", "create", "shop", check=True)
    cluster.faas("table", "import", "shop.orders", str(csv), check=True)
    project = tmp_path / "p"
    project.mkdir()
    (project / "models.py").write_text(MODELS)
    (project / "faas_project.toml").write_text(PROJECT_TOML)
    plan = {n["name"]: n for n in cluster.json("submit", str(project), "-n", "shop", "--dry-run")}
    assert plan["in_memory"]["materialize"] is None
    assert plan["daily"]["materialize"] == "overwrite_partitions"

    cluster.faas("submit", str(project), "-n", "shop", check=True)
    all_rows = _rows(cluster, "orders")
    for table in ("replaced", "appended", "daily", "recent"):
        assert _rows(cluster, table) == all_rows
    assert "shop.in_memory" not in cluster.json("table", "ls", "-n", "shop")

    # Partitioned outputs: one file per partition, and scans skip the others.
    daily = cluster.json("table", "get", "shop.daily")
    assert (daily["files"], daily["partitioned_by"]) == (3, "day(order_date)")
    assert _planned_files(cluster, "shop.daily", "order_date = '2024-05-03'") == 1
    assert _planned_files(cluster, "shop.recent", "order_date = '2024-05-01'") == 2
    assert _planned_files(cluster, "shop.recent", "country = 'FR'") == 2
    assert _planned_files(cluster, "shop.replaced", "country = 'FR'") == 1

    # Again, with 3 May's orders alone, amounts doubled.
    cluster.faas("submit", str(project), "-n", "shop", "--param", "days=2024-05-03",
                 "--param", "factor=2", check=True)
    may3 = [("2024-05-03", 4, 80.0), ("2024-05-03", 5, 100.0)]
    assert _rows(cluster, "replaced") == may3
    assert _rows(cluster, "appended") == sorted(all_rows + may3, key=lambda r: (r[1], r[2]))
    # 3 May's partition replaced, 1 and 2 May kept.
    assert _rows(cluster, "daily") == all_rows[:3] + may3
    assert _rows(cluster, "recent") == all_rows[:3] + may3

    # 1 May alone: overwrite_filter (order_date >= 3 May) deletes 3 May's rows though the
    # output has none of them, keeps 1 May's and adds the new ones beside them.
    cluster.faas("submit", str(project), "-n", "shop", "--param", "days=2024-05-01", check=True)
    assert _rows(cluster, "recent") == sorted(
        all_rows[:3] + [r for r in all_rows if r[0] == "2024-05-01"], key=lambda r: (r[1], r[2]))
    # ... while without a filter only the partitions written are replaced.
    assert _rows(cluster, "daily") == all_rows[:3] + may3


BAD_MODELS = '''
import faas


@faas.model(materialize="overwrite_partitions")
def no_partitions(orders=faas.Model("orders")):
    return orders


@faas.model(materialize="replace", partitioned_by="weekday(order_date)")
def bad_transform(orders=faas.Model("orders")):
    return orders


@faas.model(materialize="overwrite_partitions", partitioned_by="day(order_date)",
            overwrite_filter="amount > 3")
def filter_off_partitions(orders=faas.Model("orders")):
    return orders


@faas.model(materialize="replace", partitioned_by="country", columns=["order_id"])
def undeclared(orders=faas.Model("orders")):
    return orders


@faas.model(materialize="replace", partitioned_by="day(country)")
def wrong_type(orders=faas.Model("orders")):
    return orders
'''


def test_partition_mistakes_are_said_before_or_when_publishing(cluster: Cluster,
                                                                tmp_path: Path) -> None:
    csv = tmp_path / "orders.csv"
    csv.write_text(ORDERS_CSV)
    cluster.faas("namespace", "create", "shop", check=True)
    cluster.faas("table", "import", "shop.orders", str(csv), check=True)
    project = tmp_path / "bad"
    project.mkdir()
    (project / "models.py").write_text(BAD_MODELS)
    proc = cluster.faas("submit", str(project), "-n", "shop")
    assert proc.returncode == 1, proc.stderr
    for needle in (
        "models.py:5: materialize='overwrite_partitions' needs partitioned_by",
        "models.py:10: partitioned_by: cannot read 'weekday(order_date)'",
        "models.py:15: overwrite_filter names 'amount', which is not partitioned by",
        "models.py:21: partitioned_by names 'country', which is not among the declared columns",
    ):
        assert needle in proc.stderr, proc.stderr
    assert "wrong_type" not in proc.stderr  # its column's type is known once it ran
    # A transform the column's type does not take: one line when the run publishes, and
    # the table is not written.
    (project / "models.py").write_text(BAD_MODELS.split("@faas.model(materialize=\"overwrite_partitions\")")[0] + '''
@faas.model(materialize="replace", partitioned_by="day(country)")
def wrong_type(orders=faas.Model("orders")):
    return orders
''')
    proc = cluster.faas("submit", str(project), "-n", "shop")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: cannot partition shop.wrong_type by day(country): column 'country' is string, "
        "which day does not apply to")
    assert "shop.wrong_type" not in cluster.json("table", "ls", "-n", "shop")


def test_imports_partition_tables_as_bauplan_writes_them(cluster: Cluster, tmp_path: Path) -> None:
    csv = tmp_path / "orders.csv"
    csv.write_text(ORDERS_CSV)
    cluster.faas("namespace", "create", "shop", check=True)
    created = cluster.json("table", "create", "--name", "orders", "-n", "shop",
                           "--search-uri", str(csv), "--partitioned-by", "day(order_date)")
    assert (created["key"], created["rows"], created["partitioned_by"]) == (
        "shop.orders", 0, "day(order_date)")
    assert [c["name"] for c in created["schema"]] == ["order_date", "country", "order_id", "amount"]
    again = cluster.faas("table", "create", "shop.orders", "--search-uri", str(csv))
    assert again.returncode == 1 and "already exists" in again.stderr

    # An import keeps the table's partitions; each file holds one.
    for _ in range(2):
        cluster.faas("table", "import", "--name", "shop.orders", "--search-uri", str(csv),
                     "--mode", "append", check=True)
    info = cluster.json("table", "get", "shop.orders")
    assert (info["rows"], info["files"], info["partitioned_by"]) == (10, 6, "day(order_date)")
    assert _planned_files(cluster, "shop.orders", "order_date = '2024-05-02'") == 2

    # Another partitioning on import replaces the table's.
    cluster.faas("table", "import", "shop.orders", str(csv), "--partitioned-by",
                 "bucket(2, order_id), country", check=True)
    info = cluster.json("table", "get", "shop.orders")
    assert (info["rows"], info["partitioned_by"]) == (5, "bucket(2, order_id), country")
    assert _planned_files(cluster, "shop.orders", "country = 'FR' and order_id = 2") == 1

    bad = cluster.faas("table", "import", "shop.orders", str(csv), "--partitioned-by", "day(")
    assert bad.returncode == 1 and "--partitioned-by: cannot read 'day('" in bad.stderr
