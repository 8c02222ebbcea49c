"""Projection and filter pushdown are real: a narrower scan reads fewer bytes from storage.

Bytes are counted as the kernel hands them out: the ``rchar`` field of
``/proc/self/io`` (every byte returned by read/pread, whether it came from the
page cache or the disk), taken just before and just after one scan. Each scan
runs in a fresh interpreter that first scans another small table with a
projection and a filter, so the lazy imports and parser set-up that the first
scan of a process triggers are not counted against either side.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from faas.store import Lakehouse, TableInfo
from tests.conftest import ROOT, Cluster

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io"),
]


WIDE_ROWS = 200_000
WIDE_COLUMNS = 40
PROJECTED = ["c7", "c2", "c30"]  # a float, a string and an int, out of schema order
PARTS = 4
PART_ROWS = 50_000

# Runs in a fresh interpreter: argv[1] is a JSON job; prints the bytes read by the scan.
SCAN_CHILD = r"""
import json, sys
import pyarrow as pa
from faas.store.scan import scan_metadata

def rchar():
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")

job = json.loads(sys.argv[1])
scan_metadata(job["warmup"], columns=["a"], row_filter="a > 0")
before = rchar()
table = scan_metadata(job["location"], columns=job["columns"], row_filter=job["filter"])
read = rchar() - before
with pa.OSFile(job["out"], "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
    w.write_table(table)
print(json.dumps({"bytes": read}))
"""


def _column(i: int, rows: int, seed: int) -> pa.Array:
    """Random values, so column chunks are not compressed away: float, int or string."""
    r = pc.random(rows, initializer=seed)
    if i % 3 == 0:
        return r
    ints = pc.cast(pc.floor(pc.multiply(r, 2.0**53)), pa.int64())
    if i % 3 == 1:
        return ints
    return pc.binary_join_element_wise("v", pc.cast(pc.divide(ints, 2**33), pa.string()), "")


def _write(lake: Lakehouse, key: str, data: pa.Table, mode: str = "replace") -> None:
    transaction = lake.begin()
    transaction.write(key, data, mode)  # type: ignore[arg-type]
    transaction.publish(f"write {key}")


class Tables:
    def __init__(self, home: Path) -> None:
        self.home = home
        lake = Lakehouse(home)
        try:
            lake.create_namespace("pd")
            _write(lake, "pd.warmup", pa.table({"a": [1, 2, 3]}))
            self.wide = pa.table(
                {f"c{i}": _column(i, WIDE_ROWS, seed=i) for i in range(WIDE_COLUMNS)}
            )
            _write(lake, "pd.wide", self.wide)
            # One append per disjoint range of k: one data file each, with its own min/max of k.
            for part in range(PARTS):
                start = part * PART_ROWS
                columns = {"k": pa.array(range(start, start + PART_ROWS), pa.int64())}
                columns |= {f"x{i}": _column(0, PART_ROWS, seed=100 * part + i) for i in range(10)}
                _write(lake, "pd.parts", pa.table(columns), "append")
            self.warmup = lake.table_info("pd.warmup")
            self.wide_info = lake.table_info("pd.wide")
            self.parts_info = lake.table_info("pd.parts")
        finally:
            lake.close()

    def scan(
        self, info: TableInfo, columns: list[str] | None = None, row_filter: str | None = None
    ) -> tuple[int, pa.Table]:
        """Bytes read by one scan in a fresh process, and what it returned."""
        out = self.home / "scan.arrow"
        job = {
            "warmup": self.warmup.metadata_location, "location": info.metadata_location,
            "columns": columns, "filter": row_filter, "out": str(out),
        }
        proc = subprocess.run(
            [sys.executable, "-c", SCAN_CHILD, json.dumps(job)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        read = json.loads(proc.stdout.strip().splitlines()[-1])["bytes"]
        with pa.memory_map(str(out)) as source:
            table = pa.ipc.open_file(source).read_all()
        return read, table


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tables]:
    yield Tables(tmp_path_factory.mktemp("pushdown"))


def test_projected_scan_reads_a_fraction_of_the_bytes(tables: Tables) -> None:
    full_bytes, full = tables.scan(tables.wide_info)
    projected_bytes, projected = tables.scan(tables.wide_info, columns=PROJECTED)

    # The counter sees the data: a full scan reads at least every data file once.
    assert tables.wide_info.file_count == 1
    assert full_bytes >= tables.wide_info.size_bytes
    assert full.num_columns == WIDE_COLUMNS and full.num_rows == WIDE_ROWS
    # 3 of 40 columns: about 3/40 of the column chunks, plus metadata and footer.
    assert projected_bytes < 0.25 * full_bytes, (projected_bytes, full_bytes)

    assert projected.column_names == PROJECTED
    assert projected.num_rows == WIDE_ROWS
    for name in PROJECTED:
        assert projected.column(name).equals(tables.wide.column(name)), name


def test_filter_on_a_sorted_column_skips_data_files(tables: Tables) -> None:
    assert tables.parts_info.file_count == PARTS
    full_bytes, full = tables.scan(tables.parts_info)
    last = (PARTS - 1) * PART_ROWS
    filtered_bytes, filtered = tables.scan(tables.parts_info, row_filter=f"k >= {last}")

    assert full.num_rows == PARTS * PART_ROWS
    assert full_bytes >= tables.parts_info.size_bytes
    # Only the last file's min/max of k can match: the other three are never opened.
    assert filtered_bytes < 0.5 * full_bytes, (filtered_bytes, full_bytes)
    assert sorted(filtered.column("k").to_pylist()) == list(range(last, PARTS * PART_ROWS))


def _model_logs(result: dict[str, Any], node: str) -> dict[str, int]:
    """The ``name=value`` pairs a model printed, from the run's streamed log lines."""
    pairs = {}
    for entry in result["logs"]:
        if entry["node"] == node and "=" in entry["line"]:
            name, value = entry["line"].strip().split("=", 1)
            pairs[name] = int(value)
    return pairs


NARROW = '''
import faas

@faas.model()
def narrow(t=faas.Model("wide", columns=["c1"])):
    print(f"columns={len(t.column_names)}")
    return t
'''

FULL = '''
import faas

@faas.model()
def full(t=faas.Model("wide")):
    print(f"columns={len(t.column_names)}")
    return t.select(["c1"])
'''


def _rchar(pid: int) -> int:
    """Bytes process ``pid`` and its processes have read (from files, sockets and pipes
    alike): a process's count holds those of the children it has reaped, so a worker's
    holds its function processes' once their zygotes have reaped them."""
    import psutil

    total = 0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            with open(f"/proc/{proc.pid}/io") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
        except (OSError, psutil.Error):
            pass  # gone meanwhile: its reaper counts it
    return total


def test_run_scans_only_the_columns_a_model_asks_for(cluster: Cluster, tmp_path: Path) -> None:
    columns, rows = 40, 20_000
    header = ",".join(f"c{i}" for i in range(columns))
    data = pa.table({f"c{i}": pc.random(rows, initializer=i) for i in range(columns)})
    body = "\n".join(",".join(repr(v) for v in row.values()) for row in data.to_pylist())
    csv = tmp_path / "wide.csv"
    csv.write_text(header + "\n" + body + "\n")
    cluster.faas("namespace", "create", "pd", check=True)
    info = json.loads(
        cluster.faas("table", "import", "pd.wide", str(csv), "--json", check=True).stdout
    )
    (worker,) = cluster.workers

    def read_by_worker(source: str, name: str) -> tuple[int, dict[str, int]]:
        """Run a one-model project without the cache: the worker hands the function the
        table's data file and the function reads what its scan needs of it, so the bytes
        the worker and its processes read differ by the scan's."""
        project = tmp_path / name
        project.mkdir()
        (project / "models.py").write_text(source)
        before = _rchar(worker.pid)
        proc = cluster.faas("submit", str(project), "--namespace", "pd", "--json", "--no-cache",
                            timeout=60)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["status"] == "success", result["error"]
        return _rchar(worker.pid) - before, _model_logs(result, name)

    # The first run also reads what the worker loads once (modules, the table's metadata).
    read_by_worker(NARROW.replace("narrow", "warm_up"), "warm_up")
    narrow_read, narrow = read_by_worker(NARROW, "narrow")
    full_read, full = read_by_worker(FULL, "full")
    assert narrow["columns"] == 1
    assert full["columns"] == columns
    # Both runs go alike; only the scan differs. The narrow one skips 39 of the 40 column
    # chunks, so reads most of the data file less.
    assert full_read - narrow_read > 0.8 * info["bytes"], (narrow_read, full_read, info)
