"""A pyiceberg catalog bound to one commit of the versioned catalog.

pyiceberg drives all table writing (schemas, manifests, snapshots, data files)
and asks its catalog to commit each new table state. This catalog never moves
a branch: it writes the new metadata file (metadata files are immutable) and
stages the new location in memory. :class:`store.Transaction` later publishes
every staged change in one versioned-catalog commit, so all tables of a run
appear at once or not at all.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

from pyiceberg.catalog import MetastoreCatalog, PropertiesUpdateSummary
from pyiceberg.exceptions import (
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    NoSuchViewError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.serializers import FromInputFile
from pyiceberg.table import (
    CommitTableResponse,
    CreateTableTransaction,
    StagedTable,
    Table,
    Transaction,
)
from pyiceberg.table.locations import load_location_provider
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER, SortOrder
from pyiceberg.table.update import (
    AssertCreate,
    TableRequirement,
    TableUpdate,
    _apply_table_update,
    _TableMetadataUpdateContext,
    _update_table_metadata_log,
)
from pyiceberg.typedef import EMPTY_DICT, Identifier, Properties
from pyiceberg.view import View

from faas.store.catalog import NAMESPACE_PRESENT, Change, ChangeKind, VersionedCatalog
from faas.store.warehouse import storage_errors

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.view.metadata import ViewVersion

logger = logging.getLogger(__name__)


def new_table_location(warehouse: str, namespace: str, table: str) -> str:
    """A location no other table has: the same name on two branches must not collide."""
    return f"{warehouse.rstrip('/')}/{namespace}/{table}-{uuid.uuid4().hex[:8]}"


class _StagedMetadataOnce:
    """A transaction whose table metadata is computed once per set of staged updates, and
    never deep-copied.

    pyiceberg recomputes it on every read: each staged update applied to the table's
    metadata, then a deep copy of the whole (every snapshot, every log entry). A commit
    reads it dozens of times; that was about 40% of the scheduler's CPU in a run of the
    example. The staged updates are an immutable tuple, replaced whenever more are staged,
    so the result is kept until either they or the table's metadata change. Applying an
    update copies what it changes (the models are frozen), so the result shares the rest
    with the table's metadata safely and needs no deep copy."""

    _updates: tuple[TableUpdate, ...]
    _table: Table
    _metadata_memo: tuple[object, object, TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        memo = self._metadata_memo
        if memo is None or memo[0] is not self._updates or memo[1] is not self._table.metadata:
            fresh = _with_updates(self._table.metadata, self._updates)
            memo = self._metadata_memo = (self._updates, self._table.metadata, fresh)
        return memo[2]


def _with_updates(
    base: TableMetadata, updates: tuple[TableUpdate, ...], metadata_location: str | None = None,
) -> TableMetadata:
    """pyiceberg's ``update_table_metadata``, without its final deep copy (the models are
    frozen: what an update changes is copied, the rest is shared safely). With
    ``metadata_location`` (a commit's, not a transaction's view) the metadata log gets
    that location."""
    context = _TableMetadataUpdateContext()
    metadata = base
    for update in updates:
        metadata = _apply_table_update(update, metadata, context)
    if context.has_changes() and metadata_location:
        metadata = _update_table_metadata_log(metadata, metadata_location, base.last_updated_ms)
    if context.has_changes() and base.last_updated_ms == metadata.last_updated_ms:
        metadata = metadata.model_copy(update={"last_updated_ms": int(time.time() * 1000)})
    metadata.spec().check_compatible(metadata.schema())
    metadata.sort_order().check_compatible(metadata.schema())
    return metadata


class StagedTransaction(_StagedMetadataOnce, Transaction):
    """pyiceberg's Transaction, its table metadata computed once per staged change."""


class StagedCreateTransaction(_StagedMetadataOnce, CreateTableTransaction):
    """pyiceberg's CreateTableTransaction, its table metadata computed once per staged change."""


class CatalogTable(Table):
    """A table of the versioned catalog; its transactions are StagedTransactions."""

    def transaction(self) -> Transaction:
        return StagedTransaction(self)


class CommitCatalog(MetastoreCatalog):
    """pyiceberg catalog over the state at ``commit``, plus changes staged in memory.

    ``ref`` is only used in messages. ``properties`` go to pyiceberg (FileIO
    settings); ``warehouse`` is where new tables are placed.
    """

    def __init__(
        self,
        versioned: VersionedCatalog,
        commit: str,
        *,
        ref: str,
        warehouse: str,
        properties: Properties = EMPTY_DICT,
        metadata_cache: MutableMapping[str, TableMetadata] | None = None,
    ) -> None:
        super().__init__("faas", **{**properties, "warehouse": warehouse})
        self.versioned = versioned
        self.commit = commit
        self.ref = ref
        self.warehouse = warehouse.rstrip("/")
        # (kind, key) -> value; None = dropped. Insertion order is kept for logs.
        self._staged: dict[tuple[ChangeKind, str], str | None] = {}
        # Metadata files never change once written: parsed once, by location, and shared
        # between the views of one lakehouse when it passes its cache.
        self._metadata_cache: MutableMapping[str, TableMetadata] = (
            {} if metadata_cache is None else metadata_cache
        )
        # Keys whose next create replaces the table instead of failing on it.
        self._recreating: set[str] = set()

    # -- staged state ---------------------------------------------------------

    def changes(self) -> list[Change]:
        """Everything staged since this view was made, as versioned-catalog changes."""
        return [
            Change(key=key, kind=kind, value=value) for (kind, key), value in self._staged.items()
        ]

    def _lookup(self, kind: ChangeKind, key: str) -> str | None:
        if (kind, key) in self._staged:
            return self._staged[(kind, key)]
        return self.versioned.get(self.commit, key, kind)

    def _live(self, kind: ChangeKind, prefix: str = "") -> dict[str, str]:
        live = self.versioned.entries(self.commit, kind, prefix)
        for (k, key), value in self._staged.items():
            if k != kind or not key.startswith(prefix):
                continue
            if value is None:
                live.pop(key, None)
            else:
                live[key] = value
        return dict(sorted(live.items()))

    def metadata_location(self, key: str) -> str | None:
        """The metadata location of table ``key`` in this view, or None."""
        return self._lookup("table", key)

    def recreate_table_transaction(
        self, identifier: str | Identifier, schema: Schema | pa.Schema, location: str,
        partition_spec: PartitionSpec = UNPARTITIONED_PARTITION_SPEC,
    ) -> CreateTableTransaction:
        """Like create_table_transaction, but replaces the table if it exists.

        Used when a replace changes the schema beyond what the old table can take, or
        its partitions: the key then points at a new table with its own location and
        history.
        """
        key = _key(identifier)
        self._recreating.add(key)
        return self.create_table_transaction(
            identifier, schema, location=location, partition_spec=partition_spec
        )

    # -- tables ---------------------------------------------------------------

    def load_table(self, identifier: str | Identifier) -> Table:
        key = _key(identifier)
        location = self._lookup("table", key)
        if location is None:
            raise NoSuchTableError(f"table {key!r} not found at ref {self.ref!r}")
        return self.table_at(key, location)

    def table_at(self, key: str, location: str) -> Table:
        """Table ``key`` as its metadata file at ``location`` has it; no catalog lookup."""
        metadata = self._metadata_cache.get(location)
        if metadata is None:
            io = self._load_file_io(location=location)
            with storage_errors(f"cannot read table metadata {location}", self.properties):
                metadata = FromInputFile.table_metadata(io.new_input(location))
            self._metadata_cache[location] = metadata
        return CatalogTable(
            identifier=tuple(key.split(".")),
            metadata=metadata,
            metadata_location=location,
            io=self._load_file_io(metadata.properties, location),
            catalog=self,
        )

    def create_table(
        self,
        identifier: str | Identifier,
        schema: Schema | pa.Schema,
        location: str | None = None,
        partition_spec: PartitionSpec = UNPARTITIONED_PARTITION_SPEC,
        sort_order: SortOrder = UNSORTED_SORT_ORDER,
        properties: Properties = EMPTY_DICT,
    ) -> Table:
        transaction = self.create_table_transaction(
            identifier, schema, location, partition_spec, sort_order, properties
        )
        return transaction.commit_transaction()

    def create_table_transaction(
        self,
        identifier: str | Identifier,
        schema: Schema | pa.Schema,
        location: str | None = None,
        partition_spec: PartitionSpec = UNPARTITIONED_PARTITION_SPEC,
        sort_order: SortOrder = UNSORTED_SORT_ORDER,
        properties: Properties = EMPTY_DICT,
    ) -> CreateTableTransaction:
        key = _key(identifier)
        namespace = key.split(".")[0]
        if not self.namespace_exists(namespace):
            raise NoSuchNamespaceError(f"namespace {namespace!r} not found at ref {self.ref!r}")
        if key not in self._recreating and self._lookup("table", key) is not None:
            raise TableAlreadyExistsError(f"table {key!r} already exists at ref {self.ref!r}")
        return StagedCreateTransaction(self._create_staged_table(
            identifier, schema, location, partition_spec, sort_order, properties
        ))

    def commit_table(
        self,
        table: Table,
        requirements: tuple[TableRequirement, ...],
        updates: tuple[TableUpdate, ...],
    ) -> CommitTableResponse:
        """Write the new metadata file and stage its location; the branch does not move.

        Raises:
            CommitFailedException: a requirement does not hold for the staged state.
        """
        key = _key(table.name())
        creating = any(isinstance(r, AssertCreate) for r in requirements)
        current: Table | None
        if creating and key in self._recreating:
            current = None
        else:
            try:
                current = self.load_table(table.name())
            except NoSuchTableError:
                current = None
        staged = self._update_and_stage_table(current, table.name(), requirements, updates)
        if current is not None and staged.metadata == current.metadata:
            return _response(current.metadata, current.metadata_location)
        with storage_errors(
            f"cannot write table metadata {staged.metadata_location}", self.properties
        ):
            self._write_metadata(staged.metadata, staged.io, staged.metadata_location)
        self._metadata_cache[staged.metadata_location] = staged.metadata
        self._staged[("table", key)] = staged.metadata_location
        self._recreating.discard(key)
        logger.debug("staged %s -> %s", key, staged.metadata_location)
        return _response(staged.metadata, staged.metadata_location)

    def _update_and_stage_table(
        self, current_table: Table | None, table_identifier: Identifier,
        requirements: tuple[TableRequirement, ...], updates: tuple[TableUpdate, ...],
    ) -> StagedTable:
        """pyiceberg's, the new metadata made by :func:`_with_updates`: its deep copy of the
        whole metadata was about a fifth of the scheduler's CPU in committing a run's
        outputs. A new table's metadata is still validated whole, as pyiceberg does."""
        if current_table is None:
            return super()._update_and_stage_table(None, table_identifier, requirements, updates)
        for requirement in requirements:
            requirement.validate(current_table.metadata)
        metadata = _with_updates(current_table.metadata, updates, current_table.metadata_location)
        version = self._parse_metadata_version(current_table.metadata_location) + 1
        location = load_location_provider(
            metadata.location, metadata.properties
        ).new_table_metadata_file_location(version)
        return StagedTable(
            identifier=table_identifier, metadata=metadata, metadata_location=location,
            io=self._load_file_io(properties=metadata.properties, location=location), catalog=self,
        )

    def register_table(
        self, identifier: str | Identifier, metadata_location: str, overwrite: bool = False
    ) -> Table:
        key = _key(identifier)
        if not overwrite and self._lookup("table", key) is not None:
            raise TableAlreadyExistsError(f"table {key!r} already exists at ref {self.ref!r}")
        self._staged[("table", key)] = metadata_location
        return self.load_table(identifier)

    def drop_table(self, identifier: str | Identifier) -> None:
        # Only the key goes: older commits still point at the files.
        key = _key(identifier)
        if self._lookup("table", key) is None:
            raise NoSuchTableError(f"table {key!r} not found at ref {self.ref!r}")
        self._staged[("table", key)] = None

    def purge_table(self, identifier: str | Identifier) -> None:
        raise NotImplementedError(
            "data files are shared with older commits; drop the table instead"
        )

    def rename_table(
        self, from_identifier: str | Identifier, to_identifier: str | Identifier
    ) -> Table:
        source, target = _key(from_identifier), _key(to_identifier)
        location = self._lookup("table", source)
        if location is None:
            raise NoSuchTableError(f"table {source!r} not found at ref {self.ref!r}")
        if self._lookup("table", target) is not None:
            raise TableAlreadyExistsError(f"table {target!r} already exists at ref {self.ref!r}")
        if not self.namespace_exists(target.split(".")[0]):
            raise NoSuchNamespaceError(
                f"namespace {target.split('.')[0]!r} not found at ref {self.ref!r}"
            )
        self._staged[("table", source)] = None
        self._staged[("table", target)] = location
        return self.load_table(to_identifier)

    def table_exists(self, identifier: str | Identifier) -> bool:
        return self._lookup("table", _key(identifier)) is not None

    def namespace_exists(self, namespace: str | Identifier) -> bool:
        return self._lookup("namespace", self.namespace_to_string(namespace)) is not None

    def list_tables(self, namespace: str | Identifier) -> list[Identifier]:
        ns = self.namespace_to_string(namespace, NoSuchNamespaceError)
        if not self.namespace_exists(ns):
            raise NoSuchNamespaceError(f"namespace {ns!r} not found at ref {self.ref!r}")
        return [tuple(key.split(".")) for key in self._live("table", f"{ns}.")]

    # -- namespaces -----------------------------------------------------------

    def create_namespace(
        self, namespace: str | Identifier, properties: Properties = EMPTY_DICT
    ) -> None:
        ns = self.namespace_to_string(namespace)
        if self._lookup("namespace", ns) is not None:
            raise NamespaceAlreadyExistsError(
                f"namespace {ns!r} already exists at ref {self.ref!r}"
            )
        if properties:
            raise NotImplementedError("namespace properties are not supported yet")
        self._staged[("namespace", ns)] = NAMESPACE_PRESENT

    def drop_namespace(self, namespace: str | Identifier) -> None:
        ns = self.namespace_to_string(namespace, NoSuchNamespaceError)
        if self._lookup("namespace", ns) is None:
            raise NoSuchNamespaceError(f"namespace {ns!r} not found at ref {self.ref!r}")
        if self._live("table", f"{ns}."):
            raise NamespaceNotEmptyError(f"namespace {ns!r} still has tables")
        self._staged[("namespace", ns)] = None

    def list_namespaces(self, namespace: str | Identifier = ()) -> list[Identifier]:
        # Namespaces are flat: nothing lives below one.
        if self.identifier_to_tuple(namespace):
            return []
        return [(ns,) for ns in self._live("namespace")]

    def load_namespace_properties(self, namespace: str | Identifier) -> Properties:
        ns = self.namespace_to_string(namespace, NoSuchNamespaceError)
        if self._lookup("namespace", ns) is None:
            raise NoSuchNamespaceError(f"namespace {ns!r} not found at ref {self.ref!r}")
        return {}

    def update_namespace_properties(
        self,
        namespace: str | Identifier,
        removals: set[str] | None = None,
        updates: Properties = EMPTY_DICT,
    ) -> PropertiesUpdateSummary:
        raise NotImplementedError("namespace properties are not supported yet")

    # -- views (not supported) ------------------------------------------------

    def list_views(self, namespace: str | Identifier) -> list[Identifier]:
        return []

    def view_exists(self, identifier: str | Identifier) -> bool:
        return False

    def load_view(self, identifier: str | Identifier) -> View:
        raise NoSuchViewError(f"view {identifier!r} not found: views are not supported")

    def drop_view(self, identifier: str | Identifier) -> None:
        raise NoSuchViewError(f"view {identifier!r} not found: views are not supported")

    def register_view(self, identifier: str | Identifier, metadata_location: str) -> View:
        raise NotImplementedError("views are not supported")

    def create_view(
        self,
        identifier: str | Identifier,
        schema: Schema | pa.Schema,
        view_version: ViewVersion,
        location: str | None = None,
        properties: Properties = EMPTY_DICT,
    ) -> View:
        raise NotImplementedError("views are not supported")

    # -- locations ------------------------------------------------------------

    def _get_default_warehouse_location(self, database_name: str, table_name: str) -> str:
        return new_table_location(self.warehouse, database_name, table_name)


def _response(metadata: TableMetadata, location: str) -> CommitTableResponse:
    # The field is declared under its JSON alias, which mypy sees without pydantic's plugin.
    return CommitTableResponse(metadata=metadata, metadata_location=location)  # type: ignore[call-arg]


def _key(identifier: str | Identifier) -> str:
    parts = CommitCatalog.identifier_to_tuple(identifier)
    return ".".join(parts)
