"""Bounds a daemon keeps whatever its peers do: idle client connections are closed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from faas.protocol.connection import connect
from faas.protocol.errors import ConnectionClosed
from faas.protocol.messages import ListNamespaces
from faas.protocol.replies import ClientReply, Namespaces
from faas.scheduler.server import Scheduler

pytestmark = pytest.mark.timeout(120)

TOKEN = b"t" * 64


def test_an_idle_client_connection_is_closed_and_the_scheduler_goes_on(tmp_path: Path) -> None:
    async def go() -> None:
        async with Scheduler(home=tmp_path / "home", token=TOKEN, listen="127.0.0.1:0",
                             client_idle_timeout=0.5) as scheduler:
            decoder = msgspec.msgpack.Decoder(ClientReply)
            idle = await connect(scheduler.address, decoder, token=TOKEN, role="client",
                                 host_id="idle")
            # It says nothing: the scheduler hangs up on it (a clean close, not our own
            # timeout, which would be PeerVanished).
            with pytest.raises(ConnectionClosed):
                await idle.recv(timeout=30)
            await idle.aclose()
            # A client that asks gets its answer, on a connection of its own.
            busy = await connect(scheduler.address, decoder, token=TOKEN, role="client",
                                 host_id="busy")
            await busy.send(ListNamespaces())
            assert isinstance(await busy.recv(timeout=30), Namespaces)
            await busy.aclose()

    asyncio.run(go())
