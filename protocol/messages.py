"""The control messages every peer shares, the handshake and the client's channel, one
tagged union per channel (the worker's channels are in :mod:`protocol.worker_messages`).

Channels:
- handshake (any peer): Hello → Auth → Welcome
- client ↔ scheduler: ClientRequest here; the replies, one type per request, are in
  :mod:`faas.protocol.replies` (ClientReply)

Evolution rule: new fields get defaults, a field's type never changes.
Tags are the class names; the tag field is ``op``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

PROTOCOL_VERSION = 3


class Message(msgspec.Struct, frozen=True, tag_field="op", kw_only=True):
    """Base of every control message."""


# -- shared -------------------------------------------------------------------


class Error(Message, frozen=True):
    """A typed failure; ``kind`` is the name of a class in protocol.errors."""

    kind: str
    message: str
    detail: str = ""


class BulkHeader(Message, frozen=True):
    """Announces ``nbytes`` of raw bytes (an Arrow IPC stream) right after this frame."""

    nbytes: int
    rows: int = 0


ParamValue = str | int | float | bool

# The values some fields may take, checked by msgspec when a message is decoded.
RefKind = Literal["branch", "tag"]
ImportMode = Literal["replace", "append", "overwrite_partitions"]
FileFormat = Literal["csv", "tsv", "parquet"]
Stream = Literal["stdout", "stderr"]
# A node's states, as TaskEvent reports them ("warning": an expectation failed, not strict).
TaskState = Literal[
    "queued", "ready", "running", "retrying", "done", "warning", "failed", "cancelled"
]
RunOutcome = Literal["success", "failed", "cancelled"]

NODE_LABELS = {"python": "model", "sql": "SQL model", "expectation": "expectation"}


def node_label(kind: str) -> str:
    """How messages for people name a node of this kind: model, SQL model, expectation."""
    return NODE_LABELS.get(kind, "model")


def error_message(exc: BaseException, detail: str = "") -> Error:
    """The wire form of an exception (its class name is the kind)."""
    message = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
    return Error(
        kind=exc.__class__.__name__,
        message=message,
        detail=detail or getattr(exc, "detail", ""),
    )


# -- handshake ------------------------------------------------------------------

Role = Literal["client", "worker", "scheduler", "peer"]


class Hello(Message, frozen=True):
    """First frame, sent by the accepting side."""

    version: int
    role: Role
    host_id: str
    nonce: bytes


class Auth(Message, frozen=True):
    """The connecting side proves it holds the cluster token."""

    version: int
    role: Role
    host_id: str
    proof: bytes
    nonce: bytes
    # The user a client authenticates as (its token file's NAME); empty for daemons.
    user: str = ""


class Welcome(Message, frozen=True):
    """The accepting side proves the token back over the connecting side's nonce."""

    proof: bytes


Handshake = Hello | Auth | Welcome | Error


# -- run plans ----------------------------------------------------------------


class InputRead(msgspec.Struct, frozen=True, kw_only=True):
    """How one input of a function was read: a source scan or an upstream object mapped."""

    param: str
    source: Literal["scan", "object"]
    name: str  # the table key, or the upstream node
    seconds: float
    rows: int = 0
    nbytes: int = 0
    # Given as a reader (faas.Model(stream=True)): rows and bytes are read by the
    # function as it goes, not counted here; ``seconds`` is the opening.
    streamed: bool = False


class ScanPlan(msgspec.Struct, frozen=True, kw_only=True):
    """A source scan planned from its Iceberg metadata by the worker (which keeps that
    metadata), so the function process reads the data files with Arrow alone."""

    # The data files' URIs, in the order the scan planned them.
    files: list[str]
    # The columns as they are read (the table's order, then any that only the filter
    # names), with the Arrow types pyiceberg gives them: a serialized Arrow schema.
    schema: bytes
    # The columns the function gets, in its order.
    columns: list[str]
    # The row filter as a pickled Arrow expression; empty: none.
    filter: bytes = b""
    # What the column cache keys entries by: the table's uuid, the snapshot, and each
    # column's Iceberg field as the scan's schema states it.
    table_uuid: str = ""
    snapshot_id: int = 0
    fields: dict[str, str] = {}


class ContractColumn(msgspec.Struct, frozen=True, kw_only=True):
    """A column a model declares (faas.TableSchema, or columns=[...]): its name, its Arrow
    type ("" for any; "decimal128" for any decimal) and whether it may hold nulls."""

    name: str
    type: str = ""
    nullable: bool = True

    def accepts(self, found: object) -> bool:
        """Whether a column of Arrow type ``found`` has the declared type (string and
        large_string are one type, as they are to Iceberg)."""
        if not self.type:
            return True
        text = str(found).replace("large_", "")
        if self.type == "decimal128":
            return text.startswith("decimal")
        return text == self.type


class Contract(msgspec.Struct, frozen=True, kw_only=True):
    """What a model declares it returns: its columns, and the declaration's name (the
    schema class, or "columns" for a plain list)."""

    name: str
    columns: list[ContractColumn]

    @property
    def said(self) -> str:
        """How messages name the declaration: its schema class, or its columns=[...]."""
        return "its schema " + self.name if self.name != "columns" else "its columns=[...]"

    def undeclared(self, names: Iterable[str]) -> str | None:
        """What to say of the columns among ``names`` that the declaration does not name
        (a warning, or in a strict run a failure); None where it names them all."""
        declared = {c.name for c in self.columns}
        extra = [n for n in names if n not in declared]
        if not extra:
            return None
        return (f"returned column{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))}, "
                f"which {self.said} does not declare")


class ScanInput(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="scan"):
    """An input read from an Iceberg table inside the function process."""

    param: str
    key: str
    metadata_location: str
    snapshot_id: int | None = None
    columns: list[str] | None = None
    filter: str | None = None
    # Hand the function a RecordBatchReader, not a Table (faas.Model(stream=True)).
    stream: bool = False
    # Set by the worker when Arrow alone can read it; None: the function reads the
    # metadata and plans the scan itself.
    plan: ScanPlan | None = None


class ObjectInput(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="object"):
    """An input that is another function's output object (an Arrow IPC file)."""

    param: str
    node: str
    object_id: str
    columns: list[str] | None = None
    filter: str | None = None
    stream: bool = False


class Materialize(msgspec.Struct, frozen=True, kw_only=True):
    """Where a worker writes an output's Parquet files for the scheduler to commit."""

    key: str
    directory: str
    mode: ImportMode = "replace"
    # Nothing of the run reads this output: the function process writes the Parquet
    # files itself as its rows come, on all cores, and no object is kept.
    direct: bool = False
    # The table's partitions (store.partitions): each Parquet file holds one.
    partitioned_by: str = ""


class ObjectInfo(msgspec.Struct, frozen=True, kw_only=True):
    object_id: str
    path: str
    rows: int
    nbytes: int
    # The Arrow schema, serialized as an IPC schema message.
    schema: bytes = b""


# -- client ↔ scheduler -------------------------------------------------------


class SubmitRun(Message, frozen=True):
    files: dict[str, str]
    namespace: str
    ref: str = "main"
    params: dict[str, str] = {}
    project_dir: str = ""
    dry_run: bool = False
    # Failing expectations fail the run (otherwise they are warnings).
    strict: bool = False
    # Run everything: reuse no cached result (outputs and source columns alike).
    no_cache: bool = False
    # Answer RunAccepted and leave the run going: it no longer ends with this connection
    # (follow it with FollowJob, stop it with CancelRun).
    detach: bool = False


class ListNamespaces(Message, frozen=True):
    ref: str = "main"


class CreateNamespace(Message, frozen=True):
    name: str
    ref: str = "main"


class ListTables(Message, frozen=True):
    namespace: str | None = None
    ref: str = "main"


class GetTable(Message, frozen=True):
    key: str
    ref: str = "main"


class PlanColumn(msgspec.Struct, frozen=True, kw_only=True):
    """One column of an import plan: the types it has in the files (type -> files), the
    files without it, the type to import it as ("" when none fits every file) and
    whether files without it get nulls."""

    name: str
    type: str
    seen: dict[str, list[str]] = {}
    missing: list[str] = []
    fill: bool = False


class ImportTable(Message, frozen=True):
    key: str
    paths: list[str]
    ref: str = "main"
    mode: ImportMode = "replace"
    # None: from each file's suffix.
    format: FileFormat | None = None
    # An import plan to follow (faas table import --apply); None: the files must agree.
    plan: list[PlanColumn] | None = None
    # Only survey the files and answer an ImportPlan (faas table import --plan).
    plan_only: bool = False
    # Register the files as they are (faas table create-external): Parquet files, or one
    # Iceberg table's metadata file; nothing is copied.
    external: bool = False
    # The table's partitions (store.partitions); "" keeps an existing table's.
    partitioned_by: str = ""
    # Only create the table, empty, with the files' schema (faas table create).
    create_only: bool = False


class Query(Message, frozen=True):
    sql: str
    namespace: str | None = None
    ref: str = "main"
    # Seconds the query may run; None: the scheduler's default (--query-timeout).
    timeout: float | None = None


class ClusterInfo(Message, frozen=True):
    pass


class ListRefs(Message, frozen=True):
    kind: RefKind = "branch"
    include_runs: bool = False


class CreateRef(Message, frozen=True):
    kind: RefKind
    name: str
    from_ref: str = "main"


class DeleteRef(Message, frozen=True):
    kind: RefKind
    name: str


class Merge(Message, frozen=True):
    source: str
    into: str = "main"
    message: str | None = None
    fast_forward: bool = False


class Diff(Message, frozen=True):
    from_ref: str
    to_ref: str


class Log(Message, frozen=True):
    ref: str = "main"
    n: int = 20


class DropTable(Message, frozen=True):
    key: str
    ref: str = "main"


class RevertTable(Message, frozen=True):
    key: str
    branch: str
    to_ref: str


class DropNamespace(Message, frozen=True):
    name: str
    ref: str = "main"


class PruneRuns(Message, frozen=True):
    older_than: float | None = None


class ListJobs(Message, frozen=True):
    limit: int = 20


class GetJob(Message, frozen=True):
    run_id: str


class JobLogs(Message, frozen=True):
    """A page of a run's events, from ``offset`` (where the last page said to go on)."""

    run_id: str
    offset: int = 0


class FollowJob(Message, frozen=True):
    """Replay a run's events so far, then stream the rest live, ending with RunFinished
    (RunAccepted first, naming its nodes). Hanging up stops following, not the run."""

    run_id: str


class CancelRun(Message, frozen=True):
    run_id: str


class SetSecret(Message, frozen=True):
    """Store a secret (faas secret set): runs' functions read it as a parameter of type
    secret; it is never sent back."""

    name: str
    value: str


class DeleteSecret(Message, frozen=True):
    name: str


class ListSecrets(Message, frozen=True):
    pass


class RunAccepted(Message, frozen=True):
    run_id: str
    nodes: list[str]


class TaskEvent(Message, frozen=True):
    """A node changed state: queued, running, done (perhaps from the cache), failed, cancelled."""

    run_id: str
    node: str
    state: TaskState
    worker: str = ""
    time: float = 0.0
    rows: int = 0
    error: str = ""
    env: str = ""
    # "done" from the cache: the output was already made, nothing ran.
    cached: bool = False
    # Source columns served by the worker's column cache, and read from storage.
    columns_cached: list[str] = []
    columns_read: list[str] = []
    # On "done": seconds in each phase (queued, environment, process_start, inputs, code,
    # output_shm, output_parquet, commit; see TaskDone) and how each input was read.
    phases: dict[str, float] = {}
    inputs: list[InputRead] = []
    # An expectation's verdict ("done": passed; "warning": failed); None for models.
    passed: bool | None = None

    @property
    def shown(self) -> str:
        """The state as people read it: an expectation passed or failed."""
        if self.passed is not None and self.state in ("done", "warning"):
            return "passed" if self.passed else "failed"
        return self.state


class LogLine(Message, frozen=True):
    run_id: str
    node: str
    stream: Stream
    line: str
    time: float = 0.0


class RunFinished(Message, frozen=True):
    run_id: str
    status: RunOutcome
    commit: str = ""
    tables: list[str] = []
    error: Error | None = None
    seconds: float = 0.0
    # The run's transaction branch; kept for inspection when the run did not succeed.
    branch: str = ""


ClientRequest = (
    SubmitRun
    | SetSecret
    | DeleteSecret
    | ListSecrets
    | ListNamespaces
    | CreateNamespace
    | ListTables
    | GetTable
    | ImportTable
    | Query
    | ClusterInfo
    | ListRefs
    | CreateRef
    | DeleteRef
    | Merge
    | Diff
    | Log
    | DropTable
    | RevertTable
    | DropNamespace
    | PruneRuns
    | ListJobs
    | GetJob
    | JobLogs
    | CancelRun
    | FollowJob
)
