"""The worker's data port: authenticated object fetches; garbage never stops it.

Most tests run a PeerServer on a uvloop loop in a background thread (the worker's loop
is uvloop) and call the blocking ``fetch_object`` from the test thread, as a worker does
through ``asyncio.to_thread``. The crash test runs the server in a subprocess; the tests
at the end go through real daemons (the ``cluster`` fixture).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pyarrow as pa
import pytest
import uvloop
import xxhash

from faas.faasd import peer
from faas.faasd.objects import ObjectStore, Pages
from faas.faasd.peer import DIGEST_CHUNK, PeerServer, fetch_object
from faas.faasd.tasks import FunctionTasks
from faas.protocol.auth import load_token
from faas.protocol.blocking import connect_blocking, parse_address
from faas.protocol.connection import Connection, accept, connect
from faas.protocol.errors import (
    FaasError,
    FrameTooLarge,
    HandshakeFailed,
    InvalidInput,
    MalformedFrame,
    NotFound,
    ObjectCorrupted,
    PeerVanished,
)
from faas.protocol.framing import HEADER, MAX_CONTROL_FRAME, encode, recv_frame_blocking
from faas.protocol.messages import BulkHeader, Error
from faas.protocol.worker_messages import (
    FetchObject,
    ObjectDigest,
    ObjectSource,
    PeerReply,
    PeerRequest,
)
from tests.conftest import ROOT, Cluster

pytestmark = pytest.mark.timeout(120)

TOKEN = b"peer-test-token-" + b"x" * 32
REPO = ROOT
REPLIES = msgspec.msgpack.Decoder(PeerReply)
REQUESTS = msgspec.msgpack.Decoder(PeerRequest)


# -- an event loop in a thread, for servers the blocking client talks to -----------------


class LoopThread:
    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.servers: list[asyncio.Server] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            for server in self.servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


class Served:
    """A PeerServer serving the files in ``objects``; records every ``locate`` call."""

    def __init__(self, loop_thread: LoopThread, objects: Path) -> None:
        self.objects = objects
        self.located: list[str] = []
        self.server = PeerServer(token=TOKEN, host_id="served", listen="127.0.0.1:0",
                                 locate=self.locate)
        self.loop_thread = loop_thread
        self.address: str = loop_thread.run(self.server.start())

    def locate(self, object_id: str) -> Path | None:
        self.located.append(object_id)
        path = self.objects / f"{object_id}.arrow"
        return path if path.exists() else None

    def fetch(self, object_id: str, dest: Path, **kw: Any) -> int:
        return fetch_object(self.address, object_id, dest, token=TOKEN, host_id="test", **kw)


@pytest.fixture
def served(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Served]:
    objects = tmp_path / "objects"
    objects.mkdir()
    s = Served(loop_thread, objects)
    try:
        yield s
    finally:
        loop_thread.run(s.server.close())


def _fake_peer(
    loop_thread: LoopThread, behave: Callable[[Connection[Any]], Awaitable[None]],
    role: str = "peer",
) -> str:
    """A server that passes the handshake as ``role`` and then does ``behave``."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = await accept(reader, writer, REQUESTS, token=TOKEN, role=role, host_id="fake",
                            allowed_roles=("worker",))
        try:
            await behave(conn)
        except FaasError:
            pass  # the client gave up first; what it saw is what the test checks
        finally:
            await conn.aclose()

    server = loop_thread.run(asyncio.start_server(on_connection, "127.0.0.1", 0))
    loop_thread.servers.append(server)
    host, port = server.sockets[0].getsockname()[:2]
    return f"{host}:{port}"


def _random_table(nbytes: int) -> pa.Table:
    n = nbytes // 8
    col = pa.Array.from_buffers(pa.uint64(), n, [None, pa.py_buffer(os.urandom(n * 8))])
    return pa.table({"v": col})


def _write_arrow(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- fetching ---------------------------------------------------------------------------


def test_fetched_object_is_identical_and_reads_back(served: Served, tmp_path: Path) -> None:
    table = _random_table(64 * 2**20)
    _write_arrow(served.objects / "big.arrow", table)
    out = tmp_path / "out"
    out.mkdir()

    n = served.fetch("big", out / "big.arrow")

    source = (served.objects / "big.arrow").read_bytes()
    assert n == len(source) > 64 * 2**20
    assert (out / "big.arrow").read_bytes() == source
    got = pa.ipc.open_file(pa.memory_map(str(out / "big.arrow"))).read_all()
    assert got.equals(table)
    assert _leftovers(out) == ["big.arrow"]


def test_sequential_fetches_from_one_server(served: Served, tmp_path: Path) -> None:
    sizes = {"a": 3 * 2**20 + 7, "b": 1, "c": 20 * 2**20}
    for name, size in sizes.items():
        (served.objects / f"{name}.arrow").write_bytes(os.urandom(size))
    out = tmp_path / "out"
    out.mkdir()
    for round_ in range(2):
        for name, size in sizes.items():
            dest = out / f"{name}-{round_}.arrow"
            assert served.fetch(name, dest) == size
            assert dest.read_bytes() == (served.objects / f"{name}.arrow").read_bytes()
    assert len(_leftovers(out)) == 6
    assert not any(n.endswith(".part") for n in _leftovers(out))


@pytest.mark.parametrize("kept_mib", [96, 16])
def test_fetch_into_a_deleted_objects_pages(
    served: Served, tmp_path: Path, kept_mib: int
) -> None:
    """The receiving store hands over the pages of an object it deleted (larger than the
    new one, or smaller): the new object is byte-identical and exactly its size."""
    store = ObjectStore(tmp_path / "shm", tmp_path / "spill", 1024 * 2**20)
    old = store.path("old")
    old.write_bytes(b"\xee" * (kept_mib * 2**20))
    store.add("old", "run-1", cacheable=False)
    asyncio.run(store.release("run-1"))
    assert len(store.free) == 1
    table = _random_table(48 * 2**20)
    _write_arrow(served.objects / "big.arrow", table)

    n = served.fetch("big", store.path("big"), reuse=store.claim)

    source = (served.objects / "big.arrow").read_bytes()
    assert n == len(source) == store.path("big").stat().st_size
    assert store.path("big").read_bytes() == source
    assert store.free == {} and _leftovers(store.objects_dir) == ["big.arrow"]
    assert not any(store.free_dir.iterdir())


def test_a_pull_lands_in_place_in_kept_pages_and_its_entry_keeps_the_mapping(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept pages the store has mapped are received into in place, as far as the kept file
    has pages (a mapping longer than that would reach holes, which a write through it
    would allocate): the rest is written. The pull hands its mapping on to the new entry,
    and with it to the free list when that object is deleted."""
    in_place: list[int] = []
    real = peer._recv_and_write

    def spy(*args: Any) -> int:
        in_place.append(args[-1])
        return real(*args)

    monkeypatch.setattr(peer, "_recv_and_write", spy)
    store = ObjectStore(tmp_path / "shm", tmp_path / "spill", 1024 * 2**20)
    store.path("old").write_bytes(b"\xee" * (96 * 2**20))
    store.add("old", "run-1", cacheable=False)
    asyncio.run(store.release("run-1"))

    def pull(name: str, mib: int, run_id: str) -> tuple[int, Pages | None, Pages]:
        """Pull, register and delete an object as a worker does; returns its size, the
        pages it claimed and the pages its entry kept."""
        _write_arrow(served.objects / f"{name}.arrow", _random_table(mib * 2**20))
        claimed: list[Pages | None] = []

        def claim(part: Path, nbytes: int) -> Pages | None:
            claimed.append(store.claim(part, nbytes))
            return claimed[-1]

        mapped: list[Pages] = []
        n = served.fetch(name, store.path(name), reuse=claim, keep=mapped.append)
        assert store.path(name).read_bytes() == (served.objects / f"{name}.arrow").read_bytes()
        assert n == store.path(name).stat().st_size and len(mapped) == 1 == len(claimed)
        store.add(name, run_id, cacheable=False, pages=mapped[0])
        asyncio.run(store.release(run_id))
        (kept,) = store.free
        assert store._mapped[kept] is mapped[0]  # the same mapping, not made again
        return n, claimed[0], mapped[0]

    # Into the 96 MiB kept file: all of it in place, and that mapping is kept.
    first, claimed, entry = pull("a", 48, "run-2")
    assert in_place == [first] and claimed is entry
    # Into what is left of it (the first object's pages): those in place, the rest written;
    # the entry gets a mapping of the whole new object.
    second, claimed, entry = pull("b", 64, "run-3")
    assert second > first and in_place == [first, first] and claimed is not entry
    mapped = entry.mapping()
    assert mapped is not None and len(mapped) == second


def test_two_pulls_of_one_object_into_kept_pages_at_once_each_land_whole(
    served: Served, tmp_path: Path
) -> None:
    """Two tasks may pull one object from two sources at once. Here the second claims kept
    pages after the first has claimed its own, and waits there while the first receives:
    each pull has a file of its own, so the first does not land in pages the second took,
    and the object is whole when each of them returns."""
    store = ObjectStore(tmp_path / "shm", tmp_path / "spill", 1024 * 2**20)
    for name, mib in (("f1", 64), ("f2", 96)):
        store.path(name).write_bytes(b"\xee" * (mib * 2**20))
        store.add(name, "run-1", cacheable=False)
    asyncio.run(store.release("run-1"))
    assert len(store.free) == 2
    _write_arrow(served.objects / "x.arrow", _random_table(48 * 2**20))
    source = (served.objects / "x.arrow").read_bytes()
    dest = store.path("x")
    second_claimed, first_done = threading.Event(), threading.Event()
    second: list[int] = []

    def claim_and_wait(part: Path, nbytes: int) -> Pages | None:
        pages = store.claim(part, nbytes)
        second_claimed.set()
        assert first_done.wait(30)
        return pages

    def pull_second() -> None:
        second.append(served.fetch("x", dest, reuse=claim_and_wait))

    thread = threading.Thread(target=pull_second)

    def claim_first(part: Path, nbytes: int) -> Pages | None:
        pages = store.claim(part, nbytes)
        thread.start()
        assert second_claimed.wait(30)
        return pages

    try:
        assert served.fetch("x", dest, reuse=claim_first) == len(source)
        assert dest.read_bytes() == source
    finally:
        first_done.set()
        thread.join(30)
    assert second == [len(source)] and dest.read_bytes() == source
    assert _leftovers(store.objects_dir) == ["x.arrow"] and store.free == {}


class _Puller(FunctionTasks):
    """A worker's task side with only what pulling an input needs: its store and pulls."""

    def __init__(self, store: ObjectStore) -> None:
        self.objects = store
        self.host_id = "puller"
        self.token = TOKEN
        self.released = OrderedDict()
        self._pulls = {}

    @property
    def store(self) -> ObjectStore:
        assert self.objects is not None
        return self.objects


def test_a_worker_pulls_an_object_once_when_two_tasks_name_two_sources(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    """Two tasks on one worker need the same object and were told of two holders: one
    pull, which serves both (two would land in one file at once). If that pull fails, the
    other task pulls from its own source."""
    dirs = [tmp_path / "a", tmp_path / "b"]
    table = _random_table(16 * 2**20)
    for d in dirs:
        d.mkdir()
        _write_arrow(d / "x.arrow", table)
    source = (dirs[0] / "x.arrow").read_bytes()
    holders = [Served(loop_thread, d) for d in dirs]
    puller = _Puller(ObjectStore(tmp_path / "shm", tmp_path / "spill", 1024 * 2**20))

    def task(run_id: str, holder: Served) -> Any:
        where = ObjectSource(worker_id=run_id, host_id="holder", address=holder.address,
                             path=str(holder.objects / "x.arrow"))
        return SimpleNamespace(task_id=f"task-{run_id}", run_id=run_id, use_cache=False,
                               sources={"x": where})

    async def both(first: Any, second: Any) -> list[Any]:
        return list(await asyncio.gather(
            puller._input_path(first, "x"), puller._input_path(second, "x"),
            return_exceptions=True,
        ))

    try:
        got = asyncio.run(both(task("run-1", holders[0]), task("run-2", holders[1])))
        assert got == [puller.store.path("x")] * 2 and got[0].read_bytes() == source
        assert holders[0].located == ["x"] and holders[1].located == []
        assert puller.store.entries["x"].pins == {"run-1", "run-2"} and puller._pulls == {}
        for run_id in ("run-1", "run-2"):
            asyncio.run(puller.store.release(run_id))
        assert "x" not in puller.store.entries

        # The first task's holder no longer has it: the second's pulls it from its own.
        (dirs[0] / "x.arrow").unlink()
        got = asyncio.run(both(task("run-3", holders[0]), task("run-4", holders[1])))
        assert isinstance(got[0], NotFound) and got[1] == puller.store.path("x")
        assert got[1].read_bytes() == source and holders[1].located == ["x"]
        assert puller.store.entries["x"].pins == {"run-4"} and puller._pulls == {}
    finally:
        for holder in holders:
            loop_thread.run(holder.server.close())


def test_a_destination_without_room_fails_in_one_line_and_keeps_nothing(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full tmpfs is an error of the write (never a SIGBUS when a reader maps the file):
    one line naming the file, no .part left, and the server keeps serving."""
    (served.objects / "big.arrow").write_bytes(os.urandom(24 * 2**20))
    out = tmp_path / "out"
    out.mkdir()
    real_pwrite = os.pwrite

    def full_after_8_mib(fd: int, data: Any, offset: int) -> int:
        if offset >= 8 * 2**20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_after_8_mib)
    with pytest.raises(FaasError) as caught:
        served.fetch("big", out / "big.arrow")
    message = str(caught.value)
    assert "no room for an object at" in message
    assert re.search(r"/big\.arrow\.[0-9a-f]{32}\.part after", message)
    assert re.search(r"after \d+ bytes: No space left on device", message) and "\n" not in message
    assert _leftovers(out) == []

    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert served.fetch("big", out / "big.arrow") == 24 * 2**20
    assert (out / "big.arrow").read_bytes() == (served.objects / "big.arrow").read_bytes()


def test_the_server_holds_an_object_while_sending_it(served: Served) -> None:
    size = 64 * 2**20
    path = served.objects / "big.arrow"
    path.write_bytes(b"\0" * size)
    sock, _ = connect_blocking(served.address, token=TOKEN, role="worker", host_id="t",
                               expect_role="peer", timeout=10)
    with sock, open(path, "rb") as f:
        sock.sendall(encode(FetchObject(object_id="big")))
        assert recv_frame_blocking(sock, REPLIES) == BulkHeader(nbytes=size)
        # The sender is blocked on a full socket, mid-object: the store cannot reuse it.
        with pytest.raises(BlockingIOError):
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        got = 0
        while got < size and (chunk := sock.recv(min(2**20, size - got))):
            got += len(chunk)
        assert got == size
        assert isinstance(recv_frame_blocking(sock, REPLIES), ObjectDigest)

        def unlocked() -> bool:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        deadline = time.monotonic() + 10
        while not unlocked():  # the lock goes with the transfer
            assert time.monotonic() < deadline, "the server still holds the object"
            time.sleep(0.02)


def test_zero_byte_object(served: Served, tmp_path: Path) -> None:
    (served.objects / "empty.arrow").write_bytes(b"")
    dest = tmp_path / "empty.arrow"
    assert served.fetch("empty", dest) == 0
    assert dest.exists() and dest.stat().st_size == 0
    assert not dest.with_name("empty.arrow.part").exists()


def test_one_connection_serves_request_after_request(served: Served) -> None:
    """The server resumes reading after a sendfile: the same connection takes more requests,
    malformed frames and unknown objects included."""
    payloads = {name: os.urandom(size) for name, size in [("x", 5 * 2**20), ("y", 12345)]}
    for name, data in payloads.items():
        (served.objects / f"{name}.arrow").write_bytes(data)

    async def go() -> None:
        conn = await connect(served.address, REPLIES, token=TOKEN, role="worker",
                             host_id="test", expect_role="peer")
        try:
            for name in ["x", "y", "missing", "x", "garbage", "y"]:
                if name == "garbage":
                    await conn.send_raw(HEADER.pack(3) + b"\xc1\xc1\xc1")
                    reply = await conn.recv(timeout=10)
                    assert isinstance(reply, Error) and reply.kind == "MalformedFrame"
                    continue
                await conn.send(FetchObject(object_id=name))
                reply = await conn.recv(timeout=10)
                if name == "missing":
                    assert isinstance(reply, Error) and reply.kind == "NotFound"
                    continue
                assert reply == BulkHeader(nbytes=len(payloads[name]))
                assert await conn.recv_bulk(reply.nbytes, timeout=10) == payloads[name]
                data = payloads[name]
                assert await conn.recv(timeout=10) == ObjectDigest(chunk=DIGEST_CHUNK, xxh3_128=[
                    xxhash.xxh3_128_digest(data[i:i + DIGEST_CHUNK])
                    for i in range(0, len(data), DIGEST_CHUNK)
                ])
        finally:
            await conn.aclose()

    asyncio.run(asyncio.wait_for(go(), 60))


# -- corruption in transit --------------------------------------------------------------


def _flipping_proxy(loop_thread: LoopThread, target: str, flip_at: int) -> str:
    """A TCP relay to ``target`` that inverts the byte at offset ``flip_at`` of what the
    server sends back, as a faulty link or NIC would; everything else passes untouched."""
    host, port = parse_address(target)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flip: int) -> None:
        seen = 0
        try:
            while data := await reader.read(2**20):
                if seen <= flip < seen + len(data):
                    data = bytearray(data)
                    data[flip - seen] ^= 0xFF
                seen += len(data)
                writer.write(bytes(data))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def on_connection(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_reader, s_writer = await asyncio.open_connection(host, port)
        await asyncio.gather(pipe(c_reader, s_writer, -1), pipe(s_reader, c_writer, flip_at))

    server = loop_thread.run(asyncio.start_server(on_connection, "127.0.0.1", 0))
    loop_thread.servers.append(server)
    return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_an_object_corrupted_in_transit_is_refused(
    served: Served, loop_thread: LoopThread, tmp_path: Path
) -> None:
    """One byte flipped on the wire, 40 MiB into a 64 MiB object: the receiver's chunk
    digests differ from the sender's, the fetch fails with one line naming the bytes, nothing
    is kept, and the same object then arrives intact by a clean route."""
    table = _random_table(64 * 2**20)
    _write_arrow(served.objects / "big.arrow", table)
    out = tmp_path / "out"
    out.mkdir()
    bad_route = _flipping_proxy(loop_thread, served.address, 40 * 2**20)

    with pytest.raises(ObjectCorrupted) as info:
        fetch_object(bad_route, "big", out / "big.arrow", token=TOKEN, host_id="t")
    assert isinstance(info.value, PeerVanished)  # its reader runs again, as after a lost transfer
    first_bad = 40 * 2**20 // DIGEST_CHUNK * DIGEST_CHUNK  # within a few hundred bytes of framing
    message = str(info.value)
    assert f"'big' from {bad_route}: corrupted in transit (1 of " in message
    assert f"the first is bytes {first_bad}-{first_bad + DIGEST_CHUNK}); nothing was kept" in message
    assert "\n" not in message
    assert _leftovers(out) == []

    assert served.fetch("big", out / "big.arrow") > 64 * 2**20
    assert pa.ipc.open_file(pa.memory_map(str(out / "big.arrow"))).read_all().equals(table)


def test_a_digest_that_does_not_match_or_fit_is_refused(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    data = os.urandom(DIGEST_CHUNK + 5)
    right = [xxhash.xxh3_128_digest(data[:DIGEST_CHUNK]), xxhash.xxh3_128_digest(data[DIGEST_CHUNK:])]

    def sends(digest: ObjectDigest | None) -> Callable[[Connection[Any]], Awaitable[None]]:
        async def behave(conn: Connection[Any]) -> None:
            await conn.recv(timeout=5)
            await conn.send_raw(encode(BulkHeader(nbytes=len(data))), data)
            if digest is not None:
                await conn.send(digest)
            await asyncio.sleep(1)
        return behave

    def fetch(digest: ObjectDigest | None) -> None:
        fetch_object(_fake_peer(loop_thread, sends(digest)), "o", tmp_path / "o.arrow",
                     token=TOKEN, host_id="t", timeout=0.5)

    with pytest.raises(ObjectCorrupted, match=r"\(1 of 2 chunks differ .* bytes 16777216-16777221\)"):
        fetch(ObjectDigest(chunk=DIGEST_CHUNK, xxh3_128=[right[0], bytes(16)]))
    with pytest.raises(MalformedFrame, match="a digest of 1 chunks of 16777216 bytes does not fit"):
        fetch(ObjectDigest(chunk=DIGEST_CHUNK, xxh3_128=right[:1]))
    with pytest.raises(PeerVanished, match=r"after 16777221 of 16777221 bytes \(no digest"):
        fetch(None)
    assert _leftovers(tmp_path) == []
    fetch(ObjectDigest(chunk=DIGEST_CHUNK, xxh3_128=right))
    assert (tmp_path / "o.arrow").read_bytes() == data


# -- typed refusals -----------------------------------------------------------------------


def test_unknown_object_is_not_found(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "nothing.arrow"
    with pytest.raises(NotFound, match=r"object 'nothing' is not on this worker"):
        served.fetch("nothing", dest)
    assert served.located == ["nothing"]
    assert _leftovers(tmp_path) == ["objects"]


@pytest.mark.parametrize("name", ["..", "a/b", "", "../objects/x", "/etc/passwd", "x\x00"])
def test_object_names_cannot_leave_the_store(served: Served, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="is not an object name"):
        served.fetch(name, tmp_path / "x.arrow")
    # Refused before the worker is even asked where the object is.
    assert served.located == []
    assert _leftovers(tmp_path) == ["objects"]


def test_wrong_token_is_refused(served: Served, tmp_path: Path) -> None:
    (served.objects / "o.arrow").write_bytes(b"data")
    with pytest.raises(HandshakeFailed, match=rf"handshake with {served.address} failed: .*token"):
        fetch_object(served.address, "o", tmp_path / "o.arrow", token=b"wrong", host_id="t")
    assert not (tmp_path / "o.arrow").exists()
    assert served.fetch("o", tmp_path / "o.arrow") == 4


def test_a_non_peer_is_refused(loop_thread: LoopThread, tmp_path: Path) -> None:
    asked: list[Any] = []

    async def behave(conn: Connection[Any]) -> None:
        asked.append(await conn.recv(timeout=5))

    address = _fake_peer(loop_thread, behave, role="scheduler")
    with pytest.raises(HandshakeFailed, match=r"is a scheduler, not a peer"):
        fetch_object(address, "o", tmp_path / "o.arrow", token=TOKEN, host_id="t")
    assert asked == []  # the request was never sent
    assert _leftovers(tmp_path) == []


def test_nobody_listening_is_peer_vanished(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PeerVanished, match=rf"cannot connect to 127.0.0.1:{port}"):
        fetch_object(f"127.0.0.1:{port}", "o", tmp_path / "o.arrow", token=TOKEN, host_id="t")


# -- a peer that fails mid-way never leaves a truncated object --------------------------

_SUBPROCESS_SERVER = """
import asyncio, sys
from pathlib import Path
import uvloop
import xxhash
from faas.faasd.peer import PeerServer

root = Path(sys.argv[1])

async def main() -> None:
    server = PeerServer(token=sys.argv[2].encode(), host_id="sub", listen="127.0.0.1:0",
                        locate=lambda o: root / f"{o}.arrow")
    print(await server.start(), flush=True)
    await asyncio.Event().wait()

uvloop.run(main())
"""


def test_server_killed_mid_transfer(tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    objects.mkdir()
    size = 200 * 2**20
    with open(objects / "big.arrow", "wb") as f:
        f.writelines(os.urandom(2**20) for _ in range(size // 2**20))
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "FAAS_FAILPOINT": "peer.send.half"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SUBPROCESS_SERVER, str(objects), TOKEN.decode()],
        cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert re.fullmatch(r"127\.0\.0\.1:\d+", address), address
        with pytest.raises(PeerVanished) as info:
            fetch_object(address, "big", out / "big.arrow", token=TOKEN, host_id="t", timeout=30)
        assert proc.wait(timeout=30) == 86
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    message = str(info.value)
    m = re.search(rf"'big' from {address}: connection closed after (\d+) of {size} bytes", message)
    assert m, message
    assert 0 < int(m.group(1)) < size
    assert _leftovers(out) == []


def test_peer_stalls_mid_transfer(loop_thread: LoopThread, tmp_path: Path) -> None:
    release = threading.Event()

    async def behave(conn: Connection[Any]) -> None:
        await conn.recv(timeout=5)
        await conn.send_raw(encode(BulkHeader(nbytes=1000)), b"0123456789")
        await asyncio.to_thread(release.wait, 30)

    address = _fake_peer(loop_thread, behave)
    try:
        with pytest.raises(PeerVanished, match=r"closed after 10 of 1000 bytes \(no data for 0.5s\)"):
            fetch_object(address, "o", tmp_path / "o.arrow", token=TOKEN, host_id="t", timeout=0.5)
    finally:
        release.set()
    assert _leftovers(tmp_path) == []


def test_peer_closes_before_and_during_the_object(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    async def no_reply(conn: Connection[Any]) -> None:
        await conn.recv(timeout=5)

    async def short_object(conn: Connection[Any]) -> None:
        await conn.recv(timeout=5)
        await conn.send_raw(encode(BulkHeader(nbytes=2**20)), b"x" * 1000)

    with pytest.raises(PeerVanished, match=r"'o' from .*: peer closed the connection"):
        fetch_object(_fake_peer(loop_thread, no_reply), "o", tmp_path / "o.arrow",
                     token=TOKEN, host_id="t")
    with pytest.raises(PeerVanished, match=rf"closed after 1000 of {2**20} bytes \(end of stream\)"):
        fetch_object(_fake_peer(loop_thread, short_object), "o", tmp_path / "o.arrow",
                     token=TOKEN, host_id="t")
    assert _leftovers(tmp_path) == []


def test_oversize_or_wrong_reply_is_refused(loop_thread: LoopThread, tmp_path: Path) -> None:
    async def huge_frame(conn: Connection[Any]) -> None:
        await conn.recv(timeout=5)
        await conn.send_raw(HEADER.pack(MAX_CONTROL_FRAME + 1))

    async def negative_size(conn: Connection[Any]) -> None:
        await conn.recv(timeout=5)
        await conn.send(BulkHeader(nbytes=-5))

    with pytest.raises(FrameTooLarge, match=str(MAX_CONTROL_FRAME)):
        fetch_object(_fake_peer(loop_thread, huge_frame), "o", tmp_path / "o.arrow",
                     token=TOKEN, host_id="t")
    with pytest.raises(MalformedFrame, match="nbytes=-5"):
        fetch_object(_fake_peer(loop_thread, negative_size), "o", tmp_path / "o.arrow",
                     token=TOKEN, host_id="t")
    assert _leftovers(tmp_path) == []


def test_close_stops_a_transfer_to_a_client_that_reads_nothing(
    served: Served, loop_thread: LoopThread
) -> None:
    size = 64 * 2**20
    (served.objects / "big.arrow").write_bytes(b"\0" * size)
    sock, host = connect_blocking(served.address, token=TOKEN, role="worker", host_id="t",
                                  expect_role="peer", timeout=10)
    with sock:
        assert host == "served"
        sock.sendall(encode(FetchObject(object_id="big")))
        assert recv_frame_blocking(sock, REPLIES) == BulkHeader(nbytes=size)
        # The sender is now blocked on a full socket; close must still finish promptly.
        loop_thread.run(served.server.close(), timeout=20)
        assert served.server.status == "closed"
        got = 0
        try:
            while chunk := sock.recv(2**20):
                got += len(chunk)
        except ConnectionResetError:
            pass
        assert got < size


# -- garbage -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xff\xff\xff" + os.urandom(32), os.urandom(200), HEADER.pack(5) + b"\x81\xa2op\xc0"],
)
def test_garbage_to_the_data_port(served: Served, tmp_path: Path, garbage: bytes) -> None:
    host, port = parse_address(served.address)
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(garbage)
        while s.recv(65536):
            pass
    (served.objects / "o.arrow").write_bytes(b"still serving")
    assert served.fetch("o", tmp_path / "o.arrow") == len(b"still serving")
    assert (tmp_path / "o.arrow").read_bytes() == b"still serving"


# -- through real daemons ---------------------------------------------------------------


def _worker_objects(c: Cluster) -> Path:
    info = json.loads(c.faas("info", "--json", check=True).stdout)
    (worker,) = info["workers"]
    assert c.shm_dir is not None
    objects = c.shm_dir / f"faas-{worker['worker_id']}" / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    return objects


def _fetch(c: Cluster, object_id: str, dest: Path, token: bytes | None = None) -> int:
    return fetch_object(c.data_addresses[0], object_id, dest,
                        token=token or load_token(c.worker_token), host_id="other-host")


def test_worker_serves_only_sealed_objects(cluster: Cluster, tmp_path: Path) -> None:
    """A file in the objects directory that the worker's store did not seal is not served.

    (Fetching an object a run produced is covered with the worker's run tests; the bytes
    path itself is covered above against an in-process server.)
    """
    objects = _worker_objects(cluster)
    _write_arrow(objects / "stray.arrow", pa.table({"k": [1, 2, 3]}))
    out = tmp_path / "out"
    out.mkdir()

    async def go() -> None:
        with pytest.raises(NotFound, match="'stray' is not on this worker"):
            await asyncio.to_thread(_fetch, cluster, "stray", out / "stray.arrow")

    asyncio.run(go())
    assert _leftovers(out) == []
    assert cluster.alive()


def test_wrong_token_is_refused_by_the_worker(cluster: Cluster, tmp_path: Path) -> None:
    with pytest.raises(HandshakeFailed, match="token"):
        _fetch(cluster, "obj", tmp_path / "o.arrow", token=b"wrong")
    assert not (tmp_path / "o.arrow").exists()
    assert cluster.alive()


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff" + os.urandom(32), os.urandom(200)])
def test_garbage_to_worker(cluster: Cluster, garbage: bytes, tmp_path: Path) -> None:
    host, port = parse_address(cluster.data_addresses[0])
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(garbage)
        s.settimeout(10)
        while s.recv(65536):
            pass
    assert cluster.alive()
    # The worker still serves: an authenticated request gets its typed answer, and the
    # scheduler still sees the worker.
    with pytest.raises(NotFound, match="not on this worker"):
        _fetch(cluster, "after", tmp_path / "after.arrow")
    cluster.faas("info", "--json", check=True)


def test_worker_refuses_names_outside_the_store(cluster: Cluster, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="is not an object name"):
        _fetch(cluster, "..", tmp_path / "x.arrow")
    assert cluster.alive()


def test_a_data_port_is_not_a_scheduler(cluster: Cluster) -> None:
    async def go() -> None:
        with pytest.raises(HandshakeFailed, match="is a peer, not a scheduler"):
            await connect(
                cluster.data_addresses[0], REPLIES,
                token=load_token(cluster.worker_token), role="worker", host_id="h",
                expect_role="scheduler",
            )

    asyncio.run(go())


def test_the_scheduler_port_is_not_a_peer(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(HandshakeFailed, match="is a scheduler, not a peer"):
        fetch_object(cluster.address, "obj", out / "o.arrow",
                     token=load_token(cluster.worker_token), host_id="h")
    assert _leftovers(out) == []
    assert cluster.alive()
