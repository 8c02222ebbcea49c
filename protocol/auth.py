"""Cluster token files and the HMAC-SHA256 proofs exchanged in the handshake."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from faas.protocol.errors import InvalidInput, NotFound

TOKEN_BYTES = 32


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


def new_nonce() -> bytes:
    return secrets.token_bytes(16)


def proof(token: bytes, nonce: bytes, role: str, host_id: str) -> bytes:
    """HMAC over the peer's nonce and the claimed identity, so neither can be replayed."""
    msg = nonce + b"\0" + role.encode() + b"\0" + host_id.encode()
    return hmac.new(token, msg, hashlib.sha256).digest()


def verify(token: bytes, nonce: bytes, role: str, host_id: str, given: bytes) -> bool:
    return hmac.compare_digest(proof(token, nonce, role, host_id), given)
