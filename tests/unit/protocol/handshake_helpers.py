"""Shared by the handshake and Connection tests: a faas server and raw sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import msgspec

from faas.protocol.connection import Connection, accept, connect
from faas.protocol.messages import ClientRequest, Handshake
from faas.protocol.replies import ClientReply

TOKEN = b"a" * 64
OTHER_TOKEN = b"b" * 64
REQUESTS = msgspec.msgpack.Decoder(ClientRequest)
REPLIES = msgspec.msgpack.Decoder(ClientReply)
HANDSHAKE = msgspec.msgpack.Decoder(Handshake)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 5.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


class RecordingReader:
    """Wraps the server's StreamReader to record every ``readexactly`` it is asked for."""

    def __init__(self, inner: asyncio.StreamReader) -> None:
        self.inner = inner
        self.requests: list[int] = []

    async def readexactly(self, n: int) -> bytes:
        self.requests.append(n)
        return await self.inner.readexactly(n)


class Accepted:
    """What the server side of one connection ended with."""

    def __init__(self) -> None:
        self.conn: Connection[Any] | None = None
        self.error: BaseException | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader: RecordingReader | None = None
        self.received: list[Any] = []
        self.done = asyncio.Event()


ServeFn = Callable[[Connection[Any], Accepted], Awaitable[None]]


@contextlib.asynccontextmanager
async def faas_server(
    *,
    token: bytes = TOKEN,
    role: str = "scheduler",
    host_id: str = "sched-1",
    allowed_roles: tuple[str, ...] = ("client",),
    serve: ServeFn | None = None,
) -> AsyncIterator[tuple[str, asyncio.Queue[Accepted]]]:
    """A server running ``accept``; each connection's outcome is put on the queue."""
    outcomes: asyncio.Queue[Accepted] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        acc = Accepted()
        acc.writer = writer
        acc.reader = RecordingReader(reader)
        try:
            acc.conn = await accept(
                acc.reader,  # type: ignore[arg-type]
                writer,
                REQUESTS,
                token=token,
                role=role,
                host_id=host_id,
                allowed_roles=allowed_roles,
            )
        except BaseException as exc:  # noqa: BLE001 - recorded for the test to assert on
            acc.error = exc
            acc.done.set()
            await outcomes.put(acc)
            return
        await outcomes.put(acc)
        try:
            if serve is not None:
                await serve(acc.conn, acc)
        except BaseException as exc:  # noqa: BLE001
            acc.error = exc
        finally:
            await acc.conn.aclose()
            acc.done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}", outcomes
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def raw_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A server that is not faas (or a faas imitation that misbehaves)."""

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def raw_client(address: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the peer still sends before it closes (a reset counts as closed)."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


async def client(address: str, *, token: bytes = TOKEN, role: str = "client", **kw: Any) -> Connection[Any]:
    return await connect(address, REPLIES, token=token, role=role, host_id="laptop-1", **kw)
