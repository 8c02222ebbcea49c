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
