"""Reading CSV and Parquet files into one Arrow table for import.

Column types are inferred per file and then unified across files: numeric
types widen (int64 with double gives double), and a column whose types cannot
be reconciled is read again as text from the CSV files, so values keep the
spelling they had in the file ("007" stays "007").
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from faas.protocol.errors import InvalidInput, NotFound

logger = logging.getLogger(__name__)

FileFormat = Literal["csv", "tsv", "parquet"]

_SUFFIXES: list[tuple[str, FileFormat]] = [
    (".csv", "csv"),
    (".csv.gz", "csv"),
    (".csv.bz2", "csv"),
    (".tsv", "tsv"),
    (".tsv.gz", "tsv"),
    (".tsv.bz2", "tsv"),
    (".parquet", "parquet"),
    (".pq", "parquet"),
]


def read_source_files(
    paths: Sequence[str] | str, format: str | None = None, roots: Sequence[str] | None = None,
) -> pa.Table:
    """Expand ``paths`` (globs allowed) and read them into one table; workers use this.
    ``roots``: the directories files may be read from (None: anywhere).

    Raises:
        NotFound: a path or glob matches nothing.
        InvalidInput: a file does not parse, or the files' columns cannot be combined, or
            a path is outside ``roots``.
    """
    return read_files(expand_paths(paths, roots), format)


def expand_paths(paths: Sequence[str] | str, roots: Sequence[str] | None = None) -> list[str]:
    """Expand globs (each sorted) and check that every file exists; keeps order, drops repeats.
    With ``roots``, every path, and every file a glob matches, must be under one of them
    (symbolic links followed); one that is not is refused before anything says whether it
    exists.

    Raises:
        NotFound: a pattern matches nothing, or a named file does not exist.
        InvalidInput: no paths were given, a path is a directory, or outside ``roots``.
    """
    patterns = [paths] if isinstance(paths, str) else list(paths)
    if not patterns:
        raise InvalidInput("no files given to import")
    allowed = None if roots is None else [os.path.realpath(r) for r in roots]
    files: list[str] = []
    for pattern in patterns:
        local = pattern.removeprefix("file://")
        _check_root(pattern, os.path.expanduser(local), allowed)
        if glob.has_magic(local):
            matches = sorted(p for p in glob.glob(os.path.expanduser(local)) if os.path.isfile(p))
            for match in matches:
                _check_root(pattern, match, allowed)
            if not matches:
                raise NotFound(f"no files match {pattern!r}")
        else:
            path = os.path.expanduser(local)
            if os.path.isdir(path):
                raise InvalidInput(
                    f"{pattern!r} is a directory; name the files or use a glob like "
                    f"{pattern.rstrip('/')}/*.csv"
                )
            if not os.path.isfile(path):
                raise NotFound(f"file not found: {pattern}")
            matches = [path]
        files.extend(m for m in matches if m not in files)
    return files


def _check_root(pattern: str, path: str, roots: list[str] | None) -> None:
    """Refuse ``path`` unless it is under one of ``roots`` (None: anywhere)."""
    if roots is None:
        return
    real = os.path.realpath(path)
    if not any(os.path.commonpath([real, root]) == root for root in roots):
        raise InvalidInput(
            f"cannot import {pattern!r}: this worker imports only files under its import "
            "roots (faasd worker --import-root DIR)"
        )


def detect_format(path: str, format: str | None = None) -> FileFormat:
    """The format of ``path``: ``format`` if given, else from its suffix.

    Raises:
        InvalidInput: an unknown format, or a suffix that names none.
    """
    if format is not None:
        if format not in ("csv", "tsv", "parquet"):
            raise InvalidInput(f"unknown file format {format!r}; expected csv, tsv or parquet")
        return format  # type: ignore[return-value]
    lower = path.lower()
    for suffix, fmt in _SUFFIXES:
        if lower.endswith(suffix):
            return fmt
    raise InvalidInput(
        f"cannot tell the format of {path}: expected .csv, .csv.gz, .tsv or .parquet, "
        "or say which with --format csv|tsv|parquet"
    )


@dataclass
class _Source:
    path: str
    format: FileFormat
    table: pa.Table


def read_files(files: Sequence[str], format: str | None = None) -> pa.Table:
    """Read ``files`` into one table whose schema is unified across them.

    Raises:
        InvalidInput: a file does not parse, or a column has types in different
            Parquet files that cannot be reconciled.
    """
    sources = [_read(path, detect_format(path, format)) for path in files]
    schema, reread = _unify(
        [s.table.schema for s in sources], [s.format != "parquet" for s in sources]
    )
    parts = []
    for source in sources:
        current = source.table.schema
        as_text = [
            c
            for c in sorted(reread)
            if c in current.names and not pa.types.is_string(current.field(c).type)
        ]
        if as_text:
            logger.info(
                "reading %s again with %s as text, to match the other files", source.path, as_text
            )
            source.table = _read(source.path, source.format, text_columns=as_text).table
        parts.append(_conform(source, schema))
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def _read(path: str, fmt: FileFormat, text_columns: Sequence[str] = ()) -> _Source:
    try:
        if fmt == "parquet":
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(
                path,
                # Quoted values may hold newlines; this costs some parallelism.
                parse_options=pacsv.ParseOptions(
                    delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in text_columns}
                ),
            )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise NotFound(f"file not found: {path}") from e
        raise InvalidInput(f"cannot read {fmt.upper()} file {path}: {_one_line(e)}") from e
    if duplicate := _duplicate(table.column_names):
        raise InvalidInput(
            f"cannot read {fmt.upper()} file {path}: column {duplicate!r} appears twice"
        )
    logger.debug("read %d rows from %s", table.num_rows, path)
    return _Source(path, fmt, table)


def _unify(schemas: list[pa.Schema], textual: list[bool]) -> tuple[pa.Schema, set[str]]:
    """Return the unified schema and the names of columns to re-read as text."""
    order: list[str] = []
    types: dict[str, list[tuple[pa.DataType, bool]]] = {}
    for schema, is_text in zip(schemas, textual, strict=True):
        for f in schema:
            if f.name not in types:
                order.append(f.name)
                types[f.name] = []
            types[f.name].append((f.type, is_text))
    fields: list[pa.Field] = []
    reread: set[str] = set()
    for name in order:
        seen = types[name]
        try:
            unified = (
                pa.unify_schemas(
                    [pa.schema([pa.field(name, t)]) for t, _ in seen], promote_options="permissive"
                )
                .field(name)
                .type
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            if not all(is_text for _, is_text in seen):
                found = ", ".join(sorted({str(t) for t, _ in seen}))
                raise InvalidInput(
                    f"column {name!r} has different types in the files: {found}"
                ) from e
            unified = pa.string()
            reread.add(name)
        fields.append(pa.field(name, unified))
    return pa.schema(fields), reread


def _conform(source: _Source, schema: pa.Schema) -> pa.Table:
    """Give ``source.table`` every column of ``schema``, in order, with its type."""
    table = source.table
    # Names to positions once: a lookup per column keeps a 10,000-column file linear.
    where = {name: i for i, name in enumerate(table.column_names)}
    columns = []
    for f in schema:
        if f.name in where:
            columns.append(table.column(where[f.name]))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    try:
        return pa.Table.from_arrays(columns, names=schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise InvalidInput(
            f"cannot combine {source.path} with the other files: {_one_line(e)}"
        ) from e


def _duplicate(names: list[str]) -> str | None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _one_line(error: BaseException, limit: int = 300) -> str:
    # pyarrow quotes the offending row, which can be any length.
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
