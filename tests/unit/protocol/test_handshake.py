"""The handshake and Connection over real sockets on 127.0.0.1 port 0.

Every test is bounded by ``run(..., timeout)``, well under the 10 s handshake
deadline, so a side that waits for bytes that never come fails the test instead
of passing late.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import msgspec
import pytest

from faas.protocol import auth
from faas.protocol.connection import HANDSHAKE_TIMEOUT, Connection, accept, connect
from faas.protocol.errors import (
    ClosedByUs,
    ConnectionClosed,
    FrameTooLarge,
    HandshakeFailed,
    MalformedFrame,
    PeerVanished,
)
from faas.protocol.framing import MAX_HANDSHAKE_FRAME, encode, read_frame
from faas.protocol.messages import (
    PROTOCOL_VERSION,
    Auth,
    BulkHeader,
    ClientRequest,
    Error,
    Handshake,
    Hello,
    ListTables,
    Query,
    Welcome,
)
from faas.protocol.replies import ClientReply, Namespaces, Tables

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


# -- success ------------------------------------------------------------------


def test_handshake_succeeds_both_ways_and_messages_flow() -> None:
    async def serve(conn: Connection[Any], acc: Accepted) -> None:
        msg = await conn.recv(timeout=3)
        acc.received.append(msg)
        await conn.send(Tables(keys=[f"{msg.namespace}.echo"]))
        acc.received.append(await conn.recv(timeout=3))
        await conn.send(Namespaces(names=["bye"]))

    async def go() -> None:
        async with faas_server(serve=serve) as (address, outcomes):
            conn = await client(address)
            try:
                assert conn.peer_role == "scheduler"
                assert conn.peer_host == "sched-1"
                acc = await outcomes.get()
                assert acc.error is None and acc.conn is not None
                assert acc.conn.peer_role == "client"
                assert acc.conn.peer_host == "laptop-1"

                await conn.send(ListTables(namespace="sales"))
                assert await conn.recv(timeout=3) == Tables(keys=["sales.echo"])
                await conn.send(Query(sql="select 1"))
                assert await conn.recv(timeout=3) == Namespaces(names=["bye"])
                await asyncio.wait_for(acc.done.wait(), 3)
                assert acc.error is None
                assert acc.received == [ListTables(namespace="sales"), Query(sql="select 1")]
                # the server closed after its last reply: a clean close between frames
                with pytest.raises(ConnectionClosed):
                    await conn.recv(timeout=3)
                assert conn.closed
            finally:
                await conn.aclose()

    run(go())


def test_several_roles_may_be_allowed() -> None:
    async def go() -> None:
        async with faas_server(allowed_roles=("client", "worker")) as (address, outcomes):
            for role in ("worker", "client"):
                conn = await client(address, role=role)
                acc = await outcomes.get()
                assert acc.conn is not None and acc.conn.peer_role == role
                await conn.aclose()

    run(go())


def test_bulk_bytes_follow_their_header() -> None:
    blob = bytes(range(256)) * 1000

    async def serve(conn: Connection[Any], acc: Accepted) -> None:
        await conn.recv(timeout=3)
        await conn.send_raw(encode(BulkHeader(nbytes=len(blob), rows=1000)), blob)
        await conn.send(Namespaces(names=["after"]))

    async def go() -> None:
        async with faas_server(serve=serve) as (address, _):
            conn = await client(address)
            try:
                await conn.send(ListTables())
                header = await conn.recv(timeout=3)
                assert header == BulkHeader(nbytes=len(blob), rows=1000)
                assert await conn.recv_bulk(header.nbytes, timeout=3) == blob
                assert await conn.recv(timeout=3) == Namespaces(names=["after"])
            finally:
                await conn.aclose()

    run(go())


# -- refusals -----------------------------------------------------------------


def test_wrong_token_is_refused_on_both_sides() -> None:
    async def go() -> None:
        async with faas_server() as (address, outcomes):
            with pytest.raises(HandshakeFailed) as info:
                await client(address, token=OTHER_TOKEN)
            assert "token" in str(info.value)
            assert address in str(info.value)
            acc = await outcomes.get()
            assert isinstance(acc.error, HandshakeFailed)
            assert "token" in str(acc.error)
            assert acc.conn is None
            assert acc.writer is not None and acc.writer.is_closing()

    run(go())


def test_role_not_allowed_is_refused() -> None:
    async def go() -> None:
        async with faas_server(allowed_roles=("worker",)) as (address, outcomes):
            with pytest.raises(HandshakeFailed) as info:
                await client(address, role="client")
            assert "'client'" in str(info.value)
            acc = await outcomes.get()
            assert isinstance(acc.error, HandshakeFailed)
            assert acc.writer is not None and acc.writer.is_closing()

    run(go())


def test_wrong_protocol_version_is_refused() -> None:
    async def go() -> None:
        async with faas_server() as (address, outcomes), raw_client(address) as (reader, writer):
            hello = await read_frame(reader, HANDSHAKE)
            assert isinstance(hello, Hello) and hello.version == PROTOCOL_VERSION
            writer.write(
                encode(
                    Auth(
                        version=999,
                        role="client",
                        host_id="old-laptop",
                        proof=auth.proof(TOKEN, hello.nonce, "client", "old-laptop"),
                        nonce=auth.new_nonce(),
                    )
                )
            )
            await writer.drain()
            refusal = await read_frame(reader, HANDSHAKE)
            assert isinstance(refusal, Error) and refusal.kind == "HandshakeFailed"
            assert "999" in refusal.message and str(PROTOCOL_VERSION) in refusal.message
            assert await read_until_closed(reader) == b""
            acc = await outcomes.get()
            assert isinstance(acc.error, HandshakeFailed) and "999" in str(acc.error)

    run(go())


def _random_garbage() -> bytes:
    data = bytearray(random.Random(20240601).randbytes(64))
    data[0] |= 0x80  # a length prefix far over the handshake limit
    return bytes(data)


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(_random_garbage(), id="64-random-bytes"),
        pytest.param(b"\xff\xff\xff\xff", id="huge-length-prefix"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http-request"),
    ],
)
def test_garbage_instead_of_auth_is_dropped_without_reading_further(garbage: bytes) -> None:
    async def go() -> None:
        async with faas_server() as (address, outcomes), raw_client(address) as (reader, writer):
            assert isinstance(await read_frame(reader, HANDSHAKE), Hello)
            writer.write(garbage)
            await writer.drain()
            await read_until_closed(reader)  # the server hangs up; no waiting for a payload
            acc = await outcomes.get()
            assert isinstance(acc.error, HandshakeFailed)
            assert isinstance(acc.error.__cause__, FrameTooLarge)
            assert str(MAX_HANDSHAKE_FRAME) in str(acc.error)
            assert acc.reader is not None and acc.reader.requests == [4]
            assert acc.writer is not None and acc.writer.is_closing()

    run(go(), timeout=3)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"\x00\x00\x00\x08\xc1\xc1\xc1\xc1\xc1\xc1\xc1\xc1", id="not-msgpack"),
        pytest.param(encode(ListTables()), id="request-before-auth"),
        pytest.param(encode(Welcome(proof=b"x" * 32)), id="welcome-instead-of-auth"),
        pytest.param(encode(Error(kind="HandshakeFailed", message="nope")), id="error-instead-of-auth"),
    ],
)
def test_wrong_small_frame_instead_of_auth_is_refused(frame: bytes) -> None:
    async def go() -> None:
        async with faas_server() as (address, outcomes), raw_client(address) as (reader, writer):
            assert isinstance(await read_frame(reader, HANDSHAKE), Hello)
            writer.write(frame)
            await writer.drain()
            await read_until_closed(reader)
            acc = await outcomes.get()
            assert isinstance(acc.error, HandshakeFailed)
            assert acc.reader is not None and acc.reader.requests == [4, len(frame) - 4]

    run(go(), timeout=3)


def test_client_that_hangs_up_before_auth_is_refused() -> None:
    async def go() -> None:
        async with faas_server() as (address, outcomes):
            async with raw_client(address) as (reader, _):
                assert isinstance(await read_frame(reader, HANDSHAKE), Hello)
            acc = await outcomes.get()
            assert isinstance(acc.error, HandshakeFailed)
            assert isinstance(acc.error.__cause__, ConnectionClosed)

    run(go(), timeout=3)


def test_server_keeps_accepting_after_bad_clients() -> None:
    async def serve(conn: Connection[Any], acc: Accepted) -> None:
        acc.received.append(await conn.recv(timeout=3))
        await conn.send(Namespaces(names=["one"]))

    async def go() -> None:
        async with faas_server(serve=serve) as (address, outcomes):
            with pytest.raises(HandshakeFailed):
                await client(address, token=OTHER_TOKEN)
            async with raw_client(address) as (reader, writer):
                await read_frame(reader, HANDSHAKE)
                writer.write(b"\xff\xff\xff\xff")
                await writer.drain()
                await read_until_closed(reader)
            for _ in range(2):
                assert isinstance((await outcomes.get()).error, HandshakeFailed)

            conn = await client(address)
            try:
                await conn.send(ListTables())
                assert await conn.recv(timeout=3) == Namespaces(names=["one"])
            finally:
                await conn.aclose()
            acc = await outcomes.get()
            assert acc.conn is not None and acc.error is None

    run(go())


# -- the client meets a server that is not (a good) faas ------------------------


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\n\r\n", id="http"),
        pytest.param(b"", id="immediate-close"),
        pytest.param(b"\x00\x00", id="half-a-header"),
        pytest.param(b"\x00\x00\x00\x03ab", id="truncated-frame"),
        pytest.param(b"\x00\x00\x00\x02\xc1\xc1", id="not-msgpack"),
    ],
)
def test_client_meets_a_server_that_is_not_faas(reply: bytes) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(reply)
        await writer.drain()

    async def go() -> None:
        async with raw_server(handle) as address:
            with pytest.raises(HandshakeFailed) as info:
                await client(address)
            assert address in str(info.value)

    run(go(), timeout=3)


async def _fake_faas(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    version: int = PROTOCOL_VERSION,
    welcome: Callable[[Auth], Any] | None = None,
) -> None:
    writer.write(encode(Hello(version=version, role="scheduler", host_id="fake", nonce=auth.new_nonce())))
    await writer.drain()
    msg = await read_frame(reader, HANDSHAKE)
    if welcome is not None:
        writer.write(encode(welcome(msg)))
        await writer.drain()
    await reader.read()


def test_server_that_cannot_prove_the_token_is_refused() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _fake_faas(reader, writer, welcome=lambda a: Welcome(proof=b"\x00" * 32))

    async def go() -> None:
        async with raw_server(handle) as address:
            with pytest.raises(HandshakeFailed) as info:
                await client(address)
            assert "did not prove the cluster token" in str(info.value)

    run(go(), timeout=3)


def test_server_that_proves_with_another_token_is_refused() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _fake_faas(
            reader, writer, welcome=lambda a: Welcome(proof=auth.proof(OTHER_TOKEN, a.nonce, "scheduler", "fake"))
        )

    async def go() -> None:
        async with raw_server(handle) as address:
            with pytest.raises(HandshakeFailed, match="did not prove"):
                await client(address)

    run(go(), timeout=3)


def test_server_speaking_another_version_is_refused() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _fake_faas(reader, writer, version=999)

    async def go() -> None:
        async with raw_server(handle) as address:
            with pytest.raises(HandshakeFailed) as info:
                await client(address)
            assert "999" in str(info.value)

    run(go(), timeout=3)


def test_server_refusal_message_reaches_the_client() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _fake_faas(
            reader, writer, welcome=lambda a: Error(kind="HandshakeFailed", message="go away, please")
        )

    async def go() -> None:
        async with raw_server(handle) as address:
            with pytest.raises(HandshakeFailed, match="go away, please"):
                await client(address)

    run(go(), timeout=3)


def test_connect_to_a_closed_port_is_peer_vanished() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once this socket is closed

    async def go() -> None:
        with pytest.raises(PeerVanished) as info:
            await client(f"127.0.0.1:{port}")
        assert str(port) in str(info.value)

    run(go(), timeout=3)


def test_connect_timeout_bounds_the_whole_handshake() -> None:
    # A server that accepts the TCP connection but never says Hello.
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def go() -> None:
        async with raw_server(handle) as address:
            try:
                with pytest.raises((HandshakeFailed, PeerVanished)):
                    await asyncio.wait_for(client(address, timeout=0.5), 2.0)
            except TimeoutError:
                pytest.fail(
                    "connect(timeout=0.5) to a server that never sends Hello was still "
                    f"waiting after 2 s (it waits HANDSHAKE_TIMEOUT={HANDSHAKE_TIMEOUT} s)"
                )

    assert HANDSHAKE_TIMEOUT > 3
    run(go(), timeout=3)


# -- Connection after the handshake ---------------------------------------------


@contextlib.asynccontextmanager
async def connected_pair(
    serve: ServeFn | None = None,
) -> AsyncIterator[tuple[Connection[Any], Accepted]]:
    async with faas_server(serve=serve) as (address, outcomes):
        conn = await client(address)
        try:
            acc = await outcomes.get()
            assert acc.conn is not None
            yield conn, acc
        finally:
            await conn.aclose()


async def _stay_silent(conn: Connection[Any], acc: Accepted) -> None:
    with contextlib.suppress(ConnectionClosed, PeerVanished):
        await conn.recv(timeout=4)


def test_recv_timeout_on_a_silent_peer_is_peer_vanished() -> None:
    async def go() -> None:
        async with connected_pair(_stay_silent) as (conn, _):
            with pytest.raises(PeerVanished) as info:
                await conn.recv(timeout=0.2)
            assert "0.2" in str(info.value)
            assert conn.closed
            with pytest.raises(ClosedByUs):
                await conn.recv(timeout=0.2)

    run(go())


def test_send_after_close_is_closed_by_us() -> None:
    async def go() -> None:
        async with connected_pair(_stay_silent) as (conn, _):
            conn.close()
            conn.close()  # twice is fine
            assert conn.closed
            with pytest.raises(ClosedByUs):
                await conn.send(ListTables())
            with pytest.raises(ClosedByUs):
                await conn.send_raw(b"x")
            with pytest.raises(ClosedByUs):
                await conn.recv()
            await conn.aclose()  # and aclose after close

    run(go())


def test_recv_bulk_after_close_is_closed_by_us() -> None:
    async def go() -> None:
        async with connected_pair(_stay_silent) as (conn, _):
            conn.close()
            with pytest.raises(ClosedByUs):
                await conn.recv_bulk(10, timeout=1)

    run(go())


def test_recv_bulk_cut_short_is_peer_vanished() -> None:
    async def serve(conn: Connection[Any], acc: Accepted) -> None:
        await conn.send_raw(encode(BulkHeader(nbytes=1000)), b"x" * 10)

    async def go() -> None:
        async with connected_pair(serve) as (conn, acc):
            header = await conn.recv(timeout=3)
            assert header == BulkHeader(nbytes=1000)
            with pytest.raises(PeerVanished) as info:
                await conn.recv_bulk(header.nbytes, timeout=3)
            assert "10 of 1000" in str(info.value)
            assert conn.closed

    run(go())


def test_recv_bulk_timeout_on_a_silent_peer_is_peer_vanished() -> None:
    async def serve(conn: Connection[Any], acc: Accepted) -> None:
        await conn.send_raw(encode(BulkHeader(nbytes=1000)), b"x" * 10)
        await _stay_silent(conn, acc)

    async def go() -> None:
        async with connected_pair(serve) as (conn, _):
            header = await conn.recv(timeout=3)
            with pytest.raises(PeerVanished):
                await conn.recv_bulk(header.nbytes, timeout=0.2)
            assert conn.closed

    run(go())


def test_malformed_frame_after_handshake_keeps_the_connection() -> None:
    async def serve(conn: Connection[Any], acc: Accepted) -> None:
        for _ in range(2):
            try:
                acc.received.append(await conn.recv(timeout=3))
            except MalformedFrame as exc:
                acc.received.append(exc)
                await conn.send(Error(kind="MalformedFrame", message=str(exc)))
        await conn.send(Namespaces(names=["still here"]))

    async def go() -> None:
        async with connected_pair(serve) as (conn, acc):
            await conn.send_raw(b"\x00\x00\x00\x05hello")
            reply = await conn.recv(timeout=3)
            assert isinstance(reply, Error) and reply.kind == "MalformedFrame"
            await conn.send(ListTables(namespace="n"))
            assert await conn.recv(timeout=3) == Namespaces(names=["still here"])
            assert isinstance(acc.received[0], MalformedFrame)
            assert acc.received[1] == ListTables(namespace="n")

    run(go())


def test_oversize_frame_after_handshake_closes_the_connection() -> None:
    async def serve(conn: Connection[Any], acc: Accepted) -> None:
        conn.max_frame = 1024
        try:
            await conn.recv(timeout=3)
        except FrameTooLarge as exc:
            acc.received.append(exc)
            acc.received.append(conn.closed)

    async def go() -> None:
        async with connected_pair(serve) as (conn, acc):
            await conn.send_raw(b"\x00\x00\x08\x00")  # announces 2048 bytes, sends none
            await asyncio.wait_for(acc.done.wait(), 3)
            exc, closed = acc.received
            assert isinstance(exc, FrameTooLarge) and (exc.size, exc.limit) == (2048, 1024)
            assert closed

    run(go())


def test_clean_close_by_peer_is_connection_closed() -> None:
    async def serve(conn: Connection[Any], acc: Accepted) -> None:
        return  # the fixture closes it

    async def go() -> None:
        async with connected_pair(serve) as (conn, _):
            with pytest.raises(ConnectionClosed):
                await conn.recv(timeout=3)
            assert conn.closed

    run(go())


def test_a_frame_that_is_not_utf8_before_auth_is_a_malformed_frame() -> None:
    """A string field that is not UTF-8 is refused like any other malformed frame: a typed
    error and a closed connection, not a UnicodeDecodeError."""
    from faas.protocol.errors import MalformedFrame
    from faas.protocol.framing import HEADER

    payload = b"\x81\xa2op\xa4\xff\xfe\xfd\xfc"  # {"op": <4 bytes that are not UTF-8>}

    async def go() -> None:
        async with faas_server() as (address, outcomes), raw_client(address) as (reader, writer):
            assert isinstance(await read_frame(reader, HANDSHAKE), Hello)
            writer.write(HEADER.pack(len(payload)) + payload)
            await writer.drain()
            await read_until_closed(reader)
            acc = await outcomes.get()
            assert isinstance(acc.error, HandshakeFailed)
            assert isinstance(acc.error.__cause__, MalformedFrame), repr(acc.error.__cause__)

    run(go(), timeout=5)


def test_a_send_cancelled_while_the_peer_is_slow_leaves_the_connection_in_step() -> None:
    """The frame is in the transport once written: a cancel while waiting for the drain
    (a run stopping a function) must not drop the connection (a healthy worker)."""
    big = Namespaces(names=["x" * (8 << 20)])  # far more than the socket buffers: the drain waits

    async def go() -> None:
        a, b = socket.socketpair()
        reader_a, writer_a = await asyncio.open_connection(sock=a)
        # A small buffer on the reading side: it stops reading until recv asks.
        reader_b, writer_b = await asyncio.open_connection(sock=b, limit=2**14)
        decoder = msgspec.msgpack.Decoder(ClientReply)
        ours = Connection(reader_a, writer_a, decoder)
        theirs = Connection(reader_b, writer_b, decoder, max_frame=2**25)
        try:
            sending = asyncio.create_task(ours.send(big))
            await asyncio.sleep(0.05)  # written, and waiting for the peer to read
            assert not sending.done()
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            assert not ours.closed
            assert await theirs.recv(timeout=10) == big  # whole, in step
            await ours.send(Namespaces(names=["after"]))
            assert await theirs.recv(timeout=10) == Namespaces(names=["after"])
        finally:
            ours.close()
            theirs.close()

    asyncio.run(go())
