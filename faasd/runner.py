"""The function process: ``python -m faasd.runner FD``.

One fresh process per function per run. It reads one FunctionTask frame from
the private socket its worker passed as file descriptor FD, loads the
function's inputs (memory-mapped Arrow objects, or Iceberg scans done here),
calls the user's function, writes the output once as an Arrow IPC file, and
answers with FunctionResult or Error. Everything the function prints goes to
this process's stdout/stderr, which the worker streams live.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

import msgspec

from protocol.framing import HEADER, MAX_CONTROL_FRAME, encode
from protocol.messages import (
    Error,
    FunctionResult,
    FunctionTask,
    ObjectInput,
    ScanInput,
    node_label,
)

_decoder = msgspec.msgpack.Decoder(FunctionTask)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise EOFError("worker closed the task channel")
        got += k
    return bytes(buf)


def _read_task(sock: socket.socket) -> FunctionTask:
    (size,) = HEADER.unpack(_recv_exactly(sock, HEADER.size))
    if size > MAX_CONTROL_FRAME:
        raise ValueError(f"task frame of {size} bytes exceeds {MAX_CONTROL_FRAME}")
    return _decoder.decode(_recv_exactly(sock, size))


def _find_function(task: FunctionTask) -> Any:
    sys.path.insert(0, task.project_dir)
    module = importlib.import_module(task.module)
    fn = getattr(module, task.function, None)
    if fn is None:
        raise LookupError(f"{task.module} has no function {task.function!r}")
    return fn


def _apply(table: Any, columns: list[str] | None, row_filter: str | None) -> Any:
    if row_filter:
        import duckdb

        with duckdb.connect() as con:
            con.register("t", table)
            table = con.sql(f"SELECT * FROM t WHERE ({row_filter})").to_arrow_table()
    if columns:
        table = table.select(columns)
    return table


class _ColumnReport:
    """What the column cache did for this function's scans, for its FunctionResult."""

    def __init__(self) -> None:
        self.cached: list[str] = []
        self.read: list[str] = []
        self.entries: dict[str, int] = {}


def _load_input(inp: ScanInput | ObjectInput, task: FunctionTask, report: _ColumnReport) -> Any:
    import pyarrow as pa

    if isinstance(inp, ScanInput):
        from faasd.columns import scan_cached

        table, stats = scan_cached(inp, Path(task.column_cache) if task.column_cache else None)
        report.cached += [f"{inp.key}.{c}" for c in stats.columns_cached]
        report.read += [f"{inp.key}.{c}" for c in stats.columns_read]
        report.entries.update(dict(stats.new_entries))
        return table
    path = task.objects[inp.object_id]
    # Memory-mapped: the table's buffers point into the shared file, nothing is copied.
    table = pa.ipc.open_file(pa.memory_map(path, "r")).read_all()
    return _apply(table, inp.columns, inp.filter)


def to_arrow(value: Any, node: str) -> Any:
    """Accept a pyarrow Table, a RecordBatchReader, pandas/polars DataFrames or a list of dicts."""
    import pyarrow as pa

    if isinstance(value, pa.Table):
        return value
    if isinstance(value, pa.RecordBatchReader):
        return value.read_all()
    if isinstance(value, pa.RecordBatch):
        return pa.Table.from_batches([value])
    if isinstance(value, list) and all(isinstance(r, dict) for r in value):
        return pa.Table.from_pylist(value)
    module = type(value).__module__.split(".")[0]
    if module == "pandas":
        return pa.Table.from_pandas(value, preserve_index=False)
    if module == "polars":
        return value.to_arrow()
    if hasattr(value, "to_arrow_table"):  # a DuckDB relation
        return value.to_arrow_table()
    if hasattr(value, "__arrow_c_stream__"):
        return pa.table(value)
    raise TypeError(
        f"model {node!r} returned {type(value).__name__}; return a pyarrow Table, a pandas or "
        f"polars DataFrame, or a list of dicts"
    )


def _write_output(table: Any, path: str) -> int:
    import pyarrow as pa

    tmp = f"{path}.{os.getpid()}.tmp"
    with pa.OSFile(tmp, "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    os.replace(tmp, path)  # readers never see a half-written object
    return os.path.getsize(path)


def run(task: FunctionTask) -> FunctionResult:
    report = _ColumnReport()
    inputs: dict[str, Any] = {inp.param: _load_input(inp, task, report) for inp in task.inputs}
    columns: dict[str, Any] = {
        "columns_cached": report.cached, "columns_read": report.read,
        "column_entries": report.entries,
    }
    if task.kind == "sql":
        from store.query import query_tables

        # Parameters are bound as values ($name), never pasted into the query.
        table = query_tables(task.sql, inputs, task.params)
    else:
        fn = _find_function(task)
        value = fn(**inputs, **task.params)
        if task.kind == "expectation":
            if not isinstance(value, bool):
                raise TypeError(
                    f"expectation {task.node!r} returned {type(value).__name__}; return True or False"
                )
            return FunctionResult(rows=0, nbytes=0, schema=b"", passed=value, **columns)
        table = to_arrow(value, task.node)
    nbytes = _write_output(table, task.output_path)
    return FunctionResult(
        rows=table.num_rows, nbytes=nbytes, schema=table.schema.serialize().to_pybytes(),
        **columns,
    )


def serve_task(sock_fd: int) -> int:
    """Read one task from the socket ``sock_fd``, run it, answer, close; return the exit code.

    The body of ``python -m faasd.runner FD``, and what a child forked by the
    zygote (faasd/zygote.py) calls once its stdio, cwd and environment are set.
    """
    sock = socket.socket(fileno=sock_fd)
    # force: a forked child inherits the zygote's logging setup, which must not be kept.
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    try:
        task = _read_task(sock)
    except Exception as exc:  # noqa: BLE001 - nothing to run; say why and stop
        print(f"faas runner: cannot read the task: {exc}", file=sys.stderr)
        return 2
    try:
        reply: FunctionResult | Error = run(task)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - user code may raise anything, even SystemExit
        tb = traceback.format_exc()
        reply = Error(
            kind="FunctionFailed",
            message=f"{node_label(task.kind)} {task.node!r} raised {type(exc).__name__}: {exc}",
            detail=tb,
        )
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    sock.sendall(encode(reply))
    sock.close()
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return serve_task(int(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
