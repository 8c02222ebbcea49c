"""Connection after the handshake over real sockets: timeouts, closes, bulk bytes, bad frames."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from faas.protocol.connection import Connection
from faas.protocol.errors import (
    ClosedByUs,
    ConnectionClosed,
    FrameTooLarge,
    MalformedFrame,
    PeerVanished,
)
from faas.protocol.framing import encode
from faas.protocol.messages import BulkHeader, Error, ListTables
from faas.protocol.replies import ClientReply, Namespaces
from tests.unit.protocol.handshake_helpers import Accepted, ServeFn, client, faas_server, run

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


def test_refused_connections_are_logged_a_burst_at_a_time(caplog: pytest.LogCaptureFixture) -> None:
    """A flood of bad connections costs a few lines a minute, not a line each."""
    import logging

    from faas.protocol.connection import RefusalLog

    now = [0.0]
    refusals = RefusalLog(logging.getLogger("test.refusals"), "scheduler", burst=3,
                          window=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        for i in range(100):
            refusals.refused(("10.0.0.1", 1000 + i), "not a faas peer")
        assert len(caplog.records) == 3
        assert "refused connection from ('10.0.0.1', 1000): not a faas peer" in caplog.text
        now[0] = 61.0
        refusals.refused(("10.0.0.2", 1), "bad token")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5
    assert "scheduler refused 97 more connections" in lines[3] and "10.0.0.2" in lines[4]
