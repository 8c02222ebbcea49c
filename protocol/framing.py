"""Frames: a 4-byte big-endian length, then a msgspec-msgpack payload.

No socket I/O lives here: encoders return bytes and :func:`read_frame` reads
from anything with an async ``readexactly`` (an ``asyncio.StreamReader`` or an
in-memory reader in tests). The size limit is checked on the length prefix,
before a single byte of the payload is allocated or read.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Protocol, TypeVar

import msgspec

from faas.protocol.errors import (
    ConnectionClosed,
    FrameTooLarge,
    FrameTruncated,
    MalformedFrame,
    PeerVanished,
)

HEADER = struct.Struct("!I")
# Control frames carry metadata and small projects, never table data.
MAX_CONTROL_FRAME = 16 * 1024 * 1024
# Before the handshake passes only tiny frames are acceptable.
MAX_HANDSHAKE_FRAME = 4096

T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder()


class Reader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


def encode(message: Any) -> bytes:
    """One frame: length prefix + msgpack payload."""
    payload = _encoder.encode(message)
    return HEADER.pack(len(payload)) + payload


async def _read_exactly(reader: Reader, n: int, *, started: bool) -> bytes:
    import asyncio  # loaded already by whoever reads a stream; never by a blocking reader

    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        if not started and not exc.partial:
            raise ConnectionClosed("peer closed the connection") from None
        raise FrameTruncated(
            f"connection ended inside a frame ({len(exc.partial)} of {n} bytes read)"
        ) from None
    except (OSError, TimeoutError) as exc:  # reset, broken pipe, host unreachable, ...
        raise PeerVanished(f"peer vanished: {exc.__class__.__name__}: {exc}") from exc


async def read_payload(reader: Reader, max_size: int = MAX_CONTROL_FRAME) -> bytes:
    """Read one frame's payload, refusing oversize frames before reading them."""
    header = await _read_exactly(reader, HEADER.size, started=False)
    (size,) = HEADER.unpack(header)
    if size > max_size:
        raise FrameTooLarge(size, max_size)
    return await _read_exactly(reader, size, started=True)


async def read_frame(
    reader: Reader, decoder: msgspec.msgpack.Decoder[T], max_size: int = MAX_CONTROL_FRAME
) -> T:
    """Read and decode one frame; a payload that is not a valid message raises MalformedFrame.

    After MalformedFrame the stream position is still known (the whole payload
    was consumed), so the connection may go on.
    """
    return decode_payload(await read_payload(reader, max_size), decoder)


# What msgspec raises for bytes that are not a message: its own errors, and a
# UnicodeDecodeError for a string that is not UTF-8.
UNDECODABLE = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)


def decode_payload(payload: bytes | bytearray, decoder: msgspec.msgpack.Decoder[T]) -> T:
    """Decode one frame's payload; anything that is not a valid message is MalformedFrame."""
    try:
        return decoder.decode(payload)
    except UNDECODABLE as exc:
        raise MalformedFrame(f"malformed frame ({len(payload)} bytes): {exc}") from None


def next_frame(buf: bytearray, max_size: int = MAX_CONTROL_FRAME) -> bytes | None:
    """Cut one complete frame's payload off the front of ``buf``, if there is one: the
    sans-I/O decoder for a reader that gathers bytes itself (the zygote channel). The size
    is checked as soon as the length prefix is there."""
    if len(buf) < HEADER.size:
        return None
    (size,) = HEADER.unpack_from(buf)
    if size > max_size:
        raise FrameTooLarge(size, max_size)
    if len(buf) < HEADER.size + size:
        return None
    payload = bytes(buf[HEADER.size : HEADER.size + size])
    del buf[: HEADER.size + size]
    return payload


# -- blocking sockets (transfers in a thread, the function process) ---------------------


def recv_exactly_blocking(sock: socket.socket, n: int, *, started: bool = False) -> bytearray:
    """Read exactly ``n`` bytes from a blocking socket, never a byte more.

    ``started``: whether bytes of this frame were already read, which decides between
    ConnectionClosed (EOF between frames) and FrameTruncated (EOF inside one).
    """
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    try:
        while got < n:
            k = sock.recv_into(view[got:])
            if k == 0:
                if not started and got == 0:
                    raise ConnectionClosed("peer closed the connection")
                raise FrameTruncated(
                    f"connection ended inside a frame ({got} of {n} bytes read)"
                )
            got += k
    except TimeoutError as exc:
        raise PeerVanished(f"no data from the peer within {sock.gettimeout()}s") from exc
    except OSError as exc:  # reset, broken pipe, host unreachable, ...
        raise PeerVanished(f"peer vanished: {exc.__class__.__name__}: {exc}") from exc
    finally:
        view.release()
    return buf


def recv_frame_blocking(
    sock: socket.socket, decoder: msgspec.msgpack.Decoder[T], max_size: int = MAX_CONTROL_FRAME
) -> T:
    """Read and decode one frame from a blocking socket, checking its size before reading it."""
    (size,) = HEADER.unpack(recv_exactly_blocking(sock, HEADER.size))
    if size > max_size:
        raise FrameTooLarge(size, max_size)
    return decode_payload(recv_exactly_blocking(sock, size, started=True), decoder)
