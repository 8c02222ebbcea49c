"""Partitioned tables: the partitioned_by text, rows cut per partition, files registered
with their partitions from footers, scans that skip partitions, and the overwrite of
some partitions."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from pyiceberg.table import StaticTable

from faas.protocol.errors import InvalidInput
from faas.store import Lakehouse
from faas.store.files import write_parquet_parts
from faas.store.partitions import describe_partitioning, parse_partitioning, split
from faas.store.scan import plan_metadata

pytestmark = pytest.mark.timeout(60)

DAYS = [dt.date(2024, 5, d) for d in (1, 1, 2, 3, 3, 3)]
SALES = pa.table({
    "order_date": pa.array(DAYS),
    "country": ["US", "FR", "US", None, "US", "US"],
    "order_id": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
    "amount": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0],
})


def _write(lake: Lakehouse, rows: pa.Table, mode: str = "replace", partitioned_by: str = "",
           overwrite_filter: str = "", key: str = "sales.orders") -> None:
    tx = lake.begin()
    files, _ = write_parquet_parts(rows, tx.data_location(key), "part", threads=2,
                                   partitioned_by=partitioned_by, what=key)
    tx.add_files(key, files, rows.schema, mode,  # type: ignore[arg-type]
                 partitioned_by=partitioned_by, overwrite_filter=overwrite_filter)
    tx.publish(f"{mode} {key}")


def _planned_files(lake: Lakehouse, row_filter: str | None, key: str = "sales.orders") -> int:
    """Data files a scan with ``row_filter`` plans to read (as workers plan scans)."""
    info = lake.table_info(key)
    plan = plan_metadata(info.metadata_location, info.snapshot_id, None, row_filter)
    return len(plan.files) if plan is not None else 0


def _ids(lake: Lakehouse, key: str = "sales.orders") -> list[int]:
    return sorted(lake.scan(key).column("order_id").to_pylist())


@pytest.mark.parametrize(("text", "canonical"), [
    ("day(order_date), country", "day(order_date), country"),
    ("days(order_date)", "day(order_date)"),
    ("bucket(16, order_id)", "bucket(16, order_id)"),
    ("bucket(order_id, 16)", "bucket(16, order_id)"),
    ("bucket[16](order_id), truncate(2, country)", "bucket(16, order_id), truncate(2, country)"),
    ("year(ts), month(ts), hour(ts)", "year(ts), month(ts), hour(ts)"),
    ("", ""),
])
def test_partitioned_by_reads_as_bauplan_spark_and_iceberg_write_it(text: str, canonical: str) -> None:
    assert describe_partitioning(parse_partitioning(text)) == canonical


@pytest.mark.parametrize(("text", "needle"), [
    ("weekday(d)", "cannot read 'weekday(d)'"),
    ("bucket(d)", "cannot read 'bucket(d)'"),
    ("bucket(0, d)", "cannot read 'bucket(0, d)'"),
    ("day(d), day(d)", "'day(d)' is named twice"),
    ("day(d", "cannot read 'day(d'"),
])
def test_a_bad_partitioned_by_is_one_line(text: str, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_partitioning(text)


def test_rows_are_cut_one_partition_per_piece() -> None:
    pieces = split(SALES, parse_partitioning("day(order_date), country"), "sales.orders")
    keys = [(p.column("order_date")[0].as_py(), p.column("country")[0].as_py()) for p in pieces]
    assert len(keys) == len(set(keys)) == 5
    assert sum(p.num_rows for p in pieces) == SALES.num_rows
    for p in pieces:
        assert len(set(zip(p.column("order_date").to_pylist(), p.column("country").to_pylist(),
                           strict=True))) == 1
    one = SALES.filter(pa.compute.equal(SALES.column("country"), "FR"))
    assert split(one, parse_partitioning("country"), "t")[0] is one  # not copied
    with pytest.raises(InvalidInput, match="column 'country' is string, which day does not"):
        split(SALES, parse_partitioning("day(country)"), "sales.orders")
    with pytest.raises(InvalidInput, match="it has no column 'nope'"):
        split(SALES, parse_partitioning("nope"), "sales.orders")


def test_a_partitioned_table_keeps_partitions_and_scans_skip_them(lake: Lakehouse) -> None:
    _write(lake, SALES, partitioned_by="day(order_date), country")
    info = lake.table_info("sales.orders")
    table = StaticTable.from_metadata(info.metadata_location)
    assert [(f.name, str(f.transform)) for f in table.spec().fields] == [
        ("order_date_day", "day"), ("country", "identity")]
    assert info.file_count == 5 and info.row_count == 6
    # The scan plans only the files of the partitions the filter can match.
    assert _planned_files(lake, None) == 5
    assert _planned_files(lake, "order_date = '2024-05-03'") == 2
    assert _planned_files(lake, "order_date = '2024-05-03' and country = 'US'") == 1
    assert _planned_files(lake, "country is null") == 1
    got = lake.scan("sales.orders", row_filter="order_date >= '2024-05-02'")
    assert sorted(got.column("order_id").to_pylist()) == [3, 4, 5, 6]


@pytest.mark.parametrize("partitioned_by", ["bucket(4, order_id)", "truncate(1, country)",
                                            "month(order_date)", "year(order_date)"])
def test_every_transform_gives_files_the_scan_prunes(lake: Lakehouse, partitioned_by: str) -> None:
    _write(lake, SALES, partitioned_by=partitioned_by)
    assert _ids(lake) == [1, 2, 3, 4, 5, 6]
    column = parse_partitioning(partitioned_by)[0].column
    value = "3" if column == "order_id" else ("'FR'" if column == "country" else "'2023-01-01'")
    planned = _planned_files(lake, f"{column} = {value}")
    assert planned <= 1 < lake.table_info("sales.orders").file_count or partitioned_by.startswith(
        ("month", "year"))
    assert [r["order_id"] for r in lake.scan(
        "sales.orders", row_filter=f"{column} = {value}").to_pylist()] == (
        [3] if column == "order_id" else [2] if column == "country" else [])


def test_overwrite_partitions_replaces_only_the_partitions_written(lake: Lakehouse) -> None:
    _write(lake, SALES, partitioned_by="day(order_date)")
    before = lake.table_info("sales.orders").file_count
    fresh = pa.table({
        "order_date": pa.array([dt.date(2024, 5, 3), dt.date(2024, 5, 4)]),
        "country": ["DE", "DE"], "order_id": pa.array([7, 8], pa.int64()),
        "amount": [70.0, 80.0],
    })
    _write(lake, fresh, "overwrite_partitions", partitioned_by="day(order_date)")
    # 3 May's rows (4, 5, 6) went; 1 and 2 May are untouched; 4 May is new.
    assert _ids(lake) == [1, 2, 3, 7, 8]
    assert lake.table_info("sales.orders").file_count == before - 1 + 2
    last = StaticTable.from_metadata(lake.table_info("sales.orders").metadata_location)
    assert last.current_snapshot().summary["deleted-records"] == "3"  # type: ignore[union-attr]


def test_overwrite_partitions_with_a_filter_deletes_what_it_matches(lake: Lakehouse) -> None:
    _write(lake, SALES, partitioned_by="day(order_date)")
    fresh = pa.table({
        "order_date": pa.array([dt.date(2024, 5, 2)]), "country": ["DE"],
        "order_id": pa.array([9], pa.int64()), "amount": [90.0],
    })
    _write(lake, fresh, "overwrite_partitions", partitioned_by="day(order_date)",
           overwrite_filter="order_date >= '2024-05-02'")
    assert _ids(lake) == [1, 2, 9]
    log = lake.catalog.log("main", 1)
    assert log[0].message == "overwrite_partitions sales.orders"  # one commit


def test_append_or_overwrite_to_a_table_partitioned_otherwise_is_refused(lake: Lakehouse) -> None:
    _write(lake, SALES, partitioned_by="day(order_date)")
    head = lake.catalog.log("main", 1)[0].hash
    for mode in ("append", "overwrite_partitions"):
        with pytest.raises(InvalidInput, match=(
                r"it is partitioned by day\(order_date\), the new rows by country "
                r"\(declare partitioned_by='day\(order_date\)'")):
            _write(lake, SALES, mode, partitioned_by="country")
    assert lake.catalog.log("main", 1)[0].hash == head
    # A replace may change the partitions: the key gets a new table.
    _write(lake, SALES, "replace", partitioned_by="country")
    spec = StaticTable.from_metadata(lake.table_info("sales.orders").metadata_location).spec()
    assert [f.name for f in spec.fields] == ["country"]
    assert _ids(lake) == [1, 2, 3, 4, 5, 6]


def test_a_file_holding_two_partitions_is_refused(lake: Lakehouse) -> None:
    from faas.store.files import write_parquet

    tx = lake.begin()
    path = write_parquet(SALES, tx.data_location("sales.orders"), "mixed")
    with pytest.raises(InvalidInput, match="holds rows of more than one partition of order_date_day"):
        tx.add_files("sales.orders", [path], SALES.schema, partitioned_by="day(order_date)")


def test_a_stream_is_written_one_partition_per_file(lake: Lakehouse) -> None:
    reader = pa.RecordBatchReader.from_batches(SALES.schema, SALES.to_batches(max_chunksize=2))
    tx = lake.begin()
    files, rows = write_parquet_parts(reader, tx.data_location("sales.orders"), "s", threads=2,
                                      partitioned_by="country", what="sales.orders")
    assert rows == 6
    tx.add_files("sales.orders", files, SALES.schema, partitioned_by="country")
    tx.publish("stream")
    assert _ids(lake) == [1, 2, 3, 4, 5, 6]
    assert _planned_files(lake, "country = 'FR'") == 1
