"""One run from plan to publish: place ready nodes, follow their events, commit outputs."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import pyarrow as pa

from protocol.errors import ExpectationFailed, FaasError, OutOfMemory, RunCancelled, from_wire
from protocol.messages import (
    CancelTask,
    LogLine,
    Materialize,
    ObjectInput,
    ReleaseRun,
    RunFinished,
    RunTask,
    TaskDone,
    TaskEvent,
    TaskFailed,
    TaskLog,
    TaskStarted,
    error_message,
)
from protocol.sizes import format_size, parse_size
from scheduler.plan import Plan, PlanNode

if TYPE_CHECKING:
    from scheduler.server import Scheduler, WorkerHandle

log = logging.getLogger(__name__)

Emit = Callable[[Any], Awaitable[None]]

RUN_BRANCH_PREFIX = "run/"
# What any function process needs before it touches data (interpreter, pyarrow, buffers).
BASE_RESERVATION = 512 * 2**20


def run_branch_name(run_id: str) -> str:
    """The transaction branch of a run: outputs are committed there, then merged."""
    return f"{RUN_BRANCH_PREFIX}{run_id}"


class RunCoordinator:
    def __init__(
        self,
        scheduler: "Scheduler",
        run_id: str,
        plan: Plan,
        files: dict[str, str],
        emit: Emit,
        strict: bool = False,
    ) -> None:
        self.scheduler = scheduler
        self.run_id = run_id
        self.plan = plan
        self.files = files
        self.emit = emit
        self.strict = strict
        self.outputs: dict[str, TaskDone] = {}
        # Where each node's output lives, and every worker that ran anything of this run.
        self.placed: dict[str, "WorkerHandle"] = {}
        self.used_workers: set[str] = set()
        self.running: dict[str, asyncio.Task[TaskDone]] = {}
        self.publishing = False

    async def _event(self, node: str, state: str, **kw: Any) -> None:
        await self.emit(TaskEvent(run_id=self.run_id, node=node, state=state, time=time.time(), **kw))

    async def execute(self) -> RunFinished:
        """Run every node; outputs commit to the run's branch, which merges into the target
        branch as one commit only when everything succeeded."""
        t0 = time.perf_counter()
        catalog = self.scheduler.lakehouse.catalog
        branch = run_branch_name(self.run_id)
        try:
            await self.scheduler.store_call(
                catalog.create_run_branch, self.run_id, f"@{self.plan.base}"
            )
            await self._run_nodes(branch)
            self.publishing = True
            # Once the merge starts it finishes: a cancel now would report a run as not
            # published while the target branch already has it.
            commit, tables = await asyncio.shield(self._publish(branch))
        except asyncio.CancelledError:
            await self._cancel_running()
            raise
        except Exception as exc:  # noqa: BLE001 - any failure fails the run, cleanly
            if not isinstance(exc, FaasError):
                log.exception("run %s failed inside the scheduler", self.run_id)
            await self._cancel_running()
            return RunFinished(
                run_id=self.run_id, status="cancelled" if isinstance(exc, RunCancelled) else "failed",
                error=error_message(exc), seconds=time.perf_counter() - t0, branch=branch,
            )
        finally:
            self._release()
        return RunFinished(
            run_id=self.run_id, status="success", commit=commit, tables=tables,
            seconds=time.perf_counter() - t0,
        )

    async def _run_nodes(self, branch: str) -> None:
        started: set[str] = set()
        for name in self.plan.order:
            await self._event(name, "queued")
        while len(self.outputs) < len(self.plan.nodes):
            for name in self.plan.order:
                node = self.plan.nodes[name]
                if name not in started and all(d in self.outputs for d in node.deps):
                    started.add(name)
                    self.running[name] = asyncio.create_task(self._run_node(node, branch))
            finished, _ = await asyncio.wait(
                self.running.values(), return_when=asyncio.FIRST_COMPLETED
            )
            for task in finished:
                name = next(n for n, t in self.running.items() if t is task)
                del self.running[name]
                self.outputs[name] = task.result()  # re-raises the node's failure

    def reservation(self, node: PlanNode) -> int:
        """Memory for one node: as declared, else estimated from what it reads."""
        if node.spec.memory:
            return parse_size(node.spec.memory)
        upstream = sum(
            self.outputs[i.node].output.nbytes  # type: ignore[union-attr]
            for i in node.inputs
            if isinstance(i, ObjectInput) and self.outputs[i.node].output is not None
        )
        # Decoded Parquet is several times its compressed size; mapped objects are shared
        # pages, but a function usually builds something of their size.
        return BASE_RESERVATION + 4 * node.scan_bytes + 2 * upstream

    async def _run_node(self, node: PlanNode, branch: str) -> TaskDone:
        tx = None
        if node.spec.materialize:
            tx = await self.scheduler.store_call(self.scheduler.lakehouse.begin, branch)
        reservation = self.reservation(node)
        try:
            try:
                return await self._attempt(node, tx, reservation, 1)
            except OutOfMemory as exc:
                largest = max((w.memory_total for w in self.scheduler.workers.values()), default=0)
                if 2 * reservation > largest:
                    raise
                await self._event(
                    node.name, "retrying",
                    error=f"{exc}; retrying once with {format_size(2 * reservation)}",
                )
                return await self._attempt(node, tx, 2 * reservation, 2)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # Every way a node can fail is reported once, so no node stays "running".
            worker = self.placed.get(node.name)
            await self._event(
                node.name, "failed", worker=worker.worker_id if worker else "",
                error=getattr(exc, "message", None) or str(exc) or type(exc).__name__,
            )
            raise

    async def _attempt(self, node: PlanNode, tx: Any, reservation: int, attempt: int) -> TaskDone:
        worker = await self.scheduler.choose_worker(self._input_workers(node))
        self.placed[node.name] = worker
        self.used_workers.add(worker.worker_id)
        materialize = None
        if tx is not None:
            directory = await self.scheduler.store_call(tx.data_location, node.key)
            materialize = Materialize(key=node.key, directory=directory, mode=node.spec.materialize)
        task_id = f"{self.run_id}:{node.name}:{attempt}"
        queue = self.scheduler.watch_task(task_id, worker)
        try:
            await worker.conn.send(
                RunTask(
                    task_id=task_id, run_id=self.run_id, node=node.name, files=self.files,
                    module=node.spec.module, function=node.spec.function, inputs=node.inputs,
                    params=node.params, materialize=materialize, kind=node.spec.kind,
                    sql=node.spec.sql, python=node.spec.python, pip=node.spec.pip,
                    memory_limit=reservation, timeout=node.spec.timeout,
                )
            )
            while True:
                msg = await queue.get()
                match msg:
                    case TaskStarted(env=env):
                        await self._event(node.name, "running", worker=worker.worker_id, env=env)
                    case TaskLog(stream=stream, line=line, time=t):
                        await self.emit(
                            LogLine(run_id=self.run_id, node=node.name, stream=stream, line=line, time=t)
                        )
                    case TaskDone(passed=False):
                        what = f"expectation {node.name!r} failed"
                        if self.strict:
                            raise ExpectationFailed(f"{what} (--strict): nothing was published")
                        await self._event(node.name, "warning", worker=worker.worker_id, error=what)
                        return msg
                    case TaskDone():
                        if tx is not None:
                            await self.scheduler.store_call(self._commit_output, tx, node, msg)
                        rows = msg.output.rows if msg.output else 0
                        await self._event(node.name, "done", worker=worker.worker_id, rows=rows)
                        return msg
                    case TaskFailed(error=err):
                        raise from_wire(err.kind, err.message, err.detail)
        except asyncio.CancelledError:
            await self._send_quietly(worker, CancelTask(task_id=task_id))
            raise
        finally:
            self.scheduler.unwatch_task(task_id)

    def _input_workers(self, node: PlanNode) -> set[str]:
        """Workers holding this node's upstream objects (each in its own shm directory)."""
        return {
            self.placed[i.node].worker_id for i in node.inputs if isinstance(i, ObjectInput)
        }

    def _commit_output(self, tx: Any, node: PlanNode, done: TaskDone) -> str:
        """Commit one materialized output to the run's branch (store thread)."""
        assert done.output is not None
        schema = pa.ipc.read_schema(pa.py_buffer(done.output.schema))
        tx.add_files(node.key, done.files, schema, node.spec.materialize)
        return tx.publish(
            f"run {self.run_id}: {node.name} -> {node.key}",
            {"run_id": self.run_id, "model": node.name},
        )

    async def _publish(self, branch: str) -> tuple[str, list[str]]:
        """Merge the run's branch into the target as one commit, then drop the run branch."""
        tables = [
            self.plan.nodes[n].key for n in self.plan.order if self.plan.nodes[n].spec.materialize
        ]
        catalog = self.scheduler.lakehouse.catalog
        target = self.plan.branch
        assert target is not None

        def merge() -> str:
            if not tables:
                catalog.delete_branch(branch)
                return ""
            result = catalog.merge(
                branch, target, message=f"run {self.run_id}: {', '.join(tables)}",
                properties={"run_id": self.run_id},
            )
            catalog.delete_branch(branch)
            return str(result.commit)

        return await self.scheduler.store_call(merge), tables

    async def _cancel_running(self) -> None:
        for name, task in list(self.running.items()):
            task.cancel()
        if self.running:
            await asyncio.gather(*self.running.values(), return_exceptions=True)
        for name in self.running:
            await self._event(name, "cancelled")
        self.running.clear()

    @staticmethod
    async def _send_quietly(worker: "WorkerHandle", msg: Any) -> None:
        try:
            await worker.conn.send(msg, timeout=5)
        except FaasError:
            pass

    def _release(self) -> None:
        # Every worker that ran anything, by id: after a retry elsewhere or a reconnect the
        # handle may have changed.
        for worker_id in self.used_workers:
            worker = self.scheduler.workers.get(worker_id)
            if worker is not None and not worker.conn.closed:
                self.scheduler.background(self._send_quietly(worker, ReleaseRun(run_id=self.run_id)))


__all__ = ["RunCoordinator"]
