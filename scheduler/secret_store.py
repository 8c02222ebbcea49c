"""Secrets: values a run's functions need (API keys, passwords) that no one should read back.

``faas secret set NAME`` (the value from standard input) stores one; a project parameter
declared ``type = "secret"`` (or Bauplan's ``type: secret``) receives it through
``faas.Parameter``. The scheduler keeps them in ``HOME/secrets.json``, each sealed with
AES-256-GCM under ``HOME/secrets.key`` (both 0600; the name is authenticated with the
value, so a sealed value cannot be moved to another name). A value is opened only to be
handed to the worker that runs a function reading it, never written in a plan, a job
record, a cache key (an HMAC of it under the same key is used, so equal values give
equal keys and nothing can be guessed from them) or a reply; the worker masks it in the
function's output and errors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets as random
import time
from pathlib import Path
from typing import Any

from faas.protocol.errors import InvalidInput, NotFound
from faas.scheduler.users import write_private_json

SECRETS_FILE = "secrets.json"
KEY_FILE = "secrets.key"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_VALUE = 64 * 1024


class SecretStore:
    """``HOME/secrets.json``, sealed under ``HOME/secrets.key`` (made on first use)."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / SECRETS_FILE
        self.key_path = Path(home) / KEY_FILE
        self._key: bytes | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"secrets file {self.path} is damaged: {exc}") from None
        found = data.get("secrets") if isinstance(data, dict) else None
        if not isinstance(found, dict):
            raise InvalidInput(f"secrets file {self.path} is damaged: no 'secrets' mapping")
        return found

    def key(self) -> bytes:
        if self._key is None:
            try:
                self._key = self.key_path.read_bytes()
            except FileNotFoundError:
                self.key_path.parent.mkdir(parents=True, exist_ok=True)
                made = random.token_bytes(32)
                try:
                    fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:  # another process made it first: use that one
                    self._key = self.key_path.read_bytes()
                else:
                    with os.fdopen(fd, "wb") as f:
                        f.write(made)
                    self._key = made
            if len(self._key) != 32:
                raise InvalidInput(f"secrets key {self.key_path} is damaged (not 32 bytes)")
        return self._key

    def set(self, name: str, value: str, user: str) -> None:
        """Store ``value`` as secret ``name`` (replacing one of that name).

        Raises:
            InvalidInput: a bad name, or an empty or oversized value.
        """
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        check_name(name)
        if not value:
            raise InvalidInput(f"secret {name!r} has an empty value: nothing was stored")
        if len(value.encode()) > MAX_VALUE:
            raise InvalidInput(f"secret {name!r} is over {MAX_VALUE // 1024} KiB")
        nonce = random.token_bytes(12)
        sealed = AESGCM(self.key()).encrypt(nonce, value.encode(), name.encode())
        found = dict(self._load())
        found[name] = {"sealed": base64.b64encode(nonce + sealed).decode(), "set_by": user,
                       "set_at": time.time()}
        self._write(found)

    def remove(self, name: str) -> None:
        """Raises: NotFound: no secret of that name."""
        found = dict(self._load())
        if name not in found:
            raise NotFound(f"no secret {name!r} (faas secret ls lists them)")
        del found[name]
        self._write(found)

    def describe(self) -> list[tuple[str, str, float]]:
        """Every secret's name, who set it and when (never its value)."""
        return [(name, str(s.get("set_by", "")), float(s.get("set_at", 0.0)))
                for name, s in sorted(self._load().items())]

    def get(self, name: str) -> str | None:
        """The value of secret ``name``, None if there is none.

        Raises:
            InvalidInput: its sealed value does not open under this home's key.
        """
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        entry = self._load().get(name)
        if entry is None:
            return None
        try:
            raw = base64.b64decode(entry["sealed"])
            return AESGCM(self.key()).decrypt(raw[:12], raw[12:], name.encode()).decode()
        except (InvalidTag, KeyError, ValueError):
            raise InvalidInput(
                f"secret {name!r} does not open with {self.key_path} (was the key replaced?): "
                f"set it again with faas secret set {name}"
            ) from None

    def lookup(self, name: str) -> tuple[str, str] | None:
        """Secret ``name``'s value and its digest, for a plan; None if it is not set."""
        value = self.get(name)
        return None if value is None else (value, self.digest(name, value))

    def digest(self, name: str, value: str) -> str:
        """What cache keys use for a secret's value: an HMAC under the store's key."""
        return hmac.new(self.key(), f"{name}\0{value}".encode(), hashlib.sha256).hexdigest()[:32]

    def _write(self, found: dict[str, Any]) -> None:
        write_private_json(self.path, {"secrets": found})


def check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise InvalidInput(f"secret name {name!r} must be letters, digits and '_', starting "
                           "with a letter or '_'")
