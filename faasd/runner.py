"""The function process: ``python -m faas.faasd.runner FD``.

One fresh process per function per run. It reads one FunctionTask frame from
the private socket its worker passed as file descriptor FD, loads the
function's inputs (memory-mapped Arrow objects, or Iceberg scans done here),
calls the user's function, writes the output once as an Arrow IPC file, and
answers with FunctionResult or Error. Everything the function prints goes to
this process's stdout/stderr, which the worker streams live.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from faas.faasd.contracts import ContractBroken, check_returned
from faas.protocol.framing import encode, recv_frame_blocking
from faas.protocol.messages import Error, InputRead, ObjectInput, ScanInput, node_label
from faas.protocol.worker_messages import FunctionResult, FunctionTask, TaskObjects

_decoder = msgspec.msgpack.Decoder(FunctionTask)
_objects_decoder = msgspec.msgpack.Decoder(TaskObjects)


def _read_task(sock: socket.socket) -> FunctionTask:
    return recv_frame_blocking(sock, _decoder)


def _objects_from(sock: socket.socket) -> Callable[[], dict[str, str]]:
    """What the function calls to wait for its waiting objects' paths (a TaskObjects
    frame the worker sends once their upstream functions have made them)."""

    def wait() -> dict[str, str]:
        from faas.protocol.errors import FaasError

        try:
            return recv_frame_blocking(sock, _objects_decoder).objects
        except FaasError as exc:  # the worker went away, or sent something else
            raise InputProblem(f"the inputs of upstream functions never came: {exc}") from None

    return wait


class BadReturn(TypeError):
    """The function returned something faas cannot use (said without the node's name)."""


class InputProblem(Exception):
    """An input could not be given to the function as asked (said without the node's name)."""


def _relative(filename: str, task: FunctionTask) -> str | None:
    """``filename`` relative to the project, or None if it is not one of the project's."""
    try:
        rel = os.path.relpath(os.path.realpath(filename), os.path.realpath(task.project_dir))
    except ValueError:
        return None
    return None if rel.startswith("..") else rel


def _definition(task: FunctionTask) -> str:
    """Where the node is defined, as the planner says it: ``models.py:12`` (the ``def``
    line, found in the source with ``ast``: nothing is imported) or ``pricey.sql:1``."""
    import ast

    rel = task.module.replace(".", "/") + (".sql" if task.kind == "sql" else ".py")
    if task.kind == "sql":
        return f"{rel}:1"
    try:
        tree = ast.parse(Path(task.project_dir, rel).read_text())
    except (OSError, SyntaxError, ValueError):
        return rel
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == task.function:
            return f"{rel}:{node.lineno}"
    return rel


def describe_failure(task: FunctionTask, exc: BaseException) -> tuple[str, str]:
    """The one line that says what went wrong, in the user's terms (the node, its file and
    line), and the traceback of the user's own frames (project-relative; none of faas's)."""
    from faas.store.query import SQLError

    label = f"{node_label(task.kind)} {task.node!r}"
    project = os.path.realpath(task.project_dir) + os.sep

    def clean(text: str) -> str:
        return text.replace(project, "").replace(task.project_dir + os.sep, "")

    if task.kind == "sql" and isinstance(exc, SQLError):
        where = f"{task.module.replace('.', '/')}.sql:{exc.line or 1}"
        return clean(f"{label} ({where}): {exc}"), ""
    if isinstance(exc, (BadReturn, ContractBroken)):
        return clean(f"{label} ({_definition(task)}) {exc}"), ""
    if isinstance(exc, InputProblem):
        return clean(f"{label} ({_definition(task)}): {exc}"), ""
    frames = [
        (rel, f) for f in traceback.extract_tb(exc.__traceback__)
        if (rel := _relative(f.filename, task)) is not None
    ]
    where = f"{frames[-1][0]}:{frames[-1][1].lineno}" if frames else _definition(task)
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    detail = ""
    if frames:
        lines = ["Traceback (most recent call last):"]
        for rel, f in frames:
            lines.append(f'  File "{rel}", line {f.lineno}, in {f.name}')
            if f.line:
                lines.append(f"    {f.line.strip()}")
        lines += [ln.rstrip("\n") for ln in traceback.format_exception_only(type(exc), exc)]
        detail = clean("\n".join(lines))
    return clean(f"{label} ({where}) raised {what}"), detail


def _find_function(task: FunctionTask) -> Any:
    sys.path.insert(0, task.project_dir)
    # Last: other SDKs' modules (import bauplan) for projects written with them.
    from faas import compat

    sys.path.append(os.path.dirname(compat.__file__))
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
        self.inputs: list[InputRead] = []


def _load_input(inp: ScanInput | ObjectInput, task: FunctionTask, report: _ColumnReport) -> Any:
    t0 = time.perf_counter()
    if isinstance(inp, ScanInput) and inp.param in task.input_problems:
        said = task.input_problems[inp.param]
        raise InputProblem(f"input {inp.param!r} cannot read table {inp.key}: {said}")
    if inp.stream:
        return _open_stream(inp, task, report, t0)
    if isinstance(inp, ScanInput):
        if task.kind == "sql" and os.path.isdir(task.scans.get(inp.param, "")):
            from faas.faasd import handed

            # Its data files, which the model's DuckDB reads itself as it runs.
            view = handed.view(inp, task.scans[inp.param])
            if view is not None:
                report.inputs.append(InputRead(
                    param=inp.param, source="scan", name=inp.key,
                    seconds=time.perf_counter() - t0, streamed=True,
                ))
                return view
        if inp.param in task.scans:  # handed over by the worker: its data files, or the rows
            table = _read_scan(inp, task.scans[inp.param])
        else:  # the worker made its columns cache entries
            from faas.faasd.columns import scan_cached

            table, stats = scan_cached(inp, Path(task.column_cache))
            report.cached += [f"{inp.key}.{c}" for c in stats.columns_cached]
            report.read += [f"{inp.key}.{c}" for c in stats.columns_read]
        source, name = "scan", inp.key
    else:
        table = _mapped(inp, task)
        source, name = "object", inp.node
    report.inputs.append(InputRead(
        param=inp.param, source=source, name=name, seconds=time.perf_counter() - t0,
        rows=table.num_rows, nbytes=table.nbytes,
    ))
    return table


# Shared locks on the objects this process maps, held until it exits: the worker never
# reuses the pages of an object that a live process may still read (faasd.objects.hold).
_held: list[int] = []


def _mapped(inp: ObjectInput, task: FunctionTask) -> Any:
    """An upstream object, memory-mapped: the table's buffers point into the shared file,
    nothing is copied (unless the input's filter or columns make a new table)."""
    from faas.faasd.objects import hold

    path = task.objects[inp.object_id]
    _held.append(hold(path))
    table = _map(path)
    missing = [c for c in inp.columns or () if c not in table.column_names]
    if missing:
        raise InputProblem(
            f"input {inp.param!r} asks for column {missing[0]!r}, which model {inp.node!r} "
            f"does not have (it has: {', '.join(table.column_names)})"
        )
    try:
        return _apply(table, inp.columns, inp.filter)
    except Exception as exc:  # noqa: BLE001 - DuckDB's or Arrow's words, on one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputProblem(
            f"input {inp.param!r} cannot filter model {inp.node!r} with {inp.filter!r}: {first}"
        ) from None


def _read_scan(inp: ScanInput, path: str) -> Any:
    """A scan the worker handed over: the planned data files it put in a directory of
    ``in/``, decoded here on every core of the function's budget, with the plan's
    projection and filter (faasd.handed); or the rows it read itself, in an Arrow IPC file,
    mapped."""
    if not os.path.isdir(path):
        return _map(path)
    from faas.faasd import handed

    return _checked(inp, handed.read(inp, path))


def _checked(inp: ScanInput, read: Any) -> Any:
    if read is None:  # the worker checked the files against the plan
        raise InputProblem(f"input {inp.param!r} cannot read table {inp.key}: its data files "
                           "are not what the scan plan expects")
    return read


def _map(path: str) -> Any:
    """The Arrow IPC file at ``path`` as a table whose buffers are the file's pages."""
    import pyarrow as pa

    return pa.ipc.open_file(pa.memory_map(path, "r")).read_all()


def _open_stream(
    inp: ScanInput | ObjectInput, task: FunctionTask, report: _ColumnReport, t0: float
) -> Any:
    """An input as a RecordBatchReader (faas.Model(stream=True)): a source scan's batches,
    decoded here from its handed data files or as the worker reads them (through a FIFO:
    nothing is held to keep), or an upstream object's batches, mapped."""
    import pyarrow as pa

    if isinstance(inp, ScanInput):
        path = task.scans[inp.param]
        if os.path.isdir(path):  # its data files: decoded as it is read (faasd.handed)
            from faas.faasd import handed

            reader = _checked(inp, handed.stream(inp, path))
        else:  # a FIFO the worker writes the scan's batches into
            reader = pa.ipc.open_stream(open(path, "rb"))  # noqa: SIM115 - the reader owns it
        source, name = "scan", inp.key
    else:
        table = _mapped(inp, task)
        reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
        source, name = "object", inp.node
    # Rows and bytes are not known before the function reads them.
    report.inputs.append(InputRead(param=inp.param, source=source, name=name,
                                   seconds=time.perf_counter() - t0, streamed=True))
    return reader


def as_arrow(value: Any, node: str) -> Any:
    """What a model returned, as a pyarrow Table or, for anything that streams, a
    RecordBatchReader (never read whole here: it is written batch by batch).

    Accepted: a pyarrow Table, RecordBatch or RecordBatchReader, a DuckDB relation, pandas
    or polars DataFrames, a list of dicts, or anything with ``__arrow_c_stream__``."""
    import pyarrow as pa

    if isinstance(value, (pa.Table, pa.RecordBatchReader)):
        return value
    if isinstance(value, pa.RecordBatch):
        return pa.Table.from_batches([value])
    if isinstance(value, list) and all(isinstance(r, dict) for r in value):
        return pa.Table.from_pylist(value)
    module = type(value).__module__.split(".")[0]
    if module == "pandas":
        return pa.Table.from_pandas(value, preserve_index=False)
    if module == "polars":
        return value.to_arrow()
    if hasattr(value, "to_arrow_reader"):  # a DuckDB relation: stream its result
        return value.to_arrow_reader()
    if hasattr(value, "fetch_record_batch"):  # the same, from DuckDB before 1.4
        return value.fetch_record_batch()
    if hasattr(value, "__arrow_c_stream__"):
        return pa.RecordBatchReader.from_stream(value)
    raise BadReturn(
        f"returned {'None' if value is None else type(value).__name__}, expected a table (a "
        f"pyarrow Table or RecordBatchReader, a DuckDB relation, a pandas or polars DataFrame, "
        f"or a list of dicts)"
    )


def write_output(value: Any, path: str) -> tuple[int, int, Any]:
    """Write a Table or a RecordBatchReader once, as the Arrow IPC file at ``path``;
    return its rows, bytes and schema.

    A reader is written batch by batch as it yields, so the whole result is never held
    in this process as well as in shared memory. The file appears only when complete:
    a reader that raises halfway leaves nothing behind, and the error is the user's."""
    import pyarrow as pa

    tmp = f"{path}.{os.getpid()}.tmp"
    rows = 0
    try:
        with pa.OSFile(tmp, "wb") as sink:
            with pa.ipc.new_file(sink, value.schema) as writer:
                if isinstance(value, pa.Table):
                    writer.write_table(value)
                    rows = value.num_rows
                else:
                    for batch in value:
                        writer.write_batch(batch)
                        rows += batch.num_rows
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.replace(tmp, path)  # readers never see a half-written object
    return rows, os.path.getsize(path), value.schema


# What the usual engines read, when they start, for the size of their thread pools.
_THREAD_VARIABLES = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_MAX_THREADS",
    "POLARS_MAX_THREADS", "RAYON_NUM_THREADS",
)


def limit_threads(n: int) -> None:
    """Give the function's engines a budget of ``n`` threads (its reserved cores, or the
    worker's unreserved ones): Arrow's CPU pool, every DuckDB connection the function
    opens (unless it sets ``threads`` itself), Polars, OpenMP and BLAS."""
    import pyarrow as pa

    for name in _THREAD_VARIABLES:
        os.environ[name] = str(n)
    pa.set_cpu_count(n)
    if "duckdb" in sys.modules:
        _limit_duckdb(sys.modules["duckdb"], n)
    elif not any(isinstance(f, _DuckDBBudget) for f in sys.meta_path):
        sys.meta_path.insert(0, _DuckDBBudget(n))


def _limit_duckdb(duckdb: Any, n: int) -> None:
    real = getattr(duckdb.connect, "__wrapped__", duckdb.connect)

    def connect(database: Any = ":memory:", read_only: bool = False, config: Any = None,
                **kwargs: Any) -> Any:
        if _opened and database in (":memory:", "") and not (read_only or config or kwargs):
            with contextlib.suppress(IndexError):  # another thread took it
                return _opened.pop()  # opened while the function waited: as new as this one
        config = dict(config or {})
        config.setdefault("threads", n)
        return real(database, read_only, config, **kwargs)

    connect.__wrapped__ = real  # type: ignore[attr-defined]
    connect.__doc__ = real.__doc__
    duckdb.connect = connect
    from faas.faasd import handed

    handed.teach_duckdb(duckdb)
    if n >= (os.cpu_count() or 1):
        return  # DuckDB's own default: no need to make the default connection (~40 ms)
    default = getattr(duckdb, "default_connection", None)
    with contextlib.suppress(Exception):  # the module-level duckdb.sql(...) connection
        (default() if callable(default) else default).execute(f"SET threads = {int(n)}")


# A DuckDB connection opened while the function waited for its upstream objects, handed
# to its first plain ``duckdb.connect()``: a fresh in-memory database either way.
_opened: list[Any] = []


def _open_duckdb_ahead(task: FunctionTask) -> None:
    """Open the in-memory DuckDB connection the function will ask for (about 20 ms), in
    time it would spend waiting anyway; only for a Python model whose module calls
    ``duckdb.connect``, and where DuckDB is loaded already. (Closed unused when the
    function returns: :func:`_close_unused`.)"""
    duckdb = sys.modules.get("duckdb")
    if duckdb is None or task.kind != "python" or _opened:
        return
    try:
        source = Path(task.project_dir, task.module.replace(".", "/") + ".py").read_text()
    except (OSError, ValueError):
        return
    if "duckdb.connect(" in source:
        _opened.append(duckdb.connect())


def _close_unused() -> None:
    """Close a connection opened ahead that the function never asked for (it used another
    database): no second database stays open beside its own."""
    while _opened:
        with contextlib.suppress(Exception):
            _opened.pop().close()


class _DuckDBBudget:
    """Applies the thread budget to DuckDB when the function first imports it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "duckdb":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader, n = spec.loader, self.n

        class Budgeted(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                _limit_duckdb(module, n)

        spec.loader = Budgeted()
        return spec


def run(
    task: FunctionTask, started: float = 0.0,
    waited: Callable[[], dict[str, str]] | None = None,
) -> FunctionResult:
    """Run one task. ``waited`` gives the paths of the task's waiting objects, blocking
    until their upstream functions have made them: everything else is read first."""
    limit_threads(task.threads)
    report = _ColumnReport()
    t0 = time.perf_counter()
    later = set(task.waiting)
    inputs: dict[str, Any] = {
        inp.param: _load_input(inp, task, report) for inp in task.inputs
        if not (isinstance(inp, ObjectInput) and inp.object_id in later)
    }
    phases: dict[str, float] = {}
    if later:
        if waited is None:
            raise InputProblem("the inputs of upstream functions never came")
        _open_duckdb_ahead(task)
        t_wait = time.perf_counter()
        task = msgspec.structs.replace(task, objects={**task.objects, **waited()})
        phases["waiting"] = time.perf_counter() - t_wait
        inputs.update({
            inp.param: _load_input(inp, task, report) for inp in task.inputs
            if isinstance(inp, ObjectInput) and inp.object_id in later
        })
        inputs = {inp.param: inputs[inp.param] for inp in task.inputs}  # the user's order
    t1 = time.perf_counter()
    phases["inputs"] = t1 - t0 - phases.get("waiting", 0.0)
    columns: dict[str, Any] = {
        "columns_cached": report.cached, "columns_read": report.read,
        "started": started, "phases": phases,
        "inputs": report.inputs,
    }
    if task.kind == "sql":
        from faas.faasd import handed
        from faas.store.query import query_tables

        # Parameters are bound as values ($name), never pasted into the query. The
        # connection reads no file but the data files of scans handed to it as views.
        value: Any = query_tables(task.sql, inputs, task.params,
                                  allowed_paths=handed.paths(inputs.values()))
    else:
        fn = _find_function(task)
        try:
            value = fn(**inputs, **task.params)
        finally:
            _close_unused()
        if task.kind == "expectation":
            if not isinstance(value, bool):
                raise BadReturn(
                    f"returned {'None' if value is None else type(value).__name__}, expected "
                    f"True or False"
                )
            phases["code"] = time.perf_counter() - t1
            return FunctionResult(rows=0, nbytes=0, schema=b"", passed=value, **columns)
    t2 = time.perf_counter()
    phases["code"] = t2 - t1
    # A stream's batches are computed while they are written: the output phase then
    # holds the user's streaming work too.
    returned = check_returned(as_arrow(value, task.node), task.contract, task.strict)
    if task.parquet_dir:
        from faas.store.files import write_parquet_parts

        table = returned
        files, rows = write_parquet_parts(
            table, task.parquet_dir, task.parquet_stem, threads=task.threads
        )
        phases["output_parquet"] = time.perf_counter() - t2
        return FunctionResult(
            rows=rows, nbytes=0, schema=table.schema.serialize().to_pybytes(), files=files,
            **columns,
        )
    rows, nbytes, schema = write_output(returned, task.output_path)
    phases["output_shm"] = time.perf_counter() - t2
    return FunctionResult(
        rows=rows, nbytes=nbytes, schema=schema.serialize().to_pybytes(), **columns,
    )


def serve_task(sock_fd: int) -> int:
    """Read one task from the socket ``sock_fd``, run it, answer, close; return the exit code.

    The body of ``python -m faas.faasd.runner FD``, and what a child forked by the
    zygote (faasd/zygote.py) calls once its stdio, cwd and environment are set.
    """
    started = time.time()
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
        reply: FunctionResult | Error = run(task, started, _objects_from(sock))
        code = 0
    except BaseException as exc:  # noqa: BLE001 - user code may raise anything, even SystemExit
        try:
            message, detail = describe_failure(task, exc)
        except Exception:  # noqa: BLE001 - never lose the error to a bug in saying it
            message = f"{node_label(task.kind)} {task.node!r} raised {type(exc).__name__}: {exc}"
            detail = traceback.format_exc()
        reply = Error(kind="FunctionFailed", message=message, detail=detail)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    sock.sendall(encode(reply))
    sock.close()
    return code


def main(argv: list[str] | None = None) -> int:
    """``python -m faas.faasd.runner FD [SANDBOX]``: SANDBOX is the JSON of a
    :class:`faasd.sandbox.SandboxSpec`, entered before anything is read."""
    argv = sys.argv[1:] if argv is None else argv
    fd = int(argv[0])
    if len(argv) > 1:
        from faas.faasd import sandbox

        spec = msgspec.json.decode(argv[1], type=sandbox.SandboxSpec)
        sandbox.enter(spec, keep_fds=(fd,))
    return serve_task(fd)


if __name__ == "__main__":
    sys.exit(main())
