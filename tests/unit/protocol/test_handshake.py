"""The handshake over real sockets on 127.0.0.1 port 0 (Connection after it: test_connection.py).

Every test is bounded by ``run(..., timeout)``, well under the 10 s handshake
deadline, so a side that waits for bytes that never come fails the test instead
of passing late.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable
from typing import Any

import pytest

from faas.protocol import auth
from faas.protocol.connection import HANDSHAKE_TIMEOUT, Connection
from faas.protocol.errors import ConnectionClosed, FrameTooLarge, HandshakeFailed, PeerVanished
from faas.protocol.framing import MAX_HANDSHAKE_FRAME, encode, read_frame
from faas.protocol.messages import (
    PROTOCOL_VERSION,
    Auth,
    BulkHeader,
    Error,
    Hello,
    ListTables,
    Query,
    Welcome,
)
from faas.protocol.replies import Namespaces, Tables
from tests.unit.protocol.handshake_helpers import (
    HANDSHAKE,
    OTHER_TOKEN,
    TOKEN,
    Accepted,
    client,
    faas_server,
    raw_client,
    raw_server,
    read_until_closed,
    run,
)

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
            assert "did not prove the token" in str(info.value)

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
