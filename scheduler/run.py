"""One run from plan to publish: place ready nodes, follow their events, commit outputs."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import pyarrow as pa

from protocol.errors import FaasError, RunCancelled, from_wire
from protocol.messages import (
    CancelTask,
    ObjectInput,
    ReleaseRun,
    RunFinished,
    RunTask,
    TaskDone,
    TaskEvent,
    TaskFailed,
    TaskLog,
    TaskStarted,
    LogLine,
    Materialize,
    error_message,
)
from scheduler.plan import Plan, PlanNode

if TYPE_CHECKING:
    from scheduler.server import Scheduler, WorkerHandle

log = logging.getLogger(__name__)

Emit = Callable[[Any], Awaitable[None]]


class RunCoordinator:
    def __init__(
        self,
        scheduler: "Scheduler",
        run_id: str,
        plan: Plan,
        files: dict[str, str],
        emit: Emit,
    ) -> None:
        self.scheduler = scheduler
        self.run_id = run_id
        self.plan = plan
        self.files = files
        self.emit = emit
        self.outputs: dict[str, TaskDone] = {}
        self.placed: dict[str, "WorkerHandle"] = {}
        self.running: dict[str, asyncio.Task[TaskDone]] = {}

    async def _event(self, node: str, state: str, **kw: Any) -> None:
        await self.emit(TaskEvent(run_id=self.run_id, node=node, state=state, time=time.time(), **kw))

    async def execute(self) -> RunFinished:
        t0 = time.perf_counter()
        tx = await self.scheduler.store_call(self.scheduler.lakehouse.begin, self.plan.ref)
        try:
            await self._run_nodes(tx)
            commit, tables = await self._publish(tx)
        except asyncio.CancelledError:
            await self._cancel_running()
            raise
        except FaasError as exc:
            await self._cancel_running()
            return RunFinished(
                run_id=self.run_id, status="cancelled" if isinstance(exc, RunCancelled) else "failed",
                error=error_message(exc), seconds=time.perf_counter() - t0,
            )
        finally:
            self._release()
        return RunFinished(
            run_id=self.run_id, status="success", commit=commit, tables=tables,
            seconds=time.perf_counter() - t0,
        )

    async def _run_nodes(self, tx: Any) -> None:
        started: set[str] = set()
        for name in self.plan.order:
            await self._event(name, "queued")
        while len(self.outputs) < len(self.plan.nodes):
            for name in self.plan.order:
                node = self.plan.nodes[name]
                if name not in started and all(d in self.outputs for d in node.deps):
                    started.add(name)
                    self.running[name] = asyncio.create_task(self._run_node(node, tx))
            finished, _ = await asyncio.wait(
                self.running.values(), return_when=asyncio.FIRST_COMPLETED
            )
            for task in finished:
                name = next(n for n, t in self.running.items() if t is task)
                del self.running[name]
                self.outputs[name] = task.result()  # re-raises the node's failure

    async def _run_node(self, node: PlanNode, tx: Any) -> TaskDone:
        worker = await self.scheduler.choose_worker(self._input_hosts(node))
        self.placed[node.name] = worker
        materialize = None
        if node.spec.materialize:
            directory = await self.scheduler.store_call(tx.data_location, node.key)
            materialize = Materialize(key=node.key, directory=directory, mode=node.spec.materialize)
        task_id = f"{self.run_id}:{node.name}"
        queue = self.scheduler.watch_task(task_id, worker)
        try:
            await worker.conn.send(
                RunTask(
                    task_id=task_id, run_id=self.run_id, node=node.name, files=self.files,
                    module=node.spec.module, function=node.spec.function, inputs=node.inputs,
                    params=node.params, materialize=materialize,
                )
            )
            while True:
                msg = await queue.get()
                match msg:
                    case TaskStarted():
                        await self._event(node.name, "running", worker=worker.worker_id)
                    case TaskLog(stream=stream, line=line, time=t):
                        await self.emit(
                            LogLine(run_id=self.run_id, node=node.name, stream=stream, line=line, time=t)
                        )
                    case TaskDone():
                        rows = msg.output.rows if msg.output else 0
                        await self._event(node.name, "done", worker=worker.worker_id, rows=rows)
                        return msg
                    case TaskFailed(error=err):
                        await self._event(node.name, "failed", worker=worker.worker_id, error=err.message)
                        raise from_wire(err.kind, err.message, err.detail)
        except asyncio.CancelledError:
            await self._send_quietly(worker, CancelTask(task_id=task_id))
            raise
        finally:
            self.scheduler.unwatch_task(task_id)

    def _input_hosts(self, node: PlanNode) -> set[str]:
        """Hosts holding this node's upstream objects (they live in that host's shm)."""
        return {
            self.placed[i.node].host_id for i in node.inputs if isinstance(i, ObjectInput)
        }

    async def _publish(self, tx: Any) -> tuple[str, list[str]]:
        materialized = [
            (self.plan.nodes[n], self.outputs[n]) for n in self.plan.order
            if self.plan.nodes[n].spec.materialize
        ]
        if not materialized:
            return "", []

        def commit() -> str:
            for node, done in materialized:
                assert done.output is not None
                schema = pa.ipc.read_schema(pa.py_buffer(done.output.schema))
                tx.add_files(node.key, done.files, schema, node.spec.materialize)
            return tx.publish(
                f"run {self.run_id}: {', '.join(n.key for n, _ in materialized)}",
                {"run_id": self.run_id},
            )

        commit_hash = await self.scheduler.store_call(commit)
        return commit_hash, [n.key for n, _ in materialized]

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
        for worker in {w.worker_id: w for w in self.placed.values()}.values():
            if not worker.conn.closed:
                self.scheduler.background(self._send_quietly(worker, ReleaseRun(run_id=self.run_id)))


__all__ = ["RunCoordinator"]
