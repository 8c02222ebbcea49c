"""What the scheduler answers each client request with: one reply type per request.

Requests are in :mod:`faas.protocol.messages`; a request's reply is named beside it:

================  ======================  ================  ======================
request           reply                   request           reply
================  ======================  ================  ======================
ListNamespaces    Namespaces              ListRefs          Refs
CreateNamespace   NamespaceChanged        CreateRef         Ref
DropNamespace     NamespaceChanged        DeleteRef         RefDeleted
ListTables        Tables                  Merge             Merged
GetTable          Table                   Diff              Differences
ImportTable       Imported (ImportPlan)   Log               Commits
DropTable         TableDropped            PruneRuns         Pruned
RevertTable       TableReverted           ListJobs          Jobs
ClusterInfo       Cluster                 GetJob            Job
SubmitRun (dry)   PlanDescription         JobLogs           JobEvents
CancelRun         Cancelled               Query             (BulkHeader + bytes)*,
                                                                  QueryFinished
================  ======================  ================  ======================

An ImportTable with ``plan_only`` is answered with the ImportPlan faas proposes. A query's
result comes in pieces as the worker makes it: each BulkHeader is followed by
an Arrow IPC stream of its own (schema, then ``rows`` rows); QueryFinished ends the
result, and an Error may come instead of any piece (the result is then discarded).

Any request may be answered with :class:`~faas.protocol.messages.Error` instead.
Records inside a reply (a ref, a commit, a node of a run) are untagged structs; their
field names are those ``--json`` prints. Fields with a fixed set of values are
``Literal`` types, checked by msgspec when a reply is decoded.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from faas.protocol.messages import (
    BulkHeader,
    Error,
    InputRead,
    LogLine,
    Message,
    ParamValue,
    PlanColumn,
    RefKind,
    RunAccepted,
    RunFinished,
    Stream,
    TaskEvent,
    TaskState,
)

KeyKind = Literal["table", "namespace"]
RunStatus = Literal["running", "success", "failed", "cancelled"]
NodeKind = Literal["python", "sql", "expectation"]


# -- namespaces and tables ----------------------------------------------------------


class Namespaces(Message, frozen=True):
    names: list[str]


class NamespaceChanged(Message, frozen=True):
    """A namespace was created or dropped, in ``commit``."""

    namespace: str
    commit: str


class Tables(Message, frozen=True):
    keys: list[str]


class Column(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: str


class Table(Message, frozen=True):
    """A table at a ref: its size, current snapshot and Iceberg metadata."""

    key: str
    metadata_location: str
    snapshot_id: int | None
    rows: int
    files: int
    bytes: int
    schema: list[Column]
    # Its Iceberg partitions, as partitioned_by writes them: "day(order_date), country".
    partitioned_by: str = ""


class Imported(Table, frozen=True, kw_only=True):
    """The table an import made, and the commit that published it."""

    commit: str


class ImportPlan(Message, frozen=True):
    """The plan faas proposes for importing ``files`` as ``key`` (faas table import --plan)."""

    key: str
    files: list[str]
    columns: list[PlanColumn]


class TableDropped(Message, frozen=True):
    key: str
    commit: str


class TableReverted(Message, frozen=True):
    key: str
    commit: str
    # False: the table was already as at the ref asked for; nothing was committed.
    changed: bool


# -- refs and history -----------------------------------------------------------------


class Ref(Message, frozen=True):
    """A branch or tag and the commit it points at."""

    name: str
    kind: RefKind
    head: str
    message: str
    created_at: str


class Refs(Message, frozen=True):
    refs: list[Ref]


class RefDeleted(Message, frozen=True):
    name: str
    kind: RefKind


class MergedChange(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    kind: KeyKind
    dropped: bool


class Merged(Message, frozen=True):
    commit: str
    # The target only moved to the source's head: no new commit.
    fast_forward: bool
    # What the merge brought into the target; empty when there was nothing to merge.
    changes: list[MergedChange]


class KeyDifference(msgspec.Struct, frozen=True, kw_only=True):
    """A table or namespace that differs between two refs (None where it is absent)."""

    key: str
    kind: KeyKind
    status: Literal["added", "dropped", "changed"]
    old_snapshot_id: int | None
    new_snapshot_id: int | None
    old_rows: int | None
    new_rows: int | None


class Differences(Message, frozen=True):
    changes: list[KeyDifference]


class Commit(msgspec.Struct, frozen=True, kw_only=True):
    hash: str
    parents: list[str]
    message: str
    author: str
    created_at: str
    properties: dict[str, str] = {}
    # The tables the commit changed (added, replaced or dropped).
    tables: list[str] = []


class Commits(Message, frozen=True):
    commits: list[Commit]


class Pruned(Message, frozen=True):
    """The transaction branches of finished runs that were deleted."""

    branches: list[str]


# -- the cluster ----------------------------------------------------------------------


class RunningFunction(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker runs: a run's node (``run_id`` empty for a catalog helper task)."""

    task_id: str
    run_id: str
    node: str


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    host_id: str
    memory_total: int
    memory_available: int
    memory_reserved: int
    cpus: int
    cpus_reserved: int
    shm_bytes: int
    cache_bytes: int
    draining: bool
    spilled_bytes: int
    python_versions: list[str]
    running: int
    env_builds: int
    functions: list[RunningFunction]
    # "sandbox", or "none" when its functions run unisolated (faasd worker --isolation none).
    isolation: str = "sandbox"


class Cluster(Message, frozen=True):
    scheduler: str
    version: str
    pid: int
    started: float
    runs: int
    idle_seconds: float
    workers: list[WorkerInfo]
    # The Iceberg REST catalog's base URL (add /<ref>); "" when it is not served.
    iceberg: str = ""
    # The web console's address ("" when the scheduler serves no HTTP).
    console: str = ""


# -- plans ------------------------------------------------------------------------------


class PlannedInput(msgspec.Struct, frozen=True, kw_only=True):
    param: str
    # The table key (source "table") or the upstream node (source "model").
    from_: str = msgspec.field(name="from")
    source: Literal["table", "model"]
    snapshot_id: int | None
    columns: list[str] | None
    filter: str | None


class PlannedNode(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    kind: NodeKind
    level: int
    where: str
    output: str | None
    materialize: str | None
    python: str | None
    pip: dict[str, str]
    memory: str | None
    cpus: int | None
    params: dict[str, ParamValue]
    depends_on: list[str]
    # It may reach the network (@faas.model(internet_access=True)).
    internet_access: bool = False
    cache_key: str
    inputs: list[PlannedInput]


class PlanDescription(Message, frozen=True):
    """The plan a dry run would run, nodes in the order they may run."""

    plan: list[PlannedNode]


# -- runs -----------------------------------------------------------------------------


class NodeRecord(msgspec.Struct, kw_only=True):
    """One node of a run as last reported (``queued`` until it starts)."""

    state: str = "queued"
    worker: str | None = None
    rows: int = 0
    error: str | None = None
    cached: bool = False
    columns_cached: list[str] = []
    columns_read: list[str] = []
    phases: dict[str, float] = {}
    inputs: list[InputRead] = []
    # Its kind ("python", "sql", "expectation") and the nodes it reads: the run's DAG.
    kind: str = ""
    depends_on: list[str] = []
    # When it started running and when it ended (epoch seconds).
    started: float | None = None
    finished: float | None = None


class JobSummary(msgspec.Struct, kw_only=True):
    """A run as ``faas job ls`` lists it."""

    run_id: str
    status: RunStatus = "running"
    started: float | None = None
    finished: float | None = None
    ref: str | None = None
    namespace: str | None = None
    project: str | None = None
    commit: str | None = None
    error: str | None = None
    # The user who submitted it.
    user: str | None = None


class Jobs(Message, frozen=True):
    """Recent runs, newest first."""

    runs: list[JobSummary]


class JobRecord(JobSummary, kw_only=True):
    """A run's summary as the scheduler keeps it (``runs/<run id>/run.json``)."""

    error_kind: str | None = None
    tables: list[str] = []
    branch: str | None = None
    seconds: float | None = None
    nodes: dict[str, NodeRecord] = {}


class Job(Message, frozen=True):
    job: JobRecord


class JobEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A line a function printed (``line``, ``stream``) or a node's change of state
    (``state``, ``worker``, ``error``; ``passed`` for an expectation's verdict)."""

    node: str
    t: float = 0.0
    stream: Stream | None = None
    line: str | None = None
    state: TaskState | None = None
    worker: str | None = None
    error: str | None = None
    passed: bool | None = None


class JobEvents(Message, frozen=True):
    """One page of a run's events: ask again from ``next_offset`` until it is None."""

    events: list[JobEvent]
    next_offset: int | None = None


class SecretInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A stored secret, as anyone may see it: its name, who set it and when."""

    name: str
    set_by: str = ""
    set_at: float = 0.0


class Secrets(Message, frozen=True):
    secrets: list[SecretInfo]


class SecretChanged(Message, frozen=True):
    name: str
    deleted: bool = False


class Cancelled(Message, frozen=True):
    run_id: str
    status: Literal["cancelled"] = "cancelled"


class QueryFinished(Message, frozen=True):
    """The last frame of a query's result: ``rows`` rows in ``nbytes`` bytes of pieces,
    ``seconds`` from the request to the end."""

    rows: int
    nbytes: int
    seconds: float


ClientReply = (
    RunAccepted | TaskEvent | LogLine | RunFinished | BulkHeader | Error
    | Namespaces | NamespaceChanged | Tables | Table | Imported | TableDropped | TableReverted
    | Ref | Refs | RefDeleted | Merged | Differences | Commits | Pruned | Cluster
    | PlanDescription | Jobs | Job | JobEvents | Cancelled | QueryFinished | ImportPlan
    | Secrets | SecretChanged
)
