"""Token files and the HMAC-SHA256 proofs exchanged in the handshake.

Two kinds of credential. The cluster token (``HOME/token`` of the scheduler, given to
every worker with ``--token-file``) is the worker credential: daemons prove it to each
other. A user token file (``faasd user add``) holds ``NAME:SECRET``: a client proves the
secret of that user, and the scheduler gives it that user's role. A client never holds
the cluster token, and a user's secret never makes anyone a worker.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from faas.protocol.errors import InvalidInput, NotFound

TOKEN_BYTES = 32
# The token file of the user a scheduler makes when it has none (in its home).
ADMIN_TOKEN = "admin.token"


def load_token(path: str | Path) -> bytes:
    """Read a token file (hex or raw text, surrounding whitespace ignored)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text().strip()
    except FileNotFoundError:
        raise NotFound(f"token file {p} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read token file {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"token file {p} is not text: is it a faas token?") from None
    if not text:
        raise InvalidInput(f"token file {p} is empty")
    return text.encode()


def ensure_token(path: str | Path) -> bytes:
    """Load the token at ``path``, creating a fresh random one (mode 0600) if missing."""
    p = Path(path).expanduser()
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under a private name, then linked into place: two daemons starting
        # together never see a half-written token, and neither overwrites the other's.
        tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(TOKEN_BYTES) + "\n")
            try:
                os.link(tmp, p)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    return load_token(p)


USER_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_USER_TOKEN = re.compile(rb"([a-z][a-z0-9_.-]{0,63}):([0-9a-f]{16,})")


def split_credential(token: bytes) -> tuple[str, bytes]:
    """``(user, secret)`` of a user token (``NAME:SECRET``); ``("", token)`` for the
    cluster token."""
    m = _USER_TOKEN.fullmatch(token)
    if m is None:
        return "", token
    return m.group(1).decode(), m.group(2)


def new_nonce() -> bytes:
    return secrets.token_bytes(16)


def proof(token: bytes, nonce: bytes, role: str, host_id: str, user: str = "") -> bytes:
    """HMAC over the peer's nonce and the claimed identity, so neither can be replayed."""
    msg = nonce + b"\0" + role.encode() + b"\0" + host_id.encode() + b"\0" + user.encode()
    return hmac.new(token, msg, hashlib.sha256).digest()


def verify(token: bytes, nonce: bytes, role: str, host_id: str, given: bytes, user: str = "") -> bool:
    return hmac.compare_digest(proof(token, nonce, role, host_id, user), given)
