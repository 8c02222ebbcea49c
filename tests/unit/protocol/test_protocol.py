"""protocol/ without sockets: framing over an in-memory reader, schema evolution,
cluster tokens and proofs, and errors rebuilt from the wire."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from faas.protocol import errors
from faas.protocol.errors import (
    ConnectionClosed,
    FaasError,
    FrameTooLarge,
    FrameTruncated,
    MalformedFrame,
    PeerVanished,
    PlanInvalid,
    ProjectError,
    RemoteError,
    from_wire,
)
from faas.protocol.framing import (
    HEADER,
    MAX_CONTROL_FRAME,
    MAX_HANDSHAKE_FRAME,
    decode_payload,
    encode,
    read_frame,
    read_payload,
)
from faas.protocol.messages import (
    Auth,
    BulkHeader,
    ClientRequest,
    Error,
    Handshake,
    Hello,
    ImportTable,
    InputRead,
    ListRefs,
    ListTables,
    LogLine,
    Materialize,
    ObjectInfo,
    ObjectInput,
    RunFinished,
    ScanInput,
    SubmitRun,
    TaskEvent,
    Welcome,
    error_message,
)
from faas.protocol.replies import (
    ClientReply,
    Column,
    Job,
    JobRecord,
    NodeRecord,
    PlanDescription,
    PlannedInput,
    PlannedNode,
    QueryFinished,
    Table,
)
from faas.protocol.worker_messages import (
    FunctionReply,
    FunctionResult,
    FunctionTask,
    Heartbeat,
    ObjectDigest,
    PeerReply,
    QueryCredit,
    QueryDone,
    QueryPart,
    QueryTask,
    Register,
    RunTask,
    SchedulerToWorker,
    TaskDone,
    WorkerToScheduler,
)


class BytesReader:
    """``readexactly`` over a bytes buffer, failing at the end the way asyncio.StreamReader does."""

    def __init__(self, data: bytes = b"") -> None:
        self.buffer = bytearray(data)
        self.requests: list[int] = []

    async def readexactly(self, n: int) -> bytes:
        self.requests.append(n)
        if len(self.buffer) < n:
            partial = bytes(self.buffer)
            self.buffer.clear()
            raise asyncio.IncompleteReadError(partial, n)
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out


class BrokenReader:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def readexactly(self, n: int) -> bytes:
        raise self.exc


def read(reader: Any, decoder: msgspec.msgpack.Decoder[Any], max_size: int = MAX_CONTROL_FRAME) -> Any:
    return asyncio.run(asyncio.wait_for(read_frame(reader, decoder, max_size), 5))


def frame_of(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


SCAN = ScanInput(
    param="orders",
    key="sales.orders",
    metadata_location="/lake/sales/orders/metadata/00003.json",
    snapshot_id=7,
    columns=["id", "total"],
    filter="total > 10",
)
OBJ = ObjectInput(param="clean", node="clean_orders", object_id="obj-1", columns=None)

# One message (or more) of each channel union, decoded with that channel's decoder.
CHANNEL_MESSAGES: list[tuple[str, Any, Any]] = [
    ("ClientRequest", ClientRequest, SubmitRun(
        files={"models.py": "import faas\n"}, namespace="sales", params={"day": "2024-01-01"},
        project_dir="/src/proj", dry_run=True,
    )),
    ("ClientRequest", ClientRequest, ListTables(namespace=None)),
    ("ClientReply", ClientReply, RunFinished(
        run_id="r1", status="failed", commit="abc123", tables=["sales.x"],
        error=Error(kind="FunctionFailed", message="boom", detail="Traceback ..."), seconds=1.5,
    )),
    ("ClientReply", ClientReply, BulkHeader(nbytes=1 << 40, rows=3)),
    ("ClientReply", ClientReply, Table(
        key="sales.x", metadata_location="/lake/x/metadata/v2.json", snapshot_id=None, rows=3,
        files=1, bytes=1234, schema=[Column(name="a", type="long")],
    )),
    ("ClientReply", ClientReply, Job(job=JobRecord(
        run_id="r1", status="success", started=1.0, finished=2.5, ref="main", tables=["sales.x"],
        nodes={"x": NodeRecord(state="done", rows=3, phases={"code": 0.25}, inputs=[
            InputRead(param="t", source="scan", name="sales.t", seconds=0.1, rows=3, nbytes=99),
        ])},
    ))),
    ("ClientReply", ClientReply, PlanDescription(plan=[PlannedNode(
        name="x", kind="python", level=0, where="m.py:3", output="sales.x", materialize="replace",
        python=None, pip={}, memory=None, cpus=None, params={"day": "2024-01-01"}, depends_on=[],
        cache_key="k", inputs=[PlannedInput(param="t", from_="sales.t", source="table",
                                            snapshot_id=7, columns=["a"], filter=None)],
    )])),
    ("WorkerToScheduler", WorkerToScheduler, TaskDone(
        task_id="t1",
        output=ObjectInfo(object_id="o1", path="/dev/shm/o1.arrow", rows=10, nbytes=1234, schema=b"\x00\xff"),
        files=["/lake/f1.parquet"], seconds=0.25,
    )),
    ("WorkerToScheduler", WorkerToScheduler, Register(
        worker_id="w1", host_id="h1", memory_total=8 << 30, memory_available=4 << 30,
        python_versions=["3.11"], shm_dir="/dev/shm/faas",
    )),
    ("SchedulerToWorker", SchedulerToWorker, RunTask(
        task_id="t1", run_id="r1", node="clean_orders", files={"m.py": "x = 1\n"}, module="m",
        function="clean", inputs=[SCAN, OBJ], params={"a": "b"},
        materialize=Materialize(key="sales.clean", directory="/lake/tmp/1", mode="append"),
    )),
    ("SchedulerToWorker", SchedulerToWorker, QueryTask(task_id="q1", sql="select 1", tables={"o": SCAN})),
    ("SchedulerToWorker", SchedulerToWorker, QueryCredit(task_id="q1")),
    ("WorkerToScheduler", WorkerToScheduler, QueryPart(task_id="q1", nbytes=1 << 20, rows=65536)),
    ("WorkerToScheduler", WorkerToScheduler, QueryDone(task_id="q1", nbytes=1 << 21, rows=70000)),
    ("ClientReply", ClientReply, QueryFinished(rows=70000, nbytes=1 << 21, seconds=0.25)),
    ("PeerReply", PeerReply, ObjectDigest(chunk=16 << 20, xxh3_128=[b"\x01" * 16, b"\x02" * 16])),
    ("SchedulerToWorker", SchedulerToWorker, Error(kind="RunCancelled", message="cancelled")),
    ("FunctionTask", FunctionTask, FunctionTask(
        run_id="r1", node="n", project_dir="/p", module="m", function="f", inputs=[OBJ, SCAN],
        objects={"obj-1": "/dev/shm/obj-1.arrow"}, output_path="/dev/shm/out.arrow",
    )),
    ("FunctionReply", FunctionReply, FunctionResult(rows=5, nbytes=100, schema=b"schema")),
    ("FunctionReply", FunctionReply, Error(kind="OutOfMemory", message="too big", detail="rss")),
    ("Handshake", Handshake, Hello(version=1, role="scheduler", host_id="h", nonce=b"\x00" * 16)),
]


# -- framing ------------------------------------------------------------------


@pytest.mark.parametrize(
    "union, message",
    [(u, m) for _, u, m in CHANNEL_MESSAGES],
    ids=[f"{name}-{type(m).__name__}" for name, _, m in CHANNEL_MESSAGES],
)
def test_frame_roundtrip_for_each_channel(union: Any, message: Any) -> None:
    data = encode(message)
    (size,) = HEADER.unpack(data[:4])
    assert size == len(data) - 4
    reader = BytesReader(data)
    decoded = read(reader, msgspec.msgpack.Decoder(union))
    assert decoded == message
    assert type(decoded) is type(message)
    assert reader.buffer == b""


def test_several_frames_back_to_back_then_clean_eof() -> None:
    messages = [m for _, u, m in CHANNEL_MESSAGES if u is ClientReply]
    reader = BytesReader(b"".join(encode(m) for m in messages))
    decoder = msgspec.msgpack.Decoder(ClientReply)

    async def go() -> list[Any]:
        out = [await read_frame(reader, decoder) for _ in messages]
        with pytest.raises(ConnectionClosed):
            await read_frame(reader, decoder)
        return out

    assert asyncio.run(go()) == messages


def test_clean_eof_between_frames_is_connection_closed() -> None:
    reader = BytesReader(b"")
    with pytest.raises(ConnectionClosed) as info:
        read(reader, msgspec.msgpack.Decoder(ClientRequest))
    assert not isinstance(info.value, FrameTruncated)


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_eof_inside_header_is_truncated(keep: int) -> None:
    data = encode(ListTables(namespace="ns"))[:keep]
    with pytest.raises(FrameTruncated) as info:
        read(BytesReader(data), msgspec.msgpack.Decoder(ClientRequest))
    assert f"{keep} of 4 bytes" in str(info.value)


def test_eof_right_after_header_is_truncated() -> None:
    data = encode(ListTables(namespace="ns"))
    with pytest.raises(FrameTruncated) as info:
        read(BytesReader(data[:4]), msgspec.msgpack.Decoder(ClientRequest))
    assert f"0 of {len(data) - 4} bytes" in str(info.value)


def test_eof_inside_payload_is_truncated() -> None:
    data = encode(ListTables(namespace="ns"))
    with pytest.raises(FrameTruncated) as info:
        read(BytesReader(data[:-1]), msgspec.msgpack.Decoder(ClientRequest))
    assert f"{len(data) - 5} of {len(data) - 4} bytes" in str(info.value)


@pytest.mark.parametrize("exc", [ConnectionResetError(104, "reset"), BrokenPipeError(), TimeoutError()])
def test_socket_failure_while_reading_is_peer_vanished(exc: BaseException) -> None:
    with pytest.raises(PeerVanished) as info:
        read(BrokenReader(exc), msgspec.msgpack.Decoder(ClientRequest))
    assert info.value.__cause__ is exc


def test_oversize_frame_is_refused_before_its_payload_is_read() -> None:
    size = MAX_CONTROL_FRAME + 1
    reader = BytesReader(HEADER.pack(size) + b"x" * 100)
    with pytest.raises(FrameTooLarge) as info:
        read(reader, msgspec.msgpack.Decoder(ClientRequest))
    assert reader.requests == [4]  # only the header was asked for
    assert info.value.size == size
    assert info.value.limit == MAX_CONTROL_FRAME
    assert str(size) in str(info.value)
    assert str(MAX_CONTROL_FRAME) in str(info.value)


def test_largest_length_prefix_is_refused_without_reading() -> None:
    reader = BytesReader(b"\xff\xff\xff\xff")
    with pytest.raises(FrameTooLarge) as info:
        asyncio.run(read_payload(reader, MAX_HANDSHAKE_FRAME))
    assert reader.requests == [4]
    assert str(0xFFFFFFFF) in str(info.value) and str(MAX_HANDSHAKE_FRAME) in str(info.value)


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    message = SubmitRun(files={"a.py": "x" * 500}, namespace="n")
    data = encode(message)
    size = len(data) - 4
    assert read(BytesReader(data), msgspec.msgpack.Decoder(ClientRequest), size) == message
    with pytest.raises(FrameTooLarge):
        read(BytesReader(data), msgspec.msgpack.Decoder(ClientRequest), size - 1)


GOOD = ListTables(namespace="after")


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(frame_of(b"\xc1\xc1\xc1 not msgpack"), id="garbage"),
        pytest.param(frame_of(b""), id="empty-payload"),
        pytest.param(frame_of(msgspec.msgpack.encode([1, 2, 3])), id="msgpack-array"),
        pytest.param(frame_of(msgspec.msgpack.encode({"op": "NoSuchOp"})), id="unknown-tag"),
        pytest.param(frame_of(msgspec.msgpack.encode({"op": "GetTable"})), id="missing-field"),
        pytest.param(frame_of(msgspec.msgpack.encode({"op": "GetTable", "key": 5})), id="wrong-type"),
        pytest.param(encode(Heartbeat(memory_total=1, memory_available=1)), id="other-channel"),
        pytest.param(encode(RunFinished(run_id="r", status="success")), id="reply-as-request"),
        pytest.param(frame_of(msgspec.msgpack.encode(GOOD) + b"\x00"), id="trailing-bytes"),
    ],
)
def test_malformed_frame_keeps_the_stream_position(bad: bytes) -> None:
    reader = BytesReader(bad + encode(GOOD))
    decoder = msgspec.msgpack.Decoder(ClientRequest)

    async def go() -> Any:
        with pytest.raises(MalformedFrame) as info:
            await read_frame(reader, decoder)
        assert f"({len(bad) - 4} bytes)" in str(info.value)
        return await read_frame(reader, decoder)

    assert asyncio.run(go()) == GOOD
    assert reader.buffer == b""


def test_malformed_frame_names_the_missing_field() -> None:
    bad = frame_of(msgspec.msgpack.encode({"op": "GetTable"}))
    with pytest.raises(MalformedFrame, match="key"):
        read(BytesReader(bad), msgspec.msgpack.Decoder(ClientRequest))


def test_each_channel_decoder_builds() -> None:
    # Tag collisions inside a union are refused when the decoder is built.
    for union in (ClientRequest, ClientReply, WorkerToScheduler, SchedulerToWorker, FunctionReply, Handshake):
        msgspec.msgpack.Decoder(union)


def test_messages_are_frozen() -> None:
    msg = ListTables(namespace="x")
    with pytest.raises(AttributeError):
        msg.namespace = "y"  # type: ignore[misc]


# -- schema evolution ---------------------------------------------------------
# "Yesterday's" schema: the same tags with fewer fields (every field added since
# has a default) and one message type that did not exist yet (LogLine).


class OldMessage(msgspec.Struct, frozen=True, tag_field="op", kw_only=True):
    pass


class OldError(OldMessage, frozen=True, tag="Error"):
    kind: str
    message: str


class OldRunFinished(OldMessage, frozen=True, tag="RunFinished"):
    run_id: str
    status: str
    commit: str = ""
    tables: list[str] = []
    error: OldError | None = None


class OldTaskEvent(OldMessage, frozen=True, tag="TaskEvent"):
    run_id: str
    node: str
    state: str
    worker: str = ""
    time: float = 0.0


class OldTaskDone(OldMessage, frozen=True, tag="TaskDone"):
    task_id: str
    files: list[str] = []


OldClientReply = OldRunFinished | OldTaskEvent | OldError


def test_tags_are_the_class_names() -> None:
    assert msgspec.msgpack.decode(encode(TaskEvent(run_id="r", node="n", state="s"))[4:])["op"] == "TaskEvent"


def test_todays_run_finished_decodes_with_yesterdays_schema_and_back() -> None:
    today = RunFinished(
        run_id="r1", status="failed", commit="c0ffee", tables=["a.b"],
        error=Error(kind="FunctionFailed", message="boom", detail="tb"), seconds=12.5,
    )
    old = msgspec.msgpack.decode(msgspec.msgpack.encode(today), type=OldRunFinished)
    assert old == OldRunFinished(
        run_id="r1", status="failed", commit="c0ffee", tables=["a.b"],
        error=OldError(kind="FunctionFailed", message="boom"),
    )
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=RunFinished)
    assert back.seconds == 0.0  # default fills in
    assert back.error == Error(kind="FunctionFailed", message="boom", detail="")
    assert back.run_id == "r1" and back.commit == "c0ffee" and back.tables == ["a.b"]


def test_todays_task_event_decodes_with_yesterdays_schema_and_back() -> None:
    today = TaskEvent(run_id="r1", node="n", state="failed", worker="w1", time=3.0, rows=7, error="x")
    old = msgspec.msgpack.decode(msgspec.msgpack.encode(today), type=OldTaskEvent)
    assert old == OldTaskEvent(run_id="r1", node="n", state="failed", worker="w1", time=3.0)
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=TaskEvent)
    assert back == TaskEvent(run_id="r1", node="n", state="failed", worker="w1", time=3.0)
    assert back.rows == 0 and back.error == ""


def test_task_done_without_output_and_seconds_decodes_today() -> None:
    old = OldTaskDone(task_id="t", files=["f"])
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=WorkerToScheduler)
    assert back == TaskDone(task_id="t", output=None, files=["f"], seconds=0.0)


def test_yesterdays_channel_decoder_reads_todays_frames() -> None:
    today = [
        TaskEvent(run_id="r", node="n", state="done", rows=3),
        LogLine(run_id="r", node="n", stream="stdout", line="hi"),  # unknown to yesterday
        RunFinished(run_id="r", status="success", seconds=1.0),
    ]
    reader = BytesReader(b"".join(encode(m) for m in today))
    old_decoder = msgspec.msgpack.Decoder(OldClientReply)

    async def go() -> list[Any]:
        first = await read_frame(reader, old_decoder)
        with pytest.raises(MalformedFrame):  # a new message type costs one frame, not the stream
            await read_frame(reader, old_decoder)
        return [first, await read_frame(reader, old_decoder)]

    assert asyncio.run(go()) == [
        OldTaskEvent(run_id="r", node="n", state="done"),
        OldRunFinished(run_id="r", status="success"),
    ]


def test_todays_channel_decoder_reads_yesterdays_frames() -> None:
    old = [OldTaskEvent(run_id="r", node="n", state="queued"), OldRunFinished(run_id="r", status="cancelled")]
    reader = BytesReader(b"".join(encode(m) for m in old))
    decoder = msgspec.msgpack.Decoder(ClientReply)

    async def go() -> list[Any]:
        return [await read_frame(reader, decoder) for _ in old]

    assert asyncio.run(go()) == [
        TaskEvent(run_id="r", node="n", state="queued"),
        RunFinished(run_id="r", status="cancelled"),
    ]


# -- errors -------------------------------------------------------------------

SIMPLE = [
    errors.FaasError,
    errors.ConnectionClosed,
    errors.FrameTruncated,
    errors.PeerVanished,
    errors.ClosedByUs,
    errors.MalformedFrame,
    errors.HandshakeFailed,
    errors.ProjectError,
    errors.NotFound,
    errors.AlreadyExists,
    errors.InvalidInput,
    errors.FunctionFailed,
    errors.RunCancelled,
    errors.NoWorkers,
    errors.RemoteError,
]


@pytest.mark.parametrize("cls", SIMPLE, ids=[c.__name__ for c in SIMPLE])
def test_from_wire_rebuilds_known_kinds(cls: type[FaasError]) -> None:
    err = from_wire(cls.__name__, "what went wrong", "remote traceback\nline 2")
    assert type(err) is cls
    assert err.message == "what went wrong"
    assert str(err) == "what went wrong"
    assert err.detail == "remote traceback\nline 2"


@pytest.mark.parametrize("cls", SIMPLE, ids=[c.__name__ for c in SIMPLE])
def test_error_message_roundtrip(cls: type[FaasError]) -> None:
    wire = error_message(cls("table sales.x not found", detail="tb"))
    assert wire == Error(kind=cls.__name__, message="table sales.x not found", detail="tb")
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(wire), type=Error)
    err = from_wire(wire.kind, wire.message, wire.detail)
    assert type(err) is cls and err.message == "table sales.x not found" and err.detail == "tb"


def test_from_wire_detail_defaults_to_empty() -> None:
    assert from_wire("NotFound", "missing").detail == ""


@pytest.mark.parametrize("kind", ["KeyError", "SomethingNew", "", "from_wire", "Exception"])
def test_from_wire_unknown_kind_is_remote_error(kind: str) -> None:
    err = from_wire(kind, "it broke", "Traceback (most recent call last): ...")
    assert type(err) is RemoteError
    assert err.message == "it broke"
    assert err.detail == "Traceback (most recent call last): ..."


def test_error_message_of_a_plain_exception() -> None:
    wire = error_message(ValueError("bad value"), detail="tb")
    assert wire == Error(kind="ValueError", message="bad value", detail="tb")
    assert type(from_wire(wire.kind, wire.message, wire.detail)) is RemoteError
    assert error_message(ValueError()).message == "ValueError"


def test_from_wire_plan_invalid_rebuilds_problems() -> None:
    problems = [
        "models.py:3: function 'a' reads unknown table 'x'",
        "models.py:9: cycle a -> b -> a",
        "models.py:12: output 'c' defined twice",
    ]
    err = from_wire("PlanInvalid", "3 problems in the project", "\n".join(problems))
    assert type(err) is PlanInvalid
    assert isinstance(err, ProjectError)
    assert err.problems == problems
    assert err.message == "3 problems in the project"
    for p in problems:
        assert p in str(err)


def test_plan_invalid_roundtrip_through_error_message() -> None:
    for problems in (["only one: models.py:1"], ["a", "b"]):
        original = PlanInvalid(problems)
        wire = error_message(original)
        err = from_wire(wire.kind, wire.message, wire.detail)
        assert isinstance(err, PlanInvalid)
        assert err.problems == problems
        assert str(err) == str(original)


def test_from_wire_plan_invalid_without_detail_uses_message() -> None:
    err = from_wire("PlanInvalid", "the project has no functions")
    assert isinstance(err, PlanInvalid)
    assert err.problems == ["the project has no functions"]
    assert str(err) == "the project has no functions"


@pytest.mark.parametrize("kind", ["CommitConflict", "FrameTooLarge", "OutOfMemory"])
def test_from_wire_structured_kinds_keep_message_and_type(kind: str) -> None:
    err = from_wire(kind, "commit conflict on branch 'main'", "tb")
    assert type(err) is getattr(errors, kind)
    assert err.message == "commit conflict on branch 'main'"
    assert str(err) == "commit conflict on branch 'main'"
    assert err.detail == "tb"


def test_structured_errors_build_their_message() -> None:
    err = errors.CommitConflict("main", "a" * 40, "b" * 40)
    assert "'main'" in str(err) and "a" * 12 in str(err) and "b" * 12 in str(err)
    assert "a" * 13 not in str(err)
    oom = errors.OutOfMemory("function clean", 3 * 2**30, 512 * 2**20)
    assert (oom.used, oom.limit) == (3 * 2**30, 512 * 2**20)
    assert str(oom) == "function clean used 3 GiB, over its limit of 512 MiB, and was stopped"
    single = PlanInvalid(["models.py:3: bad"])
    assert str(single) == "models.py:3: bad" and single.detail == "models.py:3: bad"


def test_auth_messages_are_handshake_messages() -> None:
    decoder = msgspec.msgpack.Decoder(Handshake)
    for msg in (
        Auth(version=1, role="client", host_id="h", proof=b"p" * 32, nonce=b"n" * 16),
        Welcome(proof=b"p" * 32),
        Error(kind="HandshakeFailed", message="no"),
    ):
        assert read(BytesReader(encode(msg)), decoder) == msg


@pytest.mark.parametrize("request_, field", [
    (ListRefs(kind="branch"), "kind"),
    (ImportTable(key="s.t", paths=["a.csv"]), "mode"),
    (ImportTable(key="s.t", paths=["a.csv"], format="csv"), "format"),
])
def test_a_value_outside_a_fields_set_is_a_malformed_frame(request_: Any, field: str) -> None:
    """Literal fields are checked when a message is decoded: the one-line error names the
    field, and the frame is refused as a whole."""
    raw = msgspec.msgpack.decode(encode(request_)[4:])
    raw[field] = "nonsense"
    frame = msgspec.msgpack.encode(raw)
    with pytest.raises(MalformedFrame, match=field):
        decode_payload(frame, msgspec.msgpack.Decoder(ClientRequest))


def test_the_plan_reply_names_the_input_field_from() -> None:
    """``--json`` prints a planned input's source as "from" (a Python keyword)."""
    node = PlannedInput(param="t", from_="sales.t", source="table", snapshot_id=1, columns=None,
                        filter=None)
    assert msgspec.to_builtins(node)["from"] == "sales.t"
