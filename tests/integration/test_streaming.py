"""Models that return a stream: written batch by batch into shared memory, and a stream that
fails halfway leaves nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cluster, import_territories, one_line_error, write_project

pytestmark = pytest.mark.timeout(240)

STREAMS = '''
import faas


@faas.model(materialize="replace")
def doubled(t=faas.Model("territories", columns=["SalesTerritoryKey", "Country"])):
    import duckdb

    con = duckdb.connect()  # kept open: the relation streams after the function returns
    con.register("t", t)
    return con.sql("SELECT SalesTerritoryKey * 2 AS k, Country FROM t ORDER BY k")


@faas.model(materialize="replace")
def batches(t=faas.Model("territories", columns=["SalesTerritoryKey"])):
    import pyarrow as pa

    def gen():
        for b in t.to_batches(max_chunksize=3):
            yield b
    return pa.RecordBatchReader.from_batches(t.schema, gen())


@faas.model(materialize="replace")
def reader_of_reader(batches=faas.Model("batches")):
    return batches
'''

BROKEN = '''
import faas


@faas.model(materialize="replace")
def halfway(t=faas.Model("territories", columns=["SalesTerritoryKey"])):
    import pyarrow as pa

    def gen():
        yield t.to_batches()[0].slice(0, 2)
        raise RuntimeError("the upstream feed broke after 2 rows")
    return pa.RecordBatchReader.from_batches(t.schema, gen())
'''


def _objects(c: Cluster) -> list[Path]:
    assert c.shm_dir is not None
    return sorted(c.shm_dir.glob("faas-*/objects/*"))


def test_models_returning_streams_publish_every_row(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    out = cluster.json("submit", str(write_project(tmp_path, STREAMS)), "-n", "adventure")
    assert out["status"] == "success", out
    source = cluster.json("query", "SELECT SalesTerritoryKey FROM territories ORDER BY 1",
                          "-n", "adventure")
    keys = [r["SalesTerritoryKey"] for r in source]
    doubled = cluster.json("query", "SELECT k FROM doubled ORDER BY k", "-n", "adventure")
    assert [r["k"] for r in doubled] == [2 * k for k in keys]
    copied = cluster.json("query", "SELECT SalesTerritoryKey AS k FROM reader_of_reader ORDER BY 1",
                          "-n", "adventure")
    assert [r["k"] for r in copied] == keys
    job = cluster.json("job", "get", out["run_id"])
    assert job["nodes"]["batches"]["rows"] == len(keys)


def test_a_stream_that_raises_halfway_leaves_no_object_and_no_table(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    before = _objects(cluster)
    history = cluster.json("log")
    proc = cluster.faas("submit", str(write_project(tmp_path, BROKEN)), "-n", "adventure")
    assert proc.returncode == 1
    assert "the upstream feed broke after 2 rows" in proc.stderr
    assert "RuntimeError" in proc.stderr
    one_line_error(cluster.faas("table", "get", "adventure.halfway"), "halfway")
    assert cluster.json("log") == history  # nothing published
    # No object, whole or partial, was left for the failed model.
    assert _objects(cluster) == before
    assert not [p for p in cluster.shm_dir.rglob("*.tmp")]  # type: ignore[union-attr]


READERS = '''
import faas
import pyarrow as pa


@faas.model()
def kinds(
    whole=faas.Model("territories", columns=["Country", "SalesTerritoryKey"],
                     filter="SalesTerritoryKey > 3", stream=True),
):
    assert isinstance(whole, pa.RecordBatchReader), type(whole)
    table = whole.read_all()
    return pa.table({"Country": table.column("Country"),
                     "SalesTerritoryKey": table.column("SalesTerritoryKey"),
                     "names": pa.array([",".join(table.column_names)] * table.num_rows)})


@faas.model(materialize="replace")
def again(kinds=faas.Model("kinds", columns=["SalesTerritoryKey", "names"], stream=True)):
    assert isinstance(kinds, pa.RecordBatchReader), type(kinds)
    return kinds
'''


def test_inputs_asked_for_as_streams_arrive_as_readers(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    out = cluster.json("submit", str(write_project(tmp_path, READERS)), "-n", "adventure")
    assert out["status"] == "success", out
    want = cluster.json("query", "SELECT SalesTerritoryKey FROM territories WHERE "
                        "SalesTerritoryKey > 3 ORDER BY 1", "-n", "adventure")
    got = cluster.json("query", "SELECT SalesTerritoryKey, names FROM again ORDER BY 1",
                       "-n", "adventure")
    assert [r["SalesTerritoryKey"] for r in got] == [r["SalesTerritoryKey"] for r in want]
    # The scan kept the columns in the order asked for, with the filter applied.
    assert {r["names"] for r in got} == {"Country,SalesTerritoryKey"}
    reads = cluster.json("job", "get", out["run_id"])["nodes"]
    assert [(i["source"], i["name"]) for i in reads["kinds"]["inputs"]] == [
        ("scan", "adventure.territories")]
    assert [(i["source"], i["name"]) for i in reads["again"]["inputs"]] == [("object", "kinds")]


READ_BY_DUCKDB = '''
import faas
import pyarrow as pa


@faas.model(materialize="replace")
def planned(t=faas.Model("territories", columns=["Country", "SalesTerritoryKey"], stream=True)):
    import duckdb

    con = duckdb.connect()
    con.register("t", t)
    plan = "\\n".join(str(row[1]) for row in con.sql("EXPLAIN SELECT * FROM t").fetchall())
    rows = con.sql("SELECT SalesTerritoryKey, Country FROM t").to_arrow_table()
    return rows.append_column("plan", pa.array([plan] * rows.num_rows))
'''


@pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "cache"])
def test_duckdb_reads_a_streamed_local_scan_from_its_data_files(
    cluster: Cluster, example_data: Path, tmp_path: Path, cache: bool
) -> None:
    """A streamed scan of a local table is handed to the function as its data files, in its
    sandbox: registered in DuckDB, DuckDB reads them itself (its plan says READ_PARQUET),
    and the rows are the table's, in its order."""
    import_territories(cluster, example_data)
    project = write_project(tmp_path, READ_BY_DUCKDB)
    out = cluster.json("submit", str(project), "-n", "adventure",
                       *([] if cache else ["--no-cache"]))
    assert out["status"] == "success", out
    source = cluster.json("query", "SELECT SalesTerritoryKey, Country FROM territories",
                          "-n", "adventure")
    got = cluster.json("query", "SELECT SalesTerritoryKey, Country, plan FROM planned",
                       "-n", "adventure")
    assert [(r["SalesTerritoryKey"], r["Country"]) for r in got] == [
        (r["SalesTerritoryKey"], r["Country"]) for r in source]
    assert all("READ_PARQUET" in r["plan"] and "ARROW_SCAN" not in r["plan"] for r in got)
    [read] = cluster.json("job", "get", out["run_id"])["nodes"]["planned"]["inputs"]
    assert (read["source"], read["name"], read["streamed"]) == ("scan", "adventure.territories", True)


PAIRS_SQL = '''-- faas: materialize=replace
SELECT a.SalesTerritoryKey, b.Country
FROM territories AS a JOIN territories AS b USING (SalesTerritoryKey)
'''


def test_a_sql_model_reads_a_handed_scan_from_its_data_files_and_no_other_file(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    """Without the cache, a SQL model's source table reaches its DuckDB as a view over the
    table's data files (read twice here), and the connection may read those files and no
    other: a model that names another file fails in one line."""
    import_territories(cluster, example_data)
    project = tmp_path / "sql"
    project.mkdir()
    (project / "pairs.sql").write_text(PAIRS_SQL)
    out = cluster.json("submit", str(project), "-n", "adventure", "--no-cache")
    assert out["status"] == "success", out
    source = cluster.json("query", "SELECT SalesTerritoryKey, Country FROM territories "
                          "ORDER BY 1", "-n", "adventure")
    got = cluster.json("query", "SELECT * FROM pairs ORDER BY 1", "-n", "adventure")
    assert got == source
    [read] = cluster.json("job", "get", out["run_id"])["nodes"]["pairs"]["inputs"]
    assert (read["name"], read["streamed"]) == ("adventure.territories", True)

    (project / "pairs.sql").unlink()
    (project / "peek.sql").write_text(
        f"SELECT count(*) AS n FROM territories, read_csv('{example_data / 'sale.csv'}')\n")
    proc = cluster.faas("submit", str(project), "-n", "adventure", "--no-cache")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "peek.sql:1" in line and "sale.csv" in line and "Permission Error" in line
