"""The per-worker column cache: hits, misses, invalidation, zero-copy, row order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.schema import Schema
from pyiceberg.table import StaticTable

from faas.faasd.columns import ScanStats, normalize_filter, scan_cached
from faas.protocol.errors import InvalidInput, NotFound
from faas.protocol.messages import ScanInput
from faas.store import Lakehouse, TableInfo, scan_metadata
from faas.store.scan import plan_metadata, plan_reader, read_plan
from tests.conftest import OpenLake

pytestmark = pytest.mark.timeout(60)

KEY = "cc.t"
PARTS = 6
PART_ROWS = 20_000
ROWS = PARTS * PART_ROWS
FILTER = "R < 0.5"


def _part(part: int) -> pa.Table:
    """Rows whose B and C are functions of A, so a misaligned zip shows in any row.

    A is a permutation of 0..ROWS-1 spread over the parts; R is random, so a
    filter on it keeps scattered rows of every data file.
    """
    a = pa.array([(i * 7919) % ROWS for i in range(part * PART_ROWS, (part + 1) * PART_ROWS)])
    return pa.table(
        {
            "A": a,
            "B": pc.binary_join_element_wise("b", pc.cast(a, pa.string()), ""),
            "C": pc.multiply(pc.cast(a, pa.float64()), 2.0),
            "D": pc.add(a, 1_000_000),
            "R": pc.random(PART_ROWS, initializer=part),
            "S": pa.array(["a b", "ab", "a  b", "x"] * (PART_ROWS // 4)),
            "x": pa.array([1, 2] * (PART_ROWS // 2), pa.int64()),
            "notx": pa.array([1, 1, 2, 2] * (PART_ROWS // 4), pa.int64()),
        }
    )


def _write(lake: Lakehouse, data: pa.Table, mode: str = "append") -> TableInfo:
    transaction = lake.begin()
    transaction.write(KEY, data, mode)  # type: ignore[arg-type]
    transaction.publish(f"write {KEY}")
    return lake.table_info(KEY)


@pytest.fixture
def lake(open_lake: OpenLake) -> Lakehouse:
    lakehouse = open_lake("cc")
    for part in range(PARTS):
        _write(lakehouse, _part(part))
    return lakehouse


@pytest.fixture
def info(lake: Lakehouse) -> TableInfo:
    table_info = lake.table_info(KEY)
    assert table_info.file_count == PARTS  # several data files: row order across files matters
    return table_info


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    directory = tmp_path / "shm"
    directory.mkdir()
    return directory


def _inp(info: TableInfo, columns: list[str] | None, row_filter: str | None = None, **kw: Any) -> ScanInput:
    fields: dict[str, Any] = {"snapshot_id": info.snapshot_id} | kw
    return ScanInput(
        param="t", key=KEY, metadata_location=info.metadata_location, columns=columns,
        filter=row_filter, **fields,
    )


def _expected(inp: ScanInput) -> pa.Table:
    return scan_metadata(
        inp.metadata_location, snapshot_id=inp.snapshot_id, columns=inp.columns, row_filter=inp.filter
    )


def _entry_of(cache: Path, column: str) -> Path:
    """The one entry file in ``cache`` that holds ``column``."""
    found = []
    for path in cache.glob("col-*.arrow"):
        with pa.memory_map(str(path)) as source:
            if pa.ipc.open_file(source).schema.names == [column]:
                found.append(path)
    assert len(found) == 1, found
    return found[0]


def _aligned(table: pa.Table) -> bool:
    """Every row's B and C belong to its A."""
    a = table.column("A")
    b_ok = pc.all(pc.equal(table.column("B"), pc.binary_join_element_wise("b", pc.cast(a, pa.string()), "")))
    c_ok = pc.all(pc.equal(table.column("C"), pc.multiply(pc.cast(a, pa.float64()), 2.0)))
    return bool(b_ok.as_py()) and bool(c_ok.as_py())


# -- hits and misses -----------------------------------------------------------


def test_second_scan_reads_only_the_new_column(info: TableInfo, cache: Path) -> None:
    first, stats = scan_cached(_inp(info, ["A", "B", "C"]), cache)
    assert stats.columns_read == ["A", "B", "C"] and stats.columns_cached == []
    assert len(stats.new_entries) == 3
    for name, size in stats.new_entries:
        assert name.startswith("col-") and name.endswith(".arrow")
        assert (cache / name).stat().st_size == size
    assert sorted(p.name for p in cache.iterdir()) == sorted(n for n, _ in stats.new_entries)
    assert first.equals(_expected(_inp(info, ["A", "B", "C"])), check_metadata=True)

    inp = _inp(info, ["A", "B", "C", "D"])
    second, stats = scan_cached(inp, cache)
    assert stats.columns_read == ["D"]
    assert stats.columns_cached == ["A", "B", "C"]
    assert [n for n, _ in stats.new_entries] == [_entry_of(cache, "D").name]
    assert stats.bytes_cached == sum(_entry_of(cache, c).stat().st_size for c in "ABC")
    assert second.equals(_expected(inp), check_metadata=True)

    third, stats = scan_cached(inp, cache)
    assert stats == ScanStats(columns_cached=["A", "B", "C", "D"], bytes_cached=stats.bytes_cached)
    assert third.equals(second, check_metadata=True)


def test_no_cache_dir_is_a_plain_scan(info: TableInfo, tmp_path: Path) -> None:
    inp = _inp(info, ["C", "A"], FILTER)
    table, stats = scan_cached(inp, None)
    assert stats == ScanStats(columns_read=["C", "A"])
    assert table.equals(_expected(inp), check_metadata=True)
    assert not list(tmp_path.rglob("col-*"))


def test_requested_order_and_all_columns(info: TableInfo, cache: Path) -> None:
    inp = _inp(info, ["C", "A"], FILTER)
    table, _ = scan_cached(inp, cache)
    assert table.column_names == ["C", "A"]
    assert table.equals(_expected(inp), check_metadata=True)

    everything = _inp(info, None, FILTER)
    table, stats = scan_cached(everything, cache)
    names = [f.name for f in info.schema]
    assert table.column_names == names == ["A", "B", "C", "D", "R", "S", "x", "notx"]
    assert stats.columns_cached == ["A", "C"]
    assert stats.columns_read == [n for n in names if n not in ("A", "C")]
    assert table.equals(_expected(everything), check_metadata=True)

    # The same column twice, as scan_metadata allows.
    twice = _inp(info, ["A", "C", "A"], FILTER)
    table, stats = scan_cached(twice, cache)
    assert stats.columns_cached == ["A", "C"] and stats.columns_read == []
    assert table.equals(_expected(twice), check_metadata=True)


# -- zero-copy -----------------------------------------------------------------


def _mappings_of(path: Path) -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == str(path):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((start, end))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc/self/maps")
def test_cached_columns_are_mapped_not_copied(info: TableInfo, cache: Path) -> None:
    import gc

    scan_cached(_inp(info, ["D"]), cache)
    entry = _entry_of(cache, "D")
    # Arrow memory held in reference cycles of earlier tests must not be freed by the
    # collector in the middle of a measure.
    gc.collect()
    gc.disable()
    try:
        _mapped_not_copied(info, cache, entry)
    finally:
        gc.enable()


def _mapped_not_copied(info: TableInfo, cache: Path, entry: Path) -> None:

    before = pa.total_allocated_bytes()
    table, stats = scan_cached(_inp(info, ["D"]), cache)
    allocated = pa.total_allocated_bytes() - before
    assert stats.columns_cached == ["D"]
    column = table.column("D")
    assert column.nbytes >= ROWS * 8
    # The memory pool did not pay for the column: its bytes live in the mapped file.
    assert allocated < column.nbytes // 10, (allocated, column.nbytes)

    ranges = _mappings_of(entry.resolve())
    assert ranges, "the entry file is not mapped"
    buffers = [b for chunk in column.chunks for b in chunk.buffers() if b is not None and b.size]
    assert buffers
    for buffer in buffers:
        assert any(start <= buffer.address and buffer.address + buffer.size <= end for start, end in ranges)

    # The same measure sees a copy: an uncached scan pays for the column.
    before = pa.total_allocated_bytes()
    copied = _expected(_inp(info, ["D"]))
    assert pa.total_allocated_bytes() - before >= copied.column("D").nbytes
    assert table.equals(copied)


# -- invalidation and keying ---------------------------------------------------


def test_new_commit_invalidates_only_the_new_snapshot(lake: Lakehouse, info: TableInfo, cache: Path) -> None:
    scan_cached(_inp(info, ["A", "B"]), cache)
    newer = _write(lake, _part(0))
    assert newer.snapshot_id != info.snapshot_id

    table, stats = scan_cached(_inp(newer, ["A", "B"]), cache)
    assert stats.columns_read == ["A", "B"] and stats.columns_cached == []
    assert table.num_rows == ROWS + PART_ROWS
    assert table.equals(_expected(_inp(newer, ["A", "B"])))

    # The current snapshot of the new metadata is the new snapshot: its entries.
    _, stats = scan_cached(_inp(newer, ["A", "B"], snapshot_id=None), cache)
    assert stats.columns_cached == ["A", "B"]

    # The old snapshot still hits, by its own metadata file or by the newer one.
    for old in (_inp(info, ["A", "B"]), _inp(newer, ["A", "B"], snapshot_id=info.snapshot_id)):
        table, stats = scan_cached(old, cache)
        assert stats.columns_cached == ["A", "B"] and stats.columns_read == []
        assert table.num_rows == ROWS
        assert table.equals(_expected(_inp(info, ["A", "B"])))


def test_filters_key_entries(info: TableInfo, cache: Path) -> None:
    def read(row_filter: str | None) -> list[str]:
        inp = _inp(info, ["A"], row_filter)
        table, stats = scan_cached(inp, cache)
        assert table.equals(_expected(inp)), row_filter
        return stats.columns_read

    assert read(FILTER) == ["A"]
    assert read("R<0.5") == []
    assert read("  R   <  0.5 ") == []
    assert read("R < 0.4") == ["A"]
    assert read(None) == ["A"]
    assert read("") == []
    assert read("   ") == []
    # Whitespace that matters is kept: inside a literal, and between two words.
    assert read("S = 'a b'") == ["A"]
    assert read("S = 'a  b'") == ["A"]
    assert read("S='a b'") == []
    assert read("not x = 1") == ["A"]
    assert read("notx = 1") == ["A"]


def _with_names_swapped(info: TableInfo, first: str, second: str) -> str:
    """A new metadata file of the same table and snapshot whose current schema swaps two
    column names, as a rename with no new data does; its location."""
    metadata = StaticTable.from_metadata(info.metadata_location).metadata
    old = metadata.schema()
    swap = {first: second, second: first}
    fields = [f.model_copy(update={"name": swap.get(f.name, f.name)}) for f in old.fields]
    new = Schema(*fields, schema_id=old.schema_id + 1, identifier_field_ids=old.identifier_field_ids)
    renamed = metadata.model_copy(update={"schemas": [*metadata.schemas, new], "current_schema_id": new.schema_id})
    path = Path(info.metadata_location.removeprefix("file://")).with_name("99999-renamed.metadata.json")
    path.write_text(renamed.model_dump_json())
    return f"file://{path}"


def test_schema_change_on_the_same_snapshot_does_not_alias(info: TableInfo, cache: Path) -> None:
    scan_cached(_inp(info, ["A", "D"], snapshot_id=None), cache)
    # A and D are both longs: only the field id tells the new "A" from the old one.
    location = _with_names_swapped(info, "A", "D")
    inp = ScanInput(param="t", key=KEY, metadata_location=location, columns=["A", "D", "B"])
    table, stats = scan_cached(inp, cache)
    assert stats.columns_cached == [] and stats.columns_read == ["A", "D", "B"]
    assert table.equals(_expected(inp), check_metadata=True)
    assert table.column("A").equals(_expected(_inp(info, ["D"])).column("D"))


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (None, "", True),
        ("", " \t\n", True),
        ("a > 1", "a>1", True),
        (" a  >=  1 and  b < 2 ", "a>=1 and b<2", True),
        ("a in (1, 2)", "a in (12)", False),
        ("not x = 1", "notx = 1", False),
        ("s = 'a b'", "s = 'ab'", False),
        ("s = 'it''s  x'", "s = 'it''s x'", False),
        (r"s = 'a\' and  b'", r"s = 'a\' and b'", False),
        ('"my col" = 1', '"mycol" = 1', False),
        ("s = 'x' and a = 1", "s='x'and a=1", True),
    ],
)
def test_normalize_filter(a: str | None, b: str | None, same: bool) -> None:
    assert (normalize_filter(a) == normalize_filter(b)) is same


# -- broken entries --------------------------------------------------------------


def test_deleted_entry_is_read_again(info: TableInfo, cache: Path) -> None:
    inp = _inp(info, ["A", "B"], FILTER)
    scan_cached(inp, cache)
    entry = _entry_of(cache, "A")
    size = entry.stat().st_size
    entry.unlink()

    table, stats = scan_cached(inp, cache)
    assert stats.columns_read == ["A"] and stats.columns_cached == ["B"]
    assert stats.new_entries == [(entry.name, size)]
    assert table.equals(_expected(inp), check_metadata=True)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "other column"])
def test_damaged_entry_is_read_again(info: TableInfo, cache: Path, damage: str) -> None:
    inp = _inp(info, ["A", "B"], FILTER)
    scan_cached(inp, cache)
    entry = _entry_of(cache, "A")
    good = entry.read_bytes()
    if damage == "empty":
        entry.write_bytes(b"")
    elif damage == "truncated":
        entry.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        entry.write_bytes(os.urandom(len(good)))
    else:
        entry.write_bytes(_entry_of(cache, "B").read_bytes())

    table, stats = scan_cached(inp, cache)
    assert stats.columns_read == ["A"] and stats.columns_cached == ["B"]
    assert stats.new_entries == [(entry.name, len(good))]
    assert entry.read_bytes() == good
    assert table.equals(_expected(inp), check_metadata=True)


def test_pieces_of_different_lengths_mean_a_full_scan(info: TableInfo, cache: Path) -> None:
    inp = _inp(info, ["A", "B"], FILTER)
    expected = _expected(inp)
    scan_cached(inp, cache)
    entry = _entry_of(cache, "A")
    good = entry.read_bytes()
    short = expected.select(["A"]).slice(1)
    with pa.OSFile(str(entry), "wb") as sink, pa.ipc.new_file(sink, short.schema) as writer:
        writer.write_table(short)
    # A reader still holding the short piece keeps valid data while the entry is replaced.
    held, _ = scan_cached(_inp(info, ["A"], FILTER), cache)
    assert held.num_rows == expected.num_rows - 1

    table, stats = scan_cached(inp, cache)
    assert stats.columns_read == ["A", "B"] and stats.columns_cached == []
    assert table.equals(expected, check_metadata=True)
    assert entry.read_bytes() == good
    assert held.column("A").equals(short.column("A"))


def test_failed_write_still_returns_the_data(
    info: TableInfo, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    inp = _inp(info, ["A", "B"], FILTER)
    table, stats = scan_cached(inp, cache)
    monkeypatch.undo()
    assert stats.columns_read == ["A", "B"] and stats.new_entries == []
    assert list(cache.iterdir()) == []  # no temporary files left behind
    assert table.equals(_expected(inp), check_metadata=True)


def test_cache_dir_that_is_a_file_is_not_fatal(info: TableInfo, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    inp = _inp(info, ["A"])
    table, stats = scan_cached(inp, not_a_dir)
    assert stats.columns_read == ["A"] and stats.new_entries == []
    assert table.equals(_expected(inp))


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "row_filter", "snapshot_id", "error"),
    [
        (["A", "nope"], None, None, InvalidInput),
        (["A"], "R <", None, InvalidInput),
        (["A"], "nope > 1", None, InvalidInput),
        (["A"], "S > 1.5", None, InvalidInput),
        (None, "nope = 1", None, InvalidInput),
        (["A"], None, 12345, NotFound),
    ],
)
@pytest.mark.parametrize("warm", [False, True])
def test_errors_match_scan_metadata(
    info: TableInfo, cache: Path, columns: list[str] | None, row_filter: str | None,
    snapshot_id: int | None, error: type[Exception], warm: bool,
) -> None:
    if warm:  # every valid column already cached under the same filter text
        scan_cached(_inp(info, None, None), cache)
    inp = _inp(info, columns, row_filter, snapshot_id=snapshot_id or info.snapshot_id)
    with pytest.raises(error) as plain:
        _expected(inp)
    with pytest.raises(error) as cached:
        scan_cached(inp, cache)
    assert str(cached.value) == str(plain.value)


def test_missing_metadata_is_not_found(tmp_path: Path, cache: Path) -> None:
    inp = ScanInput(param="t", key=KEY, metadata_location=str(tmp_path / "gone.metadata.json"))
    with pytest.raises(NotFound) as plain:
        _expected(inp)
    with pytest.raises(NotFound) as cached:
        scan_cached(inp, cache)
    assert str(cached.value) == str(plain.value)


# -- row order -------------------------------------------------------------------


def test_columns_from_separate_scans_line_up(info: TableInfo, cache: Path) -> None:
    """pyiceberg returns one snapshot + filter in the same row order every time."""
    first, _ = scan_cached(_inp(info, ["A", "B"], FILTER), cache)
    _, stats = scan_cached(_inp(info, ["C"], FILTER), cache)
    assert stats.columns_read == ["C"]
    zipped, stats = scan_cached(_inp(info, ["A", "B", "C"], FILTER), cache)
    assert stats.columns_cached == ["A", "B", "C"] and stats.columns_read == []
    assert 0.4 * ROWS < zipped.num_rows < 0.6 * ROWS
    assert zipped.equals(_expected(_inp(info, ["A", "B", "C"], FILTER)))
    assert _aligned(zipped)
    assert first.column("A").equals(zipped.column("A"))


def test_alignment_check_sees_a_reordered_scan(
    info: TableInfo, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: data files planned in another order misalign the zip."""
    from pyiceberg.table import DataScan

    scan_cached(_inp(info, ["A", "B"], FILTER), cache)
    plan_files = DataScan.plan_files
    monkeypatch.setattr(DataScan, "plan_files", lambda self: list(reversed(list(plan_files(self)))))
    scan_cached(_inp(info, ["C"], FILTER), cache)
    monkeypatch.undo()
    zipped, stats = scan_cached(_inp(info, ["A", "B", "C"], FILTER), cache)
    assert stats.columns_read == []
    assert not _aligned(zipped)
    assert not zipped.equals(_expected(_inp(info, ["A", "B", "C"], FILTER)))


# --------------------------------------------------------------------------- planned scans


@pytest.fixture
def added(lake: Lakehouse) -> TableInfo:
    """The same rows as ``info``'s table, registered as a worker's Parquet files are
    (add_files: no field ids in the files, a name mapping in the table), which Arrow reads."""
    from faas.store.files import write_parquet

    transaction = lake.begin()
    location = transaction.data_location("cc.added")
    files = [write_parquet(_part(part), location, f"part-{part}") for part in range(PARTS)]
    transaction.add_files("cc.added", files, _part(0).schema)
    transaction.publish("added")
    table_info = lake.table_info("cc.added")
    assert table_info.file_count == PARTS
    return table_info


def _planned(inp: ScanInput) -> ScanInput:
    """The input as a worker hands it over: planned from the metadata."""
    plan = plan_metadata(inp.metadata_location, inp.snapshot_id, inp.columns, inp.filter)
    assert plan is not None
    return msgspec.structs.replace(inp, plan=plan)


@pytest.mark.parametrize(
    ("columns", "row_filter"),
    [(None, None), (["C", "A", "B"], None), (["B", "A"], FILTER), (["D"], "A < 500 and R < 0.5")],
)
def test_a_planned_scan_reads_what_the_metadata_scan_reads(
    added: TableInfo, cache: Path, columns: list[str] | None, row_filter: str | None
) -> None:
    inp = _planned(_inp(added, columns, row_filter))
    assert inp.plan is not None and len(inp.plan.files) == PARTS
    assert inp.plan.columns == (columns or _expected(inp).column_names)
    expected = _expected(inp)

    uncached, stats = scan_cached(inp, None)
    assert uncached.equals(expected) and stats.columns_read == expected.column_names

    first, stats = scan_cached(inp, cache)
    assert first.equals(expected) and stats.columns_cached == []
    again, stats = scan_cached(inp, cache)
    assert again.equals(expected) and stats.columns_read == []
    assert stats.columns_cached == expected.column_names
    if {"A", "B", "C"} <= set(again.column_names):
        assert _aligned(again)


@pytest.mark.parametrize(
    ("columns", "row_filter"), [(None, None), (["C", "A", "B"], None), (["B", "A"], FILTER)],
)
def test_a_plan_streams_what_it_reads_whole(
    added: TableInfo, columns: list[str] | None, row_filter: str | None
) -> None:
    """What a --no-cache scan hands a function: the worker's plan read as a stream (not
    planned again), the same rows in the same order and columns as reading it whole."""
    inp = _planned(_inp(added, columns, row_filter))
    assert inp.plan is not None
    reader = plan_reader(inp.plan)
    assert reader is not None
    streamed = reader.read_all()
    whole = read_plan(inp.plan)
    assert whole is not None and streamed.equals(whole)
    assert streamed.column_names == (columns or whole.column_names)
    assert streamed.equals(_expected(inp))


def test_planned_and_metadata_scans_share_cache_entries(added: TableInfo, cache: Path) -> None:
    """Entries written by a scan the function planned serve a planned scan, and the other
    way round: both key them the same."""
    plain = _inp(added, ["A", "B"])
    scan_cached(plain, cache)
    table, stats = scan_cached(_planned(_inp(added, ["B", "A", "C"])), cache)
    assert stats.columns_cached == ["B", "A"] and stats.columns_read == ["C"]
    assert table.equals(_expected(_inp(added, ["B", "A", "C"])))
    _, stats = scan_cached(_inp(added, ["C"]), cache)
    assert stats.columns_cached == ["C"]


def test_a_plan_the_files_do_not_match_falls_back_to_the_metadata(added: TableInfo) -> None:
    inp = _planned(_inp(added, ["A", "B"]))
    assert inp.plan is not None
    wrong = pa.schema([pa.field("A", pa.string()), pa.field("B", pa.string())])
    inp = msgspec.structs.replace(
        inp, plan=msgspec.structs.replace(inp.plan, schema=wrong.serialize().to_pybytes())
    )
    assert read_plan(inp.plan) is None  # A is an integer in every file
    table, _ = scan_cached(inp, None)
    assert table.equals(_expected(inp))


def test_scans_that_cannot_be_planned_are_left_to_the_function(
    added: TableInfo, info: TableInfo
) -> None:
    location = added.metadata_location
    assert plan_metadata(location, added.snapshot_id, ["nope"], None) is None
    assert plan_metadata(location, added.snapshot_id, None, "nope > 1") is None
    assert plan_metadata(location, 12345, None, None) is None
    assert plan_metadata(location + ".missing", None, None, None) is None
    # Files with field ids of their own (written by the lakehouse itself): pyiceberg reads.
    assert plan_metadata(info.metadata_location, info.snapshot_id, None, None) is None
