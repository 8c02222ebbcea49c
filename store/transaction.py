"""A Transaction: table writes staged against one base commit, published as one commit."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import UnsupportedPyArrowTypeException, _check_pyarrow_schema_compatible
from pyiceberg.manifest import (
    DataFileContent,
    ManifestContent,
    ManifestEntry,
    ManifestEntryStatus,
    ManifestFile,
)
from pyiceberg.table import CreateTableTransaction
from pyiceberg.table import Table as IcebergTable
from pyiceberg.table import Transaction as IcebergTransaction
from pyiceberg.table.refs import MAIN_BRANCH
from pyiceberg.table.snapshots import Operation
from pyiceberg.table.update.snapshot import _OverwriteFiles

from faas.protocol.errors import CommitConflict, InvalidInput, NotFound, StorageError
from faas.store.catalog import Change, ChangeKind
from faas.store.failpoints import failpoint
from faas.store.files import iceberg_schema, to_iceberg_arrow
from faas.store.iceberg import CommitCatalog, new_table_location
from faas.store.keys import split_key
from faas.store.partitions import (
    PartitionField,
    append_files,
    data_files,
    describe_partitioning,
    iceberg_schema_with_ids,
    name_by_mapping,
    overwrite_partitions,
    parse_partitioning,
    partition_spec,
    spec_fields,
)
from faas.store.scan import parse_filter
from faas.store.warehouse import describe

if TYPE_CHECKING:
    from faas.store.lakehouse import Lakehouse

logger = logging.getLogger(__name__)

WriteMode = Literal["replace", "append", "overwrite_partitions"]

WRITE_MODES = ("replace", "append", "overwrite_partitions")

# publish() puts its commit on top of a branch that moved, if no staged key
# changed there, up to this many times before giving up with CommitConflict.
PUBLISH_ATTEMPTS = 20


@dataclass(frozen=True)
class TableInfo:
    """What the catalog knows about a table at a ref, without reading its rows."""

    key: str
    metadata_location: str
    snapshot_id: int | None
    schema: pa.Schema
    row_count: int
    file_count: int
    size_bytes: int
    # The current snapshot's summary: totals, and the properties its writer set.
    properties: dict[str, str] = field(default_factory=dict)
    # Its partitions, as partitioned_by writes them ("" when it has none).
    partitioned_by: str = ""


def load_table(view: CommitCatalog, key: str) -> IcebergTable:
    """Load table ``key`` in ``view``.

    Raises:
        InvalidInput: ``key`` is not ``namespace.table``.
        NotFound: no such table at the view's ref.
    """
    split_key(key)
    try:
        return view.load_table(key)
    except NoSuchTableError as e:
        raise NotFound(f"table {key!r} not found at ref {view.ref!r}") from e


def table_info(table: IcebergTable, key: str) -> TableInfo:
    snapshot = table.current_snapshot()
    summary = snapshot.summary if snapshot is not None else None

    def total(name: str) -> int:
        value = summary.get(name) if summary is not None else None
        return int(value) if value is not None else 0

    return TableInfo(
        key=key,
        metadata_location=table.metadata_location,
        snapshot_id=snapshot.snapshot_id if snapshot is not None else None,
        # iceberg_schema drops the field-id metadata pyiceberg puts on every field.
        schema=iceberg_schema(table.schema().as_arrow()),
        row_count=total("total-records"),
        file_count=total("total-data-files"),
        size_bytes=total("total-files-size"),
        properties=dict(summary.additional_properties) if summary is not None else {},
        partitioned_by=describe_partitioning(spec_fields(table.spec(), table.schema())),
    )


def missing_namespace(namespace: str, ref: str) -> NotFound:
    """The one error for a namespace that is not there, with the command that creates it."""
    return NotFound(
        f"namespace {namespace!r} does not exist at ref {ref!r}: create it with "
        f"'faas namespace create {namespace}'"
    )


def require_namespace(view: CommitCatalog, namespace: str) -> None:
    """Raises NotFound (:func:`missing_namespace`) if ``namespace`` is missing."""
    if not view.namespace_exists(namespace):
        raise missing_namespace(namespace, view.ref)


class Transaction:
    """Table changes staged against the base commit of ``ref``.

    Nothing is visible on the branch until :meth:`publish`, which adds one
    commit holding every staged table. Concurrency is optimistic and per key,
    as in Iceberg and Nessie: if the branch moved since :meth:`store.Lakehouse.begin`,
    the commit goes on top of the new head unless one of the staged keys
    changed there, which is a CommitConflict. Dropping the object
    without publishing leaves the branch untouched (the files it wrote stay in
    the warehouse, unreferenced).
    """

    def __init__(self, lakehouse: Lakehouse, ref: str, author: str = "faas") -> None:
        branch, base = lakehouse.catalog.resolve(ref)
        self.ref = ref
        self.branch = branch
        self.base = base
        self.author = author
        self.id = uuid.uuid4().hex[:12]
        self._lakehouse = lakehouse
        self._view = lakehouse.view_at(base, ref)
        # Locations promised by data_location() for tables that do not exist yet.
        self._new_locations: dict[str, str] = {}
        self._data_dirs: dict[str, str] = {}
        self._published: str | None = None

    def __repr__(self) -> str:
        return f"Transaction({self.id}, ref={self.ref!r}, base={self.base[:12]})"

    @property
    def view(self) -> CommitCatalog:
        """The pyiceberg catalog the transaction stages its changes in: an engine's own
        table commit (scheduler.iceberg_rest) goes through it, then :meth:`publish`."""
        return self._view

    @property
    def staged(self) -> list[str]:
        """Table keys changed so far."""
        return [c.key for c in self._view.changes() if c.kind == "table"]

    # -- writing --------------------------------------------------------------

    def write(self, key: str, data: pa.Table, mode: WriteMode = "replace") -> None:
        """Write ``data`` as table ``key``, creating the table if it does not exist.

        ``replace`` swaps the rows; if the new schema does not fit the old table
        (other columns, incompatible types) the key gets a new table instead.
        ``append`` adds rows and needs a compatible schema. Nanosecond
        timestamps are stored as microseconds.

        Raises:
            InvalidInput: a bad key or mode, data that is not an Arrow table, or a
                schema that cannot be appended to the table.
            NotFound: the namespace does not exist.
            StorageError: the warehouse cannot be written.
        """
        self._check_open()
        _check_mode(mode)
        if not isinstance(data, pa.Table):
            raise InvalidInput(
                f"cannot write {key!r}: expected a pyarrow.Table, got {type(data).__name__}"
            )
        namespace, _ = split_key(key)
        _check_names(key, data.schema)
        data = to_iceberg_arrow(data)
        table = self._load_or_none(key)
        try:
            if table is None:
                require_namespace(self._view, namespace)
                with self._view.create_table_transaction(
                    key, data.schema, location=self._new_location(key)
                ) as txn:
                    txn.append(data)
            elif mode == "append":
                _check_appendable(key, table, data.schema)
                table.append(data)
            elif _fits(table, data.schema):
                with table.transaction() as txn:
                    if _has_data(table):
                        txn.overwrite(data)
                    else:
                        # overwrite() on a table without rows warns that its delete matched nothing.
                        txn.append(data)
            else:
                with self._create(key, data.schema, [], recreate=True) as txn:
                    txn.append(data)
        except (ValueError, UnsupportedPyArrowTypeException) as e:
            raise InvalidInput(
                f"cannot write table {key!r}: {_first_line(e)}", detail=str(e)
            ) from e
        except OSError as e:
            raise self._storage_error(f"cannot write table {key!r}", e) from e
        failpoint("transaction.after_metadata_write")
        logger.debug("transaction %s: %s %d rows into %s", self.id, mode, data.num_rows, key)

    def add_files(
        self, key: str, files: Sequence[str], schema: pa.Schema, mode: WriteMode = "replace",
        properties: dict[str, str] | None = None, *, partitioned_by: str = "",
        overwrite_filter: str = "",
    ) -> None:
        """Register Parquet ``files`` already written into the warehouse as the data of ``key``.

        ``schema`` is the Arrow schema the files were written with; it is used
        to create the table if it does not exist. ``replace`` drops the rows the
        table had (in the same table commit), ``append`` keeps them, and
        ``overwrite_partitions`` drops the rows ``overwrite_filter`` matches (without
        one: those of every partition the files hold) and keeps the others.
        ``properties`` go into the summary of the snapshot that adds the files.

        ``partitioned_by`` (see :mod:`store.partitions`) is the table's partitioning;
        each file must hold one partition. A new table gets it; ``replace`` gives the
        key a new table when the old one is partitioned otherwise, while ``append``
        and ``overwrite_partitions`` refuse such a table.

        Raises:
            InvalidInput: a bad key, mode, partitioning or filter; files whose schema
                does not fit the table, or that hold more than one partition.
            NotFound: the namespace or a file does not exist.
            StorageError: the warehouse cannot be read or written.
        """
        self._check_open()
        _check_mode(mode)
        namespace, _ = split_key(key)
        fields = parse_partitioning(partitioned_by)
        paths = list(files)
        _check_names(key, schema)
        schema = iceberg_schema(schema)
        table = self._load_or_none(key)
        props = dict(properties or {})
        try:
            if table is None:
                require_namespace(self._view, namespace)
                with self._create(key, schema, fields) as txn:
                    append_files(txn, paths, props)
            elif fields != (now := spec_fields(table.spec(), table.schema())):
                if mode != "replace":
                    raise InvalidInput(
                        f"cannot {mode.replace('_', ' ')} table {key!r}: it is partitioned "
                        f"by {describe_partitioning(now) or 'nothing'}, the new rows by "
                        f"{describe_partitioning(fields) or 'nothing'} (declare partitioned_by="
                        f"{describe_partitioning(now)!r}, or replace the table to change its "
                        "partitions)"
                    )
                with self._create(key, schema, fields, recreate=True) as txn:
                    append_files(txn, paths, props)
            elif mode == "append":
                _check_appendable(key, table, schema)
                with table.transaction() as txn:
                    append_files(txn, paths, props)
            elif mode == "overwrite_partitions":
                _check_appendable(key, table, schema)
                row_filter = parse_filter(overwrite_filter, table.schema(), key) if (
                    overwrite_filter) else None
                with table.transaction() as txn:
                    overwrite_partitions(txn, table, paths, props, row_filter)
            elif _fits(table, schema):
                with table.transaction() as txn:
                    if not _replace_files(txn, table, paths, props):
                        if _has_data(table):
                            txn.delete(AlwaysTrue())
                        append_files(txn, paths, props)
            else:
                with self._create(key, schema, fields, recreate=True) as txn:
                    append_files(txn, paths, props)
        except FileNotFoundError as e:
            missing = e.filename or _first_line(e)
            raise NotFound(f"cannot add files to table {key!r}: file not found: {missing}") from e
        except (ValueError, UnsupportedPyArrowTypeException) as e:
            raise InvalidInput(
                f"cannot add files to table {key!r}: {_first_line(e)}", detail=str(e)
            ) from e
        except OSError as e:
            raise self._storage_error(f"cannot add files to table {key!r}", e) from e
        failpoint("transaction.after_metadata_write")
        logger.debug("transaction %s: %s %d files into %s", self.id, mode, len(paths), key)

    def drop(self, key: str) -> None:
        """Drop table ``key`` from the branch when published (older commits keep it).

        Raises:
            NotFound: no such table.
        """
        self._check_open()
        load_table(self._view, key)
        self._view.drop_table(key)

    def data_location(self, key: str) -> str:
        """A directory URI where a worker writes Parquet files for ``key`` in this transaction.

        It lies under the table's location; for a table that does not exist yet,
        under the location the table will be created at. The same key gives the
        same directory for the whole transaction, and no other transaction's.
        (If a replace later gives the key a new table because its schema
        changed, the files stay where they are: Iceberg data files may live
        outside their table's location.)

        Raises:
            InvalidInput: ``key`` is not ``namespace.table``.
        """
        split_key(key)
        if key not in self._data_dirs:
            table = self._load_or_none(key)
            base = table.location() if table is not None else self._new_location(key)
            self._data_dirs[key] = f"{base}/data/faas-{self.id}"
        return self._data_dirs[key]

    def has_location(self, key: str) -> bool:
        """Whether :meth:`data_location` knows ``key``'s directory already (no I/O then)."""
        return key in self._data_dirs

    def table_info(self, key: str) -> TableInfo:
        """Table ``key`` as this transaction sees it (staged changes included).

        Raises:
            NotFound: no such table.
        """
        return table_info(load_table(self._view, key), key)

    def publish(self, message: str, properties: dict[str, str] | None = None) -> str:
        """Commit every staged change as ONE commit on the branch; return its hash.

        With nothing staged, no commit is made and the base commit is returned.
        If the branch moved since the transaction began and none of the staged
        keys changed there (nor the namespace of a staged table), the commit
        goes on top of the new head.

        Raises:
            CommitConflict: a staged key also changed on the branch since the
                transaction began (the message names it), or the branch kept
                moving for ``PUBLISH_ATTEMPTS`` tries.
            InvalidInput: the transaction was begun on a tag or a detached commit,
                or was already published.
            NotFound: the branch was deleted.
        """
        self._check_open()
        branch = self.require_branch()
        changes = self._view.changes()
        if not changes:
            logger.info("transaction %s: nothing to publish on %s", self.id, branch)
            self._published = self.base
            return self.base
        catalog = self._lakehouse.catalog
        parent = self.base
        failpoint("transaction.before_catalog_commit")
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                commit = catalog.commit(
                    branch, parent, changes, message, author=self.author, properties=properties
                )
                break
            except CommitConflict as e:
                clashes = _clashes(changes, catalog.changed_keys(self.base, e.found))
                if clashes:
                    raise _key_conflict(branch, self.base, e.found, clashes) from None
                if attempt == PUBLISH_ATTEMPTS:
                    raise
                failpoint("transaction.after_conflict_check")
                logger.debug(
                    "transaction %s: %s moved to %s, no staged key changed; committing on top",
                    self.id,
                    branch,
                    e.found[:12],
                )
                parent = e.found
                if attempt >= 3:
                    # Writers that keep colliding fall out of step.
                    time.sleep(random.uniform(0, 0.002 * attempt))
        failpoint("transaction.after_catalog_commit")
        self._published = commit
        logger.info(
            "transaction %s published %d changes as %s on %s",
            self.id,
            len(changes),
            commit[:12],
            branch,
        )
        return commit

    def require_branch(self) -> str:
        """The branch this transaction commits to.

        Raises:
            InvalidInput: it was begun on a tag or a detached commit.
        """
        if self.branch is None:
            raise InvalidInput(
                f"cannot commit to ref {self.ref!r}: it is not a branch; "
                "begin on a branch such as 'main'"
            )
        return self.branch

    def require_namespace(self, namespace: str) -> None:
        """Raises NotFound, with the command that creates it, if ``namespace`` is missing."""
        require_namespace(self._view, namespace)

    # -- internals ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._published is not None:
            raise InvalidInput(
                f"transaction {self.id} was already published as {self._published[:12]}"
            )

    def _storage_error(self, what: str, error: OSError) -> StorageError:
        lakehouse = self._lakehouse
        return StorageError(
            f"{what} in warehouse {lakehouse.warehouse}: "
            f"{describe(error, lakehouse.io_properties)}"
        )

    def _load_or_none(self, key: str) -> IcebergTable | None:
        try:
            return self._view.load_table(key)
        except NoSuchTableError:
            return None

    def _new_location(self, key: str) -> str:
        if key not in self._new_locations:
            namespace, name = split_key(key)
            self._new_locations[key] = new_table_location(
                self._lakehouse.warehouse, namespace, name
            )
        return self._new_locations[key]

    def _create(
        self, key: str, schema: pa.Schema, fields: Sequence[PartitionField], *,
        recreate: bool = False,
    ) -> CreateTableTransaction:
        """A new table for ``key`` partitioned by ``fields`` (``recreate``: in place of
        the one it has)."""
        ice = iceberg_schema_with_ids(schema)
        spec = partition_spec(fields, ice, key)
        if not recreate:
            return self._view.create_table_transaction(
                key, ice, location=self._new_location(key), partition_spec=spec
            )
        logger.info("transaction %s: %s changed, replacing it with a new table", self.id, key)
        namespace, name = split_key(key)
        location = new_table_location(self._lakehouse.warehouse, namespace, name)
        return self._view.recreate_table_transaction(key, ice, location, spec)


def _clashes(
    changes: list[Change], changed: Iterable[tuple[ChangeKind, str]]
) -> list[tuple[ChangeKind, str]]:
    """Staged changes that depend on keys in ``changed`` (which moved on the branch).

    A staged key itself; the namespace of a staged table (it may be gone); a
    table in a namespace the transaction drops (it may have been added).
    """
    moved = set(changed)
    hits = {(c.kind, c.key) for c in changes} & moved
    for c in changes:
        if c.kind == "table" and ("namespace", c.key.split(".", 1)[0]) in moved:
            hits.add(("namespace", c.key.split(".", 1)[0]))
        if c.kind == "namespace" and c.value is None:
            hits |= {(k, key) for k, key in moved if k == "table" and key.startswith(f"{c.key}.")}
    return sorted(hits)


def _key_conflict(
    branch: str, base: str, found: str, clashes: list[tuple[ChangeKind, str]]
) -> CommitConflict:
    error = CommitConflict(branch, base, found)
    shown = ", ".join(f"{kind} {key!r}" for kind, key in clashes[:5])
    more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
    # The type and fields stay CommitConflict's (callers and the wire match on
    # them); the message adds which keys, and what to do.
    error.message = (
        f"{error.message}: {shown}{more} changed on {branch!r} since this transaction "
        "began; begin again from the new head"
    )
    error.args = (error.message,)
    error.keys = [key for _, key in clashes]  # type: ignore[attr-defined]
    return error


def _check_mode(mode: str) -> None:
    if mode not in WRITE_MODES:
        raise InvalidInput(
            f"unknown write mode {mode!r}; expected {', '.join(map(repr, WRITE_MODES))}"
        )


def _check_names(key: str, schema: pa.Schema) -> None:
    seen: set[str] = set()
    for name in schema.names:
        if name in seen:
            raise InvalidInput(f"cannot write table {key!r}: column {name!r} appears twice")
        seen.add(name)
    if not schema.names:
        raise InvalidInput(f"cannot write table {key!r}: the data has no columns")


def _has_data(table: IcebergTable) -> bool:
    snapshot = table.current_snapshot()
    if snapshot is None:
        return False
    files = snapshot.summary.get("total-data-files") if snapshot.summary is not None else None
    return files is None or int(files) > 0


def _fits(table: IcebergTable, schema: pa.Schema) -> bool:
    """True if ``schema`` can replace the rows of ``table`` keeping the table itself."""
    if [f.name for f in table.schema().fields] != schema.names:
        return False
    try:
        _check_pyarrow_schema_compatible(
            table.schema(), schema, format_version=table.format_version
        )
    except ValueError:
        return False
    return True


class _Replace(_OverwriteFiles):
    """An overwrite snapshot that replaces every data file of a table.

    pyiceberg's own overwrite keeps, in every later snapshot, each earlier manifest whose
    entries are all deleted, and reads the parent's manifests once more for its deleted
    entries: a table replaced on every run would grow a manifest per run, and each commit
    would read them all. A full replace keeps no manifest of the parent, and its deleted
    entries are those already read (``entries``)."""

    def __init__(self, entries: list[ManifestEntry], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._entries = entries

    def _existing_manifests(self) -> list[ManifestFile]:
        return []

    def _deleted_entries(self) -> list[ManifestEntry]:
        return [
            ManifestEntry.from_args(
                status=ManifestEntryStatus.DELETED, snapshot_id=self._snapshot_id,
                sequence_number=e.sequence_number, file_sequence_number=e.file_sequence_number,
                data_file=e.data_file,
            )
            for e in self._entries
        ]


def _replace_files(
    txn: IcebergTransaction, table: IcebergTable, paths: list[str], props: dict[str, str]
) -> bool:
    """Replace every data file of ``table`` with the Parquet files at ``paths`` as one
    overwrite snapshot (rather than a delete snapshot and an append snapshot: half the
    metadata to write, and half the history). False, with nothing done, where that does
    not apply: a table without data, or one with delete files."""
    snapshot = table.current_snapshot()
    if snapshot is None or not paths:
        return False
    manifests = snapshot.manifests(table.io)
    if any(m.content != ManifestContent.DATA for m in manifests):
        return False
    entries = [
        entry for m in manifests for entry in m.fetch_manifest_entry(table.io, discard_deleted=True)
    ]
    if not entries or any(e.data_file.content != DataFileContent.DATA for e in entries):
        return False
    name_by_mapping(txn)
    replace = _Replace(
        entries, operation=Operation.OVERWRITE, transaction=txn, io=table.io,
        snapshot_properties=props, branch=MAIN_BRANCH,
    )
    with replace:
        for entry in entries:
            replace.delete_data_file(entry.data_file)
        for data_file in data_files(table.io, txn.table_metadata, paths):
            replace.append_data_file(data_file)
    return True


def _check_appendable(key: str, table: IcebergTable, schema: pa.Schema) -> None:
    try:
        _check_pyarrow_schema_compatible(
            table.schema(), schema, format_version=table.format_version
        )
    except ValueError as e:
        difference = _schema_difference(table.schema().as_arrow(), schema)
        raise InvalidInput(f"cannot append to table {key!r}: {difference}", detail=str(e)) from e


def _schema_difference(current: pa.Schema, new: pa.Schema) -> str:
    old_fields = {f.name: f for f in current}
    new_fields = {f.name: f for f in new}
    parts = []
    if extra := [n for n in new_fields if n not in old_fields]:
        parts.append(f"new columns {', '.join(extra)}")
    if missing := [n for n in old_fields if n not in new_fields and not old_fields[n].nullable]:
        parts.append(f"missing required columns {', '.join(missing)}")
    changed = [
        f"{n} {_type_name(old_fields[n].type)} -> {_type_name(f.type)}"
        for n, f in new_fields.items()
        if n in old_fields and _type_name(old_fields[n].type) != _type_name(f.type)
    ]
    if changed:
        parts.append(f"changed types {', '.join(changed)}")
    nullable = [
        n
        for n, f in new_fields.items()
        if n in old_fields and f.nullable and not old_fields[n].nullable
    ]
    if nullable:
        parts.append(f"nulls in required columns {', '.join(nullable)}")
    return "; ".join(parts) or "the schemas do not match"


def _type_name(t: pa.DataType) -> str:
    # string and large_string (and list/large_list) are the same to Iceberg.
    return str(t).replace("large_", "")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
