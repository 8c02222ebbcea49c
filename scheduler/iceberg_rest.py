"""The Iceberg REST catalog the scheduler serves: every engine reads faas tables by ref.

``faasd scheduler --http HOST:PORT`` serves it with aiohttp (embedded mode: on loopback, a
port of its own). The ref is part of the base URI, as Project Nessie does it:
``http://HOST:PORT/iceberg/<ref>``, where ``<ref>`` is a branch, a tag or
``branch@hash``. A client configures that URI and nothing else: PyIceberg's
``RestCatalog(uri=...)``, Spark's ``spark.sql.catalog.X.uri``, DuckDB's ``ATTACH``.

Served so far, following the Iceberg REST OpenAPI spec (``open-api/rest-catalog-open-
api.yaml``): ``GET /v1/config``; namespaces (list, with ``pageToken``/``pageSize``; load;
exists); tables (list, paged; load, with the full metadata and the FileIO settings a
client needs to read the data files, never credentials; exists; commit, as one faas
commit on the URI's branch). ``/v1/config`` names exactly these endpoints, so a client
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
from faas.protocol.errors import CommitConflict, FaasError, InvalidInput, NotAllowed, NotFound
from faas.scheduler.users import allow

if TYPE_CHECKING:
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
]
# The spec's default separator of a multi-level namespace in a path (%1F).
SEPARATOR = "\x1f"
# Page size when a client gives none, and the most it may ask for.
PAGE_SIZE = 1000


class RestError(Exception):
    """An answer in the spec's error model: HTTP status, error type, message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def _error(status: int, kind: str, message: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "code": status}}
    return web.json_response(body, status=status)


class IcebergRest:
    """The aiohttp application and its site, over a running scheduler."""

    def __init__(self, scheduler: Scheduler, listen: str) -> None:
        self.scheduler = scheduler
        self.listen = listen
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get(PREFIX + "/config", self.config)
        app.router.add_get(PREFIX + "/namespaces", self.list_namespaces)
        app.router.add_get(PREFIX + "/namespaces/{namespace}", self.load_namespace)
        app.router.add_get(PREFIX + "/namespaces/{namespace}/tables", self.list_tables)
        app.router.add_get(PREFIX + "/namespaces/{namespace}/tables/{table}", self.load_table)
        app.router.add_post(PREFIX + "/namespaces/{namespace}/tables/{table}", self.commit_table)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, _, port = self.listen.rpartition(":")
        site = web.TCPSite(self._runner, host or "127.0.0.1", int(port or 0))
        await site.start()
        name = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        self.url = f"http://{name[0]}:{name[1]}/iceberg"
        log.info("Iceberg REST catalog at %s/<ref>", self.url)
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- every request -----------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Authenticate, then answer faas's errors in the spec's error model."""
        user = self._user(request)
        if user is None:
            return _error(401, "NotAuthorizedException",
                          "a faas user token is needed: Authorization: Bearer NAME:SECRET")
        request["user"] = user
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException:
            raise
        except RestError as exc:
            return _error(exc.status, exc.kind, str(exc))
        except NotAllowed as exc:
            return _error(403, "ForbiddenException", str(exc))
        except CommitConflict as exc:
            return _error(409, "CommitFailedException", str(exc))
        except NotFound as exc:
            return _error(404, "NotFoundException", str(exc))
        except InvalidInput as exc:
            return _error(400, "BadRequestException", str(exc))
        except FaasError as exc:
            return _error(500, "ServiceFailureException", str(exc))
        return response

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

    async def list_tables(self, request: web.Request) -> web.Response:
        ref = await self._ref(request)
        namespace = await self._namespace(request, ref)
        keys = sorted(await self._store(self.scheduler.lakehouse.tables, namespace, ref))
        page, token = _page(keys, request)
        identifiers = [{"namespace": [namespace], "name": k.rpartition(".")[2]} for k in page]
        return web.json_response({"identifiers": identifiers, "next-page-token": token})

    async def load_table(self, request: web.Request) -> web.Response:
        ref = await self._ref(request)
        namespace = await self._namespace(request, ref)
        key = f"{namespace}.{request.match_info['table']}"
        try:
            info = await self._store(self.scheduler.lakehouse.table_info, key, ref)
        except NotFound as exc:
            raise RestError(404, "NoSuchTableException", str(exc)) from None
        metadata = await self._store(_read_metadata, info.metadata_location)
        body = {
            "metadata-location": info.metadata_location,
            "metadata": metadata,
            "config": _file_io(info.metadata_location),
        }
        return web.json_response(body)


    async def commit_table(self, request: web.Request) -> web.Response:
        """Apply a CommitTableRequest (its requirements checked, then its updates) to the
        table as the ref's branch has it, in one faas commit authored by the token's user."""
        ref = await self._ref(request)
        namespace = await self._namespace(request, ref)
        key = f"{namespace}.{request.match_info['table']}"
        scheduler = self.scheduler
        branch, _ = await self._store(scheduler.lakehouse.catalog.resolve, ref)
        if branch is None or "@" in ref:
            raise RestError(400, "BadRequestException",
                            f"ref {ref!r} is a tag or a commit: only a branch takes commits")
        user = request["user"]
        allow(user, scheduler.users.role(user), "writer", branch,
              "commit through the Iceberg REST catalog", scheduler.protect)
        body = await request.read()
        location, metadata = await self._store(_commit, scheduler.lakehouse, ref, key, body, user)
        return web.json_response({"metadata-location": location, "metadata": metadata})


def _commit(lakehouse: Any, ref: str, key: str, body: bytes, user: str) -> tuple[str, Any]:
    """The commit itself, on the store's thread: stage the table's new metadata in a faas
    transaction on ``ref``, publish it; the new metadata location and its JSON."""
    from pydantic import ValidationError
    from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
    from pyiceberg.table import CommitTableRequest

    try:
        change = CommitTableRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"msg": str(exc)}
        raise InvalidInput(f"not a CommitTableRequest: {first.get('msg')}") from None
    tx = lakehouse.begin(ref, user)
    try:
        table = tx.view.load_table(key)
    except NoSuchTableError:
        raise RestError(404, "NoSuchTableException",
                        f"table {key!r} not found at ref {ref!r}") from None
    try:
        done = tx.view.commit_table(table, tuple(change.requirements), tuple(change.updates))
    except CommitFailedException as exc:
        raise RestError(409, "CommitFailedException", f"{key}: {exc}") from None
    tx.publish(f"commit {key} through the Iceberg REST catalog")
    return done.metadata_location, json.loads(done.metadata.model_dump_json(by_alias=True))


def _page(items: list[str], request: web.Request) -> tuple[list[str], str | None]:
    """One page of ``items`` (sorted): ``pageToken`` is the last item of the page before."""
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

    return {} if is_local(location) else io_properties()
