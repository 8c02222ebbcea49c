"""Arrow data made fit for Iceberg, and Parquet files written into the warehouse.

Workers write their outputs with :func:`write_parquet` into the directory that
:meth:`store.Transaction.data_location` gave them; the scheduler later registers
those files with Iceberg. Both sides normalize schemas with :func:`iceberg_schema`
so the files and the table agree on types.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from faas.protocol.errors import InvalidInput
from faas.store import warehouse
from faas.store.importer import read_source_files

__all__ = [
    "iceberg_schema", "read_source_files", "to_iceberg_arrow", "write_parquet", "write_parquet_parts",
]

logger = logging.getLogger(__name__)

PARQUET_COMPRESSION = "zstd"


def _iceberg_type(t: pa.DataType) -> pa.DataType:
    """The nearest Arrow type that Iceberg (format v2) can store."""
    if pa.types.is_timestamp(t):
        # Iceberg v2 stores microseconds; its timestamptz is UTC by definition,
        # and an Arrow timestamp with any zone holds UTC instants already.
        return pa.timestamp("us", tz="UTC" if t.tz else None)
    if pa.types.is_time64(t) and t.unit == "ns":
        return pa.time64("us")
    if pa.types.is_null(t):
        # A column with no values (an empty CSV column) has no type Iceberg v2 knows.
        return pa.string()
    if pa.types.is_dictionary(t):
        return _iceberg_type(t.value_type)
    if pa.types.is_string_view(t):
        return pa.large_string()
    if pa.types.is_binary_view(t):
        return pa.large_binary()
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_unsigned_integer(t):
        # pyiceberg maps uint32 to a 32-bit int, which cannot hold its upper half.
        return pa.int32() if t.bit_width < 32 else pa.int64()
    if pa.types.is_struct(t):
        return pa.struct([_iceberg_field(t.field(i)) for i in range(t.num_fields)])
    if pa.types.is_large_list(t):
        return pa.large_list(_iceberg_field(t.value_field))
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t):
        return pa.list_(_iceberg_field(t.value_field))
    if pa.types.is_map(t):
        return pa.map_(_iceberg_field(t.key_field), _iceberg_field(t.item_field))
    return t


def _iceberg_field(f: pa.Field) -> pa.Field:
    # Field metadata is dropped on purpose: a scan result carries Iceberg field ids
    # in it, and pyiceberg refuses to add Parquet files that have field ids.
    return pa.field(f.name, _iceberg_type(f.type), nullable=f.nullable)


def iceberg_schema(schema: pa.Schema) -> pa.Schema:
    """Return ``schema`` with types Iceberg can store (timestamps in us, no null type)."""
    return pa.schema([_iceberg_field(f) for f in schema])


def to_iceberg_arrow(table: pa.Table) -> pa.Table:
    """Cast ``table`` to :func:`iceberg_schema`; returns it unchanged when nothing differs.

    Raises:
        InvalidInput: a column cannot be cast.
    """
    target = iceberg_schema(table.schema)
    if target.equals(table.schema, check_metadata=True):
        return table
    columns = []
    for source, field in zip(table.schema, target, strict=True):
        column = table.column(source.name)
        if source.type == field.type:
            columns.append(column)
            continue
        try:
            # Nanoseconds are truncated to microseconds rather than refused; every
            # other cast must be lossless (a uint64 above 2**63 is an error).
            columns.append(column.cast(field.type, safe=not _has_nanoseconds(source.type)))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise InvalidInput(
                f"cannot convert column {source.name!r} ({source.type}) to {field.type} "
                f"for Iceberg: {_first_line(e)}"
            ) from e
    return pa.Table.from_arrays(columns, schema=target)


def _has_nanoseconds(t: pa.DataType) -> bool:
    if pa.types.is_timestamp(t) or pa.types.is_time64(t):
        return bool(t.unit == "ns")
    if pa.types.is_struct(t):
        return any(_has_nanoseconds(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _has_nanoseconds(t.value_type)
    if pa.types.is_map(t):
        return _has_nanoseconds(t.key_type) or _has_nanoseconds(t.item_type)
    if pa.types.is_dictionary(t):
        return _has_nanoseconds(t.value_type)
    return False


def write_parquet(
    table: pa.Table, directory_uri: str, name: str, *, properties: Mapping[str, str] | None = None
) -> str:
    """Write ``table`` as one Parquet file ``name`` under ``directory_uri``.

    ``directory_uri`` is a pyarrow filesystem URI (``file:///...``, ``s3://...``)
    or an absolute local path; ``properties`` are the warehouse's S3 settings
    (default: from the AWS environment, see :mod:`store.warehouse`). Returns the
    file's full URI (or path, for a path) in the form pyiceberg's ``add_files`` accepts.

    Raises:
        InvalidInput: ``name`` is not a plain file name, or the data cannot be
            converted to types Iceberg stores.
        StorageError: the file cannot be written (a missing bucket, refused
            credentials); the message names the URI.
    """
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise InvalidInput(f"invalid Parquet file name {name!r}: expected a plain file name")
    if not name.endswith(".parquet"):
        name += ".parquet"
    filesystem, directory = warehouse.filesystem(directory_uri, properties)
    scheme = urlparse(directory_uri).scheme
    path = f"{directory.rstrip('/')}/{name}"
    uri = f"{directory_uri.rstrip('/')}/{name}" if scheme else path
    data = to_iceberg_arrow(table)
    with warehouse.storage_errors(f"cannot write {uri}", properties):
        if warehouse.is_local(directory_uri):
            # Object stores have no directories; creating one there leaves marker objects.
            filesystem.create_dir(directory, recursive=True)
        pq.write_table(data, path, filesystem=filesystem, compression=PARQUET_COMPRESSION)
    logger.debug("wrote %d rows to %s", table.num_rows, uri)
    return uri


# A part gets at least this many rows (one Parquet row group at pyarrow's default) of a
# table; a part of a stream ends at this many rows or this many bytes, whichever first,
# so that the parts held while they are encoded stay small however wide the rows.
PART_ROWS = 1 << 20
PART_BYTES = 128 << 20
# An output smaller than PART_ROWS, whole or the whole of a stream, is still cut into up
# to ``threads`` parts of at least this many rows, encoded at once: one core alone would
# encode it while the others wait (0.2M rows: 46 ms as one part, 32 as two).
SPLIT_ROWS = 1 << 16


def write_parquet_parts(
    data: pa.Table | pa.RecordBatchReader, directory_uri: str, stem: str, *, threads: int,
    properties: Mapping[str, str] | None = None, partitioned_by: str = "", what: str = "",
) -> tuple[list[str], int]:
    """Write a table, or a stream of record batches as it comes, as Parquet files
    ``STEM-N.parquet`` encoded up to ``threads`` at once; return the files' URIs, in
    order, and the rows written.

    A Parquet file is encoded by one thread, so the rows are cut into contiguous parts
    (zero-copy slices of a table; about PART_ROWS rows of a stream, gathered while the
    parts before them are encoded), each written as a file of its own: in order, the
    files hold the rows in their order. At most ``threads`` parts are held at once, so
    a stream is never held whole. An output of fewer than PART_ROWS rows is cut into up
    to ``threads`` parts of SPLIT_ROWS rows or more (unless it is partitioned); a table
    too small to cut is one file ``STEM.parquet``.

    With ``partitioned_by`` (see :mod:`store.partitions`; ``what`` names the table in
    its errors) each file holds the rows of one partition.

    If the stream (or a write) fails, the files already written are removed and the
    error is raised as it came. Raises as :func:`write_parquet`.
    """
    from concurrent.futures import Future, ThreadPoolExecutor, wait

    from faas.store.partitions import parse_partitioning, split

    fields = parse_partitioning(partitioned_by)
    chunks: Iterator[pa.Table]
    if isinstance(data, pa.Table):
        pieces = split(data, fields, what) if fields else [data]
        # Each partition is a file, or several of at least PART_ROWS: small partitions are
        # not cut, lest a table of many become many times as many files.
        slices = [part for piece in pieces for part in _slices(piece, threads, small=not fields)]
        if len(slices) == 1:
            name = f"{stem}.parquet"
            return [write_parquet(slices[0], directory_uri, name, properties=properties)], data.num_rows
        chunks = iter(slices)
    else:
        chunks = _gather(data, PART_ROWS, PART_BYTES)
        if fields:
            chunks = (piece for chunk in chunks for piece in split(chunk, fields, what))
        else:
            chunks = _small_cut(chunks, threads)
    futures: list[Future[str]] = []
    rows = 0
    room = threading.BoundedSemaphore(max(1, threads))
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="faas-parquet") as pool:
        try:
            for i, chunk in enumerate(chunks):
                room.acquire()
                for f in futures:  # a part that failed ends the write now, not at the end
                    if f.done() and f.exception() is not None:
                        raise f.exception()  # type: ignore[misc]
                rows += chunk.num_rows
                future = pool.submit(write_parquet, chunk, directory_uri,
                                     f"{stem}-{i:05d}.parquet", properties=properties)
                future.add_done_callback(lambda _: room.release())
                futures.append(future)
            return [f.result() for f in futures], rows
        except BaseException:
            for f in futures:
                f.cancel()
            wait(futures)
            for f in futures:
                if not f.cancelled() and f.exception() is None:
                    _remove(f.result(), properties)
            raise


def _slices(table: pa.Table, threads: int, small: bool = True) -> list[pa.Table]:
    """``table`` as up to ``threads`` contiguous zero-copy slices of PART_ROWS rows or
    more; of SPLIT_ROWS rows or more, for a table of fewer than PART_ROWS (``small``)."""
    if table.num_rows >= PART_ROWS or not small:
        parts = -(-table.num_rows // PART_ROWS)  # rounded up: parts of PART_ROWS or more
    else:
        parts = table.num_rows // SPLIT_ROWS  # rounded down: parts of SPLIT_ROWS or more
    parts = max(1, min(threads, parts))
    step = -(-table.num_rows // parts)
    return [table.slice(i * step, step) for i in range(parts)]


def _small_cut(chunks: Iterator[pa.Table], threads: int) -> Iterator[pa.Table]:
    """The parts of a stream; a stream that is all one part of fewer than PART_ROWS rows,
    as :func:`_slices` cuts a table of its size. (A part under both of :func:`_gather`'s
    limits can only be the last: so the first is, and nothing waits for a second.)"""
    first = next(chunks, None)
    if first is None:
        return
    if first.num_rows < PART_ROWS and first.nbytes < PART_BYTES:
        yield from _slices(first, threads)
        return
    yield first
    yield from chunks


def _gather(reader: pa.RecordBatchReader, rows: int, nbytes: int) -> Iterator[pa.Table]:
    """A stream's batches, in order, as tables of ``rows`` rows or ``nbytes`` bytes,
    whichever comes first (a single larger batch is a part of its own)."""
    held: list[pa.RecordBatch] = []
    count = size = 0
    for batch in reader:
        held.append(batch)
        count += batch.num_rows
        size += batch.nbytes
        if count >= rows or size >= nbytes:
            yield pa.Table.from_batches(held, reader.schema)
            held, count, size = [], 0, 0
    if held:
        yield pa.Table.from_batches(held, reader.schema)


def _remove(uri: str, properties: Mapping[str, str] | None) -> None:
    filesystem, path = warehouse.filesystem(uri, properties)
    try:
        filesystem.delete_file(path)
    except OSError as exc:
        logger.warning("could not remove %s after a failed write: %s", uri, exc)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
