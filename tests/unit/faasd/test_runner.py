"""What a model may return, how the function process turns it into Arrow, and how it
reads inputs that come late."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from faas.faasd.runner import as_arrow, write_output


def test_arrow_table_passes_through() -> None:
    t = pa.table({"a": [1, 2]})
    assert as_arrow(t, "m") is t


def test_list_of_dicts() -> None:
    got = as_arrow([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}], "m")
    assert got.to_pylist() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]


def test_record_batch_and_reader() -> None:
    t = pa.table({"a": [1, 2, 3]})
    assert as_arrow(t.to_batches()[0], "m").equals(t)
    reader = pa.RecordBatchReader.from_batches(t.schema, t.to_batches())
    assert as_arrow(reader, "m") is reader  # streamed, not read whole


def test_duckdb_relation_streams() -> None:
    with duckdb.connect() as con:
        rel = con.sql("SELECT 1 AS a UNION ALL SELECT 2 ORDER BY a")
        got = as_arrow(rel, "m")
        assert isinstance(got, pa.RecordBatchReader)
        assert got.read_all().column("a").to_pylist() == [1, 2]


def _read(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def test_a_reader_is_written_batch_by_batch(tmp_path: Path) -> None:
    seen: list[int] = []

    def batches():  # type: ignore[no-untyped-def]
        for i in range(5):
            seen.append(i)
            yield pa.record_batch({"a": [i] * 1000})

    reader = pa.RecordBatchReader.from_batches(pa.schema({"a": pa.int64()}), batches())
    rows, nbytes, schema = write_output(reader, str(tmp_path / "out.arrow"))
    assert (rows, schema) == (5000, pa.schema({"a": pa.int64()}))
    assert nbytes == (tmp_path / "out.arrow").stat().st_size
    table = _read(tmp_path / "out.arrow")
    assert table.num_rows == 5000 and table.column("a").to_pylist()[::1000] == [0, 1, 2, 3, 4]
    assert len(table.to_batches()) == 5 and seen == [0, 1, 2, 3, 4]


def test_a_reader_that_raises_halfway_leaves_no_object(tmp_path: Path) -> None:
    def batches():  # type: ignore[no-untyped-def]
        yield pa.record_batch({"a": [1, 2]})
        raise ValueError("the source went away")

    reader = pa.RecordBatchReader.from_batches(pa.schema({"a": pa.int64()}), batches())
    with pytest.raises(ValueError, match="the source went away"):
        write_output(reader, str(tmp_path / "out.arrow"))
    assert list(tmp_path.iterdir()) == []  # neither the object nor a part of it


def test_anything_else_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="^returned int, expected a table \\(a pyarrow Table"):
        as_arrow(42, "m")
    with pytest.raises(TypeError, match="^returned None, expected a table"):
        as_arrow(None, "m")


def test_a_mapped_input_is_held_until_the_process_ends(tmp_path: Path) -> None:
    """The function process holds a shared lock on every object it maps, so the worker
    never reuses those pages under it (faasd.objects)."""
    import fcntl
    import os
    from types import SimpleNamespace

    from faas.faasd import runner
    from faas.protocol.messages import ObjectInput

    path = tmp_path / "o.arrow"
    write_output(pa.table({"x": [1, 2, 3]}), str(path))
    task = SimpleNamespace(objects={"o": str(path)})
    held = len(runner._held)
    try:
        table = runner._mapped(ObjectInput(param="t", node="n", object_id="o"), task)  # type: ignore[arg-type]
        assert table.column("x").to_pylist() == [1, 2, 3]
        assert len(runner._held) == held + 1
        with open(path, "rb") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        for fd in runner._held[held:]:
            os.close(fd)
        del runner._held[held:]


def _two_inputs(tmp_path: Path) -> tuple[Any, dict[str, str]]:
    from faas.protocol.messages import ObjectInput
    from faas.protocol.worker_messages import FunctionTask

    (tmp_path / "models.py").write_text(
        "def f(first, second):\n"
        "    return first.append_column('y', second.column('y'))\n"
    )
    paths = {}
    for oid, table in (("o1", pa.table({"x": [1, 2]})), ("o2", pa.table({"y": [3, 4]}))):
        paths[oid] = str(tmp_path / f"{oid}.arrow")
        write_output(table, paths[oid])
    task = FunctionTask(
        run_id="r", node="f", project_dir=str(tmp_path), module="models", function="f",
        inputs=[ObjectInput(param="first", node="a", object_id="o1"),
                ObjectInput(param="second", node="b", object_id="o2")],
        objects={"o1": paths["o1"]}, output_path=str(tmp_path / "out.arrow"), waiting=["o2"],
    )
    return task, paths


def test_waiting_inputs_are_loaded_after_the_others_once_their_paths_come(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An early-started function reads what it has, then blocks for its upstream objects'
    paths; the function still gets its parameters as declared."""
    import sys

    from faas.faasd import runner

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(runner, "limit_threads", lambda n: None)  # this process's pools stay
    task, paths = _two_inputs(tmp_path)
    loaded: list[str] = []
    real = runner._load_input
    monkeypatch.setattr(runner, "_load_input", lambda inp, t, r: loaded.append(inp.param) or real(inp, t, r))

    def waited() -> dict[str, str]:
        assert loaded == ["first"]  # what it had is read before it waits
        return {"o2": paths["o2"]}

    try:
        result = runner.run(task, waited=waited)
    finally:
        sys.modules.pop("models", None)
        for fd in runner._held:
            os.close(fd)
        runner._held.clear()
    assert loaded == ["first", "second"]
    assert "waiting" in result.phases and result.rows == 2
    out = pa.ipc.open_file(pa.memory_map(task.output_path)).read_all()
    assert out.to_pydict() == {"x": [1, 2], "y": [3, 4]}


def test_inputs_that_never_come_are_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker goes away while the function waits: one line, naming the model."""
    import socket as socket_

    from faas.faasd import runner

    monkeypatch.setattr(runner, "limit_threads", lambda n: None)
    task, _ = _two_inputs(tmp_path)
    ours, theirs = socket_.socketpair()
    ours.close()
    try:
        with pytest.raises(runner.InputProblem) as caught:
            runner.run(task, waited=runner._objects_from(theirs))
    finally:
        theirs.close()
        for fd in runner._held:
            os.close(fd)
        runner._held.clear()
    message, _ = runner.describe_failure(task, caught.value)
    assert message.startswith("model 'f' (models.py:1): the inputs of upstream functions never came")


AHEAD = '''
import sys
from pathlib import Path

import duckdb

from faas.faasd import runner
from faas.protocol.worker_messages import FunctionTask

runner.limit_threads(1)
home = Path(sys.argv[1])
(home / "plain.py").write_text("def f(t):\\n    return t\\n")
(home / "quacks.py").write_text("def f(t):\\n    import duckdb\\n    return duckdb.connect()\\n")


def task(module):
    return FunctionTask(run_id="r", node="f", project_dir=str(home), module=module,
                        function="f", inputs=[], objects={},
                        output_path=str(home / "out.arrow"))


runner._open_duckdb_ahead(task("plain"))
assert runner._opened == [], "opened for a module that never names DuckDB"
runner._open_duckdb_ahead(task("quacks"))
[ahead] = runner._opened
first = duckdb.connect()
assert first is ahead and runner._opened == []
assert first.sql("SELECT current_setting('threads')").fetchall() == [(1,)]
assert first.sql("SELECT count(*) FROM duckdb_tables()").fetchall() == [(0,)]
first.execute("CREATE TABLE t AS SELECT 1 AS a")
second = duckdb.connect()
assert second is not first
assert second.sql("SELECT count(*) FROM duckdb_tables()").fetchall() == [(0,)]
runner._open_duckdb_ahead(task("quacks"))
unused = runner._opened[0]
assert duckdb.connect(config={"threads": 2}) is not unused
runner._close_unused()  # the model returned without asking for it
assert runner._opened == []
try:
    unused.sql("SELECT 1")
except duckdb.ConnectionException:
    print("ok")
'''


def test_a_waiting_function_opens_duckdb_ahead_for_its_first_connect(tmp_path: Path) -> None:
    """A Python model whose module calls duckdb.connect gets, from its first plain
    connect, the in-memory connection opened while it waited for its upstream objects:
    new and empty, with the thread budget; later connects, and one with options, are
    opened then; one it never asks for is closed when it returns."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", AHEAD, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
