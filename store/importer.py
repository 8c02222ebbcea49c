"""Reading CSV and Parquet files into one Arrow table for import.

Column types are inferred per file and then unified across files: numeric types widen
(int64 with double gives double). Files that disagree otherwise — a column that is a
number in one file and text in another, a column some files lack — are refused, every
disagreement listed with its files, unless an import plan settles them: ``plan_files``
surveys the files and proposes a plan (per column: the types seen and in which files,
the files without it, the type to import it as, whether missing values are filled with
nulls), which a person edits (``faas table import --plan``) and the import then follows
(``--apply``). A CSV column the plan makes text is read as text, so values keep the
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
from faas.protocol.messages import PlanColumn

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
    plan: Sequence[PlanColumn] | None = None,
) -> pa.Table:
    """Expand ``paths`` (globs allowed) and read them into one table; workers use this.
    ``roots``: the directories files may be read from (None: anywhere); ``plan``: an
    import plan to follow.

    Raises:
        NotFound: a path or glob matches nothing.
        InvalidInput: a file does not parse, or the files disagree and no plan settles it,
            or a path is outside ``roots``.
    """
    return read_files(expand_paths(paths, roots), format, plan)


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


def read_files(
    files: Sequence[str], format: str | None = None, plan: Sequence[PlanColumn] | None = None,
) -> pa.Table:
    """Read ``files`` into one table whose schema is unified across them (or set by
    ``plan``).

    Raises:
        InvalidInput: a file does not parse or does not fit the plan's types, or the files
            disagree on columns the plan (if any) does not settle; every disagreement is
            listed, with its files.
    """
    sources = _read_all(files, format, plan)
    columns = _survey(sources, plan)
    problems = [p for c in columns if (p := _unsettled(c))]
    if problems:
        many = f"{len(problems)} columns" if len(problems) > 1 else "a column"
        raise InvalidInput(
            f"the {len(files)} files disagree on {many}: {'; '.join(problems)}. "
            "Write a plan with faas table import --plan PLAN.toml, edit it, then import "
            "with --apply PLAN.toml"
        )
    schema = pa.schema([pa.field(c.name, _type(c)) for c in columns])
    parts = [_conform(source, schema) for source in sources]
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def plan_files(files: Sequence[str], format: str | None = None) -> list[PlanColumn]:
    """The import plan faas proposes for ``files``: every column, the types it has in
    which files, the files without it, and what it would be imported as (numbers widened,
    text where types disagree otherwise; missing values filled with nulls)."""
    return [_proposed(c) for c in _survey(_read_all(files, format, None), None)]


def _read_all(
    files: Sequence[str], format: str | None, plan: Sequence[PlanColumn] | None
) -> list[_Source]:
    """Each file, CSV columns the plan types read with those types (text stays text)."""
    typed = {c.name: c.type for c in plan or () if c.type}
    return [_read(path, detect_format(path, format), typed) for path in files]


def _survey(sources: list[_Source], plan: Sequence[PlanColumn] | None) -> list[PlanColumn]:
    """Every column of the files, in order of first appearance: the types seen (with the
    files), the files without it, the widened type ("" when none fits every file), and
    the plan's type and fill where the plan names the column. Linear in columns."""
    order: list[str] = []
    seen: dict[str, dict[str, list[str]]] = {}
    types: dict[str, list[pa.DataType]] = {}
    for source in sources:
        for f in source.table.schema:
            if f.name not in seen:
                order.append(f.name)
                seen[f.name], types[f.name] = {}, []
            seen[f.name].setdefault(str(f.type), []).append(source.path)
            types[f.name].append(f.type)
    planned = {c.name: c for c in plan or ()}
    out = []
    for name in order:
        having = {p for paths in seen[name].values() for p in paths}
        missing = [s.path for s in sources if s.path not in having]
        given = planned.get(name)
        out.append(PlanColumn(
            name=name, type=given.type if given and given.type else _widened(name, types[name]),
            seen=seen[name], missing=missing, fill=bool(given and given.fill),
        ))
    return out


def _widened(name: str, types: list[pa.DataType]) -> str:
    """The one type every file's values fit, numbers widened; "" if there is none."""
    try:
        unified = pa.unify_schemas(
            [pa.schema([pa.field(name, t)]) for t in types], promote_options="permissive"
        ).field(name).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return ""
    if pa.types.is_null(unified):
        return "string"  # empty in every file
    return str(unified)


def _unsettled(c: PlanColumn) -> str:
    """Why column ``c`` cannot be imported as it stands ("" if it can)."""
    why = []
    if not c.type:
        why.append("; ".join(f"{t} in {_files(paths)}" for t, paths in c.seen.items()))
    if c.missing and not c.fill:
        why.append(f"missing from {_files(c.missing)}")
    return f"{c.name!r} ({'; '.join(why)})" if why else ""


def _files(paths: list[str]) -> str:
    shown = ", ".join(os.path.basename(p) for p in paths[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _proposed(c: PlanColumn) -> PlanColumn:
    """``c`` as faas would settle it: text where types disagree, nulls where missing."""
    return PlanColumn(name=c.name, type=c.type or "string", seen=c.seen, missing=c.missing,
                      fill=bool(c.missing))


def _type(c: PlanColumn) -> pa.DataType:
    return _arrow_type(c.name, c.type)


def _arrow_type(name: str, alias: str) -> pa.DataType:
    try:
        return pa.type_for_alias(alias)
    except ValueError:
        raise InvalidInput(
            f"column {name!r}: {alias!r} is not a type faas knows (int64, double, string, "
            "bool, date32[day], timestamp[us], ...)"
        ) from None


def _read(path: str, fmt: FileFormat, typed: dict[str, str] | None = None) -> _Source:
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
                    column_types={c: _arrow_type(c, t) for c, t in (typed or {}).items()}
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


def external_files(
    source: str, roots: Sequence[str] | None = None
) -> tuple[list[str], pa.Schema, int]:
    """What an external table is made of: the Parquet files ``source`` names (a path, a
    glob, or an ``s3://`` URI with a glob), or the one Iceberg metadata file it names
    (``….metadata.json``); their URIs, Arrow schema and rows, read from the files'
    footers or the table's metadata only (nothing is copied). Local files must lie under
    ``roots``.

    Raises:
        NotFound: nothing matches.
        InvalidInput: a file is not Parquet, or the files' schemas differ (each differing
            file named), or a path is outside ``roots``.
    """
    remote = "://" in source and not source.startswith("file://")
    files = _expand_uri(source) if remote else expand_paths(source, roots)
    if source.endswith(".metadata.json"):
        from faas.store.scan import open_metadata

        table = open_metadata(files[0])
        snapshot = table.current_snapshot()
        rows = int((snapshot.summary or {}).get("total-records", 0)) if snapshot else 0
        return files[:1], table.schema().as_arrow(), rows
    from faas.store.warehouse import filesystem, storage_errors

    schemas: dict[str, list[str]] = {}
    first: pa.Schema | None = None
    rows = 0
    for uri in files:
        fs, path = filesystem(uri)
        try:
            with storage_errors(f"cannot read {uri}"), fs.open_input_file(path) as f:
                meta = pq.ParquetFile(f).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise NotFound(f"file not found: {uri}") from None
            raise InvalidInput(f"{uri} is not a Parquet file: {_one_line(exc)}") from None
        schema = meta.schema.to_arrow_schema().remove_metadata()
        first = first or schema
        schemas.setdefault(str(schema), []).append(uri)
        rows += meta.num_rows
    if len(schemas) > 1:
        shown = "; ".join(f"{_files(paths)}: {text.replace(chr(10), ', ')}"
                          for text, paths in schemas.items())
        raise InvalidInput(f"the {len(files)} files of {source!r} have different schemas "
                           f"({shown}); an external table's files must agree")
    assert first is not None
    return files, first, rows


def _expand_uri(pattern: str) -> list[str]:
    """The objects an ``s3://bucket/prefix/*.parquet`` pattern names, sorted."""
    import fnmatch

    import pyarrow.fs as pafs

    from faas.store.warehouse import filesystem, storage_errors

    scheme = pattern.split("://", 1)[0]
    fs, path = filesystem(pattern)
    if not glob.has_magic(path):
        with storage_errors(f"cannot read {pattern}"):
            if fs.get_file_info(path).type != pafs.FileType.File:
                raise NotFound(f"file not found: {pattern}")
        return [pattern]
    base = path[: min(path.index(c) for c in "*?[" if c in path)].rpartition("/")[0]
    with storage_errors(f"cannot list {pattern}"):
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    found = sorted(i.path for i in infos
                   if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, path))
    if not found:
        raise NotFound(f"no files match {pattern!r}")
    return [f"{scheme}://{p}" for p in found]
