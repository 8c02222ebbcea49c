"""Lakehouse: scans and table info, more error paths, and reads checked against pyiceberg."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from faas.protocol.errors import InvalidInput, NotFound
from faas.store import Lakehouse, scan_metadata, write_parquet
from tests.unit.store.store_helpers import ORDERS, sorted_rows, write_table

pytestmark = pytest.mark.timeout(60)


# -- scans ----------------------------------------------------------------------


def test_scan_with_columns_and_filter(lake: Lakehouse) -> None:
    write_table(lake, "sales.orders", ORDERS)
    result = lake.scan(
        "sales.orders",
        columns=["Region", "OrderId"],
        row_filter="OrderQuantity > 1 and Region = 'Europe'",
    )
    assert result.column_names == ["Region", "OrderId"]
    assert result.to_pylist() == [{"Region": "Europe", "OrderId": 3}]


def test_scan_metadata_matches_scan(lake: Lakehouse) -> None:
    write_table(lake, "sales.orders", ORDERS)
    info = lake.table_info("sales.orders")
    direct = scan_metadata(info.metadata_location)
    assert sorted_rows(direct, "OrderId") == sorted_rows(lake.scan("sales.orders"), "OrderId")
    filtered = scan_metadata(
        info.metadata_location, info.snapshot_id, ["OrderId"], "OrderQuantity >= 3"
    )
    assert sorted(filtered.column("OrderId").to_pylist()) == [2, 3]


def test_scan_old_snapshot_and_old_ref(lake: Lakehouse) -> None:
    first = write_table(lake, "sales.orders", ORDERS)
    old = lake.table_info("sales.orders")
    transaction = lake.begin()
    transaction.write("sales.orders", ORDERS, mode="append")
    transaction.publish("more")
    assert len(lake.scan("sales.orders")) == 8
    assert len(lake.scan("sales.orders", ref=f"main@{first[:12]}")) == 4
    assert len(lake.scan("sales.orders", snapshot_id=old.snapshot_id)) == 4
    with pytest.raises(NotFound, match="snapshot"):
        lake.scan("sales.orders", snapshot_id=12345)


@pytest.mark.parametrize(
    ("row_filter", "fragment"),
    [
        ("OrderQuantity >", "syntax error"),
        ("Nope = 1", "unknown column 'Nope'"),
        ("OrderQuantity = 'many'", "many"),
    ],
)
def test_bad_filter_is_invalid_input(lake: Lakehouse, row_filter: str, fragment: str) -> None:
    write_table(lake, "sales.orders", ORDERS)
    info = lake.table_info("sales.orders")
    for scan in (
        lambda: lake.scan("sales.orders", row_filter=row_filter),
        lambda: scan_metadata(info.metadata_location, row_filter=row_filter),
    ):
        with pytest.raises(InvalidInput) as caught:
            scan()
        message = str(caught.value)
        assert repr(row_filter) in message and fragment in message
        assert "\n" not in message


def test_unknown_column_is_invalid_input(lake: Lakehouse) -> None:
    write_table(lake, "sales.orders", ORDERS)
    with pytest.raises(InvalidInput) as caught:
        lake.scan("sales.orders", columns=["OrderId", "Price"])
    assert "'Price'" in str(caught.value)
    assert "OrderId, Region, OrderQuantity" in str(caught.value)


def test_scan_metadata_of_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        scan_metadata(f"file://{tmp_path}/nope/metadata/00000-x.metadata.json")


def test_table_info_unknown_key(lake: Lakehouse) -> None:
    with pytest.raises(NotFound) as caught:
        lake.table_info("sales.salez")
    assert str(caught.value) == "table 'sales.salez' not found at ref 'main'"


def test_table_info_of_empty_table(lake: Lakehouse) -> None:
    write_table(lake, "sales.empty", ORDERS.slice(0, 0))
    info = lake.table_info("sales.empty")
    assert info.row_count == 0
    assert len(lake.scan("sales.empty")) == 0
    # Replacing an empty table must not trip pyiceberg's "delete matched nothing" warning.
    write_table(lake, "sales.empty", ORDERS)
    assert lake.table_info("sales.empty").row_count == 4


def test_tables_of_unknown_namespace(lake: Lakehouse) -> None:
    with pytest.raises(NotFound, match="'nowhere'"):
        lake.tables("nowhere")


def test_same_table_name_gets_distinct_locations(tmp_path: Path) -> None:
    with Lakehouse(tmp_path / "h") as lake:
        lake.create_namespace("a")
        first, second = lake.begin(), lake.begin()
        assert first.data_location("a.t") != second.data_location("a.t")


def test_reopen_lakehouse(tmp_path: Path) -> None:
    with Lakehouse(tmp_path / "h") as lake:
        lake.create_namespace("a")
        write_table(lake, "a.t", ORDERS)
    with Lakehouse(tmp_path / "h") as lake:
        assert lake.tables() == ["a.t"]
        assert lake.table_info("a.t").row_count == 4


# -- more error paths -----------------------------------------------------------


def test_write_rejects_bad_arguments(lake: Lakehouse) -> None:
    transaction = lake.begin()
    with pytest.raises(InvalidInput, match=r"pyarrow\.Table"):
        transaction.write("sales.orders", {"a": [1]})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="mode"):
        transaction.write("sales.orders", ORDERS, mode="upsert")  # type: ignore[arg-type]
    duplicated = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    with pytest.raises(InvalidInput, match="appears twice"):
        transaction.write("sales.orders", duplicated)
    assert transaction.staged == []


def test_import_csv_with_duplicate_header_is_invalid(lake: Lakehouse, tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text("a,a\n1,2\n")
    with pytest.raises(InvalidInput, match="appears twice") as caught:
        lake.import_files("sales.dup", str(path))
    assert str(path) in str(caught.value)


def test_import_directory_or_nothing_is_invalid(lake: Lakehouse, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="directory"):
        lake.import_files("sales.x", str(tmp_path))
    with pytest.raises(InvalidInput, match="no files"):
        lake.import_files("sales.x", [])


def test_import_on_detached_ref_is_invalid(lake: Lakehouse, tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    path.write_text("a\n1\n")
    with pytest.raises(InvalidInput, match="not a branch"):
        lake.import_files("sales.o", str(path), ref=f"@{lake.catalog.head('main')}")


def test_add_files_with_other_schema_in_append_is_invalid(lake: Lakehouse) -> None:
    write_table(lake, "sales.orders", ORDERS)
    transaction = lake.begin()
    other = pa.table({"Other": [1.5]})
    path = write_parquet(other, transaction.data_location("sales.orders"), "p")
    with pytest.raises(InvalidInput, match=r"sales\.orders"):
        transaction.add_files("sales.orders", [path], other.schema, mode="append")


def test_add_files_replace_with_new_schema_makes_a_new_table(lake: Lakehouse) -> None:
    write_table(lake, "sales.orders", ORDERS)
    transaction = lake.begin()
    other = pa.table({"Other": [1.5, 2.5]})
    path = write_parquet(other, transaction.data_location("sales.orders"), "p")
    transaction.add_files("sales.orders", [path], other.schema)
    transaction.publish("new schema")
    assert lake.scan("sales.orders").to_pylist() == other.to_pylist()


def test_transaction_sees_its_own_writes(lake: Lakehouse) -> None:
    transaction = lake.begin()
    transaction.write("sales.orders", ORDERS)
    assert transaction.table_info("sales.orders").row_count == 4
    with pytest.raises(NotFound):
        transaction.table_info("sales.other")


def test_write_parquet_under_a_home_with_a_space(tmp_path: Path) -> None:
    with Lakehouse(tmp_path / "my home") as lake:
        lake.create_namespace("a")
        transaction = lake.begin()
        path = write_parquet(ORDERS, transaction.data_location("a.t"), "p")
        transaction.add_files("a.t", [path], ORDERS.schema)
        transaction.publish("spaced")
        info = lake.table_info("a.t")
        assert scan_metadata(info.metadata_location).num_rows == 4


def test_unsigned_integers_widen_and_unsupported_types_are_invalid(lake: Lakehouse) -> None:
    big = pa.table({"n": pa.array([2**32 - 1], pa.uint32()), "m": pa.array([7], pa.uint64())})
    write_table(lake, "sales.big", big)
    assert lake.scan("sales.big").to_pylist() == [{"n": 2**32 - 1, "m": 7}]
    transaction = lake.begin()
    with pytest.raises(InvalidInput, match="'m'"):
        transaction.write("sales.huge", pa.table({"m": pa.array([2**64 - 1], pa.uint64())}))
    with pytest.raises(InvalidInput, match="duration"):
        transaction.write("sales.dur", pa.table({"d": pa.array([1], pa.duration("s"))}))


def test_worker_side_import_with_read_source_files(lake: Lakehouse, tmp_path: Path) -> None:
    from faas.store import read_source_files

    (tmp_path / "a.csv").write_text("id,name\n1,x\n")
    (tmp_path / "b.csv").write_text("id,name\n2,y\n")
    table = read_source_files(str(tmp_path / "*.csv"))
    transaction = lake.begin()
    path = write_parquet(table, transaction.data_location("sales.people"), "import-0")
    transaction.add_files("sales.people", [path], table.schema)
    transaction.publish("import sales.people from 2 files")
    assert sorted_rows(lake.scan("sales.people"), "id") == [
        {"id": 1, "name": "x"},
        {"id": 2, "name": "y"},
    ]


def test_ten_thousand_column_csvs_are_unified_column_by_column(tmp_path: Path) -> None:
    """Wide files (once a minute of quadratic work per import) are surveyed column by
    column: the disagreements are found, and with the plan every column is kept, in
    order, with the columns one file lacks filled with nulls."""
    from faas.store import read_source_files
    from faas.store.importer import plan_files

    n = 10_000
    names = [f"c{i}" for i in range(n)]
    (tmp_path / "a.csv").write_text(",".join(names) + "\n" + ",".join(map(str, range(n))) + "\n")
    # The second file lacks the last column and has text where the first has numbers.
    (tmp_path / "b.csv").write_text(
        ",".join(names[:-1]) + "\n" + "x," + ",".join(map(str, range(1, n - 1))) + "\n"
    )
    with pytest.raises(InvalidInput, match=r"disagree on 2 columns: 'c0' .*; 'c9999' "):
        read_source_files(str(tmp_path / "*.csv"))
    plan = plan_files([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    table = read_source_files(str(tmp_path / "*.csv"), plan=plan)
    assert table.column_names == names and table.num_rows == 2
    assert table.column("c0").to_pylist() == ["0", "x"]  # read as text, by the plan
    assert table.column(f"c{n - 1}").to_pylist() == [n - 1, None]
    assert table.column("c5000").to_pylist() == [5000, 5000]


def test_imports_read_only_under_their_roots_and_say_nothing_of_the_rest(
    tmp_path: Path,
) -> None:
    from faas.protocol.errors import InvalidInput
    from faas.store.importer import expand_paths

    root, elsewhere = tmp_path / "data", tmp_path / "private"
    root.mkdir()
    elsewhere.mkdir()
    (root / "a.csv").write_text("x\n1\n")
    (elsewhere / "secret.csv").write_text("x\n2\n")
    (root / "link.csv").symlink_to(elsewhere / "secret.csv")
    roots = [str(root)]
    assert expand_paths([str(root / "a.csv")], roots) == [str(root / "a.csv")]
    refused = []
    for path in (elsewhere / "secret.csv", elsewhere / "missing.csv", root / "link.csv",
                 root / ".." / "private" / "secret.csv", root / "*.csv"):
        with pytest.raises(InvalidInput, match="only files under its import roots") as info:
            expand_paths([str(path)], roots)
        refused.append(str(info.value).replace(str(path), "PATH"))
    # An existing file and a missing one get the same answer: nothing says which exists.
    assert refused[0] == refused[1]
    assert expand_paths([str(elsewhere / "secret.csv")]) == [str(elsewhere / "secret.csv")]


def test_explicit_warehouse_and_catalog(tmp_path: Path) -> None:
    warehouse = tmp_path / "elsewhere"
    catalog = f"sqlite:///{tmp_path}/meta/cat.db"
    with Lakehouse(tmp_path / "h", warehouse=str(warehouse), catalog=catalog) as lake:
        assert lake.warehouse == f"file://{warehouse}"
        lake.create_namespace("a")
        write_table(lake, "a.t", ORDERS)
        assert lake.table_info("a.t").metadata_location.startswith(f"file://{warehouse}/a/t-")
    assert (tmp_path / "meta" / "cat.db").exists()
    assert not (tmp_path / "h" / "catalog.db").exists()


def _pyiceberg_scan(lake: Lakehouse, key: str, columns: list[str], row_filter: str | None
                    ) -> pa.Table:
    """The same scan done by pyiceberg alone, the reference for the multi-threaded reader."""
    from faas.store.scan import parse_filter
    from faas.store.transaction import load_table

    table = load_table(lake.view("main"), key)
    expression = parse_filter(row_filter, table.schema(), key)
    return table.scan(row_filter=expression, selected_fields=tuple(columns)).to_arrow().select(
        columns)


@pytest.mark.parametrize("row_filter", [None, "Price > 1.5", "Region = 'Asia'"])
def test_a_scan_of_files_of_different_types_reads_as_pyiceberg_does(
    lake: Lakehouse, row_filter: str | None
) -> None:
    """An append of narrower values (float32 into a double column, int32 into a long one)
    leaves files of two types: every value comes back exact, in the table's types."""
    exact = pa.table({"Id": pa.array([1 << 40, 2], pa.int64()), "Region": ["Europe", "Asia"],
                      "Price": pa.array([1.123456789012345, 2.5], pa.float64())})
    narrow = pa.table({"Id": pa.array([3], pa.int32()), "Region": ["Asia"],
                       "Price": pa.array([1.75], pa.float32())})
    transaction = lake.begin()
    transaction.write("sales.prices", exact)
    transaction.publish("prices")
    # As a model's appended output arrives: a Parquet file of its own types, then added.
    from faas.store.files import write_parquet

    transaction = lake.begin()
    written = write_parquet(narrow, transaction.data_location("sales.prices"), "narrow.parquet")
    transaction.add_files("sales.prices", [written], narrow.schema, "append")
    transaction.publish("more prices")
    for columns in (["Id", "Price"], ["Region", "Id"], ["Price"]):
        got = lake.scan("sales.prices", columns=columns, row_filter=row_filter)
        want = _pyiceberg_scan(lake, "sales.prices", columns, row_filter)
        assert got.equals(want), (columns, got, want)
    assert 1.123456789012345 in lake.scan("sales.prices", columns=["Price"]).column(0).to_pylist()


def test_parquet_parts_keep_order_and_a_failed_stream_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from faas.store import files

    monkeypatch.setattr(files, "PART_ROWS", 3)
    schema = pa.schema({"n": pa.int64()})
    rows = list(range(20))
    reader = pa.RecordBatchReader.from_batches(
        schema, (pa.record_batch({"n": rows[i:i + 2]}, schema=schema) for i in range(0, 20, 2))
    )
    written, count = files.write_parquet_parts(reader, str(tmp_path / "ok"), "out", threads=2)
    assert count == 20 and len(written) == 5  # parts of 4 rows: two batches of two each
    assert [n for f in written for n in pq.read_table(f).column("n").to_pylist()] == rows

    def failing():  # type: ignore[no-untyped-def]
        for i in range(0, 12, 2):
            yield pa.record_batch({"n": rows[i:i + 2]}, schema=schema)
        raise RuntimeError("the source went away")

    with pytest.raises(RuntimeError, match="the source went away"):
        files.write_parquet_parts(pa.RecordBatchReader.from_batches(schema, failing()),
                                  str(tmp_path / "bad"), "out", threads=2)
    assert not list((tmp_path / "bad").glob("*.parquet"))  # the parts written are removed


def test_an_output_smaller_than_a_part_is_still_encoded_on_every_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table, or a whole stream, of fewer than PART_ROWS rows is cut into up to
    ``threads`` parts of SPLIT_ROWS rows or more (encoded at once), in order; one too
    small to cut stays one file."""
    import pyarrow.parquet as pq

    from faas.store import files

    monkeypatch.setattr(files, "PART_ROWS", 1000)
    monkeypatch.setattr(files, "SPLIT_ROWS", 100)
    table = pa.table({"n": pa.array(range(450), pa.int64())})
    written, count = files.write_parquet_parts(table, str(tmp_path / "table"), "t", threads=4)
    assert count == 450 and [pq.read_metadata(f).num_rows for f in written] == [113, 113, 113, 111]
    assert pa.concat_tables(pq.read_table(f) for f in written).equals(table)

    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=50))
    written, count = files.write_parquet_parts(reader, str(tmp_path / "stream"), "s", threads=2)
    assert count == 450 and [pq.read_metadata(f).num_rows for f in written] == [225, 225]
    assert [n for f in written for n in pq.read_table(f).column("n").to_pylist()] == list(range(450))

    small = table.slice(0, 150)
    written, _ = files.write_parquet_parts(small, str(tmp_path / "small"), "x", threads=2)
    assert [Path(f).name for f in written] == ["x.parquet"]


def test_a_small_partitioned_output_is_a_file_per_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small outputs are cut for the cores only when unpartitioned: partitioned, a table or
    a stream of fewer than PART_ROWS rows is one file per partition."""
    import pyarrow.parquet as pq

    from faas.store import files

    monkeypatch.setattr(files, "PART_ROWS", 1000)
    monkeypatch.setattr(files, "SPLIT_ROWS", 10)
    table = pa.table({"n": pa.array(range(600), pa.int64()),
                      "p": pa.array([f"k{i % 3}" for i in range(600)])})
    written, _ = files.write_parquet_parts(table, str(tmp_path / "table"), "t", threads=4,
                                           partitioned_by="p")
    assert len(written) == 3
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=100))
    written, count = files.write_parquet_parts(reader, str(tmp_path / "stream"), "s", threads=4,
                                               partitioned_by="p")
    assert count == 600 and len(written) == 3
    assert sorted(n for f in written for n in pq.read_table(f).column("n").to_pylist()) == list(range(600))
