"""Typed contracts at run time, through real daemons: what a model returns is checked
against what it declares; a broken declaration fails the run with one line naming the
model and column, and publishes nothing; an undeclared column warns, or with --strict
fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cluster

pytestmark = pytest.mark.timeout(300)

ORDERS_CSV = "order_id,country,amount\n1,US,10.5\n2,FR,20.0\n3,,30.0\n"

PROJECT = '''
from typing import Annotated

import pyarrow as pa
import pyarrow.compute as pc

import faas


class Order(faas.TableSchema):
    order_id: faas.Int64
    country: faas.String | None
    amount: faas.Float64


class Totals(faas.TableSchema):
    country: faas.String | None
    total: faas.Float64


@faas.model(materialize="replace")
@faas.python("3.11")
def orders_out(orders=faas.Model("orders")) -> Annotated[pa.Table, Order]:
    return RETURN


@faas.model(materialize="replace")
@faas.python("3.11")
def totals(data: Annotated[pa.Table, faas.Model("orders_out", projection_schema=Order)]
           ) -> Annotated[pa.Table, Totals]:
    return data.group_by("country").aggregate([("amount", "sum")]).rename_columns(
        ["country", "total"])
'''


def _project(tmp: Path, returned: str) -> Path:
    root = tmp / "p"
    root.mkdir(exist_ok=True)
    (root / "models.py").write_text(PROJECT.replace("RETURN", returned))
    return root


def _error(proc) -> str:  # type: ignore[no-untyped-def]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_what_a_model_returns_is_checked_against_its_schema(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    csv = tmp_path / "orders.csv"
    csv.write_text(ORDERS_CSV)
    cluster.faas("namespace", "create", "shop", check=True)
    cluster.faas("table", "import", "shop.orders", str(csv), check=True)

    # Kept: it runs, and its reader gets what it declared.
    project = _project(tmp_path, "orders")
    cluster.faas("submit", str(project), "-n", "shop", check=True)
    totals = cluster.json("query", "SELECT * FROM totals ORDER BY total", "-n", "shop")
    assert totals == [{"country": "US", "total": 10.5}, {"country": "FR", "total": 20.0},
                      {"country": "", "total": 30.0}]
    head = cluster.json("log", "-n", "1")[0]["hash"]

    broken = {
        "orders.drop_columns(['amount'])":
            "model 'orders_out' (models.py:23) returned no column 'amount', which its schema "
            "Order declares (it returned: order_id, country)",
        "orders.set_column(2, 'amount', pc.cast(orders.column('amount'), pa.string()))":
            "model 'orders_out' (models.py:23) returned column 'amount' as string, but its "
            "schema Order declares double",
        "orders.set_column(0, 'order_id', pa.array([1, None, 3], pa.int64()))":
            "model 'orders_out' (models.py:23) returned 1 null in column 'order_id', which its "
            "schema Order declares required (declare it '| None' if it may be null)",
        "pa.RecordBatchReader.from_batches(orders.schema, orders.set_column(0, 'order_id', "
        "pa.array([1, None, 3], pa.int64())).to_batches(max_chunksize=1))":
            "model 'orders_out' (models.py:23) returned 1 null in column 'order_id'",
    }
    for returned, line in broken.items():
        proc = cluster.faas("submit", str(_project(tmp_path, returned)), "-n", "shop",
                            "--no-cache")
        assert _error(proc).startswith(f"error: {line}"), proc.stderr
    assert cluster.json("log", "-n", "1")[0]["hash"] == head  # nothing was published

    # A column the schema does not declare: a warning, or with --strict a failure.
    extra = "orders.append_column('note', pa.array(['a', 'b', 'c']))"
    run = cluster.json("submit", str(_project(tmp_path, extra)), "-n", "shop", "--no-cache")
    assert run["status"] == "success"
    assert any("returned column 'note', which its schema Order does not declare" in log["line"]
               for log in run["logs"]), run["logs"]
    proc = cluster.faas("submit", str(_project(tmp_path, extra)), "-n", "shop", "--no-cache",
                        "--strict")
    assert _error(proc).endswith("does not declare (--strict)"), proc.stderr


def test_a_strict_run_takes_no_cached_output_with_an_undeclared_column(
    cluster: Cluster, tmp_path: Path
) -> None:
    """--strict is not part of the cache key, so an output made by a run without it (which
    only warned of an undeclared column) may be cached: a strict run checks it and fails
    the same way, whether the output is published already or held by a worker."""
    csv = tmp_path / "orders.csv"
    csv.write_text(ORDERS_CSV)
    cluster.faas("namespace", "create", "shop", check=True)
    cluster.faas("table", "import", "shop.orders", str(csv), check=True)
    extra = "orders.append_column('note', pa.array(['a', 'b', 'c']))"
    cached = ("model 'orders_out' returned column 'note', which its schema Order does not "
              "declare (--strict; its output is cached from a run without --strict)")

    # Published: the table's snapshot was made from the same key.
    project = _project(tmp_path, extra)
    assert cluster.json("submit", str(project), "-n", "shop")["status"] == "success"
    head = cluster.json("log", "-n", "1")[0]["hash"]
    assert _error(cluster.faas("submit", str(project), "-n", "shop", "--strict")) == f"error: {cached}"
    assert cluster.json("log", "-n", "1")[0]["hash"] == head

    # Held by a worker: orders_out is no table, and totals runs every time.
    held = tmp_path / "held"
    held.mkdir()
    source = (project / "models.py").read_text()
    source = source.replace('@faas.model(materialize="replace")\n@faas.python("3.11")\ndef orders_out',
                            '@faas.model()\n@faas.python("3.11")\ndef orders_out', 1)
    source = source.replace('@faas.model(materialize="replace")\n@faas.python("3.11")\ndef totals',
                            '@faas.model(materialize="replace", cache=False)\n@faas.python("3.11")\n'
                            'def totals', 1)
    assert "cache=False" in source and "@faas.model()" in source
    (held / "models.py").write_text(source)
    assert cluster.json("submit", str(held), "-n", "shop")["status"] == "success"
    head = cluster.json("log", "-n", "1")[0]["hash"]
    proc = cluster.faas("submit", str(held), "-n", "shop", "--strict")
    assert _error(proc) == f"error: {cached}", proc.stderr
    assert cluster.json("log", "-n", "1")[0]["hash"] == head
