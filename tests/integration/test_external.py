"""External tables: existing Parquet files, or an existing Iceberg table, registered as a
faas table without a copy, and read like any table at any ref."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import Cluster, import_territories, one_line_error

pytestmark = pytest.mark.timeout(120)


def test_parquet_files_and_an_iceberg_table_become_tables_without_a_copy(
    cluster: Cluster, tmp_path: Path, example_data: Path
) -> None:
    c = cluster
    ext = tmp_path / "ext"
    ext.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"day": [i] * 10, "amount": [float(i)] * 10}), ext / f"p{i}.parquet")
    import_territories(c, example_data)
    made = c.json("table", "create-external", "adventure.sales_ext", "--from", str(ext / "*.parquet"))
    assert made["rows"] == 30 and made["files"] == 3
    assert c.json("query", "SELECT count(*) AS n, max(day) AS d FROM sales_ext",
                  "-n", "adventure") == [{"n": 30, "d": 2}]
    # Nothing was copied: the table's files are the user's own.
    warehouse = c.home / "warehouse"
    assert [p for p in warehouse.rglob("*.parquet") if "territories" in str(p)]
    assert not [p for p in warehouse.rglob("*.parquet") if "sales_ext" in str(p)]
    log = c.json("log", "main", "-n", "1")[0]
    assert log["message"].startswith("create external table adventure.sales_ext from ")
    # Read like any table, at any ref: a tag keeps it after it is dropped from main.
    c.faas("tag", "create", "with-ext", check=True)
    c.faas("table", "rm", "adventure.sales_ext", check=True)
    assert c.json("query", "SELECT count(*) AS n FROM sales_ext", "-n", "adventure",
                  "--ref", "with-ext") == [{"n": 30}]

    # An existing Iceberg table, by its metadata file.
    source = c.json("table", "get", "adventure.territories")["metadata_location"]
    path = source.removeprefix("file://")
    c.json("table", "create-external", "adventure.terr_ext", "--from", path)
    rows = "SELECT * FROM {} ORDER BY 1"
    assert c.json("query", rows.format("terr_ext"), "-n", "adventure") == c.json(
        "query", rows.format("territories"), "-n", "adventure")

    # Files that disagree, a name taken, nothing there: one line each; nothing committed.
    pq.write_table(pa.table({"day": ["x"]}), ext / "p9.parquet")
    head = c.json("log", "main", "-n", "1")
    proc = c.faas("table", "create-external", "adventure.bad", "--from", str(ext / "*.parquet"))
    one_line_error(proc, "have different schemas", "p9.parquet", "p0.parquet")
    proc = c.faas("table", "create-external", "adventure.terr_ext", "--from", path)
    one_line_error(proc, "already exists")
    proc = c.faas("table", "create-external", "adventure.none", "--from", str(tmp_path / "no-*.parquet"))
    one_line_error(proc, "no files match")
    assert c.json("log", "main", "-n", "1") == head
    assert c.alive()
