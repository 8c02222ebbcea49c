"""What a model returned, checked against what it declares (in the function's process).

A declared column that is missing, of another type, or holding nulls where it is
declared required fails the function with one line naming the model and the column. A
column the declaration does not name is a warning on the function's standard error, or,
in a strict run (``faas submit --strict``), a failure. A stream (a RecordBatchReader) is
checked as it is written: its schema first, each batch's nulls as it comes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from faas.protocol.messages import Contract


class ContractBroken(Exception):
    """A model returned what its declaration does not allow (the message says what)."""


def check_returned(value: Any, contract: Contract | None, strict: bool) -> Any:
    """``value`` (a pyarrow Table or RecordBatchReader) if it keeps ``contract``; a reader
    comes back wrapped, to check each batch as it is read.

    Raises:
        ContractBroken: a declared column missing or of another type; in a strict run, a
            column the declaration does not name.
    """
    if contract is None:
        return value
    import pyarrow as pa

    schema = value.schema
    declared = {c.name: c for c in contract.columns}
    what = contract.said
    missing = [name for name in declared if name not in schema.names]
    if missing:
        raise ContractBroken(
            f"returned no column {missing[0]!r}, which {what} declares (it returned: "
            f"{', '.join(schema.names)})"
        )
    for column in contract.columns:
        found = schema.field(column.name).type
        if not column.accepts(found):
            raise ContractBroken(
                f"returned column {column.name!r} as {str(found).replace('large_', '')}, but "
                f"{what} declares {column.type}"
            )
    said = contract.undeclared(schema.names)
    if said is not None:
        if strict:
            raise ContractBroken(f"{said} (--strict)")
        print(f"warning: {said}", file=sys.stderr, flush=True)
    required = [c.name for c in contract.columns if not c.nullable]
    if not required:
        return value
    if isinstance(value, pa.Table):
        _no_nulls(value, required, what)
        return value
    return pa.RecordBatchReader.from_batches(schema, _checked(value, required, what))


def _checked(reader: Any, required: list[str], what: str) -> Iterator[Any]:
    for batch in reader:
        _no_nulls(batch, required, what)
        yield batch


def _no_nulls(data: Any, required: list[str], what: str) -> None:
    for name in required:
        nulls = data.column(name).null_count
        if nulls:
            raise ContractBroken(
                f"returned {nulls} null{'s' if nulls > 1 else ''} in column {name!r}, which "
                f"{what} declares required (declare it '| None' if it may be null)"
            )
