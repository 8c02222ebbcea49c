"""The worker's peer data server: other workers fetch objects from this host's shm store.

An object is sent as a BulkHeader frame followed by the Arrow IPC file's bytes,
straight from the shared-memory file to the socket with ``sendfile``.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import re
from pathlib import Path
from typing import Any, Callable

import msgspec

from protocol.connection import Connection, accept
from protocol.errors import (
    ConnectionClosed,
    FaasError,
    HandshakeFailed,
    InvalidInput,
    MalformedFrame,
    NotFound,
    PeerVanished,
    from_wire,
)
from protocol.messages import BulkHeader, Error, FetchObject, PeerRequest, error_message

log = logging.getLogger(__name__)

_decoder = msgspec.msgpack.Decoder(PeerRequest)

CHUNK = 4 * 2**20
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,200}")


class PeerServer:
    def __init__(
        self, *, token: bytes, host_id: str, listen: str, object_path: Callable[[str, str], Path]
    ) -> None:
        self.token = token
        self.host_id = host_id
        self.listen = listen
        self.object_path = object_path
        self.address = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        host, _, port = self.listen.rpartition(":")
        self._server = await asyncio.start_server(self._on_connection, host or "127.0.0.1", int(port or 0))
        name = self._server.sockets[0].getsockname()
        self.address = f"{name[0]}:{name[1]}"
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn: Connection[Any] = await accept(
                reader, writer, _decoder, token=self.token, role="peer", host_id=self.host_id,
                allowed_roles=("worker", "peer", "scheduler"),
            )
        except HandshakeFailed as exc:
            log.warning("peer server refused %s: %s", writer.get_extra_info("peername"), exc)
            return
        try:
            while True:
                try:
                    request = await conn.recv(timeout=300)
                except MalformedFrame as exc:
                    await conn.send(error_message(exc))
                    continue
                match request:
                    case FetchObject():
                        await self._send_object(conn, request)
        except (ConnectionClosed, PeerVanished):
            pass
        except FaasError as exc:
            log.warning("peer connection %s: %s", conn.peer, exc)
        except Exception:  # noqa: BLE001 - one bad transfer must not stop the server
            log.exception("peer connection %s failed", conn.peer)
        finally:
            conn.close()

    async def _send_object(self, conn: Connection[Any], request: FetchObject) -> None:
        for part in (request.run_id, request.object_id):
            if not _NAME.fullmatch(part):
                await conn.send(error_message(InvalidInput(f"{part!r} is not an object name")))
                return
        path = self.object_path(request.run_id, request.object_id)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            await conn.send(error_message(NotFound(
                f"object {request.object_id!r} of run {request.run_id!r} is not on this worker"
            )))
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            await conn.send(BulkHeader(nbytes=size))
            if size == 0:
                return
            # Straight from the shared-memory pages to the socket, in bounded chunks.
            with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    for start in range(0, size, CHUNK):
                        await conn.send_raw(view[start:start + CHUNK])
                finally:
                    view.release()


async def fetch_object(conn: Connection[Any], run_id: str, object_id: str, dest: Path) -> int:
    """Pull an object from a peer into ``dest`` in chunks; the file appears only when complete."""
    await conn.send(FetchObject(run_id=run_id, object_id=object_id))
    header = await conn.recv(timeout=60)
    if isinstance(header, Error):
        raise from_wire(header.kind, header.message, header.detail)
    assert isinstance(header, BulkHeader)
    tmp = dest.with_suffix(".part")
    remaining = header.nbytes
    try:
        with open(tmp, "wb") as out:
            while remaining:
                try:
                    chunk = await asyncio.wait_for(conn.reader.read(min(remaining, CHUNK)), 60)
                except (OSError, TimeoutError) as exc:
                    raise PeerVanished(f"object transfer from {conn.peer} stalled: {exc!r}") from exc
                if not chunk:
                    raise PeerVanished(
                        f"peer closed after {header.nbytes - remaining} of {header.nbytes} bytes"
                    )
                out.write(chunk)
                remaining -= len(chunk)
    except BaseException:
        # Never leave a partial object behind, and never reuse a connection cut mid-stream.
        tmp.unlink(missing_ok=True)
        conn.close()
        raise
    os.replace(tmp, dest)
    return header.nbytes


__all__ = ["PeerServer", "fetch_object"]
