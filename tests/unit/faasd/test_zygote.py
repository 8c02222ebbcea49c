"""Function processes forked from a pre-imported zygote: real processes, real failures.

Each test runs its own event loop and zygote. The failure cases also run on
the fresh-interpreter path, which must behave the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pyarrow as pa
import pytest

from faas.faasd.process import FunctionProcess
from faas.faasd.zygote import Zygote, ZygotePool
from faas.faasd.zygote_wire import ZygoteDied
from faas.protocol.errors import ClosedByUs, FunctionFailed, RunCancelled
from faas.protocol.worker_messages import FunctionResult, FunctionTask
from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")

MODELS = '''
import ctypes
import os
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc

import state


def hello():
    for i in range(5):
        print(f"line {i}")
    print("to stderr", file=sys.stderr)
    return [{"pid": os.getpid(), "ppid": os.getppid()}]


def touch_state():
    state.SEEN.append(os.getpid())
    return [{"seen": len(state.SEEN), "pid": os.getpid()}]


def where():
    return [{
        "cwd": os.getcwd(),
        "value": os.environ.get("FAAS_TEST_VALUE", ""),
        "zygote_only": os.environ.get("FAAS_TEST_ZYGOTE_ONLY", ""),
        "model": os.environ.get("FAAS_MODEL", ""),
        "path0": sys.path[0],
    }]


def arrow_work():
    t = pa.table({"k": [i % 7 for i in range(200_000)], "v": list(range(200_000))})
    g = t.group_by("k").aggregate([("v", "sum")])
    total = pc.sum(t["v"]).as_py()
    return pa.table({"groups": [g.num_rows], "total": [total]})


def boom():
    raise ValueError("no good")


def quit3():
    sys.stdout.flush()
    os._exit(3)


def segfault():
    ctypes.string_at(0)


def sleepy():
    print("started", flush=True)
    time.sleep(60)
    return [{"x": 1}]
'''


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "models.py").write_text(textwrap.dedent(MODELS))
    (root / "state.py").write_text("SEEN = []\n")
    return root


class Run:
    """One function run: its lines, pid, and result or error."""

    def __init__(self, project: Path, function: str, *, zygote: Zygote | None) -> None:
        out = project.parent / f"{function}-{time.monotonic_ns()}.arrow"
        self.task = FunctionTask(
            run_id="r-test", node=function, project_dir=str(project), module="models",
            function=function, inputs=[], objects={}, output_path=str(out),
        )
        self.proc = FunctionProcess(self.task, cwd=str(project), zygote=zygote)
        self.lines: list[tuple[str, str]] = []
        self.started_pid = 0
        self.result: FunctionResult | None = None
        self.error: BaseException | None = None
        self.line_seen = asyncio.Event()

    async def sink(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))
        self.line_seen.set()

    async def on_start(self, pid: int) -> None:
        self.started_pid = pid

    async def __call__(self) -> Run:
        try:
            self.result = await self.proc.run(self.sink, self.on_start)
        except (FunctionFailed, RunCancelled) as exc:
            self.error = exc
        return self

    def table(self) -> pa.Table:
        return pa.ipc.open_file(pa.memory_map(self.task.output_path, "r")).read_all()

    def stdout(self) -> list[str]:
        return [line for stream, line in self.lines if stream == "stdout"]

    async def wait_line(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(line == text for _, line in self.lines):
            if time.monotonic() > deadline:
                raise AssertionError(f"no line {text!r} in {timeout} s; got {self.lines}")
            self.line_seen.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.line_seen.wait(), 0.5)


async def run_fn(project: Path, function: str, zygote: Zygote | None) -> Run:
    return await Run(project, function, zygote=zygote)()


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


async def eventually(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# -- the happy path -------------------------------------------------------------------


def test_result_and_lines_in_order(project: Path) -> None:
    async def go() -> None:
        async with Zygote() as z:
            r = await run_fn(project, "hello", z)
            assert r.error is None, r.error
            assert r.result is not None and r.result.rows == 1
            assert r.stdout() == [f"line {i}" for i in range(5)]
            assert ("stderr", "to stderr") in r.lines
            row = r.table().to_pylist()[0]
            assert row["pid"] == r.started_pid == r.proc.pid
            assert row["ppid"] == z.pid != row["pid"]
            assert z.children == []

    run_async(go())


def test_fresh_process_and_no_state_between_children(project: Path) -> None:
    async def go() -> None:
        async with Zygote() as z:
            first = await run_fn(project, "touch_state", z)
            second = await run_fn(project, "touch_state", z)
            a, b = first.table().to_pylist()[0], second.table().to_pylist()[0]
            # Each child saw only its own write to the user module's global.
            assert a["seen"] == 1 and b["seen"] == 1
            assert len({a["pid"], b["pid"], z.pid}) == 3

    run_async(go())


def test_concurrent_children_each_get_their_own_output(project: Path) -> None:
    """Requests in flight together: no child holds another's pipes (each run sees EOF)."""

    async def go() -> None:
        async with Zygote() as z:
            runs = await asyncio.wait_for(
                asyncio.gather(*(run_fn(project, "hello", z) for _ in range(6))), 30
            )
            for r in runs:
                assert r.error is None, r.error
                assert r.stdout() == [f"line {i}" for i in range(5)]
            assert len({r.started_pid for r in runs}) == 6
            assert not z.children

    run_async(go())


def test_env_and_cwd_reach_the_child(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        # In the zygote's environment at start, but not in the worker's at spawn time.
        zenv = dict(os.environ, FAAS_TEST_ZYGOTE_ONLY="stale")
        async with Zygote(env=zenv) as z:
            monkeypatch.setenv("FAAS_TEST_VALUE", "42")
            r = await run_fn(project, "where", z)
            assert r.error is None, r.error
            row = r.table().to_pylist()[0]
            assert row == {
                "cwd": str(project), "value": "42", "zygote_only": "", "model": "where",
                "path0": str(project),
            }

    run_async(go())


def test_zygote_is_single_threaded_and_children_run_arrow(project: Path) -> None:
    async def go() -> None:
        async with Zygote() as z:
            assert z.ready is not None
            assert "pyarrow" in z.ready.preloaded and "faas.faasd.runner" in z.ready.preloaded
            if sys.platform.startswith("linux"):
                assert z.ready.threads == 1
            for _ in range(2):
                r = await run_fn(project, "arrow_work", z)
                assert r.error is None, r.error
                assert r.table().to_pylist() == [{"groups": 7, "total": sum(range(200_000))}]

    run_async(go())


def test_under_uvloop(project: Path) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def go() -> None:
        async with Zygote() as z:
            r = await run_fn(project, "hello", z)
            assert r.error is None, r.error
            assert r.stdout() == [f"line {i}" for i in range(5)]

    uvloop.run(go())


# -- failures: the same on both paths, and the zygote keeps serving ---------------------


@pytest.fixture(params=["zygote", "fresh"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def check_failure(
    project: Path, mode: str, function: str, check: Callable[[Run], None],
    during: Callable[[Run], Awaitable[None]] | None = None,
) -> None:
    z = Zygote() if mode == "zygote" else None
    try:
        if z is not None:
            await z.start()
        r = Run(project, function, zygote=z)
        task = asyncio.create_task(r())
        if during is not None:
            await during(r)
        await task
        check(r)
        assert gone(r.started_pid)
        if z is not None:  # still serving, the same zygote
            pid = z.pid
            ok = await run_fn(project, "hello", z)
            assert ok.error is None, ok.error
            assert z.pid == pid and z.alive and z.starts == 1
    finally:
        if z is not None:
            await z.close()


def test_user_exception_gives_traceback(project: Path, mode: str) -> None:
    def check(r: Run) -> None:
        assert isinstance(r.error, FunctionFailed)
        assert re.fullmatch(r"model 'boom' \(models\.py:\d+\) raised ValueError: no good", str(r.error))
        assert "Traceback" in r.error.detail and 'File "models.py", line' in r.error.detail
        assert "faasd" not in r.error.detail  # the user's frames only

    run_async(check_failure(project, mode, "boom", check))


def test_exit_code(project: Path, mode: str) -> None:
    def check(r: Run) -> None:
        assert isinstance(r.error, FunctionFailed)
        assert str(r.error) == "the process of model 'quit3' exited with code 3 before it finished"

    run_async(check_failure(project, mode, "quit3", check))


def test_segfault(project: Path, mode: str) -> None:
    def check(r: Run) -> None:
        assert isinstance(r.error, FunctionFailed)
        assert "was killed by signal SIGSEGV" in str(r.error)

    run_async(check_failure(project, mode, "segfault", check))


def test_cancel_kills_the_function(project: Path, mode: str) -> None:
    async def cancel_when_started(r: Run) -> None:
        await r.wait_line("started")
        r.proc.cancel()

    def check(r: Run) -> None:
        assert isinstance(r.error, RunCancelled), r.error

    run_async(check_failure(project, mode, "sleepy", check, cancel_when_started))


def test_timeout_of_the_caller_kills_and_forgets_the_child(project: Path) -> None:
    """The worker's timeouts cancel run(): the child dies and the zygote keeps no record of it."""

    async def go() -> None:
        async with Zygote() as z:
            r = Run(project, "sleepy", zygote=z)
            task = asyncio.create_task(r())
            await r.wait_line("started")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await eventually(lambda: gone(r.started_pid))
            await eventually(lambda: not z._exits)  # the exit record went with the child
            ok = await run_fn(project, "hello", z)
            assert ok.error is None, ok.error
            assert not z._exits

    run_async(go())


# -- the zygote itself dies or closes ----------------------------------------------------


def test_zygote_killed_while_a_child_runs(project: Path) -> None:
    async def go() -> None:
        async with Zygote() as z:
            r = Run(project, "sleepy", zygote=z)
            task = asyncio.create_task(r())
            await r.wait_line("started")
            first = z.pid
            os.kill(first, signal.SIGKILL)
            await asyncio.wait_for(task, 20)
            assert isinstance(r.error, FunctionFailed)
            assert "the function's parent process died" in str(r.error)
            assert "was killed by signal SIGKILL" in str(r.error)
            await eventually(lambda: gone(r.started_pid))
            assert not z.alive
            # The next spawn starts a new zygote.
            ok = await run_fn(project, "hello", z)
            assert ok.error is None, ok.error
            assert z.alive and z.pid != first and z.starts == 2

    run_async(go())


def test_wait_after_death_raises(project: Path) -> None:
    async def go() -> None:
        async with Zygote() as z:
            r = Run(project, "sleepy", zygote=z)
            task = asyncio.create_task(r())
            await r.wait_line("started")
            pid = r.proc.pid
            os.kill(z.pid, signal.SIGKILL)
            await task
            with pytest.raises(LookupError):
                await z.wait(pid)  # already collected by the run

    run_async(go())


def test_close_kills_children_and_is_idempotent(project: Path) -> None:
    async def go() -> None:
        z = Zygote()
        await z.start()
        r = Run(project, "sleepy", zygote=z)
        task = asyncio.create_task(r())
        await r.wait_line("started")
        zpid = z.pid
        await z.close()
        await z.close()
        await asyncio.wait_for(task, 20)
        assert isinstance(r.error, FunctionFailed)
        assert "parent process died" in str(r.error) and "was closed" in str(r.error)
        assert gone(r.started_pid) and gone(zpid)
        with pytest.raises(ClosedByUs):
            await z.start()
        with pytest.raises(ClosedByUs):
            await run_fn(project, "hello", z)

    run_async(go())


def test_close_while_starting_leaves_nothing_running() -> None:
    async def go() -> None:
        z = Zygote()
        starting = asyncio.create_task(z.start())
        await eventually(lambda: z.pid != 0)  # launched, still importing
        zpid = z.pid
        await z.close()
        with pytest.raises(ClosedByUs):
            await starting
        assert z.status == "closed"
        await eventually(lambda: gone(zpid))

    run_async(go())


def test_cancelled_start_leaves_nothing_running() -> None:
    async def go() -> None:
        z = Zygote()
        try:
            starting = asyncio.create_task(z.start())
            await eventually(lambda: z.pid != 0)
            zpid = z.pid
            starting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await starting
            await eventually(lambda: gone(zpid))
            await z.start()  # a later start works
            assert z.alive and z.pid != zpid
        finally:
            await z.close()

    run_async(go())


def test_spawn_on_a_dead_zygote_restarts_it() -> None:
    async def go() -> None:
        async with Zygote() as z:
            first = z.pid
            os.kill(first, signal.SIGKILL)
            await eventually(lambda: not z.alive)
            await z.start()
            assert z.alive and z.pid != first

    run_async(go())


def test_worker_death_takes_the_zygote_and_children_with_it(project: Path, tmp_path: Path) -> None:
    """The worker is SIGKILLed: its zygote sees EOF and kills its function processes."""
    script = tmp_path / "fake_worker.py"
    script.write_text(textwrap.dedent(f'''
        import asyncio, os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from faas.faasd.process import FunctionProcess
        from faas.faasd.zygote import Zygote
        from faas.protocol.worker_messages import FunctionTask

        async def main():
            z = Zygote()
            await z.start()
            task = FunctionTask(run_id="r", node="sleepy", project_dir={str(project)!r},
                                module="models", function="sleepy", inputs=[], objects={{}},
                                output_path={str(tmp_path / "x.arrow")!r})
            proc = FunctionProcess(task, cwd={str(project)!r}, zygote=z)

            async def sink(stream, line):
                if line == "started":
                    print(z.pid, proc.pid, flush=True)

            async def started(pid):
                pass

            await proc.run(sink, started)

        asyncio.run(main())
    '''))
    worker = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert worker.stdout is not None
        zpid, cpid = map(int, worker.stdout.readline().split())
        assert not gone(zpid) and not gone(cpid)
        worker.kill()
        worker.wait()
        wait_until(lambda: gone(zpid) and gone(cpid), "the zygote and its child to end with the worker", timeout=10, every=0.02)
    finally:
        worker.kill()
        worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()


# -- starting ---------------------------------------------------------------------------


def test_a_zygote_that_cannot_start_falls_back_to_a_fresh_interpreter(
    project: Path, tmp_path: Path
) -> None:
    async def go() -> None:
        z = Zygote(preload=["this_module_does_not_exist"])  # optional: skipped, still starts
        try:
            await z.start()
            assert z.ready is not None and "this_module_does_not_exist" in z.ready.skipped
        finally:
            await z.close()
        bad = Zygote(env=dict(os.environ, PYTHONPATH=str(tmp_path / "broken")))
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "msgspec.py").write_text("raise ImportError('broken msgspec')\n")
        try:
            # A required import fails in the zygote's environment only: the
            # function still runs, in a fresh interpreter.
            r = await run_fn(project, "hello", bad)
            assert r.error is None, r.error
            assert r.proc.proc is not None  # the fresh-interpreter path
            assert bad.status == "dead" and bad.starts == 1
            again = await run_fn(project, "hello", bad)  # no second try for a while
            assert again.error is None and bad.starts == 1
        finally:
            await bad.close()

    run_async(go())


def test_pool_one_zygote_per_python() -> None:
    async def go() -> None:
        async with ZygotePool() as pool:
            a = pool.get()
            assert pool.get(sys.executable) is a
            await a.start()
            assert a.alive
        assert a.status == "closed"
        with pytest.raises(ClosedByUs):
            pool.get()

    run_async(go())


def test_zygote_died_is_a_function_failure() -> None:
    err = ZygoteDied("/x/python", 12, "was killed by signal SIGKILL")
    assert isinstance(err, FunctionFailed)
    assert str(err) == "the zygote (pid 12) for /x/python was killed by signal SIGKILL"


# -- a sandbox the kernel will not build ----------------------------------------------


@pytest.mark.parametrize("use_zygote", [True, False], ids=["zygote", "fresh"])
def test_a_sandbox_that_cannot_be_built_is_one_line(project: Path, use_zygote: bool) -> None:
    """A directory to bind where no directory can be made (inside /proc): the process
    ends with the sandbox's status before any user code runs, its output says which step
    was refused, and the failure says the sandbox could not be built."""
    from faas.faasd.sandbox import SandboxSpec, sandbox_unavailable

    if (why := asyncio.run(sandbox_unavailable())) is not None:
        pytest.fail(f"this host cannot build sandboxes ({why}); .ci/run enables them")
    spec = SandboxSpec(ro=[str(project)], moved={"/proc/faas-nowhere": str(project)},
                       cwd=str(project))

    async def go() -> Run:
        async with contextlib.AsyncExitStack() as stack:
            zygote = await stack.enter_async_context(Zygote()) if use_zygote else None
            run = Run(project, "hello", zygote=zygote)
            run.proc = FunctionProcess(run.task, cwd=str(project), zygote=zygote, sandbox=spec)
            return await run()

    run = run_async(go())
    assert isinstance(run.error, FunctionFailed)
    message = str(run.error)
    assert "'hello' could not build its sandbox (exit code 71" in message, message
    assert "\n" not in message
    said = " ".join(line for _, line in run.lines)
    assert "sandbox" in said and "/proc/faas-nowhere" in said, run.lines
    assert not any(line.startswith("line ") for _, line in run.lines)  # no user code ran


# -- sandboxed processes forked ahead of their requests --------------------------------


def test_sandboxed_functions_started_together_each_get_a_process_forked_ahead(
    project: Path,
) -> None:
    """After its first sandboxed request a zygote keeps SPARES processes with their
    sandboxes half built; a run's functions started together are each handed one (the
    spares' pids), the zygote forks as many again, and each function still runs alone."""
    from faas.faasd.sandbox import SandboxSpec, sandbox_unavailable
    from faas.faasd.zygote_server import SPARES

    if (why := asyncio.run(sandbox_unavailable())) is not None:
        pytest.fail(f"this host cannot build sandboxes ({why}); .ci/run enables them")
    spec = SandboxSpec(ro=[str(project)], rw=[str(project.parent)], cwd=str(project))

    def boxed(z: Zygote) -> Run:
        run = Run(project, "hello", zygote=z)
        run.proc = FunctionProcess(run.task, cwd=str(project), zygote=z, sandbox=spec)
        return run

    def waiting(z: Zygote) -> set[int]:
        """The zygote's children that are no function of ours: its spares."""
        return {c.pid for c in psutil.Process(z.pid).children()}

    async def go() -> None:
        async with Zygote() as z:
            first = await boxed(z)()
            assert first.error is None, first.error
            await eventually(lambda: len(waiting(z)) == SPARES)
            spares = waiting(z)
            runs = await asyncio.wait_for(
                asyncio.gather(*(boxed(z)() for _ in range(SPARES))), 30
            )
            for r in runs:
                assert r.error is None, r.error
                assert r.stdout() == [f"line {i}" for i in range(5)]
            assert {r.started_pid for r in runs} == spares
            await eventually(lambda: len(waiting(z)) == SPARES)
            assert not waiting(z) & spares

    run_async(go())
