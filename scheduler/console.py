"""The web console's HTTP API (``/api/v1``) and its static files (``/console/``).

Served by the scheduler's HTTP server, beside the Iceberg REST catalog. Every answer is
made by the same typed operations the CLI's requests reach, checked with the same roles,
and written as ``faas ... --json`` writes it: one source of truth for both. The console
itself is a bundle of static files built from ``console/`` (``make console``) and shipped
in the package under ``faas/console/static``.

Auth: ``Authorization: Bearer NAME:SECRET``, a faas user token. Errors:
``{"error": {"kind": "NotFound", "message": "one line"}}`` with the matching HTTP status.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from faas.protocol.errors import (
    AlreadyExists,
    CommitConflict,
    FaasError,
    InvalidInput,
    NotAllowed,
    NotFound,
    ProjectError,
    RemoteError,
    TimedOut,
)
from faas.protocol.messages import (
    CancelRun,
    ClusterInfo,
    Diff,
    GetJob,
    GetTable,
    JobLogs,
    ListJobs,
    ListNamespaces,
    ListRefs,
    ListTables,
    Log,
    Query,
)
from faas.protocol.replies import QueryFinished
from faas.scheduler.http_errors import ErrorModel, answer
from faas.scheduler.users import check

if TYPE_CHECKING:
    import pyarrow as pa

    from faas.scheduler.server import Scheduler

log = logging.getLogger(__name__)

# The built console, in the package (faas/console/static).
STATIC = Path(importlib.util.find_spec("faas.console").origin or "").parent / "static"  # type: ignore[union-attr]
API = "/api/v1"
# Rows a query page may hold, at most; and how often a run's events are looked for.
MAX_PAGE = 10_000
EVENTS_POLL = 0.25

# faas's errors as HTTP statuses, the first class that matches (a query's engine error,
# RemoteError, is about the query: bad input).
# The kind is the error's class name ("").
_STATUS: list[tuple[type[FaasError], int, str]] = [
    (NotAllowed, 403, ""), (CommitConflict, 409, ""), (AlreadyExists, 409, ""),
    (NotFound, 404, ""), (InvalidInput, 400, ""), (ProjectError, 400, ""),
    (RemoteError, 400, ""), (TimedOut, 504, ""), (FaasError, 500, ""),
]
# A reply's one field of interest, as the client (and so `faas ... --json`) unwraps it.
_UNWRAP = {"Refs": "refs", "Commits": "commits", "Differences": "changes",
           "Namespaces": "names", "Tables": "keys", "Jobs": "runs", "Job": "job"}


def error_response(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"kind": kind, "message": message}}, status=status)


CONSOLE_ERRORS = ErrorModel("console", error_response, _STATUS)


def as_json(reply: Any) -> Any:
    """A reply as ``faas ... --json`` prints it: unwrapped, without its message tag."""
    field = _UNWRAP.get(type(reply).__name__)
    plain = msgspec.to_builtins(getattr(reply, field) if field else reply)
    for item in plain if isinstance(plain, list) else [plain]:
        if isinstance(item, dict):
            item.pop("op", None)
    return plain


class Console:
    """The console's routes over a running scheduler."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        # The page loads its assets by relative paths: /console must end with a slash.
        r.add_get("/console", self.to_index)
        r.add_get("/console/", self.index)
        if (STATIC / "assets").is_dir():
            r.add_static("/console/assets", STATIC / "assets", append_version=False)
        r.add_get(API + "/whoami", self.whoami)
        r.add_get(API + "/branches", self.branches)
        r.add_get(API + "/tags", self.tags)
        r.add_get(API + "/log", self.log)
        r.add_get(API + "/diff", self.diff)
        r.add_get(API + "/namespaces", self.namespaces)
        r.add_get(API + "/tables", self.tables)
        r.add_get(API + "/tables/{key}", self.table)
        r.add_post(API + "/query", self.query)
        r.add_get(API + "/export", self.export)
        r.add_get(API + "/jobs", self.jobs)
        r.add_get(API + "/jobs/{run_id}", self.job)
        r.add_get(API + "/jobs/{run_id}/events", self.events)
        r.add_post(API + "/jobs/{run_id}/cancel", self.cancel)
        r.add_get(API + "/cluster", self.cluster)

    async def answer(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                     ) -> web.StreamResponse:
        """Run an API handler; faas's errors in the console's error model."""
        return await answer(request, handler, CONSOLE_ERRORS)

    # -- helpers ---------------------------------------------------------------------

    async def _do(self, request: web.Request, message: Any) -> Any:
        """The reply to ``message`` for the signed-in user, after the role check."""
        user = request["user"]
        check(user, self.scheduler.users.role(user), message, self.scheduler.protect)
        return await self.scheduler._catalog_op(message, user)

    async def _json(self, request: web.Request, message: Any) -> web.Response:
        return web.json_response(as_json(await self._do(request, message)))

    # -- pages and catalog ------------------------------------------------------------

    async def to_index(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently("/console/")

    async def index(self, request: web.Request) -> web.StreamResponse:
        page = STATIC / "index.html"
        if not page.is_file():
            return web.Response(status=503, content_type="text/plain", text=(
                "the console's files are not built: run 'make console' in faas's repository"))
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    async def whoami(self, request: web.Request) -> web.Response:
        user = request["user"]
        return web.json_response({"user": user, "role": self.scheduler.users.role(user)})

    async def branches(self, request: web.Request) -> web.Response:
        return await self._json(request, ListRefs(kind="branch"))

    async def tags(self, request: web.Request) -> web.Response:
        return await self._json(request, ListRefs(kind="tag"))

    async def log(self, request: web.Request) -> web.Response:
        q = request.query
        return await self._json(request, Log(ref=q.get("ref", "main"), n=_int(q, "n", 50)))

    async def diff(self, request: web.Request) -> web.Response:
        q = request.query
        if "from" not in q or "to" not in q:
            raise InvalidInput("a diff needs two refs: ?from=REF&to=REF")
        return await self._json(request, Diff(from_ref=q["from"], to_ref=q["to"]))

    async def namespaces(self, request: web.Request) -> web.Response:
        return await self._json(request, ListNamespaces(ref=request.query.get("ref", "main")))

    async def tables(self, request: web.Request) -> web.Response:
        q = request.query
        return await self._json(request, ListTables(namespace=q.get("namespace") or None,
                                                    ref=q.get("ref", "main")))

    async def table(self, request: web.Request) -> web.Response:
        key, ref = request.match_info["key"], request.query.get("ref", "main")
        found = as_json(await self._do(request, GetTable(key=key, ref=ref)))
        found["snapshots"] = await self.scheduler.store_call(
            _snapshots, self.scheduler.lakehouse, ref, key, found["metadata_location"])
        return web.json_response(found)

    # -- queries ----------------------------------------------------------------------

    async def query(self, request: web.Request) -> web.Response:
        """One page of a query's result: the server runs the query for that page alone,
        with one row more than asked to tell whether there are more."""
        body = await _body(request)
        sql = str(body.get("sql") or "").strip().rstrip(";")
        if not sql:
            raise InvalidInput("no SQL to run")
        offset, limit = max(0, int(body.get("offset") or 0)), int(body.get("limit") or 100)
        if not 0 < limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be 1 to {MAX_PAGE}, not {limit}")
        paged = f"SELECT * FROM (\n{sql}\n) AS faas_page LIMIT {limit + 1} OFFSET {offset}"
        result, seconds = await self._run_query(request, Query(
            sql=paged, namespace=body.get("namespace") or None, ref=body.get("ref") or "main"))
        more = result.num_rows > limit
        rows = result.slice(0, limit)
        return web.json_response({
            "columns": [{"name": f.name, "type": str(f.type)} for f in rows.schema],
            "rows": [[_for_browser(v) for v in r.values()] for r in rows.to_pylist()],
            "offset": offset, "limit": limit, "more": more, "seconds": seconds,
        }, dumps=_dumps)

    async def export(self, request: web.Request) -> web.StreamResponse:
        """The whole result of a query as a CSV or Parquet download."""
        q = request.query
        fmt = q.get("format", "csv")
        if fmt not in ("csv", "parquet"):
            raise InvalidInput(f"format must be csv or parquet, not {fmt!r}")
        sql = (q.get("sql") or "").strip().rstrip(";")
        if not sql:
            raise InvalidInput("no SQL to run")
        result, _ = await self._run_query(request, Query(
            sql=sql, namespace=q.get("namespace") or None, ref=q.get("ref") or "main"))
        data = await asyncio.to_thread(_encode, result, fmt)
        return web.Response(body=data, headers={
            "Content-Type": "text/csv" if fmt == "csv" else "application/vnd.apache.parquet",
            "Content-Disposition": f'attachment; filename="result.{fmt}"',
        })

    async def _run_query(self, request: web.Request, query: Query) -> tuple[pa.Table, float]:
        user = request["user"]
        check(user, self.scheduler.users.role(user), query, self.scheduler.protect)
        sink = _Pieces()
        await self.scheduler._query(sink, query)
        return sink.table(), sink.seconds

    # -- runs and the cluster -------------------------------------------------------------

    async def jobs(self, request: web.Request) -> web.Response:
        return await self._json(request, ListJobs(limit=_int(request.query, "limit", 50)))

    async def job(self, request: web.Request) -> web.Response:
        return await self._json(request, GetJob(run_id=request.match_info["run_id"]))

    async def cancel(self, request: web.Request) -> web.Response:
        return await self._json(request, CancelRun(run_id=request.match_info["run_id"]))

    async def cluster(self, request: web.Request) -> web.Response:
        return await self._json(request, ClusterInfo())

    async def events(self, request: web.Request) -> web.StreamResponse:
        """A run's events as server-sent events: those recorded, then each new one as the
        run records it, until the run has ended (``event: end``)."""
        run_id = request.match_info["run_id"]
        await self._do(request, GetJob(run_id=run_id))  # NotFound before the stream starts
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        offset: int | None = 0
        while True:
            job = (await self._do(request, GetJob(run_id=run_id))).job
            while offset is not None:
                page = await self._do(request, JobLogs(run_id=run_id, offset=offset))
                for event in page.events:
                    await response.write(b"data: " + msgspec.json.encode(event) + b"\n\n")
                if page.next_offset is None:
                    offset = offset + len(page.events)
                    break
                offset = page.next_offset
            if job.status != "running":
                await response.write(b"event: end\ndata: " + msgspec.json.encode(
                    {"status": job.status}) + b"\n\n")
                break
            await asyncio.sleep(EVENTS_POLL)
        await response.write_eof()
        return response


class _Pieces:
    """Where the scheduler's query path sends a result for the console: kept as tables."""

    def __init__(self) -> None:
        self.pieces: list[pa.Table] = []
        self.seconds = 0.0

    def hung_up(self) -> bool:
        return False

    async def send_raw(self, header: bytes, data: bytes) -> None:
        import pyarrow as pa

        self.pieces.append(pa.ipc.open_stream(pa.py_buffer(data)).read_all())

    async def send(self, msg: Any) -> None:
        if isinstance(msg, QueryFinished):
            self.seconds = msg.seconds

    def table(self) -> pa.Table:
        import pyarrow as pa

        if not self.pieces:
            return pa.table({})
        return pa.concat_tables(self.pieces) if len(self.pieces) > 1 else self.pieces[0]


def _encode(table: pa.Table, fmt: str) -> bytes:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    out = io.BytesIO()
    if fmt == "csv":
        pcsv.write_csv(table, out)
    else:
        pq.write_table(table, out, compression="zstd")
    return out.getvalue()


def _snapshots(lh: Any, ref: str, key: str, metadata_location: str) -> list[dict[str, Any]]:
    """A table's snapshots, oldest first, from the metadata file GetTable read (store
    thread; parsed once: the lakehouse keeps parsed metadata by location)."""
    table = lh.view(ref).table_at(key, metadata_location)
    return [
        {"snapshot_id": s.snapshot_id, "timestamp_ms": s.timestamp_ms,
         "operation": s.summary.operation.value if s.summary is not None else None,
         "summary": dict(s.summary.additional_properties) if s.summary is not None else {}}
        for s in table.snapshots()
    ]


def _int(query: Any, name: str, default: int) -> int:
    try:
        return int(query.get(name, default))
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number, not {query.get(name)!r}") from None


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidInput("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    return body


# The largest integer a browser's numbers (IEEE doubles) hold exactly.
_SAFE_INTEGER = 2**53 - 1
_NOT_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _for_browser(value: Any) -> Any:
    """A query value as JavaScript reads it right: an integer past 2**53 - 1 (which a
    browser would round) and a float JSON cannot spell (NaN, infinities) as text, at any
    depth of a list or struct."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value) if abs(value) > _SAFE_INTEGER else value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NOT_FINITE[str(value)]
    if isinstance(value, (list, tuple)):
        return [_for_browser(v) for v in value]
    if isinstance(value, dict):
        return {k: _for_browser(v) for k, v in value.items()}
    return value


def _dumps(value: Any) -> str:
    """JSON for query rows: values JSON has no type for (dates, decimals) as text."""
    return json.dumps(value, default=str)
