"""faas's synchronous client, for notebooks, scripts and Streamlit apps: ``faas.Client``.

    import faas

    client = faas.Client()                      # embedded: this machine's FAAS_HOME
    client.create_branch("dev", from_ref="main")
    state = client.run("examples/adventureworks", ref="dev", namespace="adventure")
    if state.job_status != "SUCCESS":
        print(state.error)
    df = client.query("SELECT * FROM adventure.sale LIMIT 10", ref="dev").to_pandas()

Methods and their arguments follow Bauplan's Python SDK (``bauplan.Client``), so code
written for it runs as it is: ``query``, ``scan``, ``run``, ``import_data``,
``get_branches``, ``create_branch``, ``merge_branch``, ``get_tables``, ``get_commits``,
``get_jobs``... Every ``ref``, ``branch`` and ``from_ref`` may be left out: it is then the
active branch (``faas checkout``, kept in ``FAAS_HOME/HEAD``; ``main`` until one is
chosen), as for the ``faas`` command line.

The caller manages no event loop. The client runs one of its own in a background thread,
started at the first call and stopped by :meth:`Client.close` (or ``with``, or at exit);
each method runs there and the caller waits for its answer. It works alike from a plain
script and from code that runs inside an event loop (a Jupyter cell), where
``asyncio.run`` cannot be used. Ctrl-C while a method waits stops what it does: a run
being waited for is cancelled, and nothing of it is published.

Errors are faas's typed errors, as the scheduler raised them (:class:`NotFound`,
:class:`InvalidInput`, :class:`PlanInvalid`, :class:`CommitConflict`...; all
:class:`FaasError`), each with a one-line message. As with Bauplan, a run that fails
does not raise: :meth:`Client.run` returns its state with ``job_status`` ``"FAILED"`` and
the ``error`` (:meth:`RunState.raise_for_status` raises it).

Bauplan arguments without a meaning in faas are accepted and ignored: ``args``,
``priority``, ``preview``, ``commit_body`` and ``commit_properties`` (except a merge's
``commit_body``, added to its message), ``cache`` of a query or scan, ``transaction``
(every faas run is transactional), ``replace`` of :meth:`Client.revert_table`,
``continue_on_error``, ``import_duplicate_files``, ``best_effort`` and ``client_timeout``
of an import, ``client_timeout`` of :meth:`Client.info`, ``filter_by_current_user`` of
:meth:`Client.get_jobs` (faas runs record no user), and ``profile`` and
``config_file_path`` of the constructor. Others are mapped: ``api_key`` is the token
(``NAME:SECRET``); ``cache="off"`` of a run runs every function afresh; ``strict="on"``
makes failing expectations fail the run; ``client_timeout`` stops a query (on the worker)
or a run (cancelled) that takes longer, and given to the constructor is the default of
both. Where faas cannot do what is asked, :class:`InvalidInput` is raised rather than
something else done: filters faas cannot apply (commits' author e-mail, a CEL
``filter``, jobs' or branches' users), a detached import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from faas.client.client import Client as AsyncClient
from faas.client.home import active_branch, home_path
from faas.client.sync_loop import LoopThread
from faas.client.sync_types import (
    RUN_STATUS,
    ImportState,
    Namespace,
    RunState,
    TableEntry,
    as_time,
    first,
    job_id_of,
    job_status_of,
    listed,
    name_of,
    on_off,
    quote_ident,
    run_params,
    table_key,
)
from faas.protocol.auth import split_credential
from faas.protocol.errors import (
    AlreadyExists,
    CommitConflict,
    ExpectationFailed,
    FaasError,
    FunctionFailed,
    InvalidInput,
    MergeConflict,
    NotAllowed,
    NotFound,
    PlanInvalid,
    ProjectError,
    RunCancelled,
    TimedOut,
)
from faas.protocol.messages import LogLine, TaskEvent
from faas.protocol.replies import (
    Cancelled,
    Cluster,
    Commit,
    JobEvent,
    JobRecord,
    JobSummary,
    Merged,
    NamespaceChanged,
    Ref,
    Table,
    TableDropped,
    TableReverted,
)

if TYPE_CHECKING:
    import pyarrow

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "Client",
    "CommitConflict",
    "ExpectationFailed",
    "FaasError",
    "FunctionFailed",
    "ImportState",
    "InvalidInput",
    "MergeConflict",
    "Namespace",
    "NotAllowed",
    "NotFound",
    "PlanInvalid",
    "ProjectError",
    "RunCancelled",
    "RunState",
    "TableEntry",
    "TimedOut",
]

T = TypeVar("T")
logger = logging.getLogger("faas.client")

# How many commits or runs a listing asks for when no limit is given.
LIST_ALL = 10_000
# After Ctrl-C, how long to wait for the call to be stopped (a run cancelled) before
# handing the KeyboardInterrupt on.
CANCEL_GRACE = 10.0
STOP_TIMEOUT = 10.0

# -- the client --------------------------------------------------------------------------


class Client:
    """faas's synchronous client.

    With no ``cluster`` (and no ``FAAS_CLUSTER``) it is embedded: it talks to the resident
    daemon of ``home`` (``FAAS_HOME``, default ``~/.faas``), started when needed, as the
    ``faas`` command does. With a cluster address (``HOST:PORT``) it signs in with
    ``token`` (or ``api_key``, Bauplan's name for it: ``NAME:SECRET``), else
    ``token_file``, else ``FAAS_TOKEN_FILE``.
    """

    def __init__(
        self,
        cluster: str | None = None,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        home: str | os.PathLike[str] | None = None,
        profile: str | None = None,
        api_key: str | None = None,
        client_timeout: int | None = None,
        config_file_path: str | None = None,
    ) -> None:
        del profile, config_file_path  # Bauplan's configuration files: faas has none
        if token is not None and api_key is not None and token != api_key:
            raise InvalidInput("pass token or api_key (the same thing), not both")
        secret = token if token is not None else api_key
        self._token: bytes | None = secret.strip().encode() if secret else None
        self.cluster = cluster or os.environ.get("FAAS_CLUSTER") or None
        self.home = home_path(home)
        # The default client_timeout of queries and runs (seconds); None: no limit.
        self.client_timeout = client_timeout
        self._remote: AsyncClient | None = None
        self._local: AsyncClient | None = None  # the home's daemon, as last found
        if self.cluster:
            if self._token is not None and not split_credential(self._token)[0]:
                raise InvalidInput("the token is not a user's (NAME:SECRET, as faasd user add "
                                   "prints it)")
            if not (self._token or token_file or os.environ.get("FAAS_TOKEN_FILE")):
                raise FaasError(f"no token for cluster {self.cluster}: pass token= (or api_key=) "
                                "or token_file=, or set FAAS_TOKEN_FILE")
            self._remote = AsyncClient(
                self.cluster, token=self._token,
                token_file=str(token_file) if token_file is not None else None,
            )
        self._loop = LoopThread("faas-client", "faas.Client")

    def __repr__(self) -> str:
        where = f"cluster {self.cluster}" if self.cluster else f"embedded, home {self.home}"
        return f"faas.Client({where})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the client's event loop and its thread (a later call starts them again).
        The embedded daemon stays: other clients and commands share it."""
        self._loop.close()

    def _call(self, work: Callable[[AsyncClient], Awaitable[T]]) -> T:
        """Run ``work`` with the async client on the client's loop; wait for its result."""

        async def main() -> T:
            return await work(await self._async_client())

        return self._loop.run(main())

    def _unless(self, work: Callable[[AsyncClient], Awaitable[T]], error: type[FaasError],
                tolerated: bool, otherwise: Callable[[], Any]) -> Any:
        """``work``'s result; ``otherwise()`` instead when it raises ``error`` and that is
        ``tolerated`` (Bauplan's ``if_exists`` / ``if_not_exists``)."""
        try:
            return self._call(work)
        except error:
            if not tolerated:
                raise
            return otherwise()

    async def _async_client(self) -> AsyncClient:
        """The cluster's client; embedded, the client of the home's daemon, found, started
        or replaced as the ``faas`` command does (it may have stopped when idle)."""
        if self._remote is not None:
            return self._remote
        from faas.client.local import ensure_daemon
        from faas.protocol.auth import ADMIN_TOKEN, load_token

        info = await asyncio.to_thread(ensure_daemon, self.home, notice=_notice)
        if self._local is None or self._local.address != info["address"]:
            token = self._token or await asyncio.to_thread(load_token, self.home / ADMIN_TOKEN)
            self._local = AsyncClient(info["address"], token=token)
        return self._local

    def _ref(self, ref: Any) -> str:
        return name_of(ref) if ref is not None else active_branch(self.home)

    # -- queries -----------------------------------------------------------------------

    def query(
        self,
        query: str,
        *,
        ref: str | Ref | None = None,
        max_rows: int | None = None,
        cache: str | None = None,
        namespace: str | Namespace | None = None,
        args: dict[str, str] | None = None,
        priority: int | None = None,
        client_timeout: int | float | None = None,
    ) -> pyarrow.Table:
        """Run SQL (one SELECT) over the tables at ``ref``; the result as a
        ``pyarrow.Table`` (``.to_pandas()`` for a DataFrame). ``namespace``: the namespace of
        bare table names; ``max_rows``: at most that many rows (the query stops there);
        ``client_timeout``: seconds the query may run (default: the scheduler's, 300)."""
        sql, ref_ = query, self._ref(ref)
        ns = name_of(namespace) if namespace is not None else None
        timeout = client_timeout if client_timeout is not None else self.client_timeout
        return self._call(lambda c: _query(c, sql, ns, ref_, timeout, max_rows))

    def scan(
        self,
        table: str | Table | TableEntry,
        *,
        ref: str | Ref | None = None,
        columns: list[str] | None = None,
        filters: str | None = None,
        limit: int | None = None,
        cache: str | None = None,
        namespace: str | Namespace | None = None,
        args: dict[str, str] | None = None,
        priority: int | None = None,
        client_timeout: int | float | None = None,
    ) -> pyarrow.Table:
        """A table's rows at ``ref`` as a ``pyarrow.Table``: only ``columns`` (default all),
        those where ``filters`` (a SQL condition such as ``"Age < 30"``) holds, at most
        ``limit``."""
        key = table_key(table, namespace)
        ns, _, name = key.rpartition(".")
        sql = (f"SELECT {', '.join(map(quote_ident, columns)) if columns else '*'} "
               f"FROM {quote_ident(ns)}.{quote_ident(name)}")
        if filters:
            sql += f" WHERE {filters}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.query(sql, ref=ref, client_timeout=client_timeout)

    # -- runs ----------------------------------------------------------------------------

    def run(
        self,
        project_dir: str | os.PathLike[str],
        *,
        ref: str | Ref | None = None,
        namespace: str | Namespace | None = None,
        parameters: dict[str, str | int | float | bool | None] | None = None,
        cache: str | None = None,
        transaction: str | None = None,
        dry_run: bool | None = None,
        strict: str | bool | None = None,
        preview: str | None = None,
        args: dict[str, str] | None = None,
        priority: int | None = None,
        client_timeout: int | float | None = None,
        detach: bool = False,
    ) -> RunState:
        """Run the project in ``project_dir`` on branch ``ref``, its models reading and
        writing ``namespace``; wait for it (unless ``detach``) and return its state, with
        the lines its functions printed. A run that fails returns ``job_status``
        ``"FAILED"`` and its ``error``; a project that cannot be read or planned raises
        (:class:`ProjectError`, :class:`PlanInvalid`), as does a ``ref`` that does not exist.

        ``parameters``: values of the project's parameters. ``cache="off"``: every function
        runs, reusing no cached output. ``strict="on"``: a failing expectation fails the
        run. ``dry_run``: plan only (the state's ``plan``), run nothing.
        ``client_timeout``: seconds to wait, after which the run is cancelled and
        :class:`TimedOut` raised. Ctrl-C while waiting cancels the run."""
        if namespace is None:
            raise InvalidInput("a faas run reads and writes one namespace: pass namespace=")
        project, ns, ref_ = str(project_dir), name_of(namespace), self._ref(ref)
        params = run_params(parameters)
        no_cache = on_off("cache", cache) is False
        strict_ = bool(on_off("strict", strict))
        on_off("transaction", transaction)  # checked; faas runs are always transactional
        base: dict[str, Any] = {"project_dir": project, "ref": ref_, "namespace": ns}
        if dry_run:
            plan = self._call(lambda c: c.plan(project, namespace=ns, ref=ref_, params=params))
            return RunState(job_id=None, job_status="SUCCESS", dry_run=True, plan=plan, **base)
        timeout = client_timeout if client_timeout is not None else self.client_timeout
        return self._call(lambda c: _run(
            c, base, params=params, strict=strict_, no_cache=no_cache, detach=detach,
            timeout=timeout,
        ))

    def get_jobs(
        self,
        *,
        filter_by_current_user: bool = True,
        filter_by_ids: str | list[str] | list[JobSummary] | None = None,
        filter_by_users: str | list[str] | None = None,
        filter_by_kinds: Any = None,
        filter_by_statuses: Any = None,
        filter_by_created_after: datetime | None = None,
        filter_by_created_before: datetime | None = None,
        limit: int | None = None,
    ) -> list[JobSummary]:
        """Runs, newest first (``.run_id``, ``.status``, ``.started``, ``.ref``...).

        ``filter_by_statuses``: faas's (running, success, failed, cancelled) or Bauplan's
        (RUNNING, COMPLETE, FAIL, ABORT) names. ``filter_by_kinds``: every faas job is a
        run (kind ``RUN``). Runs record no user: ``filter_by_current_user`` is ignored and
        ``filter_by_users`` refused."""
        if filter_by_users:
            raise InvalidInput("faas runs record no user: filter_by_users cannot apply")
        ids = {job_id_of(j) for j in listed(filter_by_ids)} if filter_by_ids else None
        statuses = {job_status_of(s) for s in listed(filter_by_statuses)} \
            if filter_by_statuses else None
        kinds = {str(k).rsplit(".", 1)[-1].upper() for k in listed(filter_by_kinds)} \
            if filter_by_kinds else None
        after = filter_by_created_after.timestamp() if filter_by_created_after else None
        before = filter_by_created_before.timestamp() if filter_by_created_before else None
        filtered = any(x is not None for x in (ids, statuses, kinds, after, before))
        n = LIST_ALL if filtered or limit is None else limit
        jobs = self._call(lambda c: c.jobs(n))
        if kinds is not None and "RUN" not in kinds:
            return []
        out = [
            j for j in jobs
            if (ids is None or j.run_id in ids)
            and (statuses is None or j.status in statuses)
            and (after is None or (j.started or 0) > after)
            and (before is None or (j.started or 0) < before)
        ]
        return out[:limit] if limit is not None else out

    def get_job(self, job_id: str | JobSummary) -> JobRecord:
        """One run: its status, ref, commit, and each function's state."""
        run_id = job_id_of(job_id)
        return self._call(lambda c: c.job(run_id))

    def get_job_logs(self, job: str | JobSummary) -> list[JobEvent]:
        """Every line a run's functions printed (``.line``, ``.stream``, ``.node``) and
        every change of a function's state (``.state``), in order."""
        run_id = job_id_of(job)
        return self._call(lambda c: c.job_logs(run_id))

    def cancel_job(self, job_id: str | JobSummary) -> Cancelled:
        """Cancel a run: its functions are stopped and nothing is published."""
        run_id = job_id_of(job_id)
        return self._call(lambda c: c.cancel_run(run_id))

    # -- branches and tags ---------------------------------------------------------------

    def get_branches(
        self, *, name: str | None = None, user: str | None = None, limit: int | None = None,
    ) -> list[Ref]:
        """Branches (``.name``, ``.head``: the commit hash): those whose name contains
        ``name``. faas branches have no owner: ``user`` is refused."""
        if user:
            raise InvalidInput("faas branches have no owner: user cannot apply")
        refs = self._call(lambda c: c.branches())
        return first([r for r in refs if name is None or name in r.name], limit)

    def get_branch(self, branch: str | Ref) -> Ref:
        """One branch; :class:`NotFound` if there is none of that name."""
        name = name_of(branch)
        for r in self._call(lambda c: c.branches(include_runs=True)):
            if r.name == name:
                return r
        raise NotFound(f"no branch {name!r}")

    def has_branch(self, branch: str | Ref) -> bool:
        name = name_of(branch)
        return any(r.name == name for r in self._call(lambda c: c.branches(include_runs=True)))

    def create_branch(
        self, branch: str | Ref, from_ref: str | Ref | None = None, *,
        if_not_exists: bool = False,
    ) -> Ref:
        """A new branch at ``from_ref`` (default: the active branch); no data is copied."""
        name, source = name_of(branch), self._ref(from_ref)
        return self._unless(lambda c: c.create_branch(name, source), AlreadyExists,
                            if_not_exists, lambda: self.get_branch(name))

    def delete_branch(self, branch: str | Ref, *, if_exists: bool = False) -> bool:
        """Delete a branch (its commits stay reachable from other refs)."""
        name = name_of(branch)
        return self._unless(lambda c: c.delete_branch(name), NotFound, if_exists,
                            lambda: False) is not False

    def merge_branch(
        self,
        source_ref: str | Ref,
        into_branch: str | Ref | None = None,
        *,
        commit_message: str | None = None,
        commit_body: str | None = None,
        commit_properties: dict[str, str] | None = None,
        fast_forward: bool = False,
    ) -> Merged:
        """Merge ``source_ref`` into ``into_branch`` (default: the active branch): one
        commit (``.commit``), or :class:`MergeConflict` and nothing written.
        ``fast_forward``: move the branch instead, when it has nothing of its own."""
        source, target = name_of(source_ref), self._ref(into_branch)
        message = "\n\n".join(m for m in (commit_message, commit_body) if m) or None
        return self._call(
            lambda c: c.merge(source, target, message=message, fast_forward=fast_forward)
        )

    def get_tags(self, *, filter_by_name: str | None = None, limit: int | None = None) -> list[Ref]:
        """Tags (``.name``, ``.head``): those whose name contains ``filter_by_name``."""
        refs = self._call(lambda c: c.tags())
        return first([r for r in refs if filter_by_name is None or filter_by_name in r.name],
                      limit)

    def get_tag(self, tag: str | Ref) -> Ref:
        name = name_of(tag)
        for r in self._call(lambda c: c.tags()):
            if r.name == name:
                return r
        raise NotFound(f"no tag {name!r}")

    def has_tag(self, tag: str | Ref) -> bool:
        name = name_of(tag)
        return any(r.name == name for r in self._call(lambda c: c.tags()))

    def create_tag(
        self, tag: str | Ref, from_ref: str | Ref | None = None, *, if_not_exists: bool = False,
    ) -> Ref:
        """Name the commit ``from_ref`` points at (default: the active branch's head); a tag
        never moves."""
        name, source = name_of(tag), self._ref(from_ref)
        return self._unless(lambda c: c.create_tag(name, source), AlreadyExists,
                            if_not_exists, lambda: self.get_tag(name))

    def delete_tag(self, tag: str | Ref, *, if_exists: bool = False) -> bool:
        name = name_of(tag)
        return self._unless(lambda c: c.delete_tag(name), NotFound, if_exists,
                            lambda: False) is not False

    def get_commits(
        self,
        ref: str | Ref | None = None,
        *,
        filter_by_message: str | None = None,
        filter_by_author_username: str | None = None,
        filter_by_author_name: str | None = None,
        filter_by_author_email: str | None = None,
        filter_by_authored_date: str | datetime | None = None,
        filter_by_authored_date_start_at: str | datetime | None = None,
        filter_by_authored_date_end_at: str | datetime | None = None,
        filter_by_parent_hash: str | None = None,
        filter_by_properties: dict[str, str] | None = None,
        filter: str | None = None,
        limit: int | None = None,
    ) -> list[Commit]:
        """Commits reachable from ``ref`` (first parents), newest first: ``.hash``,
        ``.message``, ``.author``, ``.created_at``, ``.properties``. Message and author
        filters are regular expressions, searched for."""
        if filter_by_author_email:
            raise InvalidInput("faas commits record no e-mail: filter_by_author_email "
                               "cannot apply (filter_by_author_name can)")
        if filter:
            raise InvalidInput("faas does not read CEL filters: use the filter_by_* arguments")
        checks: list[Callable[[Commit], bool]] = []
        if filter_by_message is not None:
            message = re.compile(filter_by_message)
            checks.append(lambda c: message.search(c.message) is not None)
        authors = [re.compile(a) for a in (filter_by_author_username, filter_by_author_name)
                   if a is not None]
        if authors:
            checks.append(lambda c: all(a.search(c.author) is not None for a in authors))
        if filter_by_authored_date is not None:
            exact = as_time(filter_by_authored_date)
            checks.append(lambda c: as_time(c.created_at) == exact)
        if filter_by_authored_date_start_at is not None:
            start = as_time(filter_by_authored_date_start_at)
            checks.append(lambda c: as_time(c.created_at) >= start)
        if filter_by_authored_date_end_at is not None:
            end = as_time(filter_by_authored_date_end_at)
            checks.append(lambda c: as_time(c.created_at) <= end)
        if filter_by_parent_hash is not None:
            parent = filter_by_parent_hash
            checks.append(lambda c: any(p.startswith(parent) for p in c.parents))
        if filter_by_properties:
            wanted = filter_by_properties.items()
            checks.append(lambda c: all(c.properties.get(k) == v for k, v in wanted))
        ref_ = self._ref(ref)
        n = LIST_ALL if checks or limit is None else limit
        commits = self._call(lambda c: c.log(ref_, n))
        return first([c for c in commits if all(check(c) for check in checks)], limit)

    # -- namespaces ----------------------------------------------------------------------

    def get_namespaces(
        self, ref: str | Ref | None = None, *, filter_by_name: str | None = None,
        limit: int | None = None,
    ) -> list[Namespace]:
        """Namespaces at ``ref``: those whose name contains ``filter_by_name``."""
        ref_ = self._ref(ref)
        names = self._call(lambda c: c.namespaces(ref_))
        kept = [Namespace(n) for n in names if filter_by_name is None or filter_by_name in n]
        return first(kept, limit)

    def get_namespace(self, namespace: str | Namespace, ref: str | Ref | None = None) -> Namespace:
        name = name_of(namespace)
        if not self.has_namespace(name, ref):
            raise NotFound(f"no namespace {name!r} at ref {self._ref(ref)!r}")
        return Namespace(name)

    def has_namespace(self, namespace: str | Namespace, ref: str | Ref | None = None) -> bool:
        name, ref_ = name_of(namespace), self._ref(ref)
        return name in self._call(lambda c: c.namespaces(ref_))

    def create_namespace(
        self,
        namespace: str | Namespace,
        branch: str | Ref | None = None,
        *,
        commit_body: str | None = None,
        commit_properties: dict[str, str] | None = None,
        if_not_exists: bool = False,
    ) -> Namespace:
        """A new namespace on ``branch`` (default: the active branch), in one commit."""
        name, ref_ = name_of(namespace), self._ref(branch)
        changed = self._unless(lambda c: c.create_namespace(name, ref_), AlreadyExists,
                               if_not_exists, lambda: None)
        return Namespace(name, changed.commit if changed is not None else None)

    def delete_namespace(
        self,
        namespace: str | Namespace,
        branch: str | Ref | None = None,
        *,
        if_exists: bool = False,
        commit_body: str | None = None,
        commit_properties: dict[str, str] | None = None,
    ) -> NamespaceChanged | None:
        """Drop an empty namespace from ``branch``; the commit that did (None when it was
        not there and ``if_exists``)."""
        name, ref_ = name_of(namespace), self._ref(branch)
        return self._unless(lambda c: c.drop_namespace(name, ref_), NotFound, if_exists,
                            lambda: None)

    # -- tables --------------------------------------------------------------------------

    def get_tables(
        self,
        ref: str | Ref | None = None,
        *,
        filter_by_name: str | None = None,
        filter_by_namespace: str | Namespace | None = None,
        limit: int | None = None,
    ) -> list[TableEntry]:
        """Tables at ``ref`` (``.namespace``, ``.name``, ``.fqn``): those of
        ``filter_by_namespace``, and whose name contains ``filter_by_name``."""
        ref_ = self._ref(ref)
        ns = name_of(filter_by_namespace) if filter_by_namespace is not None else None
        keys = self._call(lambda c: c.tables(ns, ref_))
        entries = [TableEntry(*key.rsplit(".", 1)) for key in keys]
        return first([t for t in entries if filter_by_name is None or filter_by_name in t.name],
                      limit)

    def get_table(
        self, table: str | Table | TableEntry, ref: str | Ref | None = None, *,
        namespace: str | Namespace | None = None,
    ) -> Table:
        """A table at ``ref``: ``.rows``, ``.schema`` (columns' ``.name`` and ``.type``),
        ``.snapshot_id``, ``.metadata_location`` (its Iceberg metadata), ``.files``,
        ``.bytes``."""
        key, ref_ = table_key(table, namespace), self._ref(ref)
        return self._call(lambda c: c.table(key, ref_))

    def has_table(
        self, table: str | Table | TableEntry, ref: str | Ref | None = None, *,
        namespace: str | Namespace | None = None,
    ) -> bool:
        """Whether the table exists at ``ref`` (a ref that does not exist raises)."""
        key, ref_ = table_key(table, namespace), self._ref(ref)
        return key in self._call(lambda c: c.tables(None, ref_))

    def delete_table(
        self,
        table: str | Table | TableEntry,
        branch: str | Ref | None = None,
        *,
        namespace: str | Namespace | None = None,
        if_exists: bool = False,
        commit_body: str | None = None,
        commit_properties: dict[str, str] | None = None,
    ) -> TableDropped | None:
        """Drop a table from ``branch`` in one commit (older commits still have it); the
        commit (None when it was not there and ``if_exists``)."""
        key, ref_ = table_key(table, namespace), self._ref(branch)
        return self._unless(lambda c: c.drop_table(key, ref_), NotFound, if_exists,
                            lambda: None)

    def import_data(
        self,
        table: str | Table | TableEntry,
        search_uri: str | os.PathLike[str] | list[str],
        *,
        branch: str | Ref | None = None,
        namespace: str | Namespace | None = None,
        continue_on_error: bool = False,
        import_duplicate_files: bool = False,
        best_effort: bool = False,
        preview: str | None = None,
        args: dict[str, str] | None = None,
        priority: int | None = None,
        client_timeout: int | None = None,
        detach: bool = False,
        mode: str = "append",
        format: str | None = None,
    ) -> ImportState:
        """Import CSV, TSV or Parquet files (``search_uri``: a path, a glob,
        ``s3://bucket/path/*.parquet``, or a list of them) into ``table`` on ``branch``, in
        one commit. The rows are added to the table's (``mode="replace"``: they replace
        them); a table that does not exist is created with the files' schema. ``format``
        for files whose suffix does not say. A failed import raises (:class:`InvalidInput`
        for files that do not parse or disagree, :class:`NotFound` for a namespace that
        does not exist) and writes nothing. faas imports are not jobs: ``detach`` is
        refused."""
        if detach:
            raise InvalidInput("faas imports are not jobs: they cannot be detached")
        if mode not in ("append", "replace"):
            raise InvalidInput(f"mode must be 'append' or 'replace', not {mode!r}")
        if format is not None and format not in ("csv", "tsv", "parquet"):
            raise InvalidInput(f"format must be csv, tsv or parquet, not {format!r}")
        key, ref_ = table_key(table, namespace), self._ref(branch)
        uris = [str(search_uri)] if isinstance(search_uri, str | os.PathLike) else \
            [str(p) for p in search_uri]
        imported = self._call(lambda c: c.import_table(
            key, uris, ref=ref_, mode=mode, format=format,  # type: ignore[arg-type]
        ))
        return ImportState(table=imported)

    def create_table(
        self,
        table: str | Table | TableEntry,
        search_uri: str | os.PathLike[str] | list[str],
        *,
        branch: str | Ref | None = None,
        namespace: str | Namespace | None = None,
        partitioned_by: str | list[str] | None = None,
        replace: bool | None = None,
        args: dict[str, str] | None = None,
        priority: int | None = None,
        client_timeout: int | None = None,
    ) -> Table:
        """Create ``table`` on ``branch``, empty, with the schema of the files at
        ``search_uri`` (read, not imported: :meth:`import_data` adds their rows), and
        ``partitioned_by`` ("day(order_date), country", or a list of such). ``replace``
        drops a table of that name first; otherwise one that exists raises
        :class:`AlreadyExists`."""
        key, ref_ = table_key(table, namespace), self._ref(branch)
        uris = [str(search_uri)] if isinstance(search_uri, str | os.PathLike) else \
            [str(p) for p in search_uri]
        parts = ", ".join(partitioned_by) if isinstance(partitioned_by, list) else (
            partitioned_by or "")
        if replace and self.has_table(key, ref_):
            self._call(lambda c: c.drop_table(key, ref_))
        return self._call(lambda c: c.create_table(key, uris, ref=ref_, partitioned_by=parts))

    def revert_table(
        self,
        table: str | Table | TableEntry,
        *,
        namespace: str | Namespace | None = None,
        source_ref: str | Ref,
        into_branch: str | Ref | None = None,
        replace: bool | None = None,
        commit_body: str | None = None,
        commit_properties: dict[str, str] | None = None,
    ) -> TableReverted:
        """Make ``table`` on ``into_branch`` (default: the active branch) what it is at
        ``source_ref``, in one commit (``.changed`` False: it already was; no commit)."""
        key, source = table_key(table, namespace), name_of(source_ref)
        target = self._ref(into_branch)
        return self._call(lambda c: c.revert_table(key, branch=target, to_ref=source))

    # -- the cluster ---------------------------------------------------------------------

    def info(self, *, client_timeout: int | None = None) -> Cluster:
        """The scheduler and its workers: version, runs going, memory and cores."""
        return self._call(lambda c: c.info())


# -- coroutines run on the client's loop ----------------------------------------------------


async def _query(
    c: AsyncClient, sql: str, namespace: str | None, ref: str, timeout: float | None,
    max_rows: int | None,
) -> pyarrow.Table:
    import pyarrow as pa

    pieces: list[pa.Table] = []
    rows = 0
    async with contextlib.aclosing(
        c.query_pieces(sql, namespace=namespace, ref=ref, timeout=timeout)  # type: ignore[type-var]
    ) as stream:
        async for piece in stream:
            pieces.append(piece)
            rows += piece.num_rows
            if max_rows is not None and rows >= max_rows:
                break  # leaving stops the query
    table = pa.concat_tables(pieces) if pieces else pa.table({})
    return table.slice(0, max_rows) if max_rows is not None else table


async def _run(
    c: AsyncClient, base: dict[str, Any], *, params: dict[str, str], strict: bool,
    no_cache: bool, detach: bool, timeout: float | None,
) -> RunState:
    submitted = await c.submit(
        base["project_dir"], namespace=base["namespace"], ref=base["ref"], params=params,
        strict=strict, no_cache=no_cache, detach=detach,
    )
    if detach:
        return RunState(job_id=submitted.run_id, job_status=None, detach=True, **base)
    logs: list[JobEvent] = []
    cached: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            async for ev in submitted:
                if isinstance(ev, LogLine):
                    logs.append(JobEvent(node=ev.node, t=ev.time, stream=ev.stream, line=ev.line))
                elif isinstance(ev, TaskEvent) and ev.cached:
                    cached.append(ev.node)
            result = await submitted.result()
    except TimeoutError:
        await submitted.cancel()
        raise TimedOut(f"run {submitted.run_id} took over client_timeout={timeout:g}s and was "
                       "cancelled") from None
    except BaseException:
        # Ctrl-C (the task is cancelled) or a broken connection: the run ends with its
        # connection, cancelled, and publishes nothing.
        await submitted.cancel()
        raise
    error = result.error
    return RunState(
        job_id=result.run_id,
        job_status=RUN_STATUS.get(result.status, result.status.upper()),
        error=error.message if error is not None else None,
        error_kind=error.kind if error is not None else None,
        error_detail=error.detail if error is not None else "",
        user_logs=logs,
        commit=result.commit or None,
        tables=list(result.tables),
        cached=cached,
        branch=result.branch or None,
        duration=result.seconds,
        **base,
    )


def _notice(text: str) -> None:
    logger.warning("note: %s", text)
