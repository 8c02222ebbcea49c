"""One run from plan to publish: place ready nodes, follow their events, commit outputs."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa

from faas.protocol.errors import (
    ExpectationFailed,
    FaasError,
    FunctionFailed,
    OutOfMemory,
    PeerVanished,
    RunCancelled,
    from_wire,
)
from faas.protocol.messages import (
    ImportMode,
    LogLine,
    Materialize,
    ObjectInfo,
    ObjectInput,
    RunFinished,
    ScanInput,
    TaskEvent,
    TaskState,
    error_message,
    node_label,
)
from faas.protocol.sizes import parse_size
from faas.protocol.worker_messages import (
    CancelTask,
    InputsReady,
    ObjectReady,
    ObjectSource,
    ReleaseRun,
    RunTask,
    TaskDone,
    TaskFailed,
    TaskLog,
    TaskStarted,
)
from faas.scheduler.dag import Plan, PlanNode, decoded_width
from faas.scheduler.placement import Request
from faas.scheduler.publish import Publishing
from faas.scheduler.run_host import RunHost
from faas.scheduler.run_state import Fail, Inputs, Instruction, RunState, Say, Start, Stop
from faas.store.refs import run_branch_name

if TYPE_CHECKING:
    from faas.scheduler.server import WorkerHandle

log = logging.getLogger(__name__)

Emit = Callable[[Any], Awaitable[None]]

# What any function process needs before it touches data (interpreter, pyarrow, buffers).
BASE_RESERVATION = 512 * 2**20
# The kind of durable result an expectation leaves in the catalog (see Catalog.recall).
VERDICT = "verdict"


def _column_names(schema: bytes) -> list[str]:
    """The column names of an Arrow schema in its IPC form."""
    return list(pa.ipc.read_schema(pa.py_buffer(schema)).names)


class RunCoordinator(Publishing):
    def __init__(
        self,
        scheduler: RunHost,
        run_id: str,
        plan: Plan,
        files: dict[str, str],
        emit: Emit,
        strict: bool = False,
        use_cache: bool = True,
        author: str = "faas",
    ) -> None:
        self.scheduler = scheduler
        # Who submitted it: the author of what it commits.
        self.author = author
        self.run_id = run_id
        self.plan = plan
        self.files = files
        self.emit = emit
        self.strict = strict
        self.use_cache = use_cache
        # What each finished node returned, and the objects of nodes still writing their
        # table (readable already).
        self.outputs: dict[str, TaskDone] = {}
        self.ready: dict[str, TaskDone] = {}
        # Where each node's output lives, and every worker that ran anything of this run.
        self.placed: dict[str, WorkerHandle] = {}
        self.used_workers: set[str] = set()
        # The task of each node's current try.
        self.tasks: dict[str, asyncio.Task[TaskDone]] = {}
        self.publishing = False
        # Output tables committed to the run's branch, in the order they were.
        self.committed: list[str] = []
        # Known verdicts of this plan's expectations (durable: read in execute()), and
        # the nodes with nothing to do given them.
        self.verdicts: dict[str, bool] = {}
        self.skipped: set[str] = set()
        self.lost_objects: set[str] = set()
        # Transactions begun, and their data directories found, when the run started: a
        # node that becomes ready does not wait behind other nodes' commits for them.
        self.begun: dict[str, tuple[Any, str]] = {}
        self.branch = run_branch_name(run_id)
        # The run's decisions; what they are fed: a node's try ended, a worker was lost.
        self.state = RunState(
            plan.order, {n: node.deps for n, node in plan.nodes.items()},
            scans=[n for n, node in plan.nodes.items()
                   if any(isinstance(i, ScanInput) for i in node.inputs)],
            fits=self._fits,
        )
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.failure: BaseException | None = None
        # Memory reserved by each node's current try (doubled after running out of it).
        self.reserved: dict[str, int] = {}
        # Early-started tries on a worker that wait for upstream objects: (worker, task id,
        # reservation, object ids), and the task sending them their objects once made.
        self.trying: dict[str, tuple[WorkerHandle, str, int, list[str]]] = {}
        self.delivering: dict[str, asyncio.Task[None]] = {}

    async def _event(self, node: str, state: TaskState, **kw: Any) -> None:
        await self.emit(TaskEvent(run_id=self.run_id, node=node, state=state, time=time.time(), **kw))

    async def execute(self) -> RunFinished:
        """Run every node; outputs commit to the run's branch, which merges into the target
        branch as one commit only when everything succeeded."""
        t0 = time.perf_counter()
        catalog = self.scheduler.lakehouse.catalog
        branch = self.branch
        try:
            await self.scheduler.store_call(
                catalog.create_run_branch, self.run_id, f"@{self.plan.base}"
            )
            if self.use_cache:
                self.verdicts = await self.scheduler.store_call(
                    catalog.recall, VERDICT,
                    [n.cache_key for n in self.plan.nodes.values() if n.spec.is_expectation],
                )
                self.skipped = self._skippable()
            self.begun = await self.scheduler.store_call(self._begin_all, branch)
            await self._run_nodes(branch)
            self.publishing = True
            commit, tables = await self._published(branch)
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

    def worker_lost(self, worker_id: str, objects: tuple[str, ...]) -> None:
        """A worker is gone, with the only copies of ``objects`` (the placement says)."""
        self.lost_objects.update(objects)
        self.inbox.put_nowait(("lost", None))

    async def _run_nodes(self, branch: str) -> None:
        """Feed the run's state machine what happens, and carry out what it decides,
        until every node is done (or it decides the run fails)."""
        for name in self.plan.order:
            await self._event(name, "queued")
        await self._carry_out(self.state.start())
        while not self.state.complete and self.failure is None:
            kind, item = await self.inbox.get()
            if kind == "lost":
                lost = self._lost_outputs()
                await self._carry_out(self.state.outputs_lost(lost))
                for name in lost:
                    if self.state.state(name) == "idle":  # forgotten: made again
                        self.outputs.pop(name, None)
            elif kind == "ended":
                name, task = item
                if self.tasks.get(name) is task:
                    del self.tasks[name]
                await self._carry_out(await self._ended(name, task))
        if self.failure is not None:
            raise self.failure

    async def _ended(self, name: str, task: asyncio.Task[TaskDone]) -> list[Instruction]:
        """What the state machine makes of the end of a node's try."""
        if self.state.state(name) == "stopping":
            return self.state.stopped(name)
        if task.cancelled():
            return []  # the run is ending
        self.ready.pop(name, None)
        exc = task.exception()
        if exc is None:
            self.outputs[name] = task.result()
            return self.state.done(name)
        if isinstance(exc, PeerVanished):
            return self.state.worker_lost(name, exc)
        if isinstance(exc, OutOfMemory):
            out = self.state.out_of_memory(
                name, exc, self.reserved.get(name, 0), self.scheduler.largest_memory()
            )
            if any(isinstance(i, Fail) for i in out):
                await self._event(name, "failed", error=exc.message)
            return out
        return self.state.failed(name, exc)

    async def _carry_out(self, instructions: list[Instruction]) -> None:
        for ins in instructions:
            match ins:
                case Start(node=name, attempt=attempt, reservation=reservation):
                    task = asyncio.create_task(
                        self._run_node(self.plan.nodes[name], self.branch, attempt, reservation)
                    )
                    self.tasks[name] = task
                    task.add_done_callback(functools.partial(self._try_ended, name))
                case Stop(node=name):
                    if (stopping := self.tasks.get(name)) is not None:
                        stopping.cancel()
                case Inputs(node=name):
                    if name in self.trying and name not in self.delivering:
                        self.delivering[name] = asyncio.create_task(self._deliver(name))
                case Say(node=name, state=state, error=error):
                    await self._event(name, state, error=error)
                case Fail(error=error):
                    self.failure = error
                    self.inbox.put_nowait(("failed", None))

    def _try_ended(self, name: str, task: asyncio.Task[TaskDone]) -> None:
        self.inbox.put_nowait(("ended", (name, task)))

    def _lost_outputs(self) -> list[str]:
        """Finished nodes whose output's every copy is gone."""
        return [
            name for name, done in self.outputs.items()
            if done.output is not None and done.output.object_id in self.lost_objects
            and not self.scheduler.holders(done.output.object_id)
        ]

    def _fits(self, name: str) -> bool:
        """Whether a node could be placed at once (asked before an early start)."""
        node = self.plan.nodes[name]
        return self.scheduler.fits_now(self._request(node, "", self.reservation(node)))

    def _available(self, name: str) -> bool:
        """A node's output can be read: it is done, or its object is ready while it writes."""
        return self.state.made(name)

    def _done(self, name: str) -> TaskDone:
        return self.outputs[name] if name in self.outputs else self.ready[name]

    def upstream(self, node: PlanNode) -> dict[str, tuple[str, ObjectInfo]]:
        """The upstream objects a node maps (those made so far): object id -> (producing
        node, object)."""
        found = {}
        for i in node.inputs:
            if isinstance(i, ObjectInput) and self._available(i.node):
                out = self._done(i.node).output
                if out is not None:
                    found[i.object_id] = (i.node, out)
        return found

    def reservation(self, node: PlanNode) -> int:
        """A node's own memory: as declared, else estimated from what it reads. The
        estimate counts, besides what it scans, something the size of what it maps (what a
        function usually builds from its inputs); the mapped pages themselves are shared,
        counted once for their host however many readers map them."""
        if node.spec.memory:
            return parse_size(node.spec.memory)
        mapped = sum(o.nbytes for _, o in self.upstream(node).values())
        # What it scans, decoded (several times its compressed size), and what a function
        # usually builds from it; a function builds something the size of what it maps.
        scanned = max(4 * node.scan_bytes, 3 * node.scan_decoded)
        return BASE_RESERVATION + scanned + mapped

    def _skippable(self) -> set[str]:
        """Models with nothing to do: everything that reads them has nothing to do (or is
        an expectation whose verdict on the same inputs is known), and their table is
        published from the same key already, or they have no table at all."""
        skip: set[str] = set()
        for name in reversed(self.plan.order):
            node = self.plan.nodes[name]
            if node.spec.is_expectation:
                if node.cache_key in self.verdicts:
                    skip.add(name)
                continue
            readers = self._consumers(node)
            if not all(c in skip for c in readers):
                continue
            if name in self.plan.published or (readers and not node.spec.materialize):
                skip.add(name)
        return {n for n in skip if not self.plan.nodes[n].spec.is_expectation}

    def _consumers(self, node: PlanNode) -> list[str]:
        return [n.name for n in self.plan.nodes.values() if node.name in n.deps]

    def _read_from_table(self, node: PlanNode) -> bool:
        """Let the readers of a published node scan its table instead of mapping its
        object, when no live worker holds that object (a restart lost it). The table's
        rows are the object's rows: its snapshot was made from the same cache key.
        Readers' cache keys do not change, since they name the node's key, not the
        table. Returns whether the readers were switched."""
        table = self.plan.published_tables.get(node.name)
        if table is None or self.scheduler.holders(node.object_id):
            return False
        readers = [self.plan.nodes[n] for n in self._consumers(node)]
        taken = [i for r in readers for i in r.inputs
                 if isinstance(i, ObjectInput) and i.node == node.name]
        if any(i.filter for i in taken):
            return False  # a model's filter is SQL over its rows, not a scan predicate
        for reader in readers:
            inputs: list[ScanInput | ObjectInput] = []
            for i in reader.inputs:
                if isinstance(i, ObjectInput) and i.node == node.name:
                    read = [f for f in table.schema if not i.columns or f.name in i.columns]
                    reader.scan_bytes += table.size_bytes * len(read) // max(1, len(table.schema))
                    reader.scan_decoded += table.row_count * sum(decoded_width(f.type) for f in read)
                    i = ScanInput(
                        param=i.param, key=table.key, metadata_location=table.metadata_location,
                        snapshot_id=table.snapshot_id, columns=i.columns, stream=i.stream,
                    )
                inputs.append(i)
            reader.inputs = inputs
        return True

    async def _run_node(
        self, node: PlanNode, branch: str, attempt: int, reservation: int | None = None
    ) -> TaskDone:
        """One try of a node (``reservation``: None for the usual estimate)."""
        try:
            verdict = self.verdicts.get(node.cache_key)
            if node.spec.is_expectation and verdict is not None:
                return await self._verdict(node, verdict, cached=True, worker="")
            # A table whose snapshot was made from this very key is published already.
            published = self.use_cache and node.name in self.plan.published
            if published:
                self._strict_about_cached(node, lambda: self.plan.published_columns.get(node.name))
            if node.name in self.skipped:
                # ... and nothing that will run needs its rows: there is nothing to do.
                await self._event(node.name, "done", cached=True)
                return TaskDone(task_id="", cached=True)
            if published and self._read_from_table(node):
                # ... and its rows are no worker's object any more: its readers scan them.
                await self._event(node.name, "done", cached=True)
                return TaskDone(task_id="", cached=True)
            tx = None
            # (A node made again after a worker loss has committed its table already.)
            if node.spec.materialize and not published and node.key not in self.committed:
                begun = self.begun.pop(node.name, None)
                tx = begun[0] if begun is not None else await self.scheduler.store_call(
                    self.scheduler.lakehouse.begin, branch
                )
            if reservation is None:
                reservation = self.reservation(node)
            self.reserved[node.name] = reservation
            return await self._attempt(node, tx, reservation, attempt)
        except (asyncio.CancelledError, OutOfMemory):
            raise  # (the run's state machine says whether running out of memory fails it)
        except BaseException as exc:
            # Every way a node can fail is reported once, so no node stays "running".
            worker = self.placed.get(node.name)
            await self._event(
                node.name, "failed", worker=worker.worker_id if worker else "",
                error=getattr(exc, "message", None) or str(exc) or type(exc).__name__,
            )
            raise

    def _strict_about_cached(
        self, node: PlanNode, columns: Callable[[], list[str] | None]
    ) -> None:
        """A strict run takes no cached output with a column its model's declaration does
        not name: the run that made it only warned of it (faasd/contracts.py), and the
        cache key does not hold --strict. ``columns()``: the output's, if known (asked only
        in a strict run of a model with a declaration)."""
        contract = node.spec.contract
        if not self.strict or contract is None or (names := columns()) is None:
            return
        said = contract.undeclared(names)
        if said is not None:
            raise FunctionFailed(
                f"{node_label(node.spec.kind)} {node.name!r} {said} (--strict; its output is "
                f"cached from a run without --strict)"
            )

    async def _verdict(self, node: PlanNode, passed: bool, *, cached: bool, worker: str,
                       **timings: Any) -> TaskDone:
        if not passed:
            what = f"expectation {node.name!r} failed"
            if self.strict:
                raise ExpectationFailed(f"{what} (--strict): nothing was published")
            await self._event(node.name, "warning", worker=worker, error=what, cached=cached,
                              passed=False, **timings)
        else:
            await self._event(node.name, "done", worker=worker, cached=cached, passed=True,
                              **timings)
        return TaskDone(task_id="", passed=passed, cached=cached)

    async def _attempt(self, node: PlanNode, tx: Any, reservation: int, attempt: int) -> TaskDone:
        task_id = f"{self.run_id}:{node.name}:{attempt}"
        request = self._request(node, task_id, reservation)
        ready = time.perf_counter()
        worker = await self.scheduler.place(request)
        queued = time.perf_counter() - ready
        done: TaskDone | None = None
        try:
            done = await self._on(worker, node, tx, reservation, task_id, queued)
            return done
        finally:
            output = done.output if done is not None else None
            self.scheduler.release(task_id, output, new=done is not None and not done.cached)

    def _request(self, node: PlanNode, task_id: str, reservation: int) -> Request:
        upstream = self.upstream(node)
        # Near its producers, those of objects still being made too.
        producers = {p for p, _ in upstream.values()} | {
            d for d in node.deps if self.state.is_placed(d)
        }
        return Request(
            request_id=task_id, run_id=self.run_id, node=node.name,
            label=f"{node.spec.label} {node.name!r}", reservation=reservation,
            inputs={oid: o.nbytes for oid, (_, o) in upstream.items()},
            producers=frozenset(self.placed[p].worker_id for p in producers if p in self.placed),
            cached_output=node.object_id if self.use_cache else "",
            cpus=node.spec.cpus or 0,
        )

    def _sources(self, node: PlanNode, worker: WorkerHandle) -> dict[str, ObjectSource]:
        """Where each upstream object is read from: a copy on the worker's own host when
        there is one, else any live copy."""
        sources = {}
        for oid, (producer, made) in self.upstream(node).items():
            holders = {
                w: info for w, info in self.scheduler.holders(oid).items()
                if w in self.scheduler.workers
            }
            if not holders:
                raise PeerVanished(f"object {oid!r} of {producer!r} was lost with its worker")
            wid = next(
                (w for w in holders if self.scheduler.workers[w].host_id == worker.host_id),
                next(iter(holders)),
            )
            holder, info = self.scheduler.workers[wid], holders[wid]
            sources[oid] = ObjectSource(
                worker_id=wid, host_id=holder.host_id, address=holder.data_address,
                path=getattr(info, "path", made.path), rows=made.rows, schema=made.schema,
            )
        return sources

    async def _on(
        self, worker: WorkerHandle, node: PlanNode, tx: Any, reservation: int, task_id: str,
        queued: float = 0.0,
    ) -> TaskDone:
        self.used_workers.add(worker.worker_id)
        self.placed[node.name] = worker
        materialize = None
        if tx is not None:
            # Found when the transaction began (the same for the whole transaction).
            directory = tx.data_location(node.key) if tx.has_location(node.key) else (
                await self.scheduler.store_call(tx.data_location, node.key)
            )
            materialize = Materialize(
                key=node.key, directory=directory,
                # checked when the project was read (project.MATERIALIZE_MODES)
                mode=cast(ImportMode, node.spec.materialize or "replace"),
                # A partitioned output is cut into partitions by the worker, whose
                # environment has Iceberg's transforms (the function's may not).
                direct=not self._consumers(node) and not node.spec.partitioned_by,
                partitioned_by=node.spec.partitioned_by,
            )
        queue = self.scheduler.watch_task(task_id, worker)
        try:
            # On a worker now: what it lacks now (an early start) it is sent once made (an
            # Inputs instruction); nodes waiting for it may start early. Nothing is awaited
            # between finding where its inputs are and what it lacks.
            sources = self._sources(node, worker)
            then = self.state.placed(node.name)
            waits = self.state.waiting_for(node.name)
            waiting = [
                i.object_id for i in node.inputs if isinstance(i, ObjectInput) and i.node in waits
            ]
            mapped = sum(o.nbytes for _, o in self.upstream(node).values())
            if (now := self.reservation(node)) > reservation:  # inputs made while it was placed
                self.scheduler.grow(task_id, now - reservation)
                reservation = self.reserved[node.name] = now
            if waiting:
                self.trying[node.name] = (worker, task_id, reservation, waiting)
            await self._carry_out(then)
            await worker.conn.send(
                RunTask(
                    task_id=task_id, run_id=self.run_id, node=node.name, files=self.files,
                    module=node.spec.module, function=node.spec.function, inputs=node.inputs,
                    params=node.params, materialize=materialize, kind=node.spec.kind,
                    sql=node.spec.sql, python=node.spec.python, pip=node.spec.pip,
                    # A sole reader's unique pages include what it maps.
                    memory_limit=reservation + mapped, cpus=node.spec.cpus or 0,
                    timeout=node.spec.timeout, internet_access=node.spec.internet_access,
                    output_id=node.object_id, sources=sources, use_cache=self.use_cache,
                    waiting=sorted(waiting), contract=node.spec.contract, strict=self.strict,
                    secrets={p: self.plan.secret_values[name] for p, name in node.secrets.items()},
                )
            )
            while True:
                msg = await queue.get()
                match msg:
                    case TaskStarted(env=env):
                        await self._event(node.name, "running", worker=worker.worker_id, env=env)
                    case ObjectReady(output=output):
                        # Readers may pull it from this worker from now on; said before any
                        # of them starts, so events read in the order things happened.
                        self.scheduler.stored(worker.worker_id, output.object_id, output)
                        self.ready[node.name] = TaskDone(task_id=task_id, output=output)
                        await self._event(node.name, "ready", worker=worker.worker_id,
                                          rows=output.rows)
                        await self._carry_out(self.state.object_ready(node.name))
                    case TaskLog(stream=stream, line=line, time=t):
                        await self.emit(
                            LogLine(run_id=self.run_id, node=node.name, stream=stream, line=line, time=t)
                        )
                    case TaskDone(passed=bool(passed)):
                        if self.use_cache:
                            await self.scheduler.store_call(
                                self.scheduler.lakehouse.catalog.remember, VERDICT,
                                node.cache_key, passed,
                            )
                        await self._verdict(node, passed, cached=False, worker=worker.worker_id,
                                            phases={"queued": queued, **msg.phases},
                                            inputs=msg.inputs)
                        return msg
                    case TaskDone():
                        if msg.cached and msg.output is not None:
                            self._strict_about_cached(
                                node, functools.partial(_column_names, msg.output.schema)
                            )
                        phases = {"queued": queued, **msg.phases}
                        if tx is not None:
                            t_commit = time.perf_counter()
                            await self.scheduler.store_call(self._commit_output, tx, node, msg)
                            phases["commit"] = time.perf_counter() - t_commit
                            self.committed.append(node.key)
                        await self._event(
                            node.name, "done", worker=worker.worker_id,
                            rows=msg.output.rows if msg.output else msg.rows, cached=msg.cached,
                            columns_cached=msg.columns_cached, columns_read=msg.columns_read,
                            phases=phases, inputs=msg.inputs,
                        )
                        return msg
                    case TaskFailed(error=err):
                        raise from_wire(err.kind, err.message, err.detail)
        except asyncio.CancelledError:
            await self._send_quietly(worker, CancelTask(task_id=task_id))
            raise
        finally:
            self.scheduler.unwatch_task(task_id)
            self.trying.pop(node.name, None)
            if (deliver := self.delivering.pop(node.name, None)) is not None:
                deliver.cancel()

    async def _deliver(self, name: str) -> None:
        """Tell the worker of an early-started node where the upstream objects it waited
        for are, now that they are all made; its reservation grows by what it maps (and
        pulls)."""
        node = self.plan.nodes[name]
        worker, task_id, reservation, waiting = self.trying[name]
        try:
            sources = self._sources(node, worker)
            missing = [oid for oid in waiting if oid not in sources]
            if missing:
                raise PeerVanished(f"object {missing[0]!r} is no longer made")
        except PeerVanished as exc:  # lost before it could be read: the node runs again
            await self._send_quietly(worker, CancelTask(task_id=task_id))
            self.scheduler.fail_task(task_id, "PeerVanished", str(exc))
            return
        made = {oid: o for oid, (_, o) in self.upstream(node).items()}
        now = self.reservation(node)
        self.reserved[name] = max(self.reserved.get(name, 0), now)
        pulled = sum(made[oid].nbytes for oid, src in sources.items()
                     if oid in made and src.host_id != worker.host_id)
        self.scheduler.grow(task_id, now - reservation + pulled)
        await self._send_quietly(worker, InputsReady(
            task_id=task_id, sources={oid: sources[oid] for oid in waiting},
            memory_limit=now + sum(o.nbytes for o in made.values()),
        ))

    async def _cancel_running(self) -> None:
        running = {name: task for name, task in self.tasks.items() if not task.done()}
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        for delivery in self.delivering.values():
            delivery.cancel()
        for name in running:
            await self._event(name, "cancelled")
        self.tasks.clear()

    @staticmethod
    async def _send_quietly(worker: WorkerHandle, msg: Any) -> None:
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


__all__ = ["RunCoordinator", "RunHost"]
