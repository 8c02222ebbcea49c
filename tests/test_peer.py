"""The worker's data port: authenticated object fetches; garbage never stops it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import msgspec
import pyarrow as pa
import pytest

from faasd.peer import fetch_object
from protocol.auth import load_token
from protocol.connection import connect, parse_address
from protocol.errors import HandshakeFailed, NotFound
from protocol.messages import PeerReply
from tests.conftest import Cluster

pytestmark = pytest.mark.timeout(120)


def _worker_shm(c: Cluster) -> Path:
    info = json.loads(c.faas("info", "--json", check=True).stdout)
    (worker,) = info["workers"]
    assert c.shm_dir is not None
    return c.shm_dir / f"faas-{worker['worker_id']}"


async def _peer(c: Cluster, token: bytes | None = None):  # type: ignore[no-untyped-def]
    return await connect(
        c.data_addresses[0], msgspec.msgpack.Decoder(PeerReply),
        token=token or load_token(c.token_file), role="worker", host_id="other-host",
    )


def test_fetch_object_from_a_worker(cluster: Cluster, tmp_path: Path) -> None:
    run_dir = _worker_shm(cluster) / "run-test"
    run_dir.mkdir()
    table = pa.table({"k": list(range(100_000)), "v": [str(i) for i in range(100_000)]})
    with pa.OSFile(str(run_dir / "obj.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)

    async def go() -> None:
        conn = await _peer(cluster)
        dest = tmp_path / "obj.arrow"
        n = await fetch_object(conn, "run-test", "obj", dest)
        assert n == os.path.getsize(run_dir / "obj.arrow")
        got = pa.ipc.open_file(pa.memory_map(str(dest))).read_all()
        assert got.equals(table)
        with pytest.raises(NotFound, match="not on this worker"):
            await fetch_object(conn, "run-test", "missing", tmp_path / "missing.arrow")
        assert not (tmp_path / "missing.arrow").exists()
        await conn.aclose()

    asyncio.run(go())


def test_wrong_token_is_refused_by_the_worker(cluster: Cluster) -> None:
    async def go() -> None:
        with pytest.raises(HandshakeFailed, match="token"):
            await _peer(cluster, token=b"wrong")

    asyncio.run(go())
    assert cluster.alive()


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff" + os.urandom(32), os.urandom(200)])
def test_garbage_to_worker(cluster: Cluster, garbage: bytes) -> None:
    host, port = parse_address(cluster.data_addresses[0])
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(garbage)
        s.settimeout(10)
        while s.recv(65536):
            pass
    assert cluster.alive()
    # The worker still serves: a fresh authenticated connection works, and so does a run's worth
    # of control traffic through the scheduler.
    async def go() -> None:
        conn = await _peer(cluster)
        await conn.aclose()

    asyncio.run(go())
    cluster.faas("info", "--json", check=True)


def test_object_names_cannot_leave_the_store(cluster: Cluster, tmp_path: Path) -> None:
    from protocol.errors import InvalidInput

    async def go() -> None:
        conn = await _peer(cluster)
        with pytest.raises(InvalidInput, match="is not an object name"):
            await fetch_object(conn, "..", "token", tmp_path / "x.arrow")
        await conn.aclose()

    asyncio.run(go())
    assert cluster.alive()


def test_a_data_port_is_not_a_scheduler(cluster: Cluster) -> None:
    async def go() -> None:
        with pytest.raises(HandshakeFailed, match="is a peer, not a scheduler"):
            await connect(
                cluster.data_addresses[0], msgspec.msgpack.Decoder(PeerReply),
                token=load_token(cluster.token_file), role="worker", host_id="h",
                expect_role="scheduler",
            )

    asyncio.run(go())
