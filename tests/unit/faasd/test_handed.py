"""Scans handed to a function as their data files (faasd.handed): a streamed one decodes
them as it is read, and DuckDB, given its reader, reads the files itself with the same
rows, order and types."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pytest

from faas.faasd import handed
from faas.protocol.messages import ScanInput
from faas.store import Lakehouse, write_parquet
from faas.store.scan import plan_metadata, read_plan
from tests.conftest import OpenLake


@pytest.fixture(autouse=True)
def _forget_handed() -> Any:
    """The handed readers a test made (a function process keeps them until it exits)."""
    yield
    handed._as_parquet.clear()
    handed._named.clear()


@pytest.fixture
def taught(monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB's register and unregister as a function process has them, for one test."""
    for owner in (duckdb.DuckDBPyConnection, duckdb):
        for name in ("register", "unregister"):
            monkeypatch.setattr(owner, name, getattr(owner, name))
    handed.teach_duckdb(duckdb)


def _handed(open_lake: OpenLake, tmp_path: Path, table: pa.Table, parts: int = 3,
            columns: list[str] | None = None, row_filter: str | None = None,
            where: str = "scan-0") -> tuple[ScanInput, Path]:
    """shop.t made of ``parts`` data files, a planned scan of it, and the directory of
    links a worker hands the function (``in/scan-0``)."""
    lake: Lakehouse = open_lake("shop")
    tx = lake.begin("main")
    size = -(-table.num_rows // parts)
    pieces = [table.slice(k * size, size) for k in range(parts)]
    files = [write_parquet(t, tx.data_location("shop.t"), f"part-{k}") for k, t in enumerate(pieces)]
    tx.add_files("shop.t", files, table.schema)
    tx.publish("t")
    info = lake.table_info("shop.t", "main")
    scan = ScanInput(param="t", key="shop.t", metadata_location=info.metadata_location,
                     snapshot_id=info.snapshot_id, columns=columns, filter=row_filter, stream=True)
    plan = plan_metadata(scan.metadata_location, scan.snapshot_id, scan.columns, scan.filter)
    assert plan is not None
    directory = tmp_path / where
    directory.mkdir(parents=True)
    for k, uri in enumerate(plan.files):
        (directory / f"{k:06d}.parquet").symlink_to(uri.removeprefix("file://"))
    return msgspec.structs.replace(scan, plan=plan), directory


def _explained(con: Any, name: str) -> str:
    return "\n".join(str(row[1]) for row in con.sql(f"EXPLAIN SELECT * FROM {name}").fetchall())


SALES = pa.table({
    "when": pa.array([1_700_000_000_000_000 + i for i in range(3000)], pa.timestamp("us")),
    "n": pa.array(range(3000), pa.int64()),
    "price": pa.array([i / 4 for i in range(3000)], pa.float64()),
    "label": pa.array([f"row-{i}" if i % 7 else None for i in range(3000)], pa.string()),
})


def test_duckdb_reads_a_registered_streamed_scan_from_its_data_files(
    tmp_path: Path, open_lake: OpenLake, taught: None
) -> None:
    """The registered reader is a view over read_parquet of the handed files: DuckDB's
    Parquet reader, not an Arrow scan, with the reader's columns, order, rows and types.
    The reader itself is left whole."""
    scan, directory = _handed(open_lake, tmp_path, SALES, columns=["label", "n", "when"])
    reader = handed.stream(scan, str(directory))
    assert isinstance(reader, pa.RecordBatchReader)
    con = duckdb.connect()
    assert con.register("t", reader) is con
    plan = _explained(con, "t")
    assert "READ_PARQUET" in plan and "ARROW_SCAN" not in plan
    got = con.sql("SELECT * FROM t").to_arrow_table()

    whole = read_plan(scan.plan)  # type: ignore[arg-type]
    assert whole is not None and whole.column_names == ["label", "n", "when"]
    other = duckdb.connect()
    other.execute("SET threads = 1")  # an Arrow scan keeps its order on one thread
    other.register("t", whole)
    assert got.equals(other.sql("SELECT * FROM t").to_arrow_table())
    assert reader.read_all().equals(whole)

    # The module's register and unregister, on the default connection too.
    again = handed.stream(scan, str(directory))
    duckdb.register("u", again)
    assert "READ_PARQUET" in _explained(duckdb.default_connection(), "u")
    duckdb.unregister("u")
    with pytest.raises(duckdb.CatalogException):
        duckdb.sql("SELECT * FROM u")


def test_a_name_held_by_a_view_can_be_unregistered_and_registered_again(
    tmp_path: Path, open_lake: OpenLake, taught: None
) -> None:
    """register and unregister keep their meaning for a name a reader's view holds:
    unregister drops it, and registering anything else under the name replaces it."""
    scan, directory = _handed(open_lake, tmp_path, SALES, columns=["n"])
    con = duckdb.connect()
    con.register("T", handed.stream(scan, str(directory)))
    con.register("t", pa.table({"n": [7]}))
    assert con.sql("SELECT n FROM t").fetchall() == [(7,)]
    con.register("t", handed.stream(scan, str(directory)))
    assert con.sql("SELECT count(*) FROM t").fetchall() == [(3000,)]
    assert con.unregister("t") is con
    with pytest.raises(duckdb.CatalogException):
        con.sql("SELECT * FROM t")


def test_a_filtered_scan_is_registered_as_a_reader(
    tmp_path: Path, open_lake: OpenLake, taught: None
) -> None:
    """A row filter is an Arrow expression, not DuckDB's: the reader is registered as it
    is, and DuckDB scans the rows the filter keeps."""
    scan, directory = _handed(open_lake, tmp_path, SALES, columns=["n"], row_filter="n >= 2990")
    con = duckdb.connect()
    con.register("t", handed.stream(scan, str(directory)))
    assert "READ_PARQUET" not in _explained(con, "t")
    assert con.sql("SELECT n FROM t ORDER BY n").fetchall() == [(n,) for n in range(2990, 3000)]


def test_a_column_duckdb_would_type_otherwise_from_parquet_is_registered_as_a_reader(
    tmp_path: Path, open_lake: OpenLake, taught: None
) -> None:
    """A UUID is fixed-size binary to Arrow and UUID to DuckDB's Parquet reader: a scan of
    one is registered as its reader, so DuckDB types it as it would the table."""
    ids = pa.table({"id": pa.array([uuid.UUID(int=i).bytes for i in range(10)], pa.binary(16)),
                    "n": pa.array(range(10), pa.int64())})
    scan, directory = _handed(open_lake, tmp_path, ids, parts=1)
    con = duckdb.connect()
    con.register("ids", handed.stream(scan, str(directory)))
    assert "READ_PARQUET" not in _explained(con, "ids")
    assert con.sql("SELECT typeof(id), count(*) FROM ids GROUP BY 1").fetchall() == [("BLOB", 10)]


def test_objects_that_are_not_handed_scans_register_as_before(taught: None) -> None:
    table = pa.table({"a": [1, 2, 3]})
    con = duckdb.connect()
    con.register("t", table)
    assert "READ_PARQUET" not in _explained(con, "t")
    assert con.sql("SELECT sum(a) FROM t").fetchall() == [(6,)]
    con.unregister("t")
    with pytest.raises(duckdb.CatalogException):
        con.sql("SELECT * FROM t")


def test_a_streamed_scan_decodes_nothing_before_it_is_read(
    tmp_path: Path, open_lake: OpenLake
) -> None:
    """Arrow's scanner reads ahead on every core once started: the reader starts it only
    at its first batch, so one DuckDB reads as its files (or nobody reads) costs nothing."""
    scan, directory = _handed(open_lake, tmp_path, SALES, columns=["label", "n"])
    before = pa.total_allocated_bytes()
    reader = handed.stream(scan, str(directory))
    time.sleep(0.3)
    assert pa.total_allocated_bytes() == before
    assert reader.read_all().num_rows == SALES.num_rows


def test_a_reader_duckdb_could_not_read_as_its_files_is_registered_as_a_reader(
    tmp_path: Path, open_lake: OpenLake, taught: None
) -> None:
    """Whatever would make the view differ from the reader registers the reader itself:
    batches already read from it (the rest is what it holds), a connection that may not
    read files, and files with two column names alike but for case (DuckDB would read one
    under both names). A directory named like a Hive partition (``n=5``) is no column."""
    scan, directory = _handed(open_lake, tmp_path, SALES, columns=["n"], where="n=5/scan-0")
    con = duckdb.connect()
    con.register("whole", handed.stream(scan, str(directory)))
    assert "READ_PARQUET" in _explained(con, "whole")
    assert con.sql("SELECT min(n), max(n), count(*) FROM whole").fetchall() == [(0, 2999, 3000)]

    peeked = handed.stream(scan, str(directory))
    first = peeked.read_next_batch()
    con.register("rest", peeked)
    assert "READ_PARQUET" not in _explained(con, "rest")
    assert con.sql("SELECT count(*) FROM rest").fetchall() == [(3000 - first.num_rows,)]

    closed = duckdb.connect(config={"enable_external_access": False})
    closed.register("t", handed.stream(scan, str(directory)))
    assert closed.sql("SELECT count(*) FROM t").fetchall() == [(3000,)]


def test_columns_alike_but_for_case_are_read_as_the_reader_gives_them(
    tmp_path: Path, open_lake: OpenLake, taught: None
) -> None:
    both = pa.table({"a": pa.array([1, 2], pa.int64()), "A": pa.array([10, 20], pa.int64())})
    scan, directory = _handed(open_lake, tmp_path, both, parts=1, columns=["A"])
    con = duckdb.connect()
    con.register("t", handed.stream(scan, str(directory)))
    assert "READ_PARQUET" not in _explained(con, "t")
    assert con.sql("SELECT * FROM t").fetchall() == [(10,), (20,)]


def test_register_keeps_duckdbs_meaning_over_names_and_connections(
    tmp_path: Path, open_lake: OpenLake, taught: None
) -> None:
    """Over the user's own view, register fails as DuckDB's does; the module's functions
    act on the default connection; and a connection a view was registered on is not kept
    alive: its database file can be opened otherwise once it is gone."""
    scan, directory = _handed(open_lake, tmp_path, SALES, columns=["n"])
    con = duckdb.connect()
    con.execute("CREATE TEMPORARY VIEW mine AS SELECT 1 AS n")
    with pytest.raises(duckdb.CatalogException, match="already exists"):
        con.register("mine", handed.stream(scan, str(directory)))
    assert con.sql("SELECT n FROM mine").fetchall() == [(1,)]

    database = str(tmp_path / "own.db")
    own = duckdb.connect(database)
    own.register("s", handed.stream(scan, str(directory)))
    assert own.sql("SELECT count(*) FROM s").fetchall() == [(3000,)]
    del own  # not closed: dropped, as a model drops a connection it is done with
    again = duckdb.connect(database, read_only=True)
    again.close()


def test_a_handed_file_gone_before_the_register_leaves_the_reader_to_say_so(
    tmp_path: Path, open_lake: OpenLake, taught: None
) -> None:
    """A data file that cannot be read when the reader is registered: no view is made (its
    query would name the file), and scanning the reader fails with Arrow's own words."""
    scan, directory = _handed(open_lake, tmp_path, SALES, columns=["n"])
    reader = handed.stream(scan, str(directory))
    (directory / "000001.parquet").unlink()
    con = duckdb.connect()
    con.register("t", reader)
    assert "READ_PARQUET" not in _explained(con, "t")
    with pytest.raises(duckdb.Error, match="000001.parquet"):
        con.sql("SELECT count(*) FROM t").fetchall()
