"""For bench.exchange: the tables it moves, what its child processes run, and timing summaries."""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

CTX = mp.get_context("spawn")


# -- helpers that run in child processes ------------------------------------------------


def make_table(nbytes: int, seed: int) -> Any:
    """About ``nbytes`` of Arrow: int64 id and key, float64 amount, a string order number."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = nbytes // 38  # 8 + 8 + 8 + 10 characters + a 4-byte offset
    ones = pa.repeat(pa.scalar(1, pa.int64()), rows)
    numbers = pc.cast(pc.floor(pc.multiply(pc.random(rows, initializer=seed + 2), 9e7)), pa.int64())
    return pa.table({
        "id": pc.subtract(pc.cumulative_sum(ones), 1),
        "key": pc.cast(pc.floor(pc.multiply(pc.random(rows, initializer=seed), 1000)), pa.int64()),
        "amount": pc.round(pc.multiply(pc.random(rows, initializer=seed + 1), 1000), 2),
        "order_number": pc.binary_join_element_wise(
            "SO", pc.cast(pc.add(numbers, 10_000_000), pa.string()), ""
        ),
    })


def touch_all(table: Any) -> int:
    """Read every byte of every buffer (summed as int64 words): all pages are faulted in."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = 0
    for column in table.columns:
        for chunk in column.chunks:
            for buf in chunk.buffers():
                if buf is None or buf.size < 8:
                    continue
                words = pa.Array.from_buffers(pa.int64(), buf.size // 8, [None, buf])
                total += pc.sum(words).as_py() or 0
    return total


def load_heap(path: str) -> Any:
    """A table in the process's own memory (what a function holds before returning it)."""
    import pyarrow as pa

    with pa.OSFile(path, "rb") as f:
        return pa.ipc.open_file(f).read_all()


def child_generate(path: str, nbytes: int, seed: int) -> dict[str, int]:
    from faas.faasd.runner import write_output

    table = make_table(nbytes, seed)
    write_output(table, path)
    return {"rows": table.num_rows, "table_bytes": table.nbytes}


def child_produce(kind: str, source: str, dest: str) -> dict[str, float]:
    """Load the source table into the heap (not timed), then write it as ``kind`` (timed)."""
    from faas.faasd.runner import write_output
    from faas.store.files import write_parquet

    table = load_heap(source)
    t0 = time.perf_counter()
    if kind == "faas":
        write_output(table, dest)
    else:
        write_parquet(table, str(Path(dest).parent), Path(dest).name)
    return {"write_s": time.perf_counter() - t0, "file_bytes": os.path.getsize(dest)}


def read_table(kind: str, path: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind == "faas":  # as faasd.runner._load_input does
        return pa.ipc.open_file(pa.memory_map(path, "r")).read_all()
    return pq.read_table(path)


def child_consume(kind: str, path: str) -> dict[str, float]:
    import pyarrow.parquet  # noqa: F401  (imported before timing, as a function env would)

    t0 = time.perf_counter()
    table = read_table(kind, path)
    t1 = time.perf_counter()
    touch_all(table)
    t2 = time.perf_counter()
    return {"open_s": t1 - t0, "touch_s": t2 - t1, "read_s": t2 - t0, "rows": table.num_rows}


def _child_main(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the bench
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def in_child(fn: Callable[..., Any], *args: Any, timeout: float = 300) -> Any:
    """Run ``fn(*args)`` in a fresh spawned process and return what it returned."""
    parent, child = CTX.Pipe(duplex=False)
    proc = CTX.Process(target=_child_main, args=(child, fn, args))
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise RuntimeError(f"{fn.__name__} took more than {timeout}s")
        status, value = parent.recv()
    except EOFError:
        raise RuntimeError(f"{fn.__name__} died with exit code {proc.join(5) or proc.exitcode}") from None
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__} failed in its process:\n{value}")
    return value


def stats(values: list[float], digits: int = 4) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}
