"""Partitioned tables: the ``partitioned_by`` text, Iceberg partition specs, and rows
cut into one piece per partition.

A model (``@faas.model(partitioned_by="day(order_date), country")``) or an import
(``faas table import --partitioned-by``) names its partitions as Bauplan and Spark write
them: a column (identity), ``year(c)``, ``month(c)``, ``day(c)``, ``hour(c)``,
``bucket(N, c)`` and ``truncate(N, c)``; Iceberg's own ``bucket[N](c)`` and Spark's
plurals (``days(c)``) read the same. They are Iceberg's hidden partitions: readers filter
on the column (``order_date >= '2024-05-01'``) and scans skip the partitions that
cannot match.

Writers cut the rows so that every Parquet file holds one partition (:func:`split`);
the scheduler then finds each file's partition in its footer alone, as the transform of
the column's smallest value (:func:`data_files`): every row of the file has the same
partition, so any one of them would do. It never reads the rows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from faas.protocol.errors import InvalidInput

if TYPE_CHECKING:
    from pyiceberg.io import FileIO
    from pyiceberg.manifest import DataFile
    from pyiceberg.partitioning import PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.table.metadata import TableMetadata
    from pyiceberg.transforms import Transform
    from pyiceberg.types import IcebergType

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_TIME = {"year": "year", "years": "year", "month": "month", "months": "month", "day": "day",
         "days": "day", "date": "day", "hour": "hour", "hours": "hour", "identity": "identity"}
_WIDTH = {"bucket": "bucket", "truncate": "truncate", "trunc": "truncate"}
_ITEM = re.compile(
    rf"^(?:(?P<col>{_IDENT})"
    rf"|(?P<fn>{_IDENT})\s*\(\s*(?P<a>{_IDENT}|\d+)\s*(?:,\s*(?P<b>{_IDENT}|\d+)\s*)?\)"
    rf"|(?P<wfn>{_IDENT})\s*\[\s*(?P<n>\d+)\s*\]\s*\(\s*(?P<wcol>{_IDENT})\s*\))$"
)
# Iceberg's partition field names (as its Java library names them).
_SUFFIX = {"year": "_year", "month": "_month", "day": "_day", "hour": "_hour"}


@dataclass(frozen=True)
class PartitionField:
    """One partition of a table: a source column and Iceberg's transform of it
    (``identity``, ``year`` .. ``hour``, ``bucket[N]``, ``truncate[N]``)."""

    column: str
    transform: str

    @property
    def name(self) -> str:
        if self.transform == "identity":
            return self.column
        if self.transform in _SUFFIX:
            return self.column + _SUFFIX[self.transform]
        kind, width = self.transform.rstrip("]").split("[")
        return f"{self.column}_{'bucket' if kind == 'bucket' else 'trunc'}_{width}"

    def __str__(self) -> str:
        if self.transform == "identity":
            return self.column
        if "[" in self.transform:
            kind, width = self.transform.rstrip("]").split("[")
            return f"{kind}({width}, {self.column})"
        return f"{self.transform}({self.column})"


def parse_partitioning(text: str, where: str = "partitioned_by") -> list[PartitionField]:
    """The partition fields ``text`` names, in order (none for an empty text).

    Raises:
        InvalidInput: an item that is not a column or a known transform of one; a
            bucket or truncate without a positive width; a field named twice.
    """
    fields: list[PartitionField] = []
    for raw in _items(text):
        m = _ITEM.match(raw)
        field = _field(m) if m else None
        if field is None:
            raise InvalidInput(
                f"{where}: cannot read {raw!r}: write a column, year(c), month(c), day(c), "
                f"hour(c), bucket(N, c) or truncate(N, c)"
            )
        if field in fields:
            raise InvalidInput(f"{where}: {raw!r} is named twice")
        fields.append(field)
    return fields


def describe_partitioning(fields: Sequence[PartitionField]) -> str:
    """``fields`` written as :func:`parse_partitioning` reads them."""
    return ", ".join(str(f) for f in fields)


def _items(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [i.strip() for i in items if i.strip()]


def _field(m: re.Match[str]) -> PartitionField | None:
    if m["col"]:
        return PartitionField(m["col"], "identity")
    if m["wfn"]:
        kind = _WIDTH.get(m["wfn"].lower())
        width = int(m["n"])
        return PartitionField(m["wcol"], f"{kind}[{width}]") if kind and width > 0 else None
    fn, a, b = m["fn"].lower(), m["a"], m["b"]
    if fn in _TIME:
        return PartitionField(a, _TIME[fn]) if b is None and not a.isdigit() else None
    if fn in _WIDTH and b is not None and a.isdigit() != b.isdigit():
        width, column = (a, b) if a.isdigit() else (b, a)
        return PartitionField(column, f"{_WIDTH[fn]}[{int(width)}]") if int(width) > 0 else None
    return None


def _transform(field: PartitionField) -> Transform[Any, Any]:
    from pyiceberg.transforms import parse_transform

    return parse_transform(field.transform)


def _source_type(field: PartitionField, schema: Schema, what: str) -> IcebergType:
    try:
        source = schema.find_field(field.column)
    except ValueError:
        raise InvalidInput(
            f"cannot partition {what} by {field}: it has no column {field.column!r} "
            f"(columns: {', '.join(f.name for f in schema.fields)})"
        ) from None
    if not _transform(field).can_transform(source.field_type):
        raise InvalidInput(
            f"cannot partition {what} by {field}: column {field.column!r} is "
            f"{source.field_type}, which {field.transform} does not apply to"
        )
    return source.field_type


def iceberg_schema_with_ids(schema: pa.Schema) -> Schema:
    """``schema`` as the Iceberg schema a table created from it gets (fresh field ids)."""
    from pyiceberg.io.pyarrow import _pyarrow_to_schema_without_ids
    from pyiceberg.schema import assign_fresh_schema_ids

    return assign_fresh_schema_ids(_pyarrow_to_schema_without_ids(schema))


def partition_spec(fields: Sequence[PartitionField], schema: Schema, what: str) -> PartitionSpec:
    """The Iceberg partition spec of ``fields`` over ``schema`` (``what``: the table, for
    messages).

    Raises:
        InvalidInput: a column ``schema`` lacks, or a transform its type does not take.
    """
    from pyiceberg.partitioning import PartitionField as IcebergField
    from pyiceberg.partitioning import PartitionSpec

    parts = []
    for i, field in enumerate(fields):
        _source_type(field, schema, what)
        parts.append(IcebergField(
            source_id=schema.find_field(field.column).field_id, field_id=1000 + i,
            transform=_transform(field), name=field.name,
        ))
    return PartitionSpec(*parts)


def spec_fields(spec: PartitionSpec, schema: Schema) -> list[PartitionField]:
    """A table's partition spec as fields (to compare with what a writer declares)."""
    return [
        PartitionField(schema.find_column_name(f.source_id) or "?", str(f.transform))
        for f in spec.fields
    ]


def split(table: pa.Table, fields: Sequence[PartitionField], what: str) -> list[pa.Table]:
    """``table``'s rows cut into one table per partition (a table already within one
    partition comes back as it is, uncopied).

    Raises:
        InvalidInput: a column ``table`` lacks, or a transform its type does not take.
    """
    if not fields or table.num_rows == 0:
        return [table]
    schema = iceberg_schema_with_ids(table.schema)
    keys = []
    for field in fields:
        source = _source_type(field, schema, what)
        column = table.column(field.column)
        transform = _transform(field)
        keys.append(column if field.transform == "identity"
                    else transform.pyarrow_transform(source)(column))
    names = [f"p{i}" for i in range(len(keys))]
    keyed = pa.table(dict(zip(names, keys, strict=True)))
    if not len(_changes(keyed)):
        return [table]
    order = pc.sort_indices(keyed, sort_keys=[(n, "ascending") for n in names])
    ordered = table.take(order)
    starts = [0, *(i + 1 for i in _changes(keyed.take(order)).to_pylist()), table.num_rows]
    return [ordered.slice(a, b - a) for a, b in zip(starts, starts[1:], strict=False)]


def _changes(keyed: pa.Table) -> pa.Array:
    """Positions i where row i+1's partition differs from row i's."""
    differs = pa.nulls(max(0, keyed.num_rows - 1), pa.bool_()).fill_null(False)
    for column in keyed.columns:
        column = column.combine_chunks()
        a, b = column.slice(0, len(column) - 1), column.slice(1)
        same = pc.or_kleene(pc.equal(a, b), pc.and_(pc.is_null(a), pc.is_null(b)))
        differs = pc.or_(differs, pc.invert(pc.fill_null(same, False)))
    return pc.indices_nonzero(differs)


def data_files(io: FileIO, metadata: TableMetadata, paths: Sequence[str]) -> list[DataFile]:
    """The Parquet files at ``paths`` as data files of the table ``metadata`` describes,
    each with its partition (read from its footer: :func:`split` wrote each file within
    one partition). Footers are read in parallel.

    Raises:
        InvalidInput: a file whose schema does not fit the table, or whose footer shows
            rows of more than one partition, or lacks the statistics to tell which.
        FileNotFoundError: a file does not exist.
    """
    if not paths:
        return []
    with ThreadPoolExecutor(min(16, len(paths)), thread_name_prefix="faas-footer") as pool:
        return list(pool.map(lambda p: _data_file(io, metadata, p), paths))


def _data_file(io: FileIO, metadata: TableMetadata, path: str) -> DataFile:
    import pyarrow.parquet as pq
    from pyiceberg.io.pyarrow import (
        _check_pyarrow_schema_compatible,
        compute_statistics_plan,
        data_file_statistics_from_parquet_metadata,
        parquet_path_to_id_mapping,
    )
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.typedef import Record

    input_file = io.new_input(path)
    with input_file.open() as stream:
        footer = pq.read_metadata(stream)
    schema = metadata.schema()
    _check_pyarrow_schema_compatible(
        schema, footer.schema.to_arrow_schema(), format_version=metadata.format_version
    )
    stats = data_file_statistics_from_parquet_metadata(
        parquet_metadata=footer,
        stats_columns=compute_statistics_plan(schema, metadata.properties),
        parquet_column_mapping=parquet_path_to_id_mapping(schema),
    )
    spec = metadata.spec()
    partition = Record(*[_partition_value(f, stats, schema, path) for f in spec.fields])
    return DataFile.from_args(
        content=DataFileContent.DATA, file_path=path, file_format=FileFormat.PARQUET,
        partition=partition, file_size_in_bytes=len(input_file), sort_order_id=None,
        spec_id=metadata.default_spec_id, equality_ids=None, key_metadata=None,
        **stats.to_serialized_dict(),
    )


def _partition_value(field: Any, stats: Any, schema: Schema, path: str) -> Any:
    from pyiceberg.partitioning import partition_record_value

    column = schema.find_column_name(field.source_id)
    aggregate = stats.column_aggregates.get(field.source_id)
    if aggregate is None or aggregate.current_min is None:
        if stats.null_value_counts.get(field.source_id) == stats.record_count:
            return None  # every row is null: the null partition
        raise InvalidInput(
            f"cannot tell the partition of {path}: its footer has no statistics for column "
            f"{column!r}"
        )
    transform = field.transform.transform(schema.find_field(field.source_id).field_type)

    def value(v: Any) -> Any:
        return transform(partition_record_value(partition_field=field, value=v, schema=schema))

    low = value(aggregate.current_min)
    # Within one partition the largest value has the same partition, for transforms that
    # keep order; a bucket's cannot be checked from a footer.
    if field.transform.preserves_order and value(aggregate.current_max) != low:
        raise InvalidInput(
            f"{path} holds rows of more than one partition of {field.name}; files of a "
            "partitioned table are written one partition each"
        )
    if stats.null_value_counts.get(field.source_id):
        raise InvalidInput(
            f"{path} holds rows of more than one partition of {field.name} (nulls and values)"
        )
    return low


def name_by_mapping(txn: Any) -> None:
    """Have ``txn``'s table read its files' columns by name (files written by faas carry
    no Iceberg field ids), as pyiceberg's ``add_files`` does."""
    from pyiceberg.table import TableProperties

    if txn.table_metadata.name_mapping() is None:
        txn.set_properties(**{
            TableProperties.DEFAULT_NAME_MAPPING:
                txn.table_metadata.schema().name_mapping.model_dump_json()
        })


def append_files(txn: Any, paths: Sequence[str], properties: dict[str, str]) -> None:
    """Add the Parquet files at ``paths`` to ``txn``'s table as one append snapshot."""
    if not paths:
        return
    name_by_mapping(txn)
    with txn.update_snapshot(snapshot_properties=properties).fast_append() as append:
        for data_file in data_files(txn._table.io, txn.table_metadata, paths):
            append.append_data_file(data_file)


def overwrite_partitions(
    txn: Any, table: Any, paths: Sequence[str], properties: dict[str, str],
    row_filter: Any | None,
) -> None:
    """Overwrite part of ``table`` with the files at ``paths``, in ``txn``.

    With ``row_filter`` (a pyiceberg expression) the rows it matches are deleted: whole
    files where the partitions tell (no row is read), rewritten files otherwise. Without
    one, every data file in a partition the new files hold is deleted (metadata only:
    dynamic partition overwrite, as Spark and Iceberg have it). Then the new files are
    added."""
    name_by_mapping(txn)
    new = data_files(table.io, txn.table_metadata, paths)
    if row_filter is not None:
        if table.current_snapshot() is not None:
            txn.delete(delete_filter=row_filter, snapshot_properties=properties)
        with txn.update_snapshot(snapshot_properties=properties).fast_append() as append:
            for data_file in new:
                append.append_data_file(data_file)
        return
    spec_id = txn.table_metadata.default_spec_id
    touched = {_key(f.partition) for f in new}
    old = []
    snapshot = table.current_snapshot()
    if snapshot is not None:
        for manifest in snapshot.manifests(table.io):
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                f = entry.data_file
                if f.spec_id == spec_id and _key(f.partition) in touched:
                    old.append(f)
    with txn.update_snapshot(snapshot_properties=properties).overwrite() as overwrite:
        for data_file in old:
            overwrite.delete_data_file(data_file)
        for data_file in new:
            overwrite.append_data_file(data_file)


def _key(record: Any) -> tuple[Any, ...]:
    return tuple(record[i] for i in range(len(record)))
