"""BlockingConnection and drive: the connection without asyncio, as the ``faas`` command
line uses it, against the real asyncio server side (``accept``) running on a thread."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from faas.protocol.blocking import BlockingConnection, connect_blocking_conn, drive
from faas.protocol.connection import Connection
from faas.protocol.errors import ConnectionClosed, HandshakeFailed, MalformedFrame, PeerVanished
from faas.protocol.framing import HEADER, encode
from faas.protocol.messages import BulkHeader, ListTables, Query
from faas.protocol.replies import Namespaces, Tables
from tests.conftest import ROOT
from tests.unit.protocol.handshake_helpers import (
    OTHER_TOKEN,
    REPLIES,
    TOKEN,
    Accepted,
    ServeFn,
    faas_server,
)


@contextlib.contextmanager
def served(serve: ServeFn | None = None) -> Iterator[str]:
    """A faas server on its own thread and event loop; yields its address."""
    ready = threading.Event()
    box: dict[str, Any] = {}
    loop = asyncio.new_event_loop()

    async def main() -> None:
        box["stop"] = asyncio.Event()
        async with faas_server(serve=serve) as (address, _):
            box["address"] = address
            ready.set()
            await box["stop"].wait()
        # Connections still being served end here, on their loop, before it closes.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(5), "the server did not start"
    try:
        yield box["address"]
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(5)
        loop.close()


def dial(address: str, token: bytes = TOKEN) -> BlockingConnection[Any]:
    return connect_blocking_conn(address, REPLIES, token=token, role="client",
                                 host_id="laptop-1", expect_role="scheduler")


def test_messages_and_bulk_bytes_flow_and_a_clean_close_is_connection_closed() -> None:
    blob = bytes(range(256)) * 4000

    async def serve(conn: Connection[Any], acc: Accepted) -> None:
        msg = await conn.recv(timeout=3)
        await conn.send(Tables(keys=[f"{msg.namespace}.echo"]))
        await conn.recv(timeout=3)
        await conn.send_raw(encode(BulkHeader(nbytes=len(blob), rows=4000)), blob)
        await conn.send(Namespaces(names=["after"]))

    async def talk(conn: BlockingConnection[Any]) -> list[Any]:
        await conn.send(ListTables(namespace="sales"))
        got: list[Any] = [await conn.recv(timeout=3)]
        await conn.send(Query(sql="select 1"))
        header = await conn.recv(timeout=3)
        got += [header, await conn.recv_bulk(header.nbytes, timeout=3), await conn.recv()]
        return got

    with served(serve) as address:
        conn = dial(address)
        assert (conn.peer_role, conn.peer_host) == ("scheduler", "sched-1")
        got = drive(talk(conn))
        assert got == [Tables(keys=["sales.echo"]), BulkHeader(nbytes=len(blob), rows=4000),
                       blob, Namespaces(names=["after"])]
        with pytest.raises(ConnectionClosed):  # the server hung up after its last reply
            drive(conn.recv(timeout=3))
        assert conn.closed


def test_a_wait_past_its_timeout_is_peer_vanished_and_closes() -> None:
    async def serve(conn: Connection[Any], acc: Accepted) -> None:
        await conn.recv(timeout=3)
        await asyncio.sleep(1.5)  # and does not answer

    with served(serve) as address:
        conn = dial(address)
        drive(conn.send(ListTables()))
        with pytest.raises(PeerVanished, match=r"no frame from .* within 0.2s"):
            drive(conn.recv(timeout=0.2))
        assert conn.closed


def test_a_malformed_frame_keeps_the_connection_in_step() -> None:
    async def serve(conn: Connection[Any], acc: Accepted) -> None:
        await conn.recv(timeout=3)
        junk = b"\xc1not msgpack"
        await conn.send_raw(HEADER.pack(len(junk)) + junk)
        await conn.send(Namespaces(names=["next"]))

    with served(serve) as address:
        conn = dial(address)
        drive(conn.send(ListTables()))
        with pytest.raises(MalformedFrame):
            drive(conn.recv(timeout=3))
        assert not conn.closed
        assert drive(conn.recv(timeout=3)) == Namespaces(names=["next"])
        conn.close()


def test_the_handshake_refuses_a_wrong_token() -> None:
    with served() as address, pytest.raises(HandshakeFailed, match="handshake with"):
        dial(address, token=OTHER_TOKEN)


def test_drive_returns_raises_and_refuses_to_suspend() -> None:
    async def value() -> int:
        return 42

    async def fails() -> None:
        raise ValueError("from the coroutine")

    async def suspends() -> None:
        await asyncio.sleep(0)

    assert drive(value()) == 42
    with pytest.raises(ValueError, match="from the coroutine"):
        drive(fails())
    with pytest.raises(RuntimeError, match="tried to suspend"):
        drive(suspends())


def test_the_command_line_loads_no_asyncio() -> None:
    """What the ``faas`` process imports to run a command: neither asyncio nor any engine
    (pyarrow, pyiceberg, DuckDB) unless the command prints Arrow data."""
    code = ("import sys; sys.argv = ['faas', '--version']\n"
            "from faas.client.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "import faas.client.cli_common, faas.client.client, faas.client.local\n"
            "print(' '.join(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    loaded = set(proc.stdout.split())
    assert "faas.protocol.blocking" in loaded
    assert not loaded & {"asyncio", "uvloop", "pyarrow", "pyiceberg", "duckdb"}
