"""The Iceberg REST catalog the scheduler serves: every engine reads faas tables by ref.

``faasd scheduler --http HOST:PORT`` serves it with aiohttp (embedded mode: on loopback, a
port of its own). The ref is part of the base URI, as Project Nessie does it:
``http://HOST:PORT/iceberg/<ref>``, where ``<ref>`` is a branch, a tag or
``branch@hash``. A client configures that URI and nothing else: PyIceberg's
``RestCatalog(uri=...)``, Spark's ``spark.sql.catalog.X.uri``, DuckDB's ``ATTACH``.

Served so far, following the Iceberg REST OpenAPI spec (``open-api/rest-catalog-open-
api.yaml``): ``GET /v1/config``; namespaces (list, with ``pageToken``/``pageSize``; load;
exists); tables (list, paged; load, with the full metadata and the FileIO settings a
client needs to read the data files, never credentials; exists; commit, create, drop,
each one faas commit on the URI's branch); ``POST /v1/transactions/commit`` (several
tables, one commit or none). ``/v1/config`` names exactly these endpoints, so a client
refuses anything else before asking.

Auth: ``Authorization: Bearer NAME:SECRET``, a faas user token (any role may read; a
commit needs ``writer``, ``admin`` on a protected branch).
Errors are the spec's error model: ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from faas.protocol.auth import split_credential
from faas.protocol.errors import (
    AlreadyExists,
    CommitConflict,
    FaasError,
    InvalidInput,
    NotAllowed,
    NotFound,
)
from faas.scheduler.http_errors import ErrorModel, answer
from faas.scheduler.users import allow

if TYPE_CHECKING:
    from faas.scheduler.console import Console
    from faas.scheduler.server import Scheduler

log = logging.getLogger(__name__)

PREFIX = "/iceberg/{ref}/v1"
# The endpoints /v1/config announces ("METHOD /v1/{prefix}/..."), as the spec spells them.
ENDPOINTS = [
    "GET /v1/{prefix}/namespaces",
    "GET /v1/{prefix}/namespaces/{namespace}",
    "HEAD /v1/{prefix}/namespaces/{namespace}",
    "GET /v1/{prefix}/namespaces/{namespace}/tables",
    "GET /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "HEAD /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "POST /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "POST /v1/{prefix}/namespaces/{namespace}/tables",
    "DELETE /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "POST /v1/{prefix}/transactions/commit",
]
# The spec's default separator of a multi-level namespace in a path (%1F).
SEPARATOR = "\x1f"
# Page size when a client pages (sends pageToken) but gives no pageSize, and the most it
# may ask for.
PAGE_SIZE = 1000
# The largest request body taken.
MAX_BODY = 64 * 2**20


# faas's errors in the spec's error model, the first class that matches.
_FAAS_ERRORS: list[tuple[type[FaasError], int, str]] = [
    (NotAllowed, 403, "ForbiddenException"),
    (CommitConflict, 409, "CommitFailedException"),
    (AlreadyExists, 409, "AlreadyExistsException"),
    (NotFound, 404, "NotFoundException"),
    (InvalidInput, 400, "BadRequestException"),
    (FaasError, 500, "ServiceFailureException"),
]


class RestError(Exception):
    """An answer in the spec's error model: HTTP status, error type, message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def _error(status: int, kind: str, message: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "code": status}}
    return web.json_response(body, status=status)


REST_ERRORS = ErrorModel("Iceberg REST", _error, _FAAS_ERRORS,
                         endpoints=" (GET /iceberg/<ref>/v1/config lists them)")


def _carried(exc: Exception) -> tuple[int, str] | None:
    return (exc.status, exc.kind) if isinstance(exc, RestError) else None


class IcebergRest:
    """The aiohttp application and its site, over a running scheduler."""

    def __init__(self, scheduler: Scheduler, listen: str) -> None:
        self.scheduler = scheduler
        self.listen = listen
        self.url = ""
        self.console_url = ""
        self._runner: web.AppRunner | None = None
        self.console: Console | None = None

    async def start(self) -> str:
        # Table metadata in a commit or a create can be large (many snapshots, wide schemas).
        app = web.Application(middlewares=[self._errors], client_max_size=MAX_BODY)
        app.router.add_get(PREFIX + "/config", self.config)
        app.router.add_get(PREFIX + "/namespaces", self.list_namespaces)
        app.router.add_head(PREFIX + "/namespaces/{namespace}", self.namespace_exists)
        app.router.add_get(PREFIX + "/namespaces/{namespace}", self.load_namespace,
                           allow_head=False)
        app.router.add_get(PREFIX + "/namespaces/{namespace}/tables", self.list_tables)
        app.router.add_head(PREFIX + "/namespaces/{namespace}/tables/{table}", self.table_exists)
        app.router.add_get(PREFIX + "/namespaces/{namespace}/tables/{table}", self.load_table,
                           allow_head=False)
        app.router.add_post(PREFIX + "/namespaces/{namespace}/tables/{table}", self.commit_table)
        app.router.add_post(PREFIX + "/namespaces/{namespace}/tables", self.create_table)
        app.router.add_delete(PREFIX + "/namespaces/{namespace}/tables/{table}", self.drop_table)
        app.router.add_post(PREFIX + "/transactions/commit", self.commit_transaction)
        from faas.scheduler.console import Console

        self.console = Console(self.scheduler)
        self.console.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, _, port = self.listen.rpartition(":")
        site = web.TCPSite(self._runner, host or "127.0.0.1", int(port or 0))
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.url = f"http://{bound_host}:{bound_port}/iceberg"
        self.console_url = f"http://{bound_host}:{bound_port}/console/"
        log.info("Iceberg REST catalog at %s/<ref>", self.url)
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- every request -----------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Authenticate, then answer faas's errors in the spec's error model (the
        console's API in its own; its static files need no token)."""
        if request.path == "/console" or request.path.startswith("/console/"):
            response: web.StreamResponse = await handler(request)
            return response
        user = self._user(request)
        console = request.path.startswith("/api/")
        if user is None:
            message = "a faas user token is needed: Authorization: Bearer NAME:SECRET"
            if console:
                from faas.scheduler.console import error_response

                return error_response(401, "NotAllowed", message)
            return _error(401, "NotAuthorizedException", message)
        request["user"] = user
        if console and self.console is not None:
            return await self.console.answer(request, handler)
        return await answer(request, handler, REST_ERRORS, _carried)

    def _user(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        name, secret = split_credential(token.strip().encode())
        known = self.scheduler.users.secret(name) if name else None
        if known is None or not hmac.compare_digest(known, secret):
            return None
        return name

    async def _store(self, fn: Any, *args: Any) -> Any:
        return await self.scheduler.store_call(fn, *args)

    async def _ref(self, request: web.Request) -> str:
        ref = request.match_info["ref"]
        try:
            await self._store(self.scheduler.lakehouse.catalog.resolve, ref)
        except NotFound as exc:
            raise RestError(404, "NoSuchReferenceException", str(exc)) from None
        return ref

    async def _namespace(self, request: web.Request, ref: str) -> str:
        parts = request.match_info["namespace"].split(SEPARATOR)
        if len(parts) != 1 or not parts[0]:
            raise RestError(404, "NoSuchNamespaceException",
                            f"namespace {'.'.join(parts)!r} not found at ref {ref!r}: faas "
                            "namespaces have one level")
        await self._namespace_named(parts[0], ref)
        return parts[0]

    # -- endpoints ---------------------------------------------------------------------

    async def config(self, request: web.Request) -> web.Response:
        await self._ref(request)
        return web.json_response({"defaults": {}, "overrides": {}, "endpoints": ENDPOINTS})

    async def list_namespaces(self, request: web.Request) -> web.Response:
        ref = await self._ref(request)
        if request.query.get("parent"):  # one level: nothing lies under a namespace
            await self._namespace_named(request.query["parent"], ref)
            return web.json_response({"namespaces": []})
        names = sorted(await self._store(self.scheduler.lakehouse.namespaces, ref))
        page, token = _page(names, request)
        return web.json_response({"namespaces": [[n] for n in page], "next-page-token": token})

    async def _namespace_named(self, text: str, ref: str) -> None:
        if text not in await self._store(self.scheduler.lakehouse.namespaces, ref):
            raise RestError(404, "NoSuchNamespaceException",
                            f"namespace {text!r} not found at ref {ref!r}")

    async def load_namespace(self, request: web.Request) -> web.Response:
        ref = await self._ref(request)
        namespace = await self._namespace(request, ref)
        return web.json_response({"namespace": [namespace], "properties": {}})

    async def namespace_exists(self, request: web.Request) -> web.Response:
        ref = await self._ref(request)
        await self._namespace(request, ref)
        return web.Response(status=204)

    async def table_exists(self, request: web.Request) -> web.Response:
        await self._table(request)
        return web.Response(status=204)

    async def _table(self, request: web.Request) -> tuple[str, Any]:
        """The ref and the table the path names; 404 NoSuchTableException if there is none
        (a name faas cannot have included)."""
        ref = await self._ref(request)
        namespace = await self._namespace(request, ref)
        key = f"{namespace}.{request.match_info['table']}"
        try:
            return ref, await self._store(self.scheduler.lakehouse.table_info, key, ref)
        except (NotFound, InvalidInput) as exc:
            raise RestError(404, "NoSuchTableException", str(exc)) from None

    async def list_tables(self, request: web.Request) -> web.Response:
        ref = await self._ref(request)
        namespace = await self._namespace(request, ref)
        keys = sorted(await self._store(self.scheduler.lakehouse.tables, namespace, ref))
        page, token = _page(keys, request)
        identifiers = [{"namespace": [namespace], "name": k.rpartition(".")[2]} for k in page]
        return web.json_response({"identifiers": identifiers, "next-page-token": token})

    async def load_table(self, request: web.Request) -> web.Response:
        _, info = await self._table(request)
        metadata = await self._store(_read_metadata, info.metadata_location)
        body = {
            "metadata-location": info.metadata_location,
            "metadata": metadata,
            "config": _file_io(info.metadata_location),
        }
        return web.json_response(body)

    async def _writable(self, request: web.Request, what: str) -> tuple[str, str]:
        """The ref, once it is a branch this token's user may change; and the user."""
        ref = await self._ref(request)
        scheduler = self.scheduler
        branch, _ = await self._store(scheduler.lakehouse.catalog.resolve, ref)
        if branch is None or "@" in ref:
            raise RestError(400, "BadRequestException",
                            f"ref {ref!r} is a tag or a commit: only a branch takes commits")
        user = request["user"]
        allow(user, scheduler.users.role(user), "writer", branch, what, scheduler.protect)
        return ref, user

    async def commit_table(self, request: web.Request) -> web.Response:
        """Apply a CommitTableRequest (its requirements checked, then its updates) to the
        table as the ref's branch has it, in one faas commit authored by the token's user."""
        ref, user = await self._writable(request, "commit through the Iceberg REST catalog")
        namespace = await self._namespace(request, ref)
        key = f"{namespace}.{request.match_info['table']}"
        body = await request.read()

        # The identifier is optional in the body (Java clients leave it out): the path says.
        ident = {"identifier": {"namespace": [namespace], "name": request.match_info["table"]}}

        def work(tx: Any) -> tuple[str, Any]:
            return _apply(tx, key, ref, _parse("CommitTableRequest", body, ident))

        (location, metadata), _ = await self._store(
            _in_transaction, self.scheduler.lakehouse, ref, user, f"commit {key}", work)
        return web.json_response({"metadata-location": location, "metadata": metadata})

    async def create_table(self, request: web.Request) -> web.Response:
        """A CreateTableRequest: a new, empty table in the namespace, where faas places it."""
        ref, user = await self._writable(request, "create a table")
        namespace = await self._namespace(request, ref)
        body = await request.read()

        def work(tx: Any) -> tuple[str, Any]:
            made = _parse("CreateTableRequest", body)
            if made.location:
                raise InvalidInput("faas places tables in its warehouse itself: leave out "
                                   "the location")
            key = f"{namespace}.{made.name}"
            if tx.view.table_exists(key):
                raise AlreadyExists(f"table {key!r} already exists at ref {ref!r}")
            if made.stage_create:
                # Staged (Spark CTAS, Trino, create_table_transaction): the metadata the
                # table would start with, nothing written; the client's commit (asserting
                # create) makes it.
                from pyiceberg.table.metadata import new_table_metadata

                from faas.store.iceberg import new_table_location

                fresh = new_table_metadata(
                    made.table_schema, made.partition_spec or _unpartitioned(),
                    made.write_order or _unsorted(),
                    new_table_location(tx.view.warehouse, namespace, made.name),
                    made.properties,
                )
                raise _Staged(_json(fresh))
            table = tx.view.create_table(
                key, made.table_schema, partition_spec=made.partition_spec or _unpartitioned(),
                sort_order=made.write_order or _unsorted(), properties=made.properties,
            )
            return table.metadata_location, _json(table.metadata)

        try:
            (location, metadata), _ = await self._store(
                _in_transaction, self.scheduler.lakehouse, ref, user, "create a table", work)
        except _Staged as staged:
            where = staged.metadata["location"]
            return web.json_response({"metadata-location": None, "metadata": staged.metadata,
                                      "config": _file_io(where)})
        return web.json_response({"metadata-location": location, "metadata": metadata,
                                  "config": _file_io(location)})

    async def drop_table(self, request: web.Request) -> web.Response:
        """Drop the table from the branch (older commits keep it; no file is deleted)."""
        ref, user = await self._writable(request, "drop a table")
        namespace = await self._namespace(request, ref)
        key = f"{namespace}.{request.match_info['table']}"

        def work(tx: Any) -> None:
            try:
                tx.drop(key)
            except NotFound as exc:
                raise RestError(404, "NoSuchTableException", str(exc)) from None

        await self._store(_in_transaction, self.scheduler.lakehouse, ref, user, f"drop {key}", work)
        return web.Response(status=204)

    async def commit_transaction(self, request: web.Request) -> web.Response:
        """A CommitTransactionRequest: every table's change, or none, as one faas commit."""
        ref, user = await self._writable(request, "commit through the Iceberg REST catalog")
        body = await request.read()
        try:
            changes = json.loads(body)["table-changes"]
        except (ValueError, KeyError, TypeError):
            raise InvalidInput("not a CommitTransactionRequest: it needs table-changes") from None
        if not isinstance(changes, list) or not changes:
            raise InvalidInput("a CommitTransactionRequest needs at least one table change")
        keys = []
        for change in changes:
            ident = change.get("identifier") if isinstance(change, dict) else None
            if (not isinstance(ident, dict) or len(ident.get("namespace") or []) != 1
                    or not isinstance(ident.get("name"), str)):
                raise InvalidInput("each table change needs an identifier: a one-level "
                                   "namespace and a name")
            await self._namespace_named(ident["namespace"][0], ref)
            keys.append(f"{ident['namespace'][0]}.{ident['name']}")

        def work(tx: Any) -> None:
            for key, change in zip(keys, changes, strict=True):
                _apply(tx, key, ref, _parse("CommitTableRequest", json.dumps(change).encode()))

        await self._store(_in_transaction, self.scheduler.lakehouse, ref, user,
                          f"commit {', '.join(keys)}", work)
        return web.Response(status=204)


class _Staged(Exception):  # noqa: N818 - not an error: the answer to a staged create
    """A staged create's metadata: nothing is committed."""

    def __init__(self, metadata: Any) -> None:
        super().__init__("staged")
        self.metadata = metadata


class _Creating:
    """The table a commit that asserts its creation makes: only its name is known yet."""

    def __init__(self, key: str) -> None:
        self.key = key

    def name(self) -> tuple[str, ...]:
        return tuple(self.key.split("."))


def _in_transaction(lakehouse: Any, ref: str, user: str, what: str, work: Any) -> tuple[Any, str]:
    """``work(tx)`` in a faas transaction on ``ref``, published as one commit: its result
    and the commit. On the store's thread."""
    tx = lakehouse.begin(ref, user)
    result = work(tx)
    return result, tx.publish(f"{what} through the Iceberg REST catalog")


# Fields the spec makes optional that pyiceberg's models require (clients leave them out).
_OPTIONAL: dict[str, dict[str, Any]] = {"CreateTableRequest": {"location": None, "partition-spec": None,
                                    "write-order": None, "stage-create": False, "properties": {}}}


def _parse(model: str, body: bytes, defaults: dict[str, Any] | None = None) -> Any:
    """The request body as pyiceberg's model of the spec's ``model`` (``defaults``: fields
    the body may leave out)."""
    from pydantic import ValidationError
    from pyiceberg.catalog import rest

    try:
        data = json.loads(body)
    except ValueError:
        raise InvalidInput(f"not a {model}: the body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"not a {model}: the body is not a JSON object")
    data = {**_OPTIONAL.get(model, {}), **(defaults or {}), **data}
    try:
        return getattr(rest, model).model_validate(data)
    except ValidationError as exc:
        first: Any = exc.errors()[0] if exc.errors() else {"msg": str(exc), "loc": ()}
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidInput(f"not a {model}: {where}: {first.get('msg')}") from None


def _apply(tx: Any, key: str, ref: str, change: Any) -> tuple[str, Any]:
    """Stage one table's CommitTableRequest in ``tx``: its new metadata location and JSON."""
    from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
    from pyiceberg.table.update import AssertCreate

    table: Any
    if any(isinstance(r, AssertCreate) for r in change.requirements):
        if tx.view.table_exists(key):
            raise RestError(409, "CommitFailedException", f"{key}: the table already exists "
                            f"at ref {ref!r}")
        table = _Creating(key)  # the commit of a staged create makes it
    else:
        try:
            table = tx.view.load_table(key)
        except NoSuchTableError:
            raise RestError(404, "NoSuchTableException",
                            f"table {key!r} not found at ref {ref!r}") from None
    try:
        done = tx.view.commit_table(table, tuple(change.requirements), tuple(change.updates))
    except CommitFailedException as exc:
        raise RestError(409, "CommitFailedException", f"{key}: {exc}") from None
    except ValueError as exc:  # an update that cannot apply (pydantic's errors are ValueErrors)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RestError(400, "BadRequestException", f"{key}: {first}") from None
    return done.metadata_location, _json(done.metadata)


def _json(metadata: Any) -> Any:
    """Table metadata as the spec's JSON."""
    return json.loads(metadata.model_dump_json(by_alias=True))


def _unpartitioned() -> Any:
    from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC

    return UNPARTITIONED_PARTITION_SPEC


def _unsorted() -> Any:
    from pyiceberg.table.sorting import UNSORTED_SORT_ORDER

    return UNSORTED_SORT_ORDER


def _page(items: list[str], request: web.Request) -> tuple[list[str], str | None]:
    """One page of ``items`` (sorted): ``pageToken`` is the last item of the page before,
    "" for the first page. Without ``pageToken`` everything comes at once, as the spec
    asks of servers that page."""
    if "pageToken" not in request.query:
        return items, None
    try:
        size = int(request.query.get("pageSize", PAGE_SIZE))
    except ValueError:
        raise InvalidInput(f"pageSize {request.query['pageSize']!r} is not a number") from None
    if size < 1:
        raise InvalidInput(f"pageSize must be positive, not {size}")
    size = min(size, PAGE_SIZE)
    after = request.query.get("pageToken")
    start = 0
    if after:
        start = next((i for i, item in enumerate(items) if item > after), len(items))
    page = items[start:start + size]
    more = start + size < len(items)
    return page, (page[-1] if more and page else None)


def _read_metadata(location: str) -> Any:
    """The table's metadata file, as the JSON it is."""
    from faas.store.warehouse import filesystem, storage_errors

    fs, path = filesystem(location)
    with storage_errors(f"cannot read {location}"), fs.open_input_stream(path) as f:
        return json.loads(f.read())


def _file_io(location: str) -> dict[str, str]:
    """What a client needs to read the table's files: the S3 endpoint and region, never
    this scheduler's credentials (a client brings its own)."""
    from faas.store.warehouse import io_properties, is_local

    if is_local(location):
        return {}
    props = io_properties()
    if "s3.region" in props:
        props["client.region"] = props["s3.region"]  # what Java's S3FileIO reads
    if "s3.endpoint" in props:
        props["s3.path-style-access"] = "true"  # an S3-compatible endpoint, as MinIO's
    return props
