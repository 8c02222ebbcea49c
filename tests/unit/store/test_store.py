"""Lakehouse: namespaces, import, transactions, add_files and write_parquet."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from faas.protocol.errors import AlreadyExists, CommitConflict, InvalidInput, NotFound
from faas.store import Lakehouse, TableInfo, scan_metadata, write_parquet
from tests.unit.store.store_helpers import ORDERS, sorted_rows, write_table

pytestmark = pytest.mark.timeout(60)


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
    rows = sorted_rows(lake.scan("sales.orders"), "OrderId")
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
    assert sorted_rows(lake.scan("sales.orders"), "OrderId") == sorted_rows(ORDERS, "OrderId")


def test_import_glob_of_several_files_unifies_types(lake: Lakehouse, tmp_path: Path) -> None:
    """Numbers widen by themselves; a number in one file and text in another, and a column
    some files lack, are refused, every one listed with its files, until a plan settles
    them."""
    from faas.store.importer import plan_files

    (tmp_path / "part-1.csv").write_text("id,value,code\n1,10,007\n2,20,008\n")
    (tmp_path / "part-2.csv").write_text("id,value,code\n3,2.5,abc\n")
    (tmp_path / "part-3.csv").write_text("id,value,code,extra\n4,1,009,x\n")
    pattern = str(tmp_path / "part-*.csv")
    with pytest.raises(InvalidInput) as refused:
        lake.import_files("sales.parts", pattern)
    said = str(refused.value)
    assert said.startswith("the 3 files disagree on 2 columns: ")
    assert "'code' (int64 in part-1.csv, part-3.csv; string in part-2.csv)" in said
    assert "'extra' (missing from part-1.csv, part-2.csv)" in said
    assert "'value'" not in said and "--plan" in said and "\n" not in said
    assert lake.tables("sales") == []

    plan = {c.name: c for c in plan_files(sorted(map(str, tmp_path.glob("part-*.csv"))))}
    assert plan["value"].type == "double" and not plan["value"].fill
    assert plan["code"].type == "string" and plan["code"].seen == {
        "int64": [str(tmp_path / "part-1.csv"), str(tmp_path / "part-3.csv")],
        "string": [str(tmp_path / "part-2.csv")],
    }
    assert plan["extra"].fill and plan["extra"].missing == [
        str(tmp_path / "part-1.csv"), str(tmp_path / "part-2.csv")]
    info = lake.import_files("sales.parts", pattern, plan=list(plan.values()))
    assert info.row_count == 4
    assert lake.catalog.log("main", 1)[0].message == "import sales.parts from 3 files"
    rows = sorted_rows(lake.scan("sales.parts"), "id")
    assert [r["value"] for r in rows] == [10.0, 20.0, 2.5, 1.0]
    # Text keeps the spelling it had in the files.
    assert [r["code"] for r in rows] == ["007", "008", "abc", "009"]
    assert [r["extra"] for r in rows] == [None, None, None, "x"]
    # A plan's type the files do not fit: one line naming the file.
    wrong = [*[c for c in plan.values() if c.name != "code"],
             msgspec.structs.replace(plan["code"], type="int64")]
    with pytest.raises(InvalidInput, match="part-2.csv"):
        lake.import_files("sales.parts", pattern, plan=wrong)


def test_import_tsv_and_gzip(lake: Lakehouse, tmp_path: Path) -> None:
    import gzip

    (tmp_path / "a.tsv").write_text("k\tv\nx\t1\n")
    with gzip.open(tmp_path / "b.csv.gz", "wt") as f:
        f.write("k,v\ny,2\n")
    info = lake.import_files("sales.kv", [str(tmp_path / "a.tsv"), str(tmp_path / "b.csv.gz")])
    assert info.row_count == 2
    assert sorted_rows(lake.scan("sales.kv"), "k") == [{"k": "x", "v": 1}, {"k": "y", "v": 2}]


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


def test_each_commit_writes_whole_metadata_that_logs_the_one_before(lake: Lakehouse) -> None:
    """A commit's metadata is made without copying the table's whole metadata first (its
    models are frozen): what it writes logs every earlier metadata file in order, keeps
    every snapshot chained to the one before, and counts every row."""
    from pyiceberg.table import StaticTable

    locations, before = [], []
    for n in range(4):
        transaction = lake.begin()
        transaction.write("sales.orders", ORDERS.slice(0, n + 1), mode="append" if n else "replace")
        transaction.publish(f"commit {n}")
        locations.append(lake.table_info("sales.orders").metadata_location)
        before.append(StaticTable.from_metadata(locations[-1]).metadata)
    last = before[-1]
    assert [e.metadata_file for e in last.metadata_log] == locations[:-1]
    stamps = [e.timestamp_ms for e in last.metadata_log] + [last.last_updated_ms]
    assert stamps == sorted(stamps)
    snapshots = last.snapshots
    assert len(snapshots) == 4 and last.current_snapshot_id == snapshots[-1].snapshot_id
    assert [s.parent_snapshot_id for s in snapshots[1:]] == [s.snapshot_id for s in snapshots[:-1]]
    assert [len(m.snapshots) for m in before] == [1, 2, 3, 4]
    assert lake.table_info("sales.orders").row_count == 1 + 2 + 3 + 4


def test_replace_with_new_schema_makes_a_new_table(lake: Lakehouse) -> None:
    write_table(lake, "sales.orders", ORDERS)
    old = lake.table_info("sales.orders")
    write_table(lake, "sales.orders", pa.table({"Total": [1.5]}))
    new = lake.table_info("sales.orders")
    assert new.schema.names == ["Total"] and new.row_count == 1
    # The old commit still reads the old table.
    old_commit = lake.catalog.log("main", 2)[1].hash
    assert (
        lake.table_info("sales.orders", ref=f"@{old_commit}").metadata_location
        == old.metadata_location
    )


def test_append_with_incompatible_schema_is_invalid(lake: Lakehouse) -> None:
    write_table(lake, "sales.orders", ORDERS)
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
    write_table(
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
    write_table(lake, "sales.orders", ORDERS)
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
    assert sorted_rows(lake.scan("sales.orders"), "OrderId") == sorted_rows(ORDERS, "OrderId")

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
        assert sorted_rows(lake.scan("sales.orders"), "OrderId") == sorted_rows(rows, "OrderId")
    last, before = snapshots()[-1], snapshots()[-2]
    assert last.summary.operation.value == "overwrite"
    assert last.summary["round"] == "2" and last.summary["deleted-records"] == "2"
    info = lake.table_info("sales.orders")
    assert (info.row_count, info.file_count) == (ORDERS.num_rows, 1)
    old = scan_metadata(info.metadata_location, snapshot_id=before.snapshot_id)
    assert sorted_rows(old, "OrderId") == sorted_rows(ORDERS.slice(2), "OrderId")
    # No manifest of an earlier snapshot is carried on: one of added files, one of the
    # files it deleted, however long the history.
    table = StaticTable.from_metadata(info.metadata_location)
    assert len(last.manifests(table.io)) == 2


def test_add_files_from_a_scan_result(lake: Lakehouse) -> None:
    # Scan results carry Iceberg field ids; write_parquet must drop them.
    write_table(lake, "sales.orders", ORDERS)
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
