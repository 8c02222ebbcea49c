"""A per-worker column cache for source-table scans.

A function process reads a source table as a :class:`~protocol.messages.ScanInput`
(metadata location, snapshot, columns, filter). With a cache directory (the
worker's shared-memory directory), every column of the scan result is kept as
its own Arrow IPC file there, so a later run that needs columns A, B, C, D
after one that read A, B, C reads only D from storage, and maps A, B, C
without copying them.

Keying. One entry holds one column of one scan result. Its name is
``col-<32 hex>`` of sha256 over:

- the table uuid and the snapshot id (the current snapshot of the metadata
  file when the input names none): the exact data files;
- the filter, with whitespace outside quoted literals removed except a single
  space between two word characters (``a>1`` and ``a > 1`` share entries,
  ``not x = 1`` and ``notx = 1`` do not; no filter and a blank one are the same);
- the column's Iceberg field as the schema of the scan states it (id, name,
  type, nullability, doc), so a schema change never aliases an old entry.

Invalidation. There is none to do: entries are immutable, and a new commit to
a table is a new snapshot id, hence new names, so scans of the new snapshot
miss while the old snapshot's entries keep serving scans of that snapshot
until the worker evicts them. The worker may delete entries at any time: an entry
that is gone or unreadable is a miss, and is read again and rewritten.

Zipping columns from separate scans relies on pyiceberg returning the rows
of one snapshot and filter in the same order every time: data files in
manifest-list and manifest order (``ManifestGroupPlanner.plan_files``), each
file's batches in file order (``ArrowScan.to_record_batches``); both collect
their threads' results with ``Executor.map``, which yields in submission order. If the pieces ever disagree on their row count, the cached pieces are
dropped and everything is scanned at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from pyiceberg.table import Table as IcebergTable

from faas.protocol.messages import ScanInput, ScanPlan
from faas.store.scan import (
    check_columns,
    open_metadata,
    parse_filter,
    read_plan,
    scan_metadata,
    scan_table,
)

logger = logging.getLogger(__name__)

ENTRY_PREFIX = "col-"
ENTRY_SUFFIX = ".arrow"

# A string literal or a quoted identifier, as pyiceberg's parser (pyparsing's
# sgl_quoted_string, QuotedString('"')) delimits them: kept verbatim.
_QUOTED = re.compile(r"""('(?:[^'\n\r\\]|''|\\(?:[^x]|x[0-9a-fA-F]+))*'|"[^"\n\r]*")""")
# A space that does not sit between two word characters separates nothing.
_LOOSE_SPACE = re.compile(r"(?<![\w$]) | (?![\w$])")


@dataclass
class ScanStats:
    """What one :func:`scan_cached` call took from the cache and from storage."""

    columns_cached: list[str] = field(default_factory=list)
    columns_read: list[str] = field(default_factory=list)
    # (file name, size in bytes) of every entry this call wrote.
    new_entries: list[tuple[str, int]] = field(default_factory=list)
    # Size of the entry files mapped for ``columns_cached``.
    bytes_cached: int = 0


def scan_cached(
    inp: ScanInput,
    cache_dir: Path | None,
    *,
    properties: dict[str, str] | None = None,
) -> tuple[pa.Table, ScanStats]:
    """Scan ``inp`` as :func:`store.scan.scan_metadata` would, through the column cache.

    The result has exactly the requested columns (every top-level column of the
    snapshot's schema when ``inp.columns`` is None) in the requested order.
    ``cache_dir`` None scans without caching. Failing to write an entry (a full
    disk, say) is logged and skipped: the data is still returned.

    Raises:
        NotFound, InvalidInput: as :func:`store.scan.scan_metadata`, with the same messages.
    """
    if inp.plan is not None:  # the worker planned it: no metadata to read here
        planned = _scan_planned(inp, inp.plan, cache_dir, properties)
        if planned is not None:
            return planned
    if cache_dir is None:
        return _uncached(inp, properties)
    # S3 settings come from the worker's AWS environment (store.warehouse).
    table = open_metadata(inp.metadata_location, properties)
    name = inp.metadata_location
    schema = table.schema()
    if inp.snapshot_id is None:
        snapshot = table.current_snapshot()
    else:
        snapshot = table.snapshot_by_id(inp.snapshot_id)
        if snapshot is not None and snapshot.schema_id is not None:
            schema = table.schemas().get(snapshot.schema_id, schema)
    if snapshot is None or inp.columns == []:
        # An empty table, or an unknown snapshot (scan_table raises NotFound): nothing to key.
        result = _scan(table, inp, inp.columns)
        return result, ScanStats(columns_read=list(result.column_names))
    if inp.columns is not None:
        check_columns(inp.columns, schema, name)
    parse_filter(inp.filter, schema, name)
    columns = list(inp.columns) if inp.columns is not None else [f.name for f in schema.fields]

    fields = {f.name: f for f in schema.fields}
    scope = [str(table.metadata.table_uuid), snapshot.snapshot_id, normalize_filter(inp.filter)]
    entries = {c: cache_dir / f"{entry_name(scope, str(fields[c]))}{ENTRY_SUFFIX}" for c in columns}
    stats = ScanStats()
    pieces: dict[str, pa.Table] = {}  # one-column tables, fields as the scan states them
    missing = _load_cached(columns, entries, pieces, stats)
    if missing:
        _read(table, inp, missing, entries, pieces, stats)
    if len({piece.num_rows for piece in pieces.values()}) > 1:
        logger.warning(
            "column cache: pieces of %s (snapshot %d, filter %r) disagree on row count; "
            "scanning all columns again",
            name, snapshot.snapshot_id, inp.filter,
        )
        stats = ScanStats()
        _read(table, inp, list(dict.fromkeys(columns)), entries, pieces, stats)

    logger.debug(
        "column cache: %s snapshot %d: %d cached, %d read",
        name, snapshot.snapshot_id, len(stats.columns_cached), len(stats.columns_read),
    )
    return _zipped(pieces, columns), stats


def _zipped(pieces: dict[str, pa.Table], columns: list[str]) -> pa.Table:
    return pa.Table.from_arrays(
        [pieces[c].column(0) for c in columns],
        schema=pa.schema([pieces[c].schema.field(0) for c in columns]),
    )


def _load_cached(
    columns: list[str], entries: dict[str, Path], pieces: dict[str, pa.Table], stats: ScanStats
) -> list[str]:
    """Map the cached entries of ``columns`` into ``pieces``; the columns still missing."""
    for column in dict.fromkeys(columns):
        loaded = _load_entry(entries[column], column)
        if loaded is not None:
            pieces[column], size = loaded
            stats.columns_cached.append(column)
            stats.bytes_cached += size
    return [c for c in dict.fromkeys(columns) if c not in pieces]


def _scan_planned(
    inp: ScanInput, plan: ScanPlan, cache_dir: Path | None, properties: dict[str, str] | None
) -> tuple[pa.Table, ScanStats] | None:
    """The scan as the worker planned it, read with Arrow alone (through the cache when
    there is one); None where the files are not what the plan says (then the metadata is
    read here and pyiceberg may scan)."""
    if cache_dir is None:
        result = read_plan(plan, properties=properties)
        if result is None:
            return None
        return result, ScanStats(columns_read=list(dict.fromkeys(result.column_names)))
    columns = list(plan.columns)
    if not columns:
        return None
    scope = [plan.table_uuid, plan.snapshot_id, normalize_filter(inp.filter)]
    entries = {c: cache_dir / f"{entry_name(scope, plan.fields[c])}{ENTRY_SUFFIX}" for c in columns}
    stats = ScanStats()
    pieces: dict[str, pa.Table] = {}
    missing = _load_cached(columns, entries, pieces, stats)
    if missing:
        scanned = read_plan(plan, missing, properties)
        if scanned is None:
            return None
        _keep(scanned, missing, entries, pieces, stats)
    if len({piece.num_rows for piece in pieces.values()}) > 1:
        return None  # the metadata path scans everything again
    return _zipped(pieces, columns), stats


def prefetch(
    inp: ScanInput, cache_dir: Path, properties: dict[str, str] | None = None
) -> tuple[list[Path], ScanStats] | None:
    """Make every column of a planned scan a cache entry (written here, by the worker:
    function processes only ever read entries); return the entries and what was read.

    None when the scan has no plan Arrow can read, or the files are not what the plan
    says. An entry that could not be written (a full disk) is left out (the worker then
    reads the whole scan for the function another way: faasd.scans)."""
    plan = inp.plan
    if plan is None or inp.stream or not plan.columns:
        return None
    scanned = _scan_planned(inp, plan, cache_dir, properties)
    if scanned is None:
        return None
    scope = [plan.table_uuid, plan.snapshot_id, normalize_filter(inp.filter)]
    entries = [cache_dir / f"{entry_name(scope, plan.fields[c])}{ENTRY_SUFFIX}" for c in plan.columns]
    return [e for e in entries if e.exists()], scanned[1]


def normalize_filter(row_filter: str | None) -> str:
    """``row_filter`` with whitespace that cannot change its meaning removed."""
    if not row_filter:
        return ""
    parts = _QUOTED.split(row_filter)
    # split with one group: even indexes are outside quotes, odd ones are quoted literals.
    for i in range(0, len(parts), 2):
        parts[i] = _LOOSE_SPACE.sub("", re.sub(r"\s+", " ", parts[i]))
    return "".join(parts)


def entry_name(scope: Sequence[object], column_field: str) -> str:
    """The cache entry name of one column of a scan (``scope``: uuid, snapshot, filter)."""
    key = json.dumps([*scope, column_field], separators=(",", ":"))
    return ENTRY_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:32]


def _uncached(inp: ScanInput, properties: dict[str, str] | None) -> tuple[pa.Table, ScanStats]:
    result = scan_metadata(
        inp.metadata_location, snapshot_id=inp.snapshot_id, columns=inp.columns,
        row_filter=inp.filter, properties=properties,
    )
    return result, ScanStats(columns_read=list(dict.fromkeys(result.column_names)))


def _scan(table: IcebergTable, inp: ScanInput, columns: Sequence[str] | None) -> pa.Table:
    return scan_table(
        table, columns=columns, row_filter=inp.filter, snapshot_id=inp.snapshot_id,
        name=inp.metadata_location,
    )


def _read(
    table: IcebergTable,
    inp: ScanInput,
    columns: list[str],
    entries: dict[str, Path],
    pieces: dict[str, pa.Table],
    stats: ScanStats,
) -> None:
    """Scan ``columns`` at once into ``pieces`` and write each to its entry."""
    _keep(_scan(table, inp, columns), columns, entries, pieces, stats)


def _keep(
    scanned: pa.Table, columns: list[str], entries: dict[str, Path], pieces: dict[str, pa.Table],
    stats: ScanStats,
) -> None:
    """Split a scan of ``columns`` into ``pieces``, writing each to its cache entry."""
    stats.columns_read = columns
    for column in columns:
        pieces[column] = scanned.select([column])
        written = _write_entry(entries[column], pieces[column])
        if written is not None:
            stats.new_entries.append(written)


def _load_entry(path: Path, column: str) -> tuple[pa.Table, int] | None:
    """Map the entry at ``path``; None if it is gone or unreadable (then it is a miss)."""
    try:
        with pa.memory_map(str(path)) as source:
            size = source.size()
            piece = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowException) as e:
        if not isinstance(e, FileNotFoundError):
            logger.warning("column cache: unreadable entry %s (%s); reading it again", path, e)
        return None
    if piece.column_names != [column]:
        logger.warning("column cache: entry %s does not hold column %r; reading it again", path, column)
        return None
    return piece, size


def _write_entry(final: Path, piece: pa.Table) -> tuple[str, int] | None:
    """Write ``piece`` to ``final`` atomically; its (file name, size), None on failure."""
    # A private temporary name, then a rename: a concurrent writer of the same entry
    # or a reader never sees a partial file.
    # The pid and a random part keep concurrent writers of one entry apart.
    temporary = final.with_name(f"{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with (
            pa.OSFile(str(temporary), "wb") as sink,
            pa.ipc.new_file(sink, piece.schema) as writer,
        ):
            writer.write_table(piece)
        size = temporary.stat().st_size
        os.replace(temporary, final)
    except OSError as e:
        logger.warning("column cache: cannot write %s (%s); not caching it", final, e)
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        return None
    return final.name, size
