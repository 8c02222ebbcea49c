"""A worker's function tasks: from RunTask to TaskDone. The project's files, the inputs
(mapped, pulled from another host, planned scans; for an early start, the objects that
come later), the environment, the process under its limits, and the output object or its
Parquet files (``Worker`` mixes this in)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from faas.faasd.envs import Environment, EnvironmentCache, EnvSpec
from faas.faasd.limits import Scratch, watch_memory
from faas.faasd.objects import ObjectStore, Pages, holding
from faas.faasd.peer import fetch_object
from faas.faasd.process import FunctionProcess
from faas.faasd.scans import TaskScans, read_scans
from faas.faasd.taskbox import TaskBox, base_environ, sandbox_spec
from faas.faasd.zygote import ZygotePool
from faas.protocol.errors import (
    FaasError,
    FunctionFailed,
    NotFound,
    OutOfMemory,
    RunCancelled,
    TimedOut,
)
from faas.protocol.messages import (
    Materialize,
    ObjectInfo,
    ObjectInput,
    ScanInput,
    error_message,
    node_label,
)
from faas.protocol.worker_messages import (
    FunctionResult,
    FunctionTask,
    InputsReady,
    ObjectReady,
    ObjectSource,
    RunTask,
    TaskDone,
    TaskFailed,
    TaskLog,
    TaskStarted,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


# What a secret's value is replaced with in a function's output and errors.
MASK = "********"


def masked(text: str, values: list[str]) -> str:
    """``text`` with each of ``values`` in it replaced by MASK (longest first, so that a
    value holding another is masked whole)."""
    for value in sorted(values, key=len, reverse=True):
        if value and value in text:
            text = text.replace(value, MASK)
    return text


def freeing(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn``, then the memory Arrow's allocator keeps after it returned to the system.

    An import or a query in the worker decodes whole tables in a pool thread; Arrow's
    allocator (mimalloc) keeps what they freed for that thread, so a worker that imported
    10 million rows would hold a gigabyte it no longer uses for the rest of its life."""

    def call(*args: Any) -> T:
        try:
            return fn(*args)
        finally:
            import pyarrow as pa

            pa.default_memory_pool().release_unused()

    return call


class FunctionTasks:
    """Running functions for the scheduler. The worker provides its state."""

    host_id: str
    token: bytes
    memory: int
    cpus: int
    # Seconds a function may run when its model names no timeout (None: no limit).
    function_timeout: float | None
    cpus_reserved: dict[str, int]
    work_root: Path
    objects: ObjectStore | None
    envs: EnvironmentCache
    zygotes: ZygotePool
    processes: dict[str, FunctionProcess]
    # Each task's own directory (faasd.taskbox), by task id.
    boxes: dict[str, TaskBox]
    # "sandbox" (faasd.sandbox) or "none": how function processes are isolated.
    isolation: str
    # What functions never see (the worker's token, its work and shared-memory roots).
    private_paths: list[str]
    shm_root: Path
    object_memory: int
    running_limits: dict[str, int]
    inputs_ready: dict[str, asyncio.Future[InputsReady]]
    released: OrderedDict[str, None]
    # The pull under way of each object: its source's address, and the pull.
    _pulls: dict[str, tuple[str, asyncio.Future[Path]]]
    _metadata: OrderedDict[str, Any]
    _plans: OrderedDict[tuple[Any, ...], Any]
    _metadata_lock: threading.Lock

    if TYPE_CHECKING:  # the worker's own

        async def _send(self, msg: Any) -> None: ...

        async def warmed(self) -> None: ...

        @property
        def store(self) -> ObjectStore: ...

        def _info(self, object_id: str) -> ObjectInfo: ...

    def _project_dir(self, run_id: str, files: dict[str, str]) -> Path:
        root = self.work_root / run_id / "project"
        if not root.exists():
            tmp = root.with_name(f"project.{uuid.uuid4().hex[:6]}")
            for rel, text in files.items():
                target = (tmp / rel).resolve()
                if not str(target).startswith(str(tmp.resolve())):
                    raise FaasError(f"project file {rel!r} points outside the project")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            try:
                tmp.rename(root)
            except OSError:  # another task of the same run got there first
                shutil.rmtree(tmp, ignore_errors=True)
        return root

    async def _run_task(self, msg: RunTask) -> None:
        t0 = time.perf_counter()
        await self.warmed()
        try:
            if msg.use_cache and msg.kind != "expectation":
                held = await self.store.use(msg.output_id, msg.run_id)
                if held is not None:
                    await self._send(await self._cached_done(msg, t0))
                    return
            project = self._project_dir(msg.run_id, msg.files)
            box = self.boxes[msg.task_id] = TaskBox(self.shm_root / "tasks" / msg.task_id)
            direct = msg.materialize is not None and msg.materialize.direct
            objects = {
                i.object_id: str(box.link_in(await self._input_path(msg, i.object_id)))
                for i in msg.inputs
                if isinstance(i, ObjectInput) and i.object_id not in msg.waiting
            }
            t_scan = time.perf_counter()
            scans = box.scans = await self._scans(msg, box)
            scanned = time.perf_counter() - t_scan
            prefetched = scans.read
            task = FunctionTask(
                run_id=msg.run_id, node=msg.node, project_dir=str(project), module=msg.module,
                function=msg.function, inputs=scans.inputs, objects=objects,
                scans=scans.files, input_problems=scans.problems,
                output_path=str(box.outbox / self.store.path(msg.output_id).name), params={**msg.params, **msg.secrets}, kind=msg.kind, sql=msg.sql,
                column_cache=str(box.inbox) if msg.use_cache else "",
                parquet_dir=box.parquet_dir(
                    msg.materialize.directory, sandboxed=self.isolation != "none",  # type: ignore[union-attr]
                ) if direct else "",
                parquet_stem=f"{msg.node}-{uuid.uuid4().hex[:8]}", threads=self._threads(msg),
                waiting=msg.waiting, contract=msg.contract, strict=msg.strict,
            )
            t_env = time.perf_counter()
            env = await self._environment(msg)
            phases = {"environment": time.perf_counter() - t_env}
            if scans.files or scans.read:
                phases["scan"] = scanned  # by the worker, for the function
            proc = FunctionProcess(
                task, python=env.python, cwd=str(project), zygote=self.zygotes.get(env.python),
                env=base_environ(),
                sandbox=None if self.isolation == "none" else sandbox_spec(
                    box=box, project=project,
                    scratch=msg.memory_limit or self.memory, file_size=self.object_memory,
                    network=msg.internet_access, hide=self.private_paths,
                ),
            )
            self.processes[msg.task_id] = proc
            spawned = time.time()
            for stream in scans.streams:
                stream.start()
            try:
                result = await self._run_limited(msg, proc, env)
            finally:
                await asyncio.to_thread(scans.close)
                if (failed := scans.failure()) is not None:
                    raise failed  # a streamed scan broke: that, not the function, failed
            phases["process_start"] = max(0.0, result.started - spawned) if result.started else 0.0
            phases.update(result.phases)
            # Columns the worker read for it count as read, not as found in the cache.
            read = [c for key in prefetched for c in prefetched[key]]
            result = msgspec.structs.replace(
                result, columns_read=read + result.columns_read,
                columns_cached=[c for c in result.columns_cached if c not in set(read)],
            )
            pin = None if msg.run_id in self.released else msg.run_id
            columns: dict[str, Any] = {
                "columns_cached": result.columns_cached, "columns_read": result.columns_read,
                "phases": phases, "inputs": result.inputs,
            }
            if result.passed is not None:  # an expectation: a verdict, no output object
                await self._send(TaskDone(
                    task_id=msg.task_id, passed=result.passed, seconds=time.perf_counter() - t0,
                    **columns,
                ))
                return
            if direct:  # written as Parquet by the function: no object to keep
                files = await asyncio.to_thread(
                    box.publish_parquet, result.files, msg.materialize.directory,  # type: ignore[union-attr]
                )
                await self._send(TaskDone(
                    task_id=msg.task_id, files=files, rows=result.rows,
                    schema=result.schema, seconds=time.perf_counter() - t0, **columns,
                ))
                return
            # Into the store: from now on only ever bound read-only.
            output = self.store.path(msg.output_id)
            os.replace(box.outbox / output.name, output)
            self.store.add(
                msg.output_id, pin, rows=result.rows, schema=result.schema,
                cacheable=msg.use_cache,
            )
            files: list[str] = []
            if msg.materialize is not None:
                # Readers need the object, not the Parquet file: they may start now.
                await self._send(ObjectReady(task_id=msg.task_id, output=self._info(msg.output_id)))
                t_parquet = time.perf_counter()
                files = await asyncio.to_thread(
                    freeing(self._write_parquet), output, msg.materialize, msg.node
                )
                phases["output_parquet"] = time.perf_counter() - t_parquet
            await self._send(TaskDone(
                task_id=msg.task_id, output=self._info(msg.output_id), files=files,
                seconds=time.perf_counter() - t0, **columns,
            ))
            await self.store.enforce()
        except asyncio.CancelledError:
            raise
        except RunCancelled as exc:
            await self._send(TaskFailed(task_id=msg.task_id, error=error_message(exc)))
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the worker goes on
            if not isinstance(exc, FaasError):
                log.exception("task %s failed inside the worker", msg.task_id)
            error = error_message(exc)
            if msg.secrets:  # the function's own words may hold a secret it was given
                values = [p for v in msg.secrets.values() for p in (v, *v.splitlines()) if p]
                error = msgspec.structs.replace(
                    error, message=masked(error.message, values),
                    detail=masked(error.detail, values),
                )
            await self._send(TaskFailed(task_id=msg.task_id, error=error))
        finally:
            self.processes.pop(msg.task_id, None)
            self.cpus_reserved.pop(msg.task_id, None)
            self.inputs_ready.pop(msg.task_id, None)
            box = self.boxes.pop(msg.task_id, None)
            if box is not None:
                box.close()

    def _threads(self, msg: RunTask) -> int:
        """The function's thread budget: the cores it reserved, else those nobody has."""
        if msg.cpus:
            self.cpus_reserved[msg.task_id] = msg.cpus
            return msg.cpus
        return max(1, self.cpus - sum(self.cpus_reserved.values()))

    async def _scans(self, msg: RunTask, box: TaskBox) -> TaskScans:
        """Every source scan of the task, read here for the function (faasd.scans): each
        scan Arrow can read is planned from metadata this worker keeps; with the cache,
        its columns become cache entries linked into the task's ``in/``; without it, a local
        table's data files are handed over in ``in/``; any other scan is written into
        ``in/`` as an IPC file, or fed to the function through a FIFO."""
        cache = self.store.columns_dir if msg.use_cache else None

        def metadata(location: str) -> Any:
            """The parsed metadata file: read once, kept for the next tasks."""
            from faas.store.scan import open_metadata

            with self._metadata_lock:
                table = self._metadata.get(location)
            if table is None:
                table = open_metadata(location)
                with self._metadata_lock:
                    self._metadata[location] = table
                    while len(self._metadata) > 64:
                        self._metadata.popitem(last=False)
            return table

        def plan(i: ScanInput) -> ScanInput:
            """The scan with its plan: made once per metadata file, snapshot, columns and
            filter (a metadata file never changes), kept for the next tasks."""
            from faas.store.scan import plan_metadata

            key = (i.metadata_location, i.snapshot_id,
                   None if i.columns is None else tuple(i.columns), i.filter)
            with self._metadata_lock:
                known = key in self._plans
                found = self._plans.get(key)
            if not known:
                try:
                    found = plan_metadata(
                        i.metadata_location, i.snapshot_id, i.columns, i.filter,
                        table=metadata(i.metadata_location),
                    )
                except Exception as exc:  # noqa: BLE001 - scanned unplanned, or reported by it
                    log.debug("could not plan the scan of %s: %s", i.key, exc)
                    return i
                with self._metadata_lock:
                    self._plans[key] = found
                    while len(self._plans) > 256:
                        self._plans.popitem(last=False)
            return i if found is None else msgspec.structs.replace(i, plan=found)

        if not any(isinstance(i, ScanInput) for i in msg.inputs):
            return TaskScans(inputs=list(msg.inputs))
        scans = await asyncio.to_thread(freeing(functools.partial(
            read_scans, list(msg.inputs), box.inbox, plan=plan, metadata=metadata,
            cache_dir=cache, link=box.link_in, sandboxed=self.isolation != "none",
        )))
        self.store.add_columns(scans.written)
        return scans

    async def _cached_done(self, msg: RunTask, t0: float) -> TaskDone:
        """The answer for an output this worker already holds: nothing runs."""
        files: list[str] = []
        if msg.materialize is not None:
            path = self.store.locate(msg.output_id)
            assert path is not None
            await self._send(ObjectReady(task_id=msg.task_id, output=self._info(msg.output_id)))
            files = await asyncio.to_thread(
                freeing(self._write_parquet), path, msg.materialize, msg.node
            )
        return TaskDone(
            task_id=msg.task_id, output=self._info(msg.output_id), files=files,
            seconds=time.perf_counter() - t0, cached=True,
        )

    async def _waited(self, msg: RunTask) -> dict[str, str]:
        """The paths of an early-started task's waiting objects, once the scheduler says
        where they are (pulled here if they are on another host). Its memory limit grows
        to count what it maps."""
        ready = await self.inputs_ready[msg.task_id]
        if ready.memory_limit and msg.task_id in self.running_limits:
            self.running_limits[msg.task_id] = ready.memory_limit
            await self._make_room()
        box = self.boxes[msg.task_id]
        return {
            oid: str(box.link_in(await self._input_path(msg, oid, ready.sources)))
            for oid in msg.waiting
        }

    async def _make_room(self) -> None:
        """Unpinned cache gives way to the memory the running functions were promised."""
        await self.store.enforce(
            min(self.store.budget, self.memory - sum(self.running_limits.values()))
        )

    async def _input_path(
        self, msg: RunTask, object_id: str, sources: dict[str, ObjectSource] | None = None
    ) -> Path:
        """The file to map for an upstream object: in this worker's store, in another
        worker's store on this host, or pulled here from another host (``sources``:
        where each lives, if not in the task's own)."""
        if await self.store.use(object_id, msg.run_id) is not None:
            path = self.store.locate(object_id)
            assert path is not None
            return path
        source = (sources or msg.sources).get(object_id)
        if source is None:
            raise NotFound(f"object {object_id!r} of task {msg.task_id} has no known location")
        if source.host_id == self.host_id and os.path.exists(source.path):  # noqa: ASYNC240 - a stat on tmpfs
            return Path(source.path)  # same host: the same shared memory, mapped in place
        # One pull of an object at a time (two would land in one file): a task whose source
        # is another than that of the pull under way waits for it, and is served by what it
        # pulled; if it failed, this task pulls from its own source.
        while (held := self._pulls.get(object_id)) is not None and not held[1].done():
            if held[0] == source.address:
                break  # the same pull: its outcome is this task's too
            with contextlib.suppress(Exception):
                await asyncio.shield(held[1])
            if await self.store.use(object_id, msg.run_id) is not None:
                path = self.store.locate(object_id)
                assert path is not None
                return path
        if held is None or held[1].done():
            pull = asyncio.ensure_future(self._pull(msg, object_id, source))
            held = self._pulls[object_id] = (source.address, pull)
            pull.add_done_callback(
                lambda _, mine=held: self._pulls.pop(object_id)
                if self._pulls.get(object_id) is mine else None
            )
        await asyncio.shield(held[1])
        await self.store.use(object_id, msg.run_id)
        return held[1].result()

    async def _pull(self, msg: RunTask, object_id: str, source: ObjectSource) -> Path:
        dest = self.store.path(object_id)
        mapped: list[Pages] = []  # this process's mapping of the object, for its entry
        try:
            nbytes = await asyncio.to_thread(
                fetch_object, source.address, object_id, dest, token=self.token,
                host_id=self.host_id, reuse=self.store.claim, keep=mapped.append,
            )
            self.store.add(
                object_id, None if msg.run_id in self.released else msg.run_id,
                rows=source.rows, schema=source.schema, cacheable=msg.use_cache,
                pages=mapped[0] if mapped else None,
            )
            mapped.clear()  # the entry owns them now
        finally:
            for pages in mapped:
                pages.done()
        log.info(
            "pulled object %s (%d MiB) from worker %s for run %s",
            object_id, nbytes >> 20, source.worker_id, msg.run_id,
        )
        return dest

    async def _environment(self, msg: RunTask) -> Environment:
        """The function's environment, built (once, with its output streamed) if needed."""

        async def on_line(line: str) -> None:
            await self._send(TaskLog(task_id=msg.task_id, stream="stderr", line=line, time=time.time()))

        return await self.envs.ensure(EnvSpec.of(msg.python, msg.pip), log=on_line)

    async def _run_limited(
        self, msg: RunTask, proc: FunctionProcess, env: Environment
    ) -> FunctionResult:
        """Run the process under its memory limit and timeout, streaming its lines."""
        over: list[int] = []
        watchers: list[asyncio.Task[None]] = []
        scratch: list[Scratch] = []
        # Unpinned cache gives way to the memory this function was promised.
        self.running_limits[msg.task_id] = msg.memory_limit
        await self._make_room()

        def limit() -> int:  # it grows when an early-started function's inputs come
            return self.running_limits.get(msg.task_id, msg.memory_limit)

        # A secret over several lines is printed over several: each is masked.
        secrets = [part for v in msg.secrets.values() for part in (v, *v.splitlines()) if part]

        async def on_line(stream: str, line: str) -> None:
            if secrets:
                line = masked(line, secrets)
            await self._send(TaskLog(task_id=msg.task_id, stream=stream, line=line, time=time.time()))

        async def on_start(pid: int) -> None:
            if proc.sandbox is not None:
                scratch.append(Scratch(pid, proc.sandbox.scratch))
            how = "base" if env.path is None else ("cached" if env.cached else "built")
            await self._send(TaskStarted(task_id=msg.task_id, pid=pid, env=how))
            if msg.memory_limit:

                def stop(used: int) -> None:
                    over.append(used)
                    proc.kill()

                watchers.append(asyncio.create_task(
                    watch_memory(pid, limit, stop, scratch[0] if scratch else None)
                ))

        what = f"{node_label(msg.kind)} {msg.node!r}"
        timeout = msg.timeout or self.function_timeout
        deadline = asyncio.timeout(timeout)

        async def waited() -> dict[str, str]:
            # Time spent waiting for upstream functions is not the function's own: the
            # clock stops while it waits.
            loop = asyncio.get_running_loop()
            when = deadline.when()
            left = None if when is None else when - loop.time()
            deadline.reschedule(None)
            try:
                return await self._waited(msg)
            finally:
                if left is not None and not deadline.expired():
                    with contextlib.suppress(RuntimeError):  # the run ended meanwhile
                        deadline.reschedule(loop.time() + max(left, 0.0))

        try:
            async with deadline:
                return await proc.run(on_line, on_start, waited() if msg.waiting else None)
        except TimeoutError:
            whose = "" if msg.timeout else " (the worker's default: faasd worker --function-timeout)"
            raise TimedOut(
                f"{what} ran past its timeout of {timeout:g}s{whose} and was stopped"
            ) from None
        except FunctionFailed:
            if over:
                raise OutOfMemory(what, over[0], limit()) from None
            if msg.memory_limit and scratch and scratch[0].full():
                # Its scratch directory filled up to the reservation: the writes that
                # failed there are the memory error, whatever the function made of them.
                raise OutOfMemory(what, scratch[0].used(), limit()) from None
            raise
        finally:
            for w in watchers:
                w.cancel()
            for s in scratch:
                s.close()
            self.running_limits.pop(msg.task_id, None)

    def _write_parquet(self, object_path: Path, materialize: Materialize, node: str) -> list[str]:
        import pyarrow as pa

        from faas.store.files import write_parquet_parts

        with holding(object_path):
            table = pa.ipc.open_file(pa.memory_map(str(object_path), "r")).read_all()
            return write_parquet_parts(
                table, materialize.directory, f"{node}-{uuid.uuid4().hex[:8]}",
                threads=self.cpus, partitioned_by=materialize.partitioned_by,
                what=materialize.key,
            )[0]
