"""The scheduler's run requests: submit (plan, then run), follow, cancel, and how each run
ends up recorded (``Scheduler`` mixes this in)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from faas.protocol.connection import Connection
from faas.protocol.errors import ConnectionClosed, FaasError, InvalidInput
from faas.protocol.messages import (
    Error,
    FollowJob,
    LogLine,
    RunAccepted,
    RunFinished,
    SubmitRun,
    error_message,
)
from faas.protocol.replies import Cancelled, PlanDescription
from faas.scheduler.analysis import Analyzer
from faas.scheduler.jobs import JobStore, LogBudget
from faas.scheduler.planner import plan_submission
from faas.scheduler.run import RunCoordinator
from faas.scheduler.run_host import RunHost
from faas.scheduler.secret_store import SecretStore
from faas.store.refs import run_branch_name

if TYPE_CHECKING:
    from faas.scheduler.server import WorkerHandle

log = logging.getLogger(__name__)

T = TypeVar("T")


class RunRequests:
    """Submitting, following and cancelling runs. The scheduler provides its state."""

    analysis: Analyzer
    jobs: JobStore | None
    lakehouse: Any
    workers: dict[str, WorkerHandle]
    runs: dict[str, asyncio.Task[RunFinished]]
    coordinators: dict[str, RunCoordinator]
    followers: dict[str, set[asyncio.Queue[Any]]]
    last_active: float
    run_log_limit: int
    secrets: SecretStore

    if TYPE_CHECKING:
        async def store_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

        def background(self, coro: Any) -> None: ...

    async def _cancel_run(self, run_id: str) -> Cancelled:
        assert self.jobs is not None
        run = self.runs.get(run_id)
        if run is None or run.done():
            status = self.jobs.get(run_id).status  # NotFound for unknown runs
            raise InvalidInput(f"run {run_id!r} is not running (it is {status})")
        if self.coordinators[run_id].publishing:
            raise InvalidInput(f"run {run_id!r} is publishing its outputs; it can no longer be cancelled")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        return Cancelled(run_id=run_id)

    async def _submit(self, conn: Connection[Any], request: SubmitRun) -> None:
        # Read here, on the event loop: the worker table changes only on this thread.
        versions = {v for w in self.workers.values() for v in w.python_versions}
        project = await self.analysis.project(request.files)
        plan = await self.store_call(
            plan_submission, self.lakehouse, request, versions or None, project,
            self.secrets.lookup,
        )
        if request.dry_run:
            await conn.send(PlanDescription(plan=plan.describe()))
            return
        run_id = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        log.info("run %s accepted: %d models, ref %s%s", run_id, len(plan.order), request.ref,
                 " (detached)" if request.detach else "")
        jobs = self.jobs
        assert jobs is not None
        jobs.start(run_id, ref=request.ref, namespace=request.namespace,
                   project=request.project_dir, nodes=plan.order,
                   shape={n: (node.spec.kind, list(node.deps)) for n, node in plan.nodes.items()},
                   user=conn.peer_user or None)
        followers = self.followers[run_id] = set()
        attached = None if request.detach else conn

        budget = LogBudget(self.run_log_limit)

        async def emit(msg: Any) -> None:
            if isinstance(msg, LogLine) and (msg := budget.admit(msg)) is None:
                return
            jobs.record(msg)
            for queue in followers:
                queue.put_nowait(msg)
            if attached is not None:
                try:
                    await attached.send(msg)
                except FaasError:
                    pass  # the client is gone; the watcher below cancels the run

        coordinator = RunCoordinator(
            cast("RunHost", self),  # the Scheduler this is mixed into
            run_id, plan, request.files, emit, strict=request.strict,
            use_cache=not request.no_cache, author=conn.peer_user or "faas",
        )
        run = asyncio.create_task(coordinator.execute())
        self.runs[run_id] = run
        self.coordinators[run_id] = coordinator
        # Accepted only once the run is known: a follower or a cancel may come at once.
        accepted = False
        try:
            await conn.send(RunAccepted(run_id=run_id, nodes=plan.order))
            accepted = True
        finally:
            if attached is None:  # a detached run ends on its own, heard or not
                self.background(self._finish(run_id, run, None))
            elif not accepted:  # nobody will ever hear of it: stop it
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                self._forget(run_id, self._outcome(run_id, run))
        if attached is not None:
            await self._finish(run_id, run, attached)

    async def _finish(self, run_id: str, run: asyncio.Task[RunFinished],
                      conn: Connection[Any] | None) -> None:
        """Wait for a run, record how it ended, tell its followers (and its client, when
        it has one: a client that hangs up first cancels it)."""
        coordinator = self.coordinators[run_id]
        watcher = asyncio.create_task(conn.recv()) if conn is not None else None
        result: RunFinished | None = None
        try:
            await asyncio.wait({run} | ({watcher} if watcher else set()),
                               return_when=asyncio.FIRST_COMPLETED)
            if not run.done() and not coordinator.publishing:
                # The client hung up (or spoke out of turn): cancel its run.
                log.info("run %s cancelled: client went away", run_id)
                run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            result = self._outcome(run_id, run)
            log.info("run %s finished: %s in %.2fs", run_id, result.status, result.seconds)
            # Recorded and forgotten before the client hears: a cancel arriving now finds
            # the run finished, never half-finished.
            self._forget(run_id, result)
            if watcher is not None and watcher.done():
                raise ConnectionClosed("client left")
            if conn is not None:
                await conn.send(result)
        finally:
            if run_id in self.runs:  # left early: the daemon is closing
                self._forget(run_id, result)
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    def _forget(self, run_id: str, result: RunFinished | None) -> None:
        assert self.jobs is not None
        self.jobs.finish(run_id, result)
        self.runs.pop(run_id, None)
        self.coordinators.pop(run_id, None)
        self.last_active = time.monotonic()
        end = result or self.jobs.outcome(run_id)
        for queue in self.followers.pop(run_id, ()):
            queue.put_nowait(end)

    async def _follow(self, conn: Connection[Any], request: FollowJob) -> None:
        """Send a run's events so far, then the rest as they happen, then how it ended."""
        assert self.jobs is not None
        record = self.jobs.get(request.run_id)  # NotFound for unknown runs
        # No await between reading the backlog and joining the followers: nothing is
        # missed and nothing is sent twice.
        backlog = self.jobs.replay(request.run_id)
        live: asyncio.Queue[Any] | None = None
        if request.run_id in self.followers:
            live = asyncio.Queue()
            self.followers[request.run_id].add(live)
        try:
            await conn.send(RunAccepted(run_id=request.run_id, nodes=list(record.nodes)))
            for msg in backlog:
                await conn.send(msg)
            if live is None:
                await conn.send(self.jobs.outcome(request.run_id))
                return
            while True:
                msg = await live.get()
                await conn.send(msg)
                if isinstance(msg, RunFinished):
                    return
        finally:
            if live is not None:
                self.followers.get(request.run_id, set()).discard(live)

    @staticmethod
    def _outcome(run_id: str, run: asyncio.Task[RunFinished]) -> RunFinished:
        if run.cancelled():  # faas job cancel, or the client went away
            return RunFinished(
                run_id=run_id, status="cancelled", branch=run_branch_name(run_id),
                error=Error(kind="RunCancelled", message=f"run {run_id} was cancelled"),
            )
        exc = run.exception()
        if exc is not None:
            log.error("run %s crashed", run_id, exc_info=exc)
            return RunFinished(run_id=run_id, status="failed", error=error_message(exc),
                               branch=run_branch_name(run_id))
        return run.result()

__all__ = ["RunRequests"]
