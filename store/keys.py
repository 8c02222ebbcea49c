"""Table keys (``namespace.table``) and their validation."""

from __future__ import annotations

import re

from faas.protocol.errors import InvalidInput

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Each part of a key fits the catalog's key column on every backend.
MAX_IDENT = 255


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is a valid identifier.

    Raises:
        InvalidInput: it is not ``[A-Za-z_][A-Za-z0-9_]*``.
    """
    if isinstance(namespace, str) and len(namespace) > MAX_IDENT:
        raise InvalidInput(f"namespace {namespace[:40]!r}... is over {MAX_IDENT} characters")
    if not isinstance(namespace, str) or not _IDENT.fullmatch(namespace):
        raise InvalidInput(
            f"invalid namespace {namespace!r}: use letters, digits and '_', "
            "not starting with a digit"
        )
    return namespace


def split_key(key: str) -> tuple[str, str]:
    """Split ``namespace.table`` into its two identifiers.

    Raises:
        InvalidInput: the key is not two valid identifiers joined by one dot.
    """
    parts = key.split(".") if isinstance(key, str) else []
    if any(len(p) > MAX_IDENT for p in parts):
        raise InvalidInput(f"table key {key[:40]!r}... has a part over {MAX_IDENT} characters")
    if len(parts) != 2 or not all(_IDENT.fullmatch(p) for p in parts):
        raise InvalidInput(
            f"invalid table key {key!r}: expected namespace.table, each of letters, digits "
            "and '_', not starting with a digit"
        )
    return parts[0], parts[1]
