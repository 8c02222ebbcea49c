"""The connection without asyncio: the handshake's steps, ``connect_blocking`` and
``BlockingConnection``.

Nothing here imports asyncio, so a process that only asks and waits (the ``faas`` command
line) does not pay for loading it, and a thread that blocks anyway (a pull between
workers) needs no event loop. :mod:`protocol.connection` builds the asyncio side on the
same steps, so both sides of every handshake are the same code.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

import msgspec

from faas.protocol import auth
from faas.protocol.errors import (
    ClosedByUs,
    FaasError,
    HandshakeFailed,
    MalformedFrame,
    PeerVanished,
)
from faas.protocol.framing import (
    MAX_CONTROL_FRAME,
    MAX_HANDSHAKE_FRAME,
    encode,
    recv_exactly_blocking,
    recv_frame_blocking,
)
from faas.protocol.messages import PROTOCOL_VERSION, Auth, Error, Handshake, Hello, Role, Welcome

T = TypeVar("T")

HANDSHAKE_TIMEOUT = 10.0
SEND_TIMEOUT = 60.0

_handshake_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(Handshake)


def _check_reply(msg: Any, kind: type) -> Any:
    if isinstance(msg, Error):
        raise HandshakeFailed(msg.message)
    if not isinstance(msg, kind):
        raise HandshakeFailed(f"expected {kind.__name__}, got {type(msg).__name__}")
    return msg


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        from faas.protocol.errors import InvalidInput

        raise InvalidInput(f"address {address!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


# -- the client's steps, shared by connect and connect_blocking -------------------


def _auth_frame(
    address: str, hello: Hello, nonce: bytes, *, token: bytes, role: Role, host_id: str,
    user: str = "",
) -> bytes:
    """The Auth frame answering ``hello``, after checking the server's protocol version."""
    if hello.version != PROTOCOL_VERSION:
        raise HandshakeFailed(
            f"{address} speaks protocol version {hello.version}, this side {PROTOCOL_VERSION}"
        )
    return encode(
        Auth(
            version=PROTOCOL_VERSION,
            role=role,
            host_id=host_id,
            proof=auth.proof(token, hello.nonce, role, host_id, user),
            nonce=nonce,
            user=user,
        )
    )


def _check_welcome(
    address: str, hello: Hello, welcome: Welcome, nonce: bytes, *, token: bytes,
    expect_role: Role | None,
) -> None:
    if not auth.verify(token, nonce, hello.role, hello.host_id, welcome.proof):
        raise HandshakeFailed(f"{address} did not prove the token")
    if expect_role is not None and hello.role != expect_role:
        raise HandshakeFailed(f"{address} is a {hello.role}, not a {expect_role}")


def connect_blocking(
    address: str,
    *,
    token: bytes,
    role: Role,
    host_id: str,
    expect_role: Role | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> tuple[socket.socket, str]:
    """The blocking twin of :func:`connect`: a plain socket, authenticated both ways.

    Returns the socket (blocking, with ``timeout`` as its per-operation timeout) and the
    other side's host id. The whole handshake finishes within ``timeout``. Errors are
    those of :func:`connect`: PeerVanished when the TCP connection cannot be made,
    HandshakeFailed for everything after.
    """
    user, token = auth.split_credential(token)
    host, port = parse_address(address)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:  # includes TimeoutError
        raise PeerVanished(f"cannot connect to {address}: {exc}") from None
    deadline = time.monotonic() + timeout

    def expect(kind: type) -> Any:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HandshakeFailed(f"no {kind.__name__} within {timeout}s")
        sock.settimeout(remaining)
        return _check_reply(recv_frame_blocking(sock, _handshake_decoder, MAX_HANDSHAKE_FRAME), kind)

    try:
        hello = expect(Hello)
        nonce = auth.new_nonce()
        sock.sendall(_auth_frame(address, hello, nonce, token=token, role=role, host_id=host_id,
                                 user=user))
        welcome = expect(Welcome)
        _check_welcome(address, hello, welcome, nonce, token=token, expect_role=expect_role)
    except HandshakeFailed as exc:
        sock.close()
        raise HandshakeFailed(f"handshake with {address} failed: {exc}") from None
    except (FaasError, OSError) as exc:
        sock.close()
        raise HandshakeFailed(
            f"handshake with {address} failed: {exc or type(exc).__name__}"
        ) from None
    except BaseException:
        sock.close()
        raise
    sock.settimeout(timeout)
    return sock, hello.host_id


class Framed(Generic[T]):
    """What both connections share: who the peer is, the decoder of this channel's union
    ``T``, whether it is closed, and ``send`` (a message is one frame)."""

    def __init__(
        self, decoder: msgspec.msgpack.Decoder[T], *, peer: str, peer_role: str = "",
        peer_host: str = "", peer_user: str = "", max_frame: int = MAX_CONTROL_FRAME,
    ) -> None:
        self.decoder = decoder
        self.peer = peer
        self.peer_role = peer_role
        self.peer_host = peer_host
        # The user a client authenticated as (faasd user add); empty for daemons.
        self.peer_user = peer_user
        self.max_frame = max_frame
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, message: Any, *, timeout: float = SEND_TIMEOUT) -> None:
        await self.send_raw(encode(message), timeout=timeout)

    async def send_raw(self, *chunks: bytes | memoryview, timeout: float = SEND_TIMEOUT) -> None:
        raise NotImplementedError


class BlockingConnection(Framed[T]):
    """:class:`protocol.connection.Connection`'s interface on a blocking socket: the same
    coroutine methods, which block the thread instead of suspending, so code written for
    a Connection (the client) runs on either. Run such code with :func:`drive`."""

    def __init__(
        self, sock: socket.socket, decoder: msgspec.msgpack.Decoder[T], *, peer: str,
        peer_role: str = "", peer_host: str = "", max_frame: int = MAX_CONTROL_FRAME,
    ) -> None:
        super().__init__(decoder, peer=peer, peer_role=peer_role, peer_host=peer_host,
                         max_frame=max_frame)
        self.sock = sock

    async def send_raw(self, *chunks: bytes | memoryview, timeout: float = SEND_TIMEOUT) -> None:
        if self._closed:
            raise ClosedByUs("connection already closed")
        try:
            self.sock.settimeout(timeout)
            for chunk in chunks:
                self.sock.sendall(chunk)
        except OSError as exc:  # includes TimeoutError
            self.close()
            raise PeerVanished(f"cannot send to {self.peer}: {exc!r}") from exc

    async def recv(self, *, timeout: float | None = None) -> T:
        if self._closed:
            raise ClosedByUs("connection already closed")
        try:
            self.sock.settimeout(timeout)
            return recv_frame_blocking(self.sock, self.decoder, self.max_frame)
        except PeerVanished as exc:
            self.close()
            if isinstance(exc.__cause__, TimeoutError):
                raise PeerVanished(f"no frame from {self.peer} within {timeout}s") from None
            raise
        except MalformedFrame:
            raise  # the whole payload was read: the stream is still in step
        except FaasError:
            self.close()
            raise
        except BaseException:
            self.close()
            raise

    async def recv_bulk(self, nbytes: int, *, timeout: float | None = None) -> bytes:
        if self._closed:
            raise ClosedByUs("connection already closed")
        try:
            self.sock.settimeout(timeout)
            return bytes(recv_exactly_blocking(self.sock, nbytes, started=True))
        except FaasError as exc:
            self.close()
            raise PeerVanished(f"{self.peer}: bulk bytes: {exc}") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.sock.close()

    async def aclose(self) -> None:
        self.close()


def connect_blocking_conn(
    address: str,
    decoder: msgspec.msgpack.Decoder[T],
    *,
    token: bytes,
    role: Role,
    host_id: str,
    timeout: float = HANDSHAKE_TIMEOUT,
    expect_role: Role | None = None,
) -> BlockingConnection[T]:
    """:func:`connect_blocking`, as a :class:`BlockingConnection` decoding with ``decoder``."""
    sock, peer_host = connect_blocking(address, token=token, role=role, host_id=host_id,
                                       expect_role=expect_role, timeout=timeout)
    return BlockingConnection(sock, decoder, peer=address, peer_host=peer_host,
                              peer_role=expect_role or "")


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine whose awaits never suspend (they reach only BlockingConnection's
    methods and other such coroutines) to its end, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a coroutine run without an event loop tried to suspend")
