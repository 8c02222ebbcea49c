"""Scans of Iceberg tables with column projection and filter pushdown.

:func:`scan_metadata` needs only a table's metadata location: metadata files
are immutable, so a worker can read exactly the snapshot the scheduler planned
without asking the catalog.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as ds
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
from pyiceberg.io.pyarrow import expression_to_pyarrow, schema_to_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.table import DataScan, StaticTable
from pyiceberg.table import Table as IcebergTable
from pyparsing import ParseBaseException

from faas.protocol.errors import InvalidInput, NotFound
from faas.store.warehouse import filesystem, io_properties, storage_errors

if TYPE_CHECKING:
    from faas.protocol.messages import ScanPlan

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
    stream: bool = False,
) -> pa.Table | pa.RecordBatchReader:
    """Scan a loaded pyiceberg table; ``name`` is used in error messages. With ``stream``
    the rows come as a RecordBatchReader, in the same order, decoded as they are read.

    Raises:
        NotFound: the snapshot does not exist in this table.
        InvalidInput: a bad filter or an unknown column.
    """
    scan, schema, expression, _ = _prepared(table, columns, row_filter, snapshot_id, name)
    where = name if name == table.metadata_location else f"{name} ({table.metadata_location})"
    order = list(columns) if columns is not None else None
    with storage_errors(f"cannot read {where}", table.io.properties):
        arrow = _arrow_scan(table, scan, schema, expression)
        if stream:
            if arrow is not None:
                scanner, target = arrow
                reader = scanner.to_reader()
            else:
                reader = scan.to_arrow_batch_reader()
                target = reader.schema
            if order is not None:
                target = pa.schema([target.field(c) for c in order])
            return _conformed(reader, target)
        result = None
        if arrow is not None:
            result = _read(*arrow, table.metadata_location)
        if result is None:
            result = scan.to_arrow()
    if order is not None:
        # pyiceberg returns projected columns in schema order; callers asked for theirs.
        result = result.select(order)
    logger.debug("scanned %d rows from %s (filter %r)", result.num_rows, name, row_filter)
    return result


def _prepared(
    table: IcebergTable, columns: Sequence[str] | None, row_filter: str | None,
    snapshot_id: int | None, name: str,
) -> tuple[DataScan, Schema, BooleanExpression, Any]:
    """The scan of ``table`` (at ``snapshot_id``, else its current snapshot) with its
    columns and filter checked: the scan, the snapshot's schema, the parsed filter, and the
    snapshot (None for a table with none).

    Raises:
        NotFound: the snapshot does not exist in this table.
        InvalidInput: a bad filter or an unknown column.
    """
    schema = table.schema()
    snapshot = table.current_snapshot() if snapshot_id is None else table.snapshot_by_id(snapshot_id)
    if snapshot_id is not None and snapshot is None:
        raise NotFound(f"snapshot {snapshot_id} not found in {name}")
    if snapshot is not None and snapshot.schema_id is not None:
        schema = table.schemas().get(snapshot.schema_id, schema)
    if columns is not None:
        check_columns(columns, schema, name)
    expression = parse_filter(row_filter, schema, name)
    selected = tuple(columns) if columns is not None else ("*",)
    scan = table.scan(row_filter=expression, selected_fields=selected, snapshot_id=snapshot_id)
    return scan, schema, expression, snapshot


def _arrow_scan(
    table: IcebergTable, scan: DataScan, schema: Schema, expression: BooleanExpression
) -> tuple[ds.Scanner, pa.Schema] | None:
    """The scan as Arrow's own multi-threaded Parquet reader does it (:func:`plan_arrow`,
    then :func:`arrow_scanner`); None where only pyiceberg reads it right."""
    planned = plan_arrow(table, scan, schema, expression)
    if planned is None:
        return None
    files, wanted, names, arrow_filter = planned
    return arrow_scanner(files, wanted, names, arrow_filter, table.io.properties, table.metadata_location)


def plan_arrow(
    table: IcebergTable, scan: DataScan, schema: Schema, expression: BooleanExpression
) -> tuple[list[str], pa.Schema, list[str], Any] | None:
    """What Arrow's reader needs to do the scan, from the Iceberg metadata alone: the data
    files, the Arrow type of every column read (the projection in the table's order, then
    any the filter alone names), the projected names, and the filter as an Arrow
    expression. None where only pyiceberg reads it right: delete files, columns whose names
    do not map to the same field ids as the table's (Iceberg matches columns by field id:
    a rename), nested columns, or no file at all."""
    tasks = list(scan.plan_files())
    if not tasks or any(t.delete_files for t in tasks):
        return None
    projected = scan.projection()
    names = [f.name for f in projected.fields]
    # Files without field ids are matched to the schema through the table's name
    # mapping: each column read by name must map to the field of that name now (a
    # rename would map it elsewhere). Nested fields are left to pyiceberg.
    mapping = table.name_mapping()
    if mapping is None or any(not f.field_type.is_primitive for f in projected.fields):
        return None
    ids = {name: mf.field_id for mf in mapping for name in mf.names}
    if any(ids.get(f.name) != f.field_id for f in projected.fields):
        return None
    wanted = {f.name: f.type for f in schema_to_pyarrow(projected, include_field_ids=False)}
    for name in _references(expression):
        field = schema.find_field(name)
        if not field.field_type.is_primitive:
            return None
        wanted.setdefault(name, schema_to_pyarrow(Schema(field), include_field_ids=False)[0].type)
    arrow_filter = None
    if not isinstance(expression, AlwaysTrue):
        arrow_filter = expression_to_pyarrow(bind(schema, expression, case_sensitive=True))
    files = [t.file.file_path for t in tasks]
    return files, pa.schema(list(wanted.items())), names, arrow_filter


def arrow_scanner(
    files: Sequence[str], wanted: pa.Schema, names: Sequence[str], arrow_filter: Any,
    properties: Mapping[str, str], where: str,
) -> tuple[ds.Scanner, pa.Schema] | None:
    """A multi-threaded Arrow scanner over ``files`` (:func:`plan_arrow`): every file,
    row group and column decoded on all cores, with the projection and the filter (row-group
    statistics too) pushed into the reader. None where the files do not hold what the
    Iceberg schema says: a file of another type (an append that widened a column), a
    column some file lacks, or ids of the file's own that pyiceberg would follow.

    The rows come file by file in the order the scan planned them, each file's in its
    own order, as pyiceberg gives them: the column cache may zip columns read by
    either."""
    # Every column read must have, in every file, the one Arrow type pyiceberg would hand
    # out for it: the Iceberg type, with 32- or 64-bit offsets as the files have them
    # (pyiceberg keeps the files' own).
    fs, _ = filesystem(files[0], properties)
    paths = [filesystem(f, properties)[1] for f in files]
    try:
        fragments = ds.dataset(paths, format="parquet", filesystem=fs)
        found: dict[str, pa.DataType] = {}
        for fragment in fragments.get_fragments():
            fields = {f.name: f for f in fragment.physical_schema}
            for column in wanted:
                field = fields.get(column.name)
                if field is None or (field.metadata or {}).get(b"PARQUET:field_id"):
                    return None
                if field.type not in (column.type, _small(column.type)):
                    return None
                if found.setdefault(column.name, field.type) != field.type:
                    return None
        unified = pa.schema([pa.field(n, found[n]) for n in names] +
                            [pa.field(n, t) for n, t in found.items() if n not in names])
        scanner = ds.dataset(paths, format="parquet", filesystem=fs, schema=unified).scanner(
            columns=list(names), filter=arrow_filter, use_threads=True
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError) as exc:
        logger.info("reading %s with pyiceberg: %s", where, exc)
        return None
    return scanner, pa.schema([pa.field(n, found[n]) for n in names])


def plan_metadata(
    metadata_location: str, snapshot_id: int | None, columns: Sequence[str] | None,
    row_filter: str | None, properties: Mapping[str, str] | None = None,
    table: IcebergTable | None = None,
) -> ScanPlan | None:
    """A :class:`~protocol.messages.ScanPlan` for a scan of the table at
    ``metadata_location`` (``table``: that metadata, already read), or None where the
    function must plan it itself: a bad column, filter or snapshot (it reports them), or
    a scan only pyiceberg reads right."""
    import pickle

    from faas.protocol.errors import FaasError
    from faas.protocol.messages import ScanPlan

    try:
        table = table or open_metadata(metadata_location, properties)
        scan, schema, expression, snapshot = _prepared(
            table, columns, row_filter, snapshot_id, metadata_location
        )
        if snapshot is None:
            return None
        planned = plan_arrow(table, scan, schema, expression)
    except FaasError:
        return None
    if planned is None:
        return None
    files, wanted, names, arrow_filter = planned
    order = list(columns) if columns is not None else names
    by_name = {f.name: f for f in schema.fields}
    return ScanPlan(
        files=files, schema=wanted.serialize().to_pybytes(), columns=order,
        filter=pickle.dumps(arrow_filter) if arrow_filter is not None else b"",
        table_uuid=str(table.metadata.table_uuid), snapshot_id=snapshot.snapshot_id,
        fields={c: str(by_name[c]) for c in order},
    )


def read_plan(
    plan: ScanPlan, columns: Sequence[str] | None = None,
    properties: Mapping[str, str] | None = None,
) -> pa.Table | None:
    """Read a planned scan with Arrow (``columns``: only these of it, in this order);
    None if the files are not what the plan expects (the caller scans with pyiceberg)."""
    planned = _plan_scanner(plan, columns, properties)
    if planned is None:
        return None
    scanner, target, order, props = planned
    with storage_errors(f"cannot read {plan.files[0]}", props):
        result = _read(scanner, target, plan.files[0])
    return None if result is None else result.select(order)


def plan_reader(
    plan: ScanPlan, properties: Mapping[str, str] | None = None,
) -> pa.RecordBatchReader | None:
    """:func:`read_plan` as a stream, every column of the plan in its order, decoded as
    it is read: the scan is not planned a second time. None where read_plan would be.

    Nothing is decoded before the first batch is asked for (Arrow's scanner starts
    reading ahead, on every core, as soon as it is started): a reader that is never read,
    or that DuckDB reads as its files (faasd.handed), costs only the footers."""
    planned = _plan_scanner(plan, None, properties)
    if planned is None:
        return None
    scanner, target, order, _ = planned
    schema = pa.schema([target.field(c) for c in order])

    def batches() -> Iterator[pa.RecordBatch]:
        yield from _conformed(scanner.to_reader(), schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def plan_readable(plan: ScanPlan, properties: Mapping[str, str] | None = None) -> bool:
    """Do the plan's files hold what it expects, so that :func:`read_plan` reads them?
    (Only their footers are read.)"""
    return bool(plan.files) and _plan_scanner(plan, None, properties) is not None


def _plan_scanner(
    plan: ScanPlan, columns: Sequence[str] | None, properties: Mapping[str, str] | None,
) -> tuple[ds.Scanner, pa.Schema, list[str], dict[str, str]] | None:
    """The Arrow scanner of a plan (only ``columns`` of it, if given), the schema it
    yields, the columns in the order asked for, and the I/O properties it reads with."""
    import pickle

    wanted = pa.ipc.read_schema(pa.py_buffer(plan.schema))
    order = list(columns) if columns is not None else list(plan.columns)
    arrow_filter = pickle.loads(plan.filter) if plan.filter else None
    # Only the columns asked for (with a filter, every column it may name stays known).
    names = [n for n in wanted.names if n in order]
    keep = wanted if arrow_filter is not None else pa.schema([f for f in wanted if f.name in order])
    props = io_properties(properties)
    with storage_errors(f"cannot read {plan.files[0]}", props):
        scanned = arrow_scanner(plan.files, keep, names, arrow_filter, props, plan.files[0])
    if scanned is None:
        return None
    return scanned[0], scanned[1], order, props


def _read(scanner: ds.Scanner, target: pa.Schema, where: str) -> pa.Table | None:
    try:
        result = scanner.to_table()
        return result if result.schema == target else result.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        logger.info("reading %s with pyiceberg: %s", where, exc)
        return None


def _conformed(reader: pa.RecordBatchReader, target: pa.Schema) -> pa.RecordBatchReader:
    """``reader`` with its batches in ``target``'s column order and types."""
    if reader.schema == target:
        return reader
    names = target.names

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            batch = batch.select(names)
            yield batch.cast(target) if batch.schema != target else batch

    return pa.RecordBatchReader.from_batches(target, batches())


def _small(t: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_small(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_small(t.field(i).type)) for i in range(t.num_fields)])
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(_small(t.key_type)),
                       t.item_field.with_type(_small(t.item_type)))
    return t


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
    expression = _parsed(row_filter)
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
    from faas.store.partitions import iceberg_schema_with_ids

    parse_filter(row_filter, iceberg_schema_with_ids(schema), name)


def filter_columns(row_filter: str) -> list[str]:
    """The columns ``row_filter`` names, in order, once each.

    Raises:
        InvalidInput: the filter does not parse.
    """
    return list(dict.fromkeys(_references(_parsed(row_filter))))


def _parsed(row_filter: str) -> BooleanExpression:
    try:
        return parse(row_filter)
    except ParseBaseException as e:
        near = row_filter[e.loc : e.loc + 20] or "end of filter"
        raise InvalidInput(
            f"bad filter {row_filter!r}: syntax error at column {e.loc + 1} near {near!r}"
        ) from e


def _references(expression: BooleanExpression) -> Iterator[str]:
    """Column names an unbound expression refers to."""
    if isinstance(expression, (And, Or)):
        yield from _references(expression.left)
        yield from _references(expression.right)
    elif isinstance(expression, Not):
        yield from _references(expression.child)
    elif isinstance(expression, UnboundPredicate) and isinstance(expression.term, Reference):
        yield expression.term.name
