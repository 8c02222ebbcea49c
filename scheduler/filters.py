"""Run parameters in filters: ``filter="order_date >= $start"`` (and overwrite_filter), as
Bauplan's filters take them. Each ``$name`` outside quoted strings becomes the parameter's
value as a literal when the run is planned, so the plan, the cache key and the scan all
see the value, and a value is never read as code."""

from __future__ import annotations

import re

from faas.protocol.errors import InvalidInput
from faas.protocol.messages import ParamValue

_QUOTED = re.compile(r"('(?:[^']|'')*')")
_PARAMETER = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def filter_parameters(text: str) -> list[str]:
    """The run parameters a filter names (``$name``, outside quoted strings)."""
    return [m.group(1) for i, part in enumerate(_QUOTED.split(text)) if i % 2 == 0
            for m in _PARAMETER.finditer(part)]


def bind_filter(text: str, values: dict[str, ParamValue], secret: set[str]) -> str:
    """``text`` with each ``$name`` outside quoted strings replaced by the parameter's value,
    as a literal (text quoted, quotes doubled): a filter reads values, never code.

    Raises:
        InvalidInput: a parameter with no value, or a secret (filters are recorded).
    """

    def literal(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in secret:
            raise InvalidInput(f"filter {text!r} names secret parameter {name!r}: filters are "
                               "shown in plans and records, secrets never are")
        if name not in values:
            raise InvalidInput(f"filter {text!r} names parameter {name!r}, which has no "
                               f"value: pass --param {name}=VALUE")
        value = values[name]
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        return "'" + str(value).replace("'", "''") + "'"

    parts = _QUOTED.split(text)
    return "".join(part if i % 2 else _PARAMETER.sub(literal, part) for i, part in enumerate(parts))


def placeholder(text: str) -> str:
    """``text`` with every parameter as a stand-in literal, for reading its shape (its
    columns) before values are known."""
    parts = _QUOTED.split(text)
    return "".join(part if i % 2 else _PARAMETER.sub("'0'", part) for i, part in enumerate(parts))
