"""Shared by the object store tests: a store under tmp_path and Arrow files written into it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from faas.faasd.objects import ObjectStore

MiB = 2**20


def make_store(tmp_path: Path, budget: int, spill_budget: int | None = None) -> ObjectStore:
    return ObjectStore(tmp_path / "shm", tmp_path / "spill", budget, spill_budget)


def table_of(nbytes: int, seed: int) -> pa.Table:
    n = nbytes // 8
    return pa.table({"x": pa.array(range(seed * n, (seed + 1) * n), pa.int64())})


def write_object(store: ObjectStore, name: str, nbytes: int = MiB, seed: int = 0) -> pa.Table:
    """Write an Arrow IPC file of about ``nbytes`` where the store expects object ``name``."""
    table = table_of(nbytes, seed)
    with pa.ipc.new_file(str(store.path(name)), table.schema) as writer:
        writer.write_table(table)
    return table


def add_object(
    store: ObjectStore, name: str, run_id: str | None, nbytes: int = MiB, seed: int = 0,
    cacheable: bool = True,
) -> pa.Table:
    table = write_object(store, name, nbytes, seed)
    store.add(
        name, run_id, rows=table.num_rows, schema=table.schema.serialize().to_pybytes(),
        cacheable=cacheable,
    )
    return table


def read_table(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        # Copy out of the map so nothing refers to it once it is closed.
        return pa.ipc.open_file(source).read_all().combine_chunks()


def size(path: Path) -> int:
    return path.stat().st_size


def spill_file(store: ObjectStore, name: str) -> Path:
    return store.spill_dir / f"{name}.arrow"


def column_name(i: int) -> str:
    return f"col-{i:032x}.arrow"


def write_column(store: ObjectStore, name: str, nbytes: int = MiB) -> int:
    path = store.columns_dir / name
    path.write_bytes(b"\0" * nbytes)
    return nbytes
