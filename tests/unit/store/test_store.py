"""Lakehouse: namespaces, import, transactions, add_files, scans, refs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from faas.protocol.errors import AlreadyExists, CommitConflict, InvalidInput, NotFound
from faas.store import Lakehouse, TableInfo, scan_metadata, write_parquet
from tests.conftest import OpenLake

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def lake(open_lake: OpenLake) -> Lakehouse:
    return open_lake("sales")


def _sorted(table: pa.Table, by: str) -> list[dict[str, object]]:
    return table.sort_by(by).to_pylist()


ORDERS = pa.table(
    {
        "OrderId": [1, 2, 3, 4],
        "Region": ["Europe", "Asia", "Europe", "America"],
        "OrderQuantity": [1, 5, 3, 2],
    }
)


def _write(lake: Lakehouse, key: str, data: pa.Table) -> str:
    transaction = lake.begin()
    transaction.write(key, data)
    return transaction.publish(f"write {key}")


# -- namespaces ---------------------------------------------------------------


def test_namespaces_create_list_duplicate(lake: Lakehouse) -> None:
    lake.create_namespace("adventure")
    assert lake.namespaces() == ["adventure", "sales"]
    with pytest.raises(AlreadyExists, match="'sales'"):
        lake.create_namespace("sales")
    assert lake.catalog.log("main", 1)[0].message == "create namespace adventure"


@pytest.mark.parametrize("bad", ["", "1abc", "a.b", "a-b", "a b"])
def test_invalid_namespace_name(lake: Lakehouse, bad: str) -> None:
    with pytest.raises(InvalidInput):
        lake.create_namespace(bad)


@pytest.mark.parametrize(
    "bad", ["orders", "sales.orders.x", "sales.1x", ".orders", "sales.or-ders"]
)
def test_invalid_table_key(lake: Lakehouse, bad: str) -> None:
    with pytest.raises(InvalidInput, match=r"namespace\.table"):
        lake.begin().write(bad, ORDERS)


def test_namespaces_at_old_ref(lake: Lakehouse) -> None:
    before = lake.catalog.head("main")
    lake.create_namespace("later")
    assert "later" in lake.namespaces()
    assert lake.namespaces(f"@{before[:10]}") == ["sales"]


# -- import -------------------------------------------------------------------


def test_import_csv_with_crlf_and_quoted_commas(lake: Lakehouse, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_bytes(
        b"OrderId,Customer,Amount\r\n"
        b'1,"Smith, John",10.5\r\n2,"Doe, ""Jane""",3\r\n3,Plain,0.25\r\n'
    )
    info = lake.import_files("sales.orders", str(path))
    assert isinstance(info, TableInfo)
    assert (info.key, info.row_count, info.file_count) == ("sales.orders", 3, 1)
    assert info.size_bytes > 0 and info.snapshot_id is not None
    assert info.schema.names == ["OrderId", "Customer", "Amount"]
    rows = _sorted(lake.scan("sales.orders"), "OrderId")
    assert rows == [
        {"OrderId": 1, "Customer": "Smith, John", "Amount": 10.5},
        {"OrderId": 2, "Customer": 'Doe, "Jane"', "Amount": 3.0},
        {"OrderId": 3, "Customer": "Plain", "Amount": 0.25},
    ]
    assert lake.catalog.log("main", 1)[0].message == "import sales.orders from 1 file"


def test_import_parquet(lake: Lakehouse, tmp_path: Path) -> None:
    path = tmp_path / "orders.parquet"
    pq.write_table(ORDERS, path)
    info = lake.import_files("sales.orders", [str(path)])
    assert info.row_count == 4
    assert _sorted(lake.scan("sales.orders"), "OrderId") == _sorted(ORDERS, "OrderId")


def test_import_glob_of_several_files_unifies_types(lake: Lakehouse, tmp_path: Path) -> None:
    (tmp_path / "part-1.csv").write_text("id,value,code\n1,10,007\n2,20,008\n")
    (tmp_path / "part-2.csv").write_text("id,value,code\n3,2.5,abc\n")
    (tmp_path / "part-3.csv").write_text("id,value,code,extra\n4,1,009,x\n")
    info = lake.import_files("sales.parts", str(tmp_path / "part-*.csv"))
    assert info.row_count == 4
    assert lake.catalog.log("main", 1)[0].message == "import sales.parts from 3 files"
    rows = _sorted(lake.scan("sales.parts"), "id")
    assert [r["value"] for r in rows] == [10.0, 20.0, 2.5, 1.0]
    # A column that is a number in one file and text in another keeps its text.
    assert [r["code"] for r in rows] == ["007", "008", "abc", "009"]
    assert [r["extra"] for r in rows] == [None, None, None, "x"]


def test_import_tsv_and_gzip(lake: Lakehouse, tmp_path: Path) -> None:
    import gzip

    (tmp_path / "a.tsv").write_text("k\tv\nx\t1\n")
    with gzip.open(tmp_path / "b.csv.gz", "wt") as f:
        f.write("k,v\ny,2\n")
    info = lake.import_files("sales.kv", [str(tmp_path / "a.tsv"), str(tmp_path / "b.csv.gz")])
    assert info.row_count == 2
    assert _sorted(lake.scan("sales.kv"), "k") == [{"k": "x", "v": 1}, {"k": "y", "v": 2}]


def test_import_append_mode(lake: Lakehouse, tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    path.write_text("a\n1\n2\n")
    lake.import_files("sales.o", str(path))
    info = lake.import_files("sales.o", str(path), mode="append")
    assert info.row_count == 4


def test_import_bad_csv_is_invalid_input_naming_the_file(lake: Lakehouse, tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    path.write_text("a,b\n1,2\n3,4,5\n")
    head = lake.catalog.head("main")
    with pytest.raises(InvalidInput) as caught:
        lake.import_files("sales.broken", str(path))
    message = str(caught.value)
    assert str(path) in message
    assert "Expected 2 columns" in message
    assert "\n" not in message and "Traceback" not in message
    assert lake.catalog.head("main") == head


def test_import_missing_file_or_glob_is_not_found(lake: Lakehouse, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"missing\.csv"):
        lake.import_files("sales.x", str(tmp_path / "missing.csv"))
    pattern = str(tmp_path / "nothing-*.csv")
    with pytest.raises(NotFound) as caught:
        lake.import_files("sales.x", pattern)
    assert pattern in str(caught.value)


def test_import_into_missing_namespace_is_not_found(lake: Lakehouse, tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    path.write_text("a\n1\n")
    with pytest.raises(NotFound) as caught:
        lake.import_files("adventure.orders", str(path))
    assert "faas namespace create adventure" in str(caught.value)
    assert "adventure" not in lake.namespaces()


def test_import_unknown_suffix_is_invalid(lake: Lakehouse, tmp_path: Path) -> None:
    path = tmp_path / "o.txt"
    path.write_text("a\n1\n")
    with pytest.raises(InvalidInput, match="format"):
        lake.import_files("sales.o", str(path))
    assert lake.import_files("sales.o", str(path), format="csv").row_count == 1


# -- transactions ---------------------------------------------------------------


def test_write_replace_then_append(lake: Lakehouse) -> None:
    transaction = lake.begin()
    transaction.write("sales.orders", ORDERS)
    transaction.write("sales.orders", ORDERS.slice(0, 2), mode="append")
    transaction.publish("orders")
    assert lake.table_info("sales.orders").row_count == 6

    transaction = lake.begin()
    transaction.write("sales.orders", ORDERS.slice(0, 1), mode="replace")
    transaction.publish("replace")
    assert lake.table_info("sales.orders").row_count == 1
    transaction = lake.begin()
    transaction.write("sales.orders", ORDERS, mode="append")
    transaction.publish("append")
    assert lake.table_info("sales.orders").row_count == 5
    assert len(lake.scan("sales.orders")) == 5


def test_replace_with_new_schema_makes_a_new_table(lake: Lakehouse) -> None:
    _write(lake, "sales.orders", ORDERS)
    old = lake.table_info("sales.orders")
    _write(lake, "sales.orders", pa.table({"Total": [1.5]}))
    new = lake.table_info("sales.orders")
    assert new.schema.names == ["Total"] and new.row_count == 1
    # The old commit still reads the old table.
    old_commit = lake.catalog.log("main", 2)[1].hash
    assert (
        lake.table_info("sales.orders", ref=f"@{old_commit}").metadata_location
        == old.metadata_location
    )


def test_append_with_incompatible_schema_is_invalid(lake: Lakehouse) -> None:
    _write(lake, "sales.orders", ORDERS)
    transaction = lake.begin()
    with pytest.raises(InvalidInput) as caught:
        transaction.write("sales.orders", pa.table({"Other": ["x"]}), mode="append")
    assert "new columns Other" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_write_to_missing_namespace_is_not_found(lake: Lakehouse) -> None:
    with pytest.raises(NotFound, match="faas namespace create nowhere"):
        lake.begin().write("nowhere.t", ORDERS)


def test_nanosecond_timestamps_are_stored_as_microseconds(lake: Lakehouse) -> None:
    when = pa.array([1_700_000_000_123_456_789], pa.timestamp("ns"))
    when_utc = pa.array([1_700_000_000_123_456_000], pa.timestamp("ns", tz="UTC"))
    _write(
        lake,
        "sales.events",
        pa.table({"at": when, "at_utc": when_utc, "name": pa.array(["x"], pa.large_string())}),
    )
    info = lake.table_info("sales.events")
    assert info.schema.field("at").type == pa.timestamp("us")
    assert info.schema.field("at_utc").type == pa.timestamp("us", tz="UTC")
    row = lake.scan("sales.events").to_pylist()[0]
    assert row["at"] == dt.datetime(2023, 11, 14, 22, 13, 20, 123456)


def test_two_tables_publish_in_one_commit(lake: Lakehouse) -> None:
    before = lake.catalog.log("main", 100)
    transaction = lake.begin()
    transaction.write("sales.orders", ORDERS)
    transaction.write("sales.regions", pa.table({"Region": ["Europe", "Asia"]}))
    assert sorted(transaction.staged) == ["sales.orders", "sales.regions"]
    assert lake.tables() == []
    with pytest.raises(NotFound):
        lake.table_info("sales.orders")
    commit = transaction.publish("two tables", properties={"run": "r1"})
    after = lake.catalog.log("main", 100)
    assert len(after) == len(before) + 1
    assert after[0].hash == commit and after[0].parents == [before[0].hash]
    assert after[0].properties == {"run": "r1"}
    assert lake.tables() == ["sales.orders", "sales.regions"]
    assert lake.tables("sales") == ["sales.orders", "sales.regions"]
    with pytest.raises(InvalidInput, match="already published"):
        transaction.write("sales.orders", ORDERS)


def test_discarded_transaction_changes_nothing(lake: Lakehouse) -> None:
    head = lake.catalog.head("main")
    transaction = lake.begin()
    transaction.write("sales.orders", ORDERS)
    del transaction
    assert lake.catalog.head("main") == head
    assert lake.tables() == []


def test_transactions_from_one_base_on_other_tables_both_land(lake: Lakehouse) -> None:
    first, second = lake.begin(), lake.begin()
    first.write("sales.a", ORDERS)
    second.write("sales.b", ORDERS)
    winner = first.publish("first")
    later = second.publish("second")
    assert lake.catalog.log("main", 1)[0].parents == [winner]
    assert lake.catalog.head("main") == later
    assert lake.tables() == ["sales.a", "sales.b"]


def test_conflicting_transactions_from_one_base(lake: Lakehouse) -> None:
    first, second = lake.begin(), lake.begin()
    first.write("sales.a", ORDERS)
    second.write("sales.a", ORDERS.slice(0, 1))
    second.write("sales.b", ORDERS)
    winner = first.publish("first")
    with pytest.raises(CommitConflict, match=r"table 'sales\.a' changed on 'main'") as caught:
        second.publish("second")
    assert caught.value.found == winner
    assert lake.tables() == ["sales.a"]
    assert lake.table_info("sales.a").row_count == ORDERS.num_rows


def test_publish_on_detached_ref_is_invalid(lake: Lakehouse) -> None:
    transaction = lake.begin(f"@{lake.catalog.head('main')[:12]}")
    transaction.write("sales.orders", ORDERS)
    with pytest.raises(InvalidInput, match="not a branch"):
        transaction.publish("x")


def test_publish_with_nothing_staged_makes_no_commit(lake: Lakehouse) -> None:
    head = lake.catalog.head("main")
    assert lake.begin().publish("empty") == head
    assert lake.catalog.head("main") == head


def test_drop_table(lake: Lakehouse) -> None:
    _write(lake, "sales.orders", ORDERS)
    transaction = lake.begin()
    transaction.drop("sales.orders")
    transaction.publish("drop")
    assert lake.tables() == []
    with pytest.raises(NotFound, match=r"'sales\.orders'"):
        lake.table_info("sales.orders")


# -- add_files and write_parquet --------------------------------------------------


def test_add_files_written_by_write_parquet(lake: Lakehouse) -> None:
    transaction = lake.begin()
    location = transaction.data_location("sales.orders")
    assert location.startswith(lake.warehouse + "/sales/orders-")
    assert transaction.data_location("sales.orders") == location
    files = [
        write_parquet(ORDERS.slice(0, 2), location, "part-0"),
        write_parquet(ORDERS.slice(2), location, "part-1.parquet"),
    ]
    transaction.add_files("sales.orders", files, ORDERS.schema)
    transaction.publish("outputs")
    info = lake.table_info("sales.orders")
    assert (info.row_count, info.file_count) == (4, 2)
    assert info.metadata_location.startswith(location.split("/data/")[0] + "/metadata/")
    assert _sorted(lake.scan("sales.orders"), "OrderId") == _sorted(ORDERS, "OrderId")

    # Replace on the existing table: the old rows go in the same table commit.
    transaction = lake.begin()
    new_location = transaction.data_location("sales.orders")
    assert new_location != location
    extra = write_parquet(ORDERS.slice(3), new_location, "part-0")
    transaction.add_files("sales.orders", [extra], ORDERS.schema, mode="replace")
    transaction.publish("replace")
    assert lake.scan("sales.orders").to_pylist() == ORDERS.slice(3).to_pylist()

    transaction = lake.begin()
    again = write_parquet(ORDERS.slice(0, 1), transaction.data_location("sales.orders"), "p")
    transaction.add_files("sales.orders", [again], ORDERS.schema, mode="append")
    transaction.publish("append")
    assert lake.table_info("sales.orders").row_count == 2


def test_replacing_added_files_is_one_overwrite_snapshot(lake: Lakehouse) -> None:
    """A model's replace is one snapshot (not a delete and an append): what the table had
    before stays readable at its old snapshot, and the history grows by one."""
    from pyiceberg.table import StaticTable

    def snapshots() -> list:  # type: ignore[type-arg]
        return StaticTable.from_metadata(lake.table_info("sales.orders").metadata_location).snapshots()

    for round_, rows in enumerate((ORDERS.slice(0, 2), ORDERS.slice(2), ORDERS)):
        transaction = lake.begin()
        path = write_parquet(rows, transaction.data_location("sales.orders"), f"r{round_}")
        transaction.add_files("sales.orders", [path], ORDERS.schema, mode="replace",
                              properties={"round": str(round_)})
        transaction.publish(f"round {round_}")
        assert len(snapshots()) == round_ + 1
        assert _sorted(lake.scan("sales.orders"), "OrderId") == _sorted(rows, "OrderId")
    last, before = snapshots()[-1], snapshots()[-2]
    assert last.summary.operation.value == "overwrite"
    assert last.summary["round"] == "2" and last.summary["deleted-records"] == "2"
    info = lake.table_info("sales.orders")
    assert (info.row_count, info.file_count) == (ORDERS.num_rows, 1)
    old = scan_metadata(info.metadata_location, snapshot_id=before.snapshot_id)
    assert _sorted(old, "OrderId") == _sorted(ORDERS.slice(2), "OrderId")
    # No manifest of an earlier snapshot is carried on: one of added files, one of the
    # files it deleted, however long the history.
    table = StaticTable.from_metadata(info.metadata_location)
    assert len(last.manifests(table.io)) == 2


def test_add_files_from_a_scan_result(lake: Lakehouse) -> None:
    # Scan results carry Iceberg field ids; write_parquet must drop them.
    _write(lake, "sales.orders", ORDERS)
    scanned = lake.scan("sales.orders")
    transaction = lake.begin()
    path = write_parquet(scanned, transaction.data_location("sales.copy"), "part-0")
    transaction.add_files("sales.copy", [path], scanned.schema)
    transaction.publish("copy")
    assert lake.table_info("sales.copy").row_count == 4


def test_add_missing_file_is_not_found(lake: Lakehouse) -> None:
    transaction = lake.begin()
    location = transaction.data_location("sales.orders")
    with pytest.raises(NotFound, match=r"nope\.parquet"):
        transaction.add_files("sales.orders", [location + "/nope.parquet"], ORDERS.schema)


def test_write_parquet_to_plain_path(tmp_path: Path) -> None:
    path = write_parquet(ORDERS, str(tmp_path / "out"), "x")
    assert path == str(tmp_path / "out" / "x.parquet")
    assert pq.read_table(path).num_rows == 4
    with pytest.raises(InvalidInput):
        write_parquet(ORDERS, str(tmp_path), "../escape")


# -- scans ----------------------------------------------------------------------


def test_scan_with_columns_and_filter(lake: Lakehouse) -> None:
    _write(lake, "sales.orders", ORDERS)
    result = lake.scan(
        "sales.orders",
        columns=["Region", "OrderId"],
        row_filter="OrderQuantity > 1 and Region = 'Europe'",
    )
    assert result.column_names == ["Region", "OrderId"]
    assert result.to_pylist() == [{"Region": "Europe", "OrderId": 3}]


def test_scan_metadata_matches_scan(lake: Lakehouse) -> None:
    _write(lake, "sales.orders", ORDERS)
    info = lake.table_info("sales.orders")
    direct = scan_metadata(info.metadata_location)
    assert _sorted(direct, "OrderId") == _sorted(lake.scan("sales.orders"), "OrderId")
    filtered = scan_metadata(
        info.metadata_location, info.snapshot_id, ["OrderId"], "OrderQuantity >= 3"
    )
    assert sorted(filtered.column("OrderId").to_pylist()) == [2, 3]


def test_scan_old_snapshot_and_old_ref(lake: Lakehouse) -> None:
    first = _write(lake, "sales.orders", ORDERS)
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
    _write(lake, "sales.orders", ORDERS)
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
    _write(lake, "sales.orders", ORDERS)
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
    _write(lake, "sales.empty", ORDERS.slice(0, 0))
    info = lake.table_info("sales.empty")
    assert info.row_count == 0
    assert len(lake.scan("sales.empty")) == 0
    # Replacing an empty table must not trip pyiceberg's "delete matched nothing" warning.
    _write(lake, "sales.empty", ORDERS)
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
        _write(lake, "a.t", ORDERS)
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
    _write(lake, "sales.orders", ORDERS)
    transaction = lake.begin()
    other = pa.table({"Other": [1.5]})
    path = write_parquet(other, transaction.data_location("sales.orders"), "p")
    with pytest.raises(InvalidInput, match=r"sales\.orders"):
        transaction.add_files("sales.orders", [path], other.schema, mode="append")


def test_add_files_replace_with_new_schema_makes_a_new_table(lake: Lakehouse) -> None:
    _write(lake, "sales.orders", ORDERS)
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
    _write(lake, "sales.big", big)
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
    assert _sorted(lake.scan("sales.people"), "id") == [
        {"id": 1, "name": "x"},
        {"id": 2, "name": "y"},
    ]


def test_explicit_warehouse_and_catalog(tmp_path: Path) -> None:
    warehouse = tmp_path / "elsewhere"
    catalog = f"sqlite:///{tmp_path}/meta/cat.db"
    with Lakehouse(tmp_path / "h", warehouse=str(warehouse), catalog=catalog) as lake:
        assert lake.warehouse == f"file://{warehouse}"
        lake.create_namespace("a")
        _write(lake, "a.t", ORDERS)
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
