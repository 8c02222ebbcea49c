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
    ObjectInfo,
    ObjectInput,
    ObjectSource,
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
from scheduler.plan import CACHE_KEY_PROPERTY, Plan, PlanNode

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
        use_cache: bool = True,
    ) -> None:
        self.scheduler = scheduler
        self.run_id = run_id
        self.plan = plan
        self.files = files
        self.emit = emit
        self.strict = strict
        self.use_cache = use_cache
        self.outputs: dict[str, TaskDone] = {}
        # Where each node's output lives, and every worker that ran anything of this run.
        self.placed: dict[str, "WorkerHandle"] = {}
        self.used_workers: set[str] = set()
        self.running: dict[str, asyncio.Task[TaskDone]] = {}
        self.publishing = False
        # Output tables committed to the run's branch, in the order they were.
        self.committed: list[str] = []

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

    def upstream(self, node: PlanNode) -> dict[str, tuple[str, ObjectInfo]]:
        """The upstream objects a node maps: object id -> (producing node, object)."""
        found = {}
        for i in node.inputs:
            if isinstance(i, ObjectInput):
                out = self.outputs[i.node].output
                if out is not None:
                    found[i.object_id] = (i.node, out)
        return found

    def reservation(self, node: PlanNode) -> int:
        """A node's own memory: as declared, else estimated from what it reads.

        Upstream objects it maps are not in it: they are shared pages, counted once
        for their host however many readers map them."""
        if node.spec.memory:
            return parse_size(node.spec.memory)
        mapped = sum(o.nbytes for _, o in self.upstream(node).values())
        # Decoded Parquet is several times its compressed size; a function usually
        # builds something the size of what it maps.
        return BASE_RESERVATION + 4 * node.scan_bytes + mapped

    def _pulled(self, node: PlanNode, worker: "WorkerHandle") -> int:
        """Bytes of upstream objects a worker would pull from other hosts for a node."""
        return sum(
            o.nbytes for producer, o in self.upstream(node).values()
            if self.placed[producer].host_id != worker.host_id
        )

    def _mapped_here(self, node: PlanNode, worker: "WorkerHandle") -> int:
        """Bytes of a node's inputs a worker can map in place (more if it holds the output)."""
        upstream = self.upstream(node).values()
        here = sum(o.nbytes for _, o in upstream) - self._pulled(node, worker)
        # The producer's own worker first: the object is in its store, pinned for the run.
        here += sum(1 for producer, _ in upstream if self.placed[producer] is worker)
        if self._holds_output(node, worker):
            here += 2**62  # nothing needs to run there
        return here

    def _consumers(self, node: PlanNode) -> list[str]:
        return [n.name for n in self.plan.nodes.values() if node.name in n.deps]

    def _holds_output(self, node: PlanNode, worker: "WorkerHandle") -> bool:
        return self.use_cache and worker.worker_id in self.scheduler.holders(node.object_id)

    async def _run_node(self, node: PlanNode, branch: str) -> TaskDone:
        try:
            verdict = self.scheduler.verdicts.get(node.cache_key) if self.use_cache else None
            if node.spec.is_expectation and verdict is not None:
                return await self._verdict(node, verdict, cached=True, worker="")
            # A table whose snapshot was made from this very key is published already.
            published = self.use_cache and node.name in self.plan.published
            if published and not self._consumers(node):
                # ... and nothing downstream needs its rows: there is nothing to do.
                await self._event(node.name, "done", cached=True)
                return TaskDone(task_id="", cached=True)
            tx = None
            if node.spec.materialize and not published:
                tx = await self.scheduler.store_call(self.scheduler.lakehouse.begin, branch)
            reservation = self.reservation(node)
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

    async def _verdict(self, node: PlanNode, passed: bool, *, cached: bool, worker: str) -> TaskDone:
        if not passed:
            what = f"expectation {node.name!r} failed"
            if self.strict:
                raise ExpectationFailed(f"{what} (--strict): nothing was published")
            await self._event(node.name, "warning", worker=worker, error=what, cached=cached)
        else:
            await self._event(node.name, "done", worker=worker, cached=cached)
        return TaskDone(task_id="", passed=passed, cached=cached)

    async def _attempt(self, node: PlanNode, tx: Any, reservation: int, attempt: int) -> TaskDone:
        def need(w: "WorkerHandle") -> int:
            # A cache hit runs nothing; a run maps its inputs and may pull some here.
            return 0 if self._holds_output(node, w) else reservation + self._pulled(node, w)

        worker = await self.scheduler.choose_worker(
            need, lambda w: self._mapped_here(node, w), f"{node.spec.label} {node.name!r}"
        )
        reserved = need(worker)
        worker.reserved += reserved
        try:
            return await self._on(worker, node, tx, reservation, attempt)
        finally:
            await self.scheduler.unreserve(worker, reserved)

    async def _on(
        self, worker: "WorkerHandle", node: PlanNode, tx: Any, reservation: int, attempt: int
    ) -> TaskDone:
        self.used_workers.add(worker.worker_id)
        self.placed[node.name] = worker
        upstream = self.upstream(node)
        sources = {
            oid: ObjectSource(
                worker_id=self.placed[producer].worker_id, host_id=self.placed[producer].host_id,
                address=self.placed[producer].data_address, path=o.path, rows=o.rows,
                schema=o.schema,
            )
            for oid, (producer, o) in upstream.items()
        }
        mapped = sum(o.nbytes for _, o in upstream.values())
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
                    # A sole reader's unique pages include what it maps.
                    memory_limit=reservation + mapped, timeout=node.spec.timeout,
                    output_id=node.object_id, sources=sources, use_cache=self.use_cache,
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
                    case TaskDone(passed=bool(passed)):
                        if self.use_cache:
                            self.scheduler.verdicts[node.cache_key] = passed
                        await self._verdict(node, passed, cached=False, worker=worker.worker_id)
                        return msg
                    case TaskDone():
                        if msg.output is not None and not msg.cached:
                            # Counted for its host at once; heartbeats then say what is so.
                            worker.shm_bytes += msg.output.nbytes
                        if msg.output is not None and self.use_cache:
                            self.scheduler.remember(worker.worker_id, msg.output)
                        if tx is not None:
                            await self.scheduler.store_call(self._commit_output, tx, node, msg)
                            self.committed.append(node.key)
                        await self._event(
                            node.name, "done", worker=worker.worker_id,
                            rows=msg.output.rows if msg.output else 0, cached=msg.cached,
                            columns_cached=msg.columns_cached, columns_read=msg.columns_read,
                        )
                        return msg
                    case TaskFailed(error=err):
                        raise from_wire(err.kind, err.message, err.detail)
        except asyncio.CancelledError:
            await self._send_quietly(worker, CancelTask(task_id=task_id))
            raise
        finally:
            self.scheduler.unwatch_task(task_id)

    def _commit_output(self, tx: Any, node: PlanNode, done: TaskDone) -> str:
        """Commit one materialized output to the run's branch (store thread)."""
        assert done.output is not None
        schema = pa.ipc.read_schema(pa.py_buffer(done.output.schema))
        tx.add_files(
            node.key, done.files, schema, node.spec.materialize,
            properties={CACHE_KEY_PROPERTY: node.cache_key},
        )
        return tx.publish(
            f"run {self.run_id}: {node.name} -> {node.key}",
            {"run_id": self.run_id, "model": node.name},
        )

    async def _publish(self, branch: str) -> tuple[str, list[str]]:
        """Merge the run's branch into the target as one commit, then drop the run branch."""
        # Only what changed: outputs published by an earlier run with the same key are not
        # committed again.
        tables = list(self.committed)
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
