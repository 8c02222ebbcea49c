"""Scans of Iceberg tables with column projection and filter pushdown.

:func:`scan_metadata` needs only a table's metadata location: metadata files
are immutable, so a worker can read exactly the snapshot the scheduler planned
without asking the catalog.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence

import pyarrow as pa
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    Not,
    Or,
    Reference,
    UnboundPredicate,
)
from pyiceberg.expressions.parser import parse
from pyiceberg.expressions.visitors import bind
from pyiceberg.schema import Schema
from pyiceberg.table import StaticTable
from pyiceberg.table import Table as IcebergTable
from pyparsing import ParseBaseException

from protocol.errors import InvalidInput, NotFound
from store.warehouse import io_properties, storage_errors

logger = logging.getLogger(__name__)


def scan_metadata(
    metadata_location: str,
    snapshot_id: int | None = None,
    columns: Sequence[str] | None = None,
    row_filter: str | None = None,
    *,
    properties: dict[str, str] | None = None,
) -> pa.Table:
    """Read a table from its Iceberg metadata file alone, with no catalog access.

    ``snapshot_id`` None reads the current snapshot of that metadata. ``columns``
    None reads every column; otherwise the result has exactly those columns, in
    that order. ``row_filter`` is a predicate as pyiceberg parses it, such as
    ``"OrderQuantity > 1 and Region = 'Europe'"``. ``properties`` are FileIO
    settings (S3 endpoint and credentials, for example) added to those the AWS
    environment gives.

    Raises:
        NotFound: the metadata file or the snapshot does not exist.
        InvalidInput: the filter does not parse or names an unknown column, or a
            requested column does not exist.
        StorageError: the warehouse cannot be read (a missing bucket, refused credentials).
    """
    table = open_metadata(metadata_location, properties)
    return scan_table(
        table,
        columns=columns,
        row_filter=row_filter,
        snapshot_id=snapshot_id,
        name=metadata_location,
    )


def open_metadata(
    metadata_location: str, properties: Mapping[str, str] | None = None
) -> StaticTable:
    """The table as its metadata file at ``metadata_location`` has it; no catalog access.

    ``properties`` are FileIO settings added to those the AWS environment gives
    (:func:`store.warehouse.io_properties`).

    Raises:
        NotFound: the metadata file does not exist.
        StorageError: it cannot be read (a missing bucket, refused credentials).
    """
    props = io_properties(properties)
    try:
        with storage_errors(f"cannot read table metadata {metadata_location}", props):
            return StaticTable.from_metadata(metadata_location, props)
    except FileNotFoundError as e:
        raise NotFound(f"table metadata not found: {metadata_location}") from e


def scan_table(
    table: IcebergTable,
    *,
    columns: Sequence[str] | None = None,
    row_filter: str | None = None,
    snapshot_id: int | None = None,
    name: str = "table",
) -> pa.Table:
    """Scan a loaded pyiceberg table; ``name`` is used in error messages.

    Raises:
        NotFound: the snapshot does not exist in this table.
        InvalidInput: a bad filter or an unknown column.
    """
    schema = table.schema()
    if snapshot_id is not None:
        snapshot = table.snapshot_by_id(snapshot_id)
        if snapshot is None:
            raise NotFound(f"snapshot {snapshot_id} not found in {name}")
        if snapshot.schema_id is not None:
            schema = table.schemas().get(snapshot.schema_id, schema)
    if columns is not None:
        check_columns(columns, schema, name)
    expression = parse_filter(row_filter, schema, name)
    selected = tuple(columns) if columns is not None else ("*",)
    scan = table.scan(row_filter=expression, selected_fields=selected, snapshot_id=snapshot_id)
    where = name if name == table.metadata_location else f"{name} ({table.metadata_location})"
    with storage_errors(f"cannot read {where}", table.io.properties):
        result = scan.to_arrow()
    if columns is not None:
        # pyiceberg returns projected columns in schema order; callers asked for theirs.
        result = result.select(list(columns))
    logger.debug("scanned %d rows from %s (filter %r)", result.num_rows, name, row_filter)
    return result


def check_columns(columns: Sequence[str], schema: Schema, name: str) -> None:
    """Raise InvalidInput naming the first column of ``columns`` not in ``schema``."""
    available = [f.name for f in schema.fields]
    for column in columns:
        if column not in available:
            raise InvalidInput(
                f"unknown column {column!r} in {name}; available columns: {', '.join(available)}"
            )


def parse_filter(row_filter: str | None, schema: Schema, name: str) -> BooleanExpression:
    """Parse ``row_filter`` and check it binds to ``schema``.

    Raises:
        InvalidInput: the filter does not parse, names an unknown column, or
            compares a column with a literal of the wrong type.
    """
    if row_filter is None or not row_filter.strip():
        return AlwaysTrue()
    try:
        expression = parse(row_filter)
    except ParseBaseException as e:
        near = row_filter[e.loc : e.loc + 20] or "end of filter"
        raise InvalidInput(
            f"bad filter {row_filter!r}: syntax error at column {e.loc + 1} near {near!r}"
        ) from e
    available = {f.name for f in schema.fields}
    for reference in _references(expression):
        if reference.split(".")[0] not in available:
            raise InvalidInput(
                f"bad filter {row_filter!r}: unknown column {reference!r} in {name}; "
                f"available columns: {', '.join(f.name for f in schema.fields)}"
            )
    try:
        bind(schema, expression, case_sensitive=True)
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"bad filter {row_filter!r}: {e}") from e
    return expression


def check_filter(row_filter: str, schema: pa.Schema, name: str) -> None:
    """Check ``row_filter`` against an Arrow schema, as a scan of it would.

    Raises:
        InvalidInput: as :func:`parse_filter`.
    """
    from pyiceberg.io.pyarrow import _pyarrow_to_schema_without_ids
    from pyiceberg.schema import assign_fresh_schema_ids

    parse_filter(row_filter, assign_fresh_schema_ids(_pyarrow_to_schema_without_ids(schema)), name)


def _references(expression: BooleanExpression) -> Iterator[str]:
    """Column names an unbound expression refers to."""
    if isinstance(expression, (And, Or)):
        yield from _references(expression.left)
        yield from _references(expression.right)
    elif isinstance(expression, Not):
        yield from _references(expression.child)
    elif isinstance(expression, UnboundPredicate) and isinstance(expression.term, Reference):
        yield expression.term.name
