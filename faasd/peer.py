"""The worker's peer data server: other workers fetch objects from this host's shm store.

Wire: after the handshake the client sends ``FetchObject(object_id)``; the server answers
with an ``Error`` frame, or a ``BulkHeader(nbytes)`` frame followed by the object's Arrow
IPC file, ``nbytes`` raw bytes, and an ``ObjectDigest`` frame: the XXH3-128 of every
``DIGEST_CHUNK`` bytes, hashed from the sender's copy while it was being sent. The client
hashes its copy chunk by chunk as the bytes land and refuses the object
(``ObjectCorrupted``) if any chunk differs: corruption in transit becomes an error, never
a wrong table. The connection then takes the next request.

Neither side copies the bytes through Python: the server hands the file to the kernel with
``os.sendfile`` (uvloop has no ``loop.sendfile``, so it runs in a thread on the transport's
socket while the transport is idle). The client ``recv_into``\\s a deleted object's kept
pages, already mapped (:class:`faas.faasd.objects.Pages`), where the store has them: one
copy of each byte, as into a preallocated buffer. Otherwise it receives into one small
buffer and ``pwrite``\\s each piece into its destination file in shared memory.

Failpoint (for crash tests, see :mod:`store.failpoints`): with ``FAAS_FAILPOINT`` set to
``peer.send.half`` the server process exits with status 86 after sending about half of an
object's bytes. It is not in ``store.failpoints.FAILPOINTS``, which lists the store's own.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mmap
import os
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any, Self

import msgspec
import xxhash

from faas.faasd.objects import Pages, backed, hold
from faas.protocol.blocking import SEND_TIMEOUT, connect_blocking
from faas.protocol.connection import Connection, RefusalLog, accept
from faas.protocol.errors import (
    ClosedByUs,
    ConnectionClosed,
    FaasError,
    FrameTruncated,
    HandshakeFailed,
    InvalidInput,
    MalformedFrame,
    NotFound,
    ObjectCorrupted,
    PeerVanished,
    from_wire,
)
from faas.protocol.framing import encode, recv_frame_blocking
from faas.protocol.messages import BulkHeader, Error, error_message
from faas.protocol.worker_messages import FetchObject, ObjectDigest, PeerReply, PeerRequest
from faas.store.failpoints import failpoint

log = logging.getLogger(__name__)

_request_decoder = msgspec.msgpack.Decoder(PeerRequest)
_reply_decoder = msgspec.msgpack.Decoder(PeerReply)

# The most bytes one sendfile / recv_into call is asked for.
CHUNK = 8 * 2**20
# A transfer that makes no progress for this long is abandoned.
STALL_TIMEOUT = 60.0
# How often a sending thread looks up from poll() to see whether it should stop.
_POLL_SLICE = 0.25
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,200}")
# Each this many bytes of an object get their own XXH3-128; chunks are hashed in parallel.
DIGEST_CHUNK = 16 * 2**20
# Digests of this many objects are kept by a peer server (oldest dropped first).
DIGESTS_KEPT = 4096


class PeerServer:
    """Serves this worker's sealed objects to other workers, one request at a time per connection.

    ``locate(object_id)`` returns the path of a sealed object, or None if this worker does
    not hold it.
    """

    def __init__(
        self, *, token: bytes, host_id: str, listen: str, locate: Callable[[str], Path | None]
    ) -> None:
        self.token = token
        self.host_id = host_id
        self.listen = listen
        self.locate = locate
        self.address = ""
        self.status = "new"
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._refusals = RefusalLog(log, "peer server")
        # Each object is hashed once, when first sent: a later pull (by another host) gets
        # the same digest without hashing it again.
        self._digests: dict[tuple[str, int, int, int, int], list[bytes]] = {}

    async def start(self) -> str:
        if self.status != "new":
            return self.address
        self.status = "starting"
        host, _, port = self.listen.rpartition(":")
        self._server = await asyncio.start_server(
            self._on_connection, host or "127.0.0.1", int(port or 0)
        )
        name = self._server.sockets[0].getsockname()
        self.address = f"{name[0]}:{name[1]}"
        self.status = "running"
        log.info("peer data server listening on %s", self.address)
        return self.address

    async def close(self) -> None:
        if self.status in ("closing", "closed"):
            return
        self.status = "closing"
        try:
            if self._server is not None:
                self._server.close()
                self._server = None
            # Cancel until they are gone: Python 3.11's wait_for (under Connection.send)
            # drops a cancel that arrives just as its inner await completes.
            pending = set(self._connections)
            while pending:
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=0.5)
        finally:
            self.status = "closed"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- one connection ----------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # Only close() and loop shutdown cancel this task, and nobody awaits its result.
            # Ending normally also keeps Python 3.11's start_server callback, which calls
            # task.exception() on it, from logging the cancel as an error.
            pass
        finally:
            if task is not None:
                self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn: Connection[Any] = await accept(
                reader, writer, _request_decoder, token=self.token, role="peer",
                host_id=self.host_id, allowed_roles=("worker", "peer", "scheduler"),
            )
        except HandshakeFailed as exc:
            self._refusals.refused(writer.get_extra_info("peername"), exc)
            return
        try:
            while True:
                try:
                    request = await conn.recv(timeout=300)
                except MalformedFrame as exc:
                    # The whole frame was consumed, so the stream position is still known.
                    await conn.send(error_message(exc))
                    continue
                match request:
                    case FetchObject():
                        if self.status != "running":
                            break
                        await self._send_object(conn, request.object_id)
        except (ConnectionClosed, PeerVanished, ClosedByUs) as exc:
            log.debug("peer connection %s ended: %s", conn.peer, exc)
        except FaasError as exc:
            log.warning("peer connection %s: %s", conn.peer, exc)
        except Exception:  # one bad transfer must not stop the server
            log.exception("peer connection %s failed", conn.peer)
        finally:
            conn.close()

    async def _send_object(self, conn: Connection[Any], object_id: str) -> None:
        if not _NAME.fullmatch(object_id):
            await conn.send(error_message(InvalidInput(f"{object_id!r} is not an object name")))
            return
        try:
            fd = self._open(object_id)
        except FaasError as exc:
            await conn.send(error_message(exc))
            return
        # The open fd, and the shared lock on it, keep the bytes readable and unchanged
        # even if the worker evicts the object now.
        hasher: _Hasher | None = None
        try:
            st = os.fstat(fd)
            size = st.st_size
            log.debug("sending object %s (%d bytes) to %s", object_id, size, conn.peer)
            # An object never changes once sealed; a file whose pages were reused for
            # another object has another name, mtime and ctime.
            key = (object_id, st.st_ino, size, st.st_mtime_ns, st.st_ctime_ns)
            sums = self._digests.get(key)
            if sums is None:  # hashed on other threads while the kernel sends the pages
                hasher = _Hasher(fd, size)
                hasher.advance(size)
            await conn.send(BulkHeader(nbytes=size))
            if size:
                await _sendfile(conn, fd, size)
            if hasher is not None:
                sums = [await asyncio.wrap_future(f) for f in hasher.futures]
                self._digests[key] = sums
                while len(self._digests) > DIGESTS_KEPT:
                    del self._digests[next(iter(self._digests))]
            assert sums is not None
            await conn.send(ObjectDigest(chunk=DIGEST_CHUNK, xxh3_128=sums))
        finally:
            if hasher is not None:
                hasher.close()
            os.close(fd)

    def _open(self, object_id: str) -> int:
        missing = NotFound(f"object {object_id!r} is not on this worker (host {self.host_id})")
        try:
            path = self.locate(object_id)
        except Exception as exc:
            log.exception("locating object %s failed", object_id)
            raise FaasError(f"cannot locate object {object_id!r}: {exc!r}") from exc
        if path is None:
            raise missing
        try:
            return hold(path)
        except FileNotFoundError:
            raise missing from None
        except OSError as exc:
            raise FaasError(f"cannot open object {object_id!r} at {path}: {exc.strerror}") from None


async def _sendfile(conn: Connection[Any], fd: int, size: int) -> None:
    """Send ``size`` bytes of ``fd`` on the connection's socket with ``os.sendfile``.

    The kernel socket is written directly, so the transport must hold no bytes of its own
    (they would land after ours) and must not read meanwhile; reading resumes afterwards
    so the connection can take its next request.
    """
    transport = conn.writer.transport
    sock = transport.get_extra_info("socket")
    if sock is None:
        raise ClosedByUs(f"connection to {conn.peer} has no socket")
    deadline = time.monotonic() + SEND_TIMEOUT
    while transport.get_write_buffer_size():
        if transport.is_closing():
            raise PeerVanished(f"connection to {conn.peer} closed before the object was sent")
        if time.monotonic() > deadline:
            raise PeerVanished(f"{conn.peer} read nothing for {SEND_TIMEOUT}s")
        await asyncio.sleep(0.002)
    transport.pause_reading()
    stop = threading.Event()
    sending = asyncio.ensure_future(
        asyncio.to_thread(_sendfile_blocking, sock.fileno(), fd, size, conn.peer, stop)
    )
    cancelled = False
    # The thread writes to the transport's fd, so nobody may close the transport until
    # the thread is done: a cancel only asks it to stop, then waits for it.
    while not sending.done():
        try:
            await asyncio.wait({sending})
        except asyncio.CancelledError:
            cancelled = True
            stop.set()
    if cancelled:
        if not sending.cancelled():
            sending.exception()  # retrieved: the cancel is what the caller needs to see
        raise asyncio.CancelledError
    sending.result()
    if not transport.is_closing():
        transport.resume_reading()


def _sendfile_blocking(
    sock_fd: int, file_fd: int, size: int, peer: str, stop: threading.Event
) -> None:
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    half = size // 2
    offset = 0
    while offset < size:
        if stop.is_set():
            raise ClosedByUs(f"object transfer to {peer} stopped after {offset} of {size} bytes")
        try:
            sent = os.sendfile(sock_fd, file_fd, offset, min(size - offset, CHUNK))
        except BlockingIOError:
            _wait_writable(poller, peer, stop, offset, size)
            continue
        except OSError as exc:
            raise PeerVanished(
                f"{peer} vanished after {offset} of {size} bytes: {exc.__class__.__name__}: {exc}"
            ) from exc
        if sent == 0:
            raise FaasError(f"object file shrank to {offset} bytes while {size} were promised")
        before, offset = offset, offset + sent
        if before < half <= offset:
            failpoint("peer.send.half")


def _wait_writable(
    poller: select.poll, peer: str, stop: threading.Event, offset: int, size: int
) -> None:
    deadline = time.monotonic() + STALL_TIMEOUT
    while not stop.is_set():
        # POLLERR / POLLHUP also end the wait: the next sendfile reports them.
        if poller.poll(_POLL_SLICE * 1000):
            return
        if time.monotonic() > deadline:
            raise PeerVanished(
                f"{peer} took nothing for {STALL_TIMEOUT}s after {offset} of {size} bytes"
            )


# -- client --------------------------------------------------------------------


def fetch_object(
    address: str,
    object_id: str,
    dest: Path,
    *,
    token: bytes,
    host_id: str,
    timeout: float = 60.0,
    reuse: Callable[[Path, int], Pages | None] | None = None,
    keep: Callable[[Pages], None] | None = None,
) -> int:
    """Pull one object from the peer server at ``address`` into the file ``dest``. Blocking.

    The bytes go straight into a ``.part`` file beside ``dest``, named for this pull alone
    (two pulls of one object never share it), which becomes ``dest`` only when complete and
    matching the sender's digest: a reader never sees a truncated or corrupted object, and
    on any failure no ``.part`` file is left behind. ``timeout`` bounds the handshake and
    each wait for data. ``reuse(part, nbytes)``, if given, may move a file whose pages are
    already allocated to ``part`` (ObjectStore.claim): the bytes then land in those pages,
    received in place when the store has them mapped. ``keep(pages)``, if given, takes
    this process's mapping of the new object (for ObjectStore.add), so that its pages are
    mapped already when it is deleted and they are reused; without it, every mapping is
    let go. Returns the object's size in bytes.

    Raises:
        NotFound, InvalidInput: the peer's typed answer.
        PeerVanished: the connection failed or ended early (the message says how many
            bytes had arrived).
        ObjectCorrupted: the bytes that arrived differ from the sender's digest.
        HandshakeFailed: wrong token, or ``address`` is not a peer data port.
    """
    sock, _ = connect_blocking(
        address, token=token, role="worker", host_id=host_id, expect_role="peer",
        timeout=timeout,
    )
    try:
        nbytes = _request(sock, address, object_id)
        return _receive(sock, address, object_id, Path(dest), nbytes, timeout, reuse, keep)
    finally:
        sock.close()


def _request(sock: socket.socket, address: str, object_id: str) -> int:
    """Ask for the object and read exactly the reply frame; returns the announced size."""
    try:
        sock.sendall(encode(FetchObject(object_id=object_id)))
        reply = recv_frame_blocking(sock, _reply_decoder)
    except OSError as exc:
        raise PeerVanished(f"object {object_id!r} from {address}: {exc}") from exc
    except (ConnectionClosed, FrameTruncated, PeerVanished) as exc:
        raise PeerVanished(f"object {object_id!r} from {address}: {exc}") from None
    match reply:
        case Error(kind=kind, message=message, detail=detail):
            raise from_wire(kind, message, detail)
        case BulkHeader(nbytes=nbytes) if nbytes >= 0:
            return nbytes
        case _:
            raise MalformedFrame(f"{address} answered {object_id!r} with {reply!r}")


def _receive(
    sock: socket.socket, address: str, object_id: str, dest: Path, nbytes: int, timeout: float,
    reuse: Callable[[Path, int], Pages | None] | None,
    keep: Callable[[Pages], None] | None,
) -> int:
    part = dest.with_name(f"{dest.name}.{uuid.uuid4().hex}.part")
    landed: _Landed | None = None
    what = f"object {object_id!r} from {address}"

    def vanished(reason: str) -> PeerVanished:
        got = landed.bytes if landed is not None else 0
        return PeerVanished(
            f"{what}: connection closed after {got} of {nbytes} bytes ({reason})"
        )

    kept: Pages | None = None  # claimed pages, while this pull owns them
    in_place = 0  # bytes received straight into them
    try:
        if nbytes and reuse is not None:
            kept = reuse(part, nbytes)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        if kept is None:
            flags |= os.O_TRUNC  # fresh pages (or none): nothing old is kept
        fd = os.open(part, flags, 0o644)
        try:
            if kept is not None and kept.inode != os.fstat(fd).st_ino:
                kept.done()  # not the file opened: never written through
            # Made (if it is being made) before the file's size changes; it may take the
            # bytes of the reused file that are already in pages.
            mapped = kept.mapping() if kept is not None else None
            in_place = min(len(mapped), backed(fd), nbytes) if mapped is not None else 0
            os.ftruncate(fd, nbytes)  # a reused file keeps its pages below nbytes
            landed = _Landed()
            try:
                if nbytes:
                    _recv_and_write(sock, fd, nbytes, landed, part, mapped, in_place)
                trailer = _recv_trailer(sock, what, vanished)
                _check(landed.sums(), trailer, nbytes, what)
            except TimeoutError:
                raise vanished(f"no data for {timeout}s") from None
            except EOFError:
                raise vanished("end of stream") from None
            except OSError as exc:
                raise vanished(f"{exc.__class__.__name__}: {exc}") from exc
            if keep is not None and nbytes and (kept is None or in_place < nbytes):
                if kept is not None:
                    kept.done()
                kept = Pages.map(fd)  # mapped whole, on the pages thread
        finally:
            os.close(fd)
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        if kept is not None:
            kept.done()
        raise
    if kept is not None:
        if keep is not None:
            keep(kept)
        else:
            kept.done()
    log.log(
        logging.INFO if in_place else logging.DEBUG,
        "fetched object %s (%d bytes) from %s, %d of them in place in kept pages",
        object_id, nbytes, address, in_place,
    )
    return nbytes


def _recv_trailer(
    sock: socket.socket, what: str, vanished: Callable[[str], PeerVanished]
) -> ObjectDigest:
    try:
        reply = recv_frame_blocking(sock, _reply_decoder)
    except (ConnectionClosed, FrameTruncated, PeerVanished) as exc:
        raise vanished(f"no digest: {exc}") from None
    if not isinstance(reply, ObjectDigest):
        raise MalformedFrame(f"{what}: expected the object's digest, got {reply!r}")
    return reply


def _check(sums: list[bytes], trailer: ObjectDigest, nbytes: int, what: str) -> None:
    """Compare the receiver's chunk digests with the sender's; one line naming the first
    bad chunk's bytes when they differ."""
    if trailer.chunk != DIGEST_CHUNK or len(trailer.xxh3_128) != len(sums):
        raise MalformedFrame(
            f"{what}: a digest of {len(trailer.xxh3_128)} chunks of {trailer.chunk} bytes "
            f"does not fit an object of {nbytes} bytes"
        )
    bad = [i for i, (ours, theirs) in enumerate(zip(sums, trailer.xxh3_128, strict=True)) if ours != theirs]
    if bad:
        start = bad[0] * DIGEST_CHUNK
        end = min(start + DIGEST_CHUNK, nbytes)
        raise ObjectCorrupted(
            f"{what}: corrupted in transit ({len(bad)} of {len(sums)} chunks differ from the "
            f"sender's digest, the first is bytes {start}-{end}); nothing was kept"
        )


class _Hasher:
    """The XXH3-128 of each DIGEST_CHUNK bytes of a file, hashed on a thread pool (xxhash
    releases the GIL) as soon as each chunk is in place, through a read-only mapping."""

    def __init__(self, fd: int, size: int) -> None:
        self.size = size
        self.futures: list[Future[bytes]] = []
        self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else None

    def advance(self, available: int) -> None:
        """Queue every chunk that lies wholly below ``available`` bytes."""
        while (start := len(self.futures) * DIGEST_CHUNK) < self.size:
            end = min(start + DIGEST_CHUNK, self.size)
            if end > available:
                return
            assert self._map is not None
            self.futures.append(_hash_pool().submit(_digest, self._map, start, end))

    def sums(self) -> list[bytes]:
        self.advance(self.size)
        return [f.result() for f in self.futures]

    def close(self) -> None:
        """Stop hashing; the mapping is closed once no thread reads it."""
        for f in self.futures:
            f.cancel()
        wait_futures(self.futures)
        if self._map is not None:
            self._map.close()


def _digest(mapped: mmap.mmap, start: int, end: int) -> bytes:
    with memoryview(mapped) as whole, whole[start:end] as part:
        return xxhash.xxh3_128_digest(part)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _hash_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(2, (os.cpu_count() or 2) // 2), thread_name_prefix="faas-digest"
            )
        return _pool


class _Landed:
    """How many bytes of the object are in place so far (for the message when a transfer
    breaks), and the XXH3-128 of each DIGEST_CHUNK of them, hashed as each piece lands,
    while it is still in the CPU's cache."""

    def __init__(self) -> None:
        self.bytes = 0
        self._sums: list[bytes] = []
        self._hash = xxhash.xxh3_128()

    def room(self) -> int:
        """How many bytes may land next without crossing a digest chunk's end."""
        return DIGEST_CHUNK - self.bytes % DIGEST_CHUNK

    def add(self, piece: memoryview) -> None:
        """``piece`` landed right after the bytes so far; at most room() bytes."""
        self._hash.update(piece)
        self.bytes += len(piece)
        if self.bytes % DIGEST_CHUNK == 0:
            self._sums.append(self._hash.digest())
            self._hash.reset()

    def sums(self) -> list[bytes]:
        """The digest of every chunk so far, the last one possibly partial."""
        return self._sums + [self._hash.digest()] if self.bytes % DIGEST_CHUNK else self._sums


# The most bytes received before they are hashed: small enough to stay in the CPU's cache
# from the one to the other (and, into a buffer, to the write).
RECV_PIECE = 2**20


def _recv_and_write(
    sock: socket.socket, fd: int, nbytes: int, landed: _Landed, part: Path,
    mapped: mmap.mmap | None = None, in_place: int = 0,
) -> int:
    """Receive the object's bytes a piece at a time and hash each piece while it is in the
    CPU's cache. The first ``in_place`` bytes are received straight into ``mapped``, a
    mapping of the file whose pages hold at least that many bytes already (nothing
    allocates a page, so nothing can fault for want of room). The rest are
    received into one small buffer and written into the file: the kernel copies them into
    the file's pages, reused or new, without mapping them, and a full tmpfs is an error of
    that write, never a SIGBUS later."""
    got = 0
    if in_place:
        assert mapped is not None
        with memoryview(mapped) as whole:
            while got < in_place:
                end = got + min(RECV_PIECE, landed.room(), in_place - got)
                with whole[got:end] as window:
                    n = _recv(sock, window)
                    with window[:n] as piece:
                        landed.add(piece)
                got += n
    if got < nbytes:
        buf = bytearray(min(RECV_PIECE, nbytes - got))
        with memoryview(buf) as whole:
            while got < nbytes:
                with whole[:min(len(buf), landed.room(), nbytes - got)] as window:
                    n = _recv(sock, window)
                with whole[:n] as piece:
                    landed.add(piece)
                    _write_all(fd, piece, got, part)
                got += n
    return got


def _recv(sock: socket.socket, into: memoryview) -> int:
    if (n := sock.recv_into(into)) == 0:
        raise EOFError
    return n


def _write_all(fd: int, piece: memoryview, offset: int, part: Path) -> None:
    done = 0
    try:
        while done < len(piece):
            with piece[done:] as rest:
                done += os.pwrite(fd, rest, offset + done)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise FaasError(
                f"no room for an object at {part} after {offset + done} bytes: "
                f"{exc.strerror}; free space there or lower the worker's memory budget"
            ) from None
        raise


__all__ = ["PeerServer", "fetch_object"]
