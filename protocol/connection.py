"""An authenticated framed connection over asyncio streams.

This is the one thin adaptor between :mod:`protocol.framing` (pure) and
asyncio streams, shared by every daemon and the client so that the handshake,
deadlines and error mapping are the same everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from faas.protocol import auth
from faas.protocol.blocking import (
    HANDSHAKE_TIMEOUT,
    SEND_TIMEOUT,
    Framed,
    _auth_frame,
    _check_reply,
    _check_welcome,
    _handshake_decoder,
    parse_address,
)
from faas.protocol.errors import (
    ClosedByUs,
    FaasError,
    HandshakeFailed,
    MalformedFrame,
    PeerVanished,
)
from faas.protocol.framing import MAX_CONTROL_FRAME, MAX_HANDSHAKE_FRAME, encode, read_frame
from faas.protocol.messages import PROTOCOL_VERSION, Auth, Error, Hello, Role, Welcome

log = logging.getLogger(__name__)

T = TypeVar("T")



class Connection(Framed[T]):
    """One authenticated connection; ``recv`` decodes this channel's union ``T``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: msgspec.msgpack.Decoder[T],
        *,
        peer_role: str = "",
        peer_host: str = "",
        peer_user: str = "",
        max_frame: int = MAX_CONTROL_FRAME,
    ) -> None:
        peer = writer.get_extra_info("peername")
        super().__init__(
            decoder, peer=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "?"),
            peer_role=peer_role, peer_host=peer_host, peer_user=peer_user, max_frame=max_frame,
        )
        self.reader = reader
        self.writer = writer
        self._send_lock = asyncio.Lock()

    async def send_raw(self, *chunks: bytes | memoryview, timeout: float = SEND_TIMEOUT) -> None:
        """Write chunks back to back; frames and bulk bytes never interleave between senders."""
        if self._closed:
            raise ClosedByUs("connection already closed")
        async with self._send_lock:
            try:
                for chunk in chunks:
                    self.writer.write(chunk)
                await asyncio.wait_for(self.writer.drain(), timeout)
            except (ConnectionError, TimeoutError) as exc:
                # Position in the stream is unknown now: this connection is done.
                self.close()
                raise PeerVanished(f"cannot send to {self.peer}: {exc!r}") from exc
            # A cancel can come only while waiting for the lock (nothing written) or for the
            # drain (every chunk already in the transport, which still sends it): either way
            # the stream stays in step and the connection serves on.

    async def recv(self, *, timeout: float | None = None) -> T:
        if self._closed:
            raise ClosedByUs("connection already closed")
        try:
            if timeout is None:
                return await read_frame(self.reader, self.decoder, self.max_frame)
            return await asyncio.wait_for(
                read_frame(self.reader, self.decoder, self.max_frame), timeout
            )
        except MalformedFrame:
            raise
        except TimeoutError as exc:
            self.close()
            raise PeerVanished(f"no frame from {self.peer} within {timeout}s") from exc
        except (FaasError, asyncio.CancelledError):
            self.close()
            raise

    def hung_up(self) -> bool:
        """Has the peer closed its side (with nothing left unread)? Reads nothing."""
        return self._closed or self.reader.at_eof()

    async def recv_bulk(self, nbytes: int, *, timeout: float | None = None) -> bytes:
        """Read the raw bytes announced by a header frame."""
        if self._closed:
            raise ClosedByUs("connection already closed")
        try:
            return await asyncio.wait_for(self.reader.readexactly(nbytes), timeout)
        except asyncio.IncompleteReadError as exc:
            self.close()
            raise PeerVanished(
                f"{self.peer} closed after {len(exc.partial)} of {nbytes} bulk bytes"
            ) from None
        except TimeoutError as exc:
            self.close()
            raise PeerVanished(f"no bulk bytes from {self.peer} within {timeout}s") from exc
        except ConnectionError as exc:
            self.close()
            raise PeerVanished(f"{self.peer} vanished during a bulk transfer: {exc!r}") from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.writer.close()

    async def aclose(self) -> None:
        self.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)
        except (OSError, TimeoutError):
            pass


async def _expect(
    reader: asyncio.StreamReader, kind: type, timeout: float = HANDSHAKE_TIMEOUT
) -> Any:
    msg = await asyncio.wait_for(
        read_frame(reader, _handshake_decoder, MAX_HANDSHAKE_FRAME), timeout
    )
    return _check_reply(msg, kind)


class RefusalLog:
    """Logs refused connections without letting a flood of them flood the log: the first
    ``burst`` in each ``window`` seconds are logged one by one, the rest counted and
    summed up in one line when the next window starts."""

    def __init__(self, logger: logging.Logger, what: str, *, burst: int = 10,
                 window: float = 60.0, clock: Any = time.monotonic) -> None:
        self.logger = logger
        self.what = what
        self.burst = burst
        self.window = window
        self.clock = clock
        self._start = clock()
        self._logged = 0
        self._suppressed = 0

    def refused(self, peer: object, reason: object) -> None:
        now = self.clock()
        if now - self._start >= self.window:
            if self._suppressed:
                self.logger.warning("%s refused %d more connections in the last %.0f s (not logged "
                                    "one by one)", self.what, self._suppressed, now - self._start)
            self._start, self._logged, self._suppressed = now, 0, 0
        if self._logged < self.burst:
            self._logged += 1
            self.logger.warning("%s refused connection from %s: %s", self.what, peer, reason)
        else:
            self._suppressed += 1


async def accept(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    decoder: msgspec.msgpack.Decoder[T],
    *,
    token: bytes,
    role: Role,
    host_id: str,
    allowed_roles: tuple[Role, ...],
    users: Callable[[str], bytes | None] | None = None,
) -> Connection[T]:
    """Server side of the handshake. On any failure the socket is closed and the error raised.

    ``token`` is what daemons prove; ``users``, where given, gives a user's secret, which
    is what a client proves instead (then no client is taken on the cluster token). Only
    handshake-sized frames are read until the proof checks out.
    """
    nonce = auth.new_nonce()
    try:
        writer.write(encode(Hello(version=PROTOCOL_VERSION, role=role, host_id=host_id, nonce=nonce)))
        await asyncio.wait_for(writer.drain(), HANDSHAKE_TIMEOUT)
        hello = await _expect(reader, Auth)
        if hello.version != PROTOCOL_VERSION:
            raise HandshakeFailed(
                f"protocol version {hello.version} is not supported (this {role} speaks "
                f"{PROTOCOL_VERSION})"
            )
        # The proof first: an unauthenticated peer learns nothing about accepted roles.
        if users is not None and hello.role == "client":
            key = users(hello.user) if hello.user else None
        else:
            key = None if hello.user else token
        if key is None or not auth.verify(
            key, nonce, hello.role, hello.host_id, hello.proof, hello.user
        ):
            raise HandshakeFailed("the token does not match (check --token-file or FAAS_TOKEN_FILE)")
        if hello.role not in allowed_roles:
            raise HandshakeFailed(f"role {hello.role!r} may not connect to a {role}")
        back = auth.proof(key, hello.nonce, role, host_id)
        writer.write(encode(Welcome(proof=back)))
        await asyncio.wait_for(writer.drain(), HANDSHAKE_TIMEOUT)
    except HandshakeFailed as exc:
        try:
            writer.write(encode(Error(kind="HandshakeFailed", message=str(exc))))
        except Exception:  # noqa: BLE001, S110 - the peer may be gone already
            pass
        writer.close()
        raise
    except (FaasError, OSError, TimeoutError) as exc:
        writer.close()
        raise HandshakeFailed(f"handshake failed: {exc}") from exc
    except BaseException:
        writer.close()
        raise
    return Connection(reader, writer, decoder, peer_role=hello.role, peer_host=hello.host_id,
                      peer_user=hello.user)


async def _abort(writer: asyncio.StreamWriter) -> None:
    """Close a socket that failed its handshake and let the transport finish closing."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except (OSError, TimeoutError):
        pass


async def connect(
    address: str,
    decoder: msgspec.msgpack.Decoder[T],
    *,
    token: bytes,
    role: Role,
    host_id: str,
    timeout: float = HANDSHAKE_TIMEOUT,
    expect_role: Role | None = None,
) -> Connection[T]:
    """Open a connection to ``HOST:PORT`` and authenticate both ways.

    ``token``: the cluster token, or a user's token (``NAME:SECRET``: the connection is
    that user's). ``expect_role``: the role the other side must have (a worker's data port
    is not a scheduler), checked once it has proved the token.
    """
    user, token = auth.split_credential(token)
    host, port = parse_address(address)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=2**20), timeout
        )
    except (OSError, TimeoutError) as exc:
        raise PeerVanished(f"cannot connect to {address}: {exc}") from None
    try:
        hello = _check_reply(await _expect(reader, Hello, timeout), Hello)
        nonce = auth.new_nonce()
        writer.write(_auth_frame(address, hello, nonce, token=token, role=role, host_id=host_id,
                                 user=user))
        await asyncio.wait_for(writer.drain(), timeout)
        welcome = await _expect(reader, Welcome, timeout)
        _check_welcome(address, hello, welcome, nonce, token=token, expect_role=expect_role)
    except HandshakeFailed as exc:
        await _abort(writer)
        raise HandshakeFailed(f"handshake with {address} failed: {exc}") from None
    except (FaasError, OSError, TimeoutError) as exc:
        await _abort(writer)
        raise HandshakeFailed(f"handshake with {address} failed: {exc or type(exc).__name__}") from None
    except BaseException:
        writer.close()
        raise
    return Connection(reader, writer, decoder, peer_role=hello.role, peer_host=hello.host_id)
