"""The scans a worker reads for its functions (faasd.scans): files, streams through FIFOs,
and a scan that breaks midway never reads as a shorter table."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from faas.faasd.runner import InputProblem, _read_scan
from faas.faasd.scans import StreamWriter, read_scans
from faas.protocol.errors import StorageError
from faas.protocol.messages import ScanInput
from faas.store import Lakehouse, write_parquet
from faas.store.scan import open_metadata, plan_metadata, read_plan
from tests.conftest import OpenLake

SCHEMA = pa.schema([("n", pa.int64())])


def _batches(count: int, fail_after: int | None = None) -> Iterator[pa.RecordBatch]:
    for i in range(count):
        if fail_after is not None and i == fail_after:
            raise OSError("the data file vanished")
        yield pa.record_batch([pa.array(range(i * 100, (i + 1) * 100))], schema=SCHEMA)


def _stream(tmp_path: Path, batches: Iterator[pa.RecordBatch]) -> StreamWriter:
    fifo = tmp_path / "stream-0"
    os.mkfifo(fifo, 0o600)
    writer = StreamWriter(pa.RecordBatchReader.from_batches(SCHEMA, batches), fifo, "shop.t")
    writer.start()
    return writer


def test_a_stream_carries_every_batch(tmp_path: Path) -> None:
    writer = _stream(tmp_path, _batches(50))
    with open(tmp_path / "stream-0", "rb") as f:
        table = pa.ipc.open_stream(f).read_all()
    writer.close()
    assert table.column("n").to_pylist() == list(range(5000))
    assert writer.error is None


def test_a_scan_that_fails_midway_breaks_the_stream(tmp_path: Path) -> None:
    """The reader gets an error, never a clean end after the batches that came; the writer
    keeps the scan's error for the task."""
    writer = _stream(tmp_path, _batches(50, fail_after=3))
    got: list[int] = []
    with open(tmp_path / "stream-0", "rb") as f, pytest.raises(pa.ArrowInvalid):
        for batch in pa.ipc.open_stream(f):
            got.append(batch.num_rows)
    writer.close()
    assert got == [100, 100, 100]
    assert isinstance(writer.error, StorageError)
    assert str(writer.error) == "cannot read table shop.t: the data file vanished"


def test_a_stream_nobody_reads_or_one_left_early_ends_with_the_task(tmp_path: Path) -> None:
    unread = _stream(tmp_path, _batches(10))
    unread.close()  # the function never opened it
    assert unread.error is None

    early = tmp_path / "early"
    early.mkdir()
    left = _stream(early, _batches(100_000))  # far more than the pipe holds
    with open(early / "stream-0", "rb") as f:
        first = pa.ipc.open_stream(f).read_next_batch()
    assert first.num_rows == 100
    done = threading.Event()
    threading.Thread(target=lambda: (left.close(), done.set()), daemon=True).start()
    assert done.wait(10), "the writer did not end after its reader left"
    assert left.error is None


def test_read_scans_writes_files_streams_and_problems(
    tmp_path: Path, open_lake: OpenLake
) -> None:
    """Without the cache: a whole scan becomes an IPC file with only its columns and rows,
    a streamed one a FIFO, and a column the table lacks a problem for the function to say."""
    lake: Lakehouse = open_lake("shop")
    tx = lake.begin("main")
    tx.write("shop.t", pa.table({"a": list(range(1000)), "b": [str(i) for i in range(1000)]}))
    tx.publish("t")
    info = lake.table_info("shop.t", "main")

    def scan(param: str, **kw: Any) -> ScanInput:
        return ScanInput(param=param, key="shop.t", metadata_location=info.metadata_location,
                         snapshot_id=info.snapshot_id, **kw)

    inbox = tmp_path / "in"
    inbox.mkdir()
    inputs = [scan("whole", columns=["b"], filter="a >= 990"), scan("streamed", stream=True),
              scan("wrong", columns=["nope"])]
    scans = read_scans(inputs, inbox, plan=lambda i: i, metadata=open_metadata, cache_dir=None,
                       link=None)
    try:
        assert set(scans.files) == {"whole", "streamed"}
        whole = pa.ipc.open_file(pa.memory_map(scans.files["whole"])).read_all()
        assert whole.column_names == ["b"]
        assert sorted(whole.column("b").to_pylist()) == [str(i) for i in range(990, 1000)]
        assert "'nope'" in scans.problems["wrong"] and "shop.t" in scans.problems["wrong"]
        assert info.metadata_location not in scans.problems["wrong"]
        for stream in scans.streams:
            stream.start()
        with open(scans.files["streamed"], "rb") as f:
            assert pa.ipc.open_stream(f).read_all().num_rows == 1000
    finally:
        scans.close()
    assert scans.failure() is None


def test_a_cache_entry_gone_before_its_link_is_read_for_the_function(
    tmp_path: Path, open_lake: OpenLake
) -> None:
    """Another task's need for memory may evict a cache entry between its prefetch and its
    link into this task's in/: the worker then reads that scan for the function itself."""
    lake: Lakehouse = open_lake("shop")
    # Added as files, as a worker's import does: a table Arrow's planner reads.
    data = pa.table({"a": list(range(100))})
    tx = lake.begin("main")
    tx.add_files("shop.t", [write_parquet(data, tx.data_location("shop.t"), "part-0")], data.schema)
    tx.publish("t")
    info = lake.table_info("shop.t", "main")
    scan = ScanInput(param="t", key="shop.t", metadata_location=info.metadata_location,
                     snapshot_id=info.snapshot_id, columns=["a"])
    cache, inbox = tmp_path / "columns", tmp_path / "in"
    cache.mkdir()
    inbox.mkdir()

    def plan(i: ScanInput) -> ScanInput:
        found = plan_metadata(i.metadata_location, i.snapshot_id, i.columns, i.filter)
        return msgspec.structs.replace(i, plan=found)

    went: list[str] = []

    def evicted(entry: Path) -> Path:
        went.append(entry.name)
        entry.unlink()
        raise FileNotFoundError(2, "No such file or directory", str(entry))

    scans = read_scans([scan], inbox, plan=plan, metadata=open_metadata, cache_dir=cache,
                       link=evicted)
    assert len(went) == 1  # the entry was made, then went before its link
    table = _read_scan(scans.inputs[0], scans.files["t"])
    assert table.column("a").to_pylist() == list(range(100))
    assert scans.read == {"shop.t": ["shop.t.a"]}


def _planned_table(open_lake: OpenLake, parts: int) -> tuple[ScanInput, list[pa.Table]]:
    """shop.t made of ``parts`` data files added as a worker's import adds them, and a
    planned scan of it (columns b, a; a filter on a)."""
    lake: Lakehouse = open_lake("shop")
    tx = lake.begin("main")
    tables = [pa.table({"a": list(range(k * 100, (k + 1) * 100)),
                        "b": [f"r{i}" for i in range(k * 100, (k + 1) * 100)]}) for k in range(parts)]
    files = [write_parquet(t, tx.data_location("shop.t"), f"part-{k}") for k, t in enumerate(tables)]
    tx.add_files("shop.t", files, tables[0].schema)
    tx.publish("t")
    info = lake.table_info("shop.t", "main")
    scan = ScanInput(param="t", key="shop.t", metadata_location=info.metadata_location,
                     snapshot_id=info.snapshot_id, columns=["b", "a"], filter="a >= 150")
    plan = plan_metadata(scan.metadata_location, scan.snapshot_id, scan.columns, scan.filter)
    assert plan is not None
    return msgspec.structs.replace(scan, plan=plan), tables


def test_a_planned_scan_without_the_cache_hands_the_function_its_data_files(
    tmp_path: Path, open_lake: OpenLake
) -> None:
    """--no-cache, a local warehouse: the worker decodes nothing and copies nothing. It
    names the planned data files in a directory of ``in/``, in the plan's order: links
    without a sandbox; in one, empty mount points the sandbox binds each file on. The
    function reads them with the plan's columns and filter, and gets what the worker's own
    read of the plan gives."""
    scan, _ = _planned_table(open_lake, parts=3)
    # The first file holds no row the filter keeps: the plan left it out.
    sources = [Path(f.removeprefix("file://")) for f in scan.plan.files]  # type: ignore[union-attr]
    assert [p.name for p in sources] == ["part-1.parquet", "part-2.parquet"]
    names = ["000000.parquet", "000001.parquet"]

    plain = tmp_path / "plain"
    plain.mkdir()
    scans = read_scans([scan], plain, plan=lambda i: i, metadata=open_metadata, cache_dir=None,
                       link=None)
    placed = Path(scans.files["t"])
    assert placed.parent == plain and sorted(os.listdir(placed)) == names
    assert [(placed / n).resolve() for n in names] == [p.resolve() for p in sources]
    assert scans.binds == {}
    assert scans.read == {"shop.t": ["shop.t.b", "shop.t.a"]}
    table = _read_scan(scans.inputs[0], str(placed))
    assert table.column_names == ["b", "a"]
    assert table.column("a").to_pylist() == list(range(150, 300))
    assert table.equals(read_plan(scan.plan))  # type: ignore[arg-type]

    boxed = tmp_path / "boxed"
    boxed.mkdir()
    scans = read_scans([scan], boxed, plan=lambda i: i, metadata=open_metadata, cache_dir=None,
                       link=None, sandboxed=True)
    placed = Path(scans.files["t"])
    assert sorted(os.listdir(placed)) == names
    assert all((placed / n).stat().st_size == 0 and not (placed / n).is_symlink() for n in names)
    assert scans.binds == {str(placed / n): str(p) for n, p in zip(names, sources, strict=True)}


def _read_by_the_worker(scan: ScanInput, tmp_path: Path) -> pa.Table:
    """Read ``scan`` for a sandboxed function, checking that the worker read it into an
    IPC file (nothing handed over); the table the function then gets."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    scans = read_scans([scan], inbox, plan=lambda i: i, metadata=open_metadata, cache_dir=None,
                       link=None, sandboxed=True)
    assert scans.binds == {} and scans.files == {"t": str(inbox / "scan-0.arrow")}
    return _read_scan(scans.inputs[0], scans.files["t"])


def test_data_files_unlike_the_plan_are_read_by_the_worker(
    tmp_path: Path, open_lake: OpenLake
) -> None:
    """A data file unlike what the plan expects (here, a column of a narrower type, as an
    append before the column was widened leaves it) is not handed over: the worker reads
    the scan with pyiceberg, which promotes it, into an IPC file."""
    scan, tables = _planned_table(open_lake, parts=2)
    source = Path(scan.plan.files[-1].removeprefix("file://"))  # type: ignore[union-attr]
    narrower = tables[-1].set_column(0, "a", pa.array(range(100, 200), pa.int32()))
    pq.write_table(narrower, source)
    table = _read_by_the_worker(scan, tmp_path)
    assert table.column("a").type == pa.int64()
    assert sorted(table.column("a").to_pylist()) == list(range(150, 200))


def test_a_scan_of_more_files_than_a_sandbox_binds_is_read_by_the_worker(
    tmp_path: Path, open_lake: OpenLake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each data file handed over is a bind in the function's sandbox: past
    MAX_HANDED_FILES the worker reads the scan into an IPC file instead, with the same rows."""
    scan, _ = _planned_table(open_lake, parts=3)
    monkeypatch.setattr("faas.faasd.scans.MAX_HANDED_FILES", 1)
    table = _read_by_the_worker(scan, tmp_path)
    assert table.equals(read_plan(scan.plan))  # type: ignore[arg-type]


def test_handed_files_that_no_longer_match_the_plan_are_one_line_for_the_function(
    tmp_path: Path, open_lake: OpenLake
) -> None:
    """The worker checked the files before handing them over; should one still not be what
    the plan expects when the function reads it, the function says so in one line naming
    the input and the table, and reads nothing else in its place."""
    scan, tables = _planned_table(open_lake, parts=2)
    placed = tmp_path / "scan-0"
    placed.mkdir()
    for k, table in enumerate(tables):
        if k:  # the data file kept by the plan, with a column of another type
            pq.write_table(table.set_column(1, "b", pa.array(range(100))), placed / "000000.parquet")
    with pytest.raises(InputProblem) as caught:
        _read_scan(scan, str(placed))
    assert str(caught.value) == ("input 't' cannot read table shop.t: its data files are not "
                                 "what the scan plan expects")
