"""The control messages of the worker's channels, one tagged union per channel.

Channels:
- worker ↔ scheduler: WorkerToScheduler / SchedulerToWorker
- worker ↔ worker (the peer data server): PeerRequest / PeerReply
- worker ↔ function process: FunctionTask (then TaskObjects) / FunctionReply

The handshake, the client's channel and what both sides share are in
:mod:`protocol.messages`, with the same evolution rule: new fields get defaults, a
field's type never changes; tags are the class names, in ``op``.
"""

from __future__ import annotations

import msgspec

from faas.protocol.messages import (
    BulkHeader,
    Contract,
    Error,
    InputRead,
    Materialize,
    Message,
    ObjectInfo,
    ObjectInput,
    ParamValue,
    PlanColumn,
    ScanInput,
    Stream,
)

# -- worker ↔ scheduler -------------------------------------------------------


class Register(Message, frozen=True):
    worker_id: str
    host_id: str
    memory_total: int
    memory_available: int
    python_versions: list[str]
    shm_dir: str
    data_address: str = ""
    env_builds: int = 0
    # Cores functions may reserve here (@faas.model(cpus=N)); 0: not counted.
    cpus: int = 0
    # Cached objects already in this worker's store (after a scheduler restart).
    objects: list[ObjectInfo] = []
    # How its function processes are isolated: "sandbox" or "none" (faasd worker
    # --isolation none).
    isolation: str = "sandbox"


class Heartbeat(Message, frozen=True):
    memory_total: int
    memory_available: int
    running: int = 0
    # Environments this worker built (installer runs) since it started.
    env_builds: int = 0
    # Bytes in shared memory that runs are using, bytes of unpinned cache there (given
    # back on demand), bytes spilled to disk; objects deleted since the last heartbeat.
    shm_bytes: int = 0
    cache_bytes: int = 0
    spilled_bytes: int = 0
    dropped: list[str] = []
    # Shutting down: give it no new work.
    draining: bool = False
    # The Python versions it offers, once it has found more than its own (None: as before).
    python_versions: list[str] | None = None


class TaskStarted(Message, frozen=True):
    task_id: str
    pid: int = 0
    # The function's environment: "base" (the worker's own), "cached" or "built".
    env: str = ""


class TaskLog(Message, frozen=True):
    task_id: str
    stream: Stream
    line: str
    time: float = 0.0


class TaskDone(Message, frozen=True):
    task_id: str
    output: ObjectInfo | None = None
    files: list[str] = []
    seconds: float = 0.0
    passed: bool | None = None
    # The output came from the worker's store: nothing ran.
    cached: bool = False
    columns_cached: list[str] = []
    columns_read: list[str] = []
    # Seconds the worker and the function spent in each phase: environment,
    # process_start, inputs, code, output_shm, output_parquet.
    phases: dict[str, float] = {}
    inputs: list[InputRead] = []
    # A direct output (Materialize.direct) has no object: its rows and Arrow schema.
    rows: int = 0
    schema: bytes = b""


class ObjectReady(Message, frozen=True):
    """A task's output is in the worker's store: readers may start while the worker still
    writes it to the warehouse (TaskDone follows)."""

    task_id: str
    output: ObjectInfo


class TaskFailed(Message, frozen=True):
    task_id: str
    error: Error


class ImportDone(Message, frozen=True):
    task_id: str
    files: list[str]
    rows: int
    schema: bytes


class QueryPart(Message, frozen=True):
    """Followed by ``nbytes`` raw bytes: the next piece of a query's result, an Arrow IPC
    stream of its own (schema, then ``rows`` rows). The first piece may have no rows."""

    task_id: str
    nbytes: int
    rows: int = 0


class QueryDone(Message, frozen=True):
    """A query's result is complete: ``rows`` rows in ``nbytes`` bytes of QueryParts."""

    task_id: str
    nbytes: int
    rows: int = 0


class Registered(Message, frozen=True):
    worker_id: str
    heartbeat_interval: float = 1.0


class ObjectSource(msgspec.Struct, frozen=True, kw_only=True):
    """Where an upstream object lives: mapped in place on the same host, pulled otherwise."""

    worker_id: str
    host_id: str
    address: str
    path: str
    rows: int = 0
    schema: bytes = b""


class RunTask(Message, frozen=True):
    task_id: str
    run_id: str
    node: str
    files: dict[str, str]
    module: str
    function: str
    inputs: list[ScanInput | ObjectInput]
    # The output's object id, and where each upstream object (by object id) lives.
    output_id: str = ""
    sources: dict[str, ObjectSource] = {}
    # Answer from the store when it holds output_id; keep the output there as a cached
    # result; read source columns through the worker's column cache.
    use_cache: bool = True
    params: dict[str, ParamValue] = {}
    materialize: Materialize | None = None
    # "python", "sql" (the query is in ``sql``) or "expectation" (returns a bool, no output).
    kind: str = "python"
    sql: str = ""
    # The environment: a Python version (None = the worker's own) and pip pins.
    python: str | None = None
    pip: dict[str, str] = {}
    # Limits: the process is killed past them (0 / None = none).
    memory_limit: int = 0
    # Cores reserved for it (its engines' thread budget); 0: none reserved, the worker's
    # unreserved cores are its budget.
    cpus: int = 0
    timeout: float | None = None
    # The function may reach the network (@faas.model(internet_access=True)); otherwise
    # its sandbox has no network at all.
    internet_access: bool = False
    # Upstream objects (by object id) not made yet: the task starts early, reading its
    # source scans, and their sources follow in an InputsReady.
    waiting: list[str] = []
    # What the model declares it returns, checked when it returns; strict: columns it
    # does not declare fail it (otherwise they are a warning).
    contract: Contract | None = None
    strict: bool = False
    # Parameters of type secret (param -> value): given to the function with ``params``,
    # masked in its output and errors, never recorded.
    secrets: dict[str, str] = {}


class InputsReady(Message, frozen=True):
    """The upstream objects an early-started task was waiting for exist now: where each
    lives, and the task's memory limit counting what it maps."""

    task_id: str
    sources: dict[str, ObjectSource]
    memory_limit: int = 0


class CancelTask(Message, frozen=True):
    task_id: str


class ReleaseRun(Message, frozen=True):
    run_id: str


class ImportTask(Message, frozen=True):
    task_id: str
    key: str
    paths: list[str]
    directory: str
    format: str | None = None
    plan: list[PlanColumn] | None = None
    # Answer ImportPlanned (the plan faas proposes), write nothing.
    plan_only: bool = False
    # Check the files for an external table and answer ImportDone with their own URIs.
    external: bool = False
    # Cut the rows one partition per file (store.partitions).
    partitioned_by: str = ""
    # Read the files' schema alone and write nothing (faas table create).
    create_only: bool = False


class ImportPlanned(Message, frozen=True):
    task_id: str
    files: list[str]
    columns: list[PlanColumn]


class QueryTask(Message, frozen=True):
    """Run a query and stream its result back as QueryParts, then QueryDone."""

    task_id: str
    sql: str
    # SQL table name as written in the query → the table's scan input.
    tables: dict[str, ScanInput]
    # The most bytes (Arrow IPC) its result may have; 0: no limit.
    max_result_bytes: int = 0
    # The most QueryParts sent ahead of the scheduler's QueryCredits.
    window: int = 4


class QueryCredit(Message, frozen=True):
    """The scheduler passed one QueryPart of the task on to its client: the worker may
    send one more."""

    task_id: str


WorkerToScheduler = (
    Register
    | Heartbeat
    | TaskStarted
    | TaskLog
    | ObjectReady
    | TaskDone
    | TaskFailed
    | ImportDone
    | ImportPlanned
    | QueryPart
    | QueryDone
)
SchedulerToWorker = (
    Registered | RunTask | InputsReady | CancelTask | ReleaseRun | ImportTask | QueryTask
    | QueryCredit | Error
)


# -- worker ↔ worker (peer data server) -----------------------------------------


class FetchObject(Message, frozen=True):
    """Ask a worker for one of its objects; the answer is a BulkHeader, the Arrow IPC
    bytes, then an ObjectDigest."""

    object_id: str


class ObjectDigest(Message, frozen=True):
    """Follows an object's bytes: the XXH3-128 of each ``chunk`` bytes of it, in order (the
    last chunk may be shorter), 16 bytes each, hashed by the sender from its own copy. The
    receiver hashes what landed and refuses the object if any chunk differs."""

    chunk: int
    xxh3_128: list[bytes]


PeerRequest = FetchObject
PeerReply = BulkHeader | ObjectDigest | Error


# -- worker ↔ function process --------------------------------------------------


class FunctionTask(Message, frozen=True):
    run_id: str
    node: str
    project_dir: str
    module: str
    function: str
    inputs: list[ScanInput | ObjectInput]
    # object id → path of the Arrow IPC file holding it, for ObjectInputs.
    objects: dict[str, str]
    output_path: str
    params: dict[str, ParamValue] = {}
    kind: str = "python"
    sql: str = ""
    # The directory holding the cache entries of the planned scans' columns ("" when the
    # run does not use the cache).
    column_cache: str = ""
    # param -> what the worker read for a scan not in the cache: an Arrow IPC file, or a
    # FIFO carrying an Arrow IPC stream for a streamed scan. Functions never read storage.
    scans: dict[str, str] = {}
    # param -> why the table cannot give that scan (a column, filter or snapshot it lacks).
    input_problems: dict[str, str] = {}
    # Set for a direct output: write it as Parquet files STEM-N.parquet into this
    # directory (not into output_path), encoding up to ``threads`` files at once.
    parquet_dir: str = ""
    parquet_stem: str = ""
    threads: int = 1
    # Object ids of ObjectInputs whose paths are not in ``objects`` yet: they come later
    # as a TaskObjects frame, once the upstream functions have made them.
    waiting: list[str] = []
    contract: Contract | None = None
    strict: bool = False


class TaskObjects(Message, frozen=True):
    """The paths of a FunctionTask's waiting objects (object id -> Arrow IPC file)."""

    objects: dict[str, str]


class FunctionResult(Message, frozen=True):
    rows: int
    nbytes: int
    schema: bytes
    # An expectation's verdict; None for models.
    passed: bool | None = None
    # Source columns taken from the column cache and read from storage (as "table.column").
    columns_cached: list[str] = []
    columns_read: list[str] = []
    # When the process began (time.time()), and seconds spent reading inputs, in the
    # user's code and writing the output into shared memory.
    started: float = 0.0
    phases: dict[str, float] = {}
    inputs: list[InputRead] = []
    # A direct output's Parquet files, in order.
    files: list[str] = []


FunctionReply = FunctionResult | Error


