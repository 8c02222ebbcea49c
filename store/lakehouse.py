"""The Lakehouse: Iceberg tables under a versioned catalog, in one warehouse.

Every read names a ref (``main``, ``main@<hash>``, ``@<hash>``, a tag) and sees
the tables as they were at that commit. Every write goes through a
:class:`store.Transaction` and lands as one commit.

Operations on refs and history that need no Iceberg metadata (``branches``,
``tags``, ``create_branch``, ``delete_branch``, ``create_tag``, ``delete_tag``,
``log``, ``merge``, ``prune_run_branches``) are on :attr:`Lakehouse.catalog`,
the :class:`store.VersionedCatalog`; there is one way to call each.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import pyarrow as pa

from faas.protocol.errors import AlreadyExists, CommitConflict, InvalidInput, NotFound
from faas.protocol.messages import PlanColumn
from faas.store import warehouse as storage
from faas.store.catalog import NAMESPACE_PRESENT, Change, ChangeKind, VersionedCatalog
from faas.store.iceberg import CommitCatalog
from faas.store.importer import expand_paths, read_files
from faas.store.keys import check_namespace, split_key
from faas.store.query import query_tables, referenced_tables
from faas.store.scan import scan_table
from faas.store.transaction import (
    TableInfo,
    Transaction,
    WriteMode,
    load_table,
    missing_namespace,
    table_info,
)

logger = logging.getLogger(__name__)

# Single-key operations (namespaces, revert) retry a lost compare-and-swap this
# many times, checking their preconditions again against the new head each time.
_COMMIT_ATTEMPTS = 5

# How many tables a refused drop_namespace names.
_TABLES_SHOWN = 5


@dataclass(frozen=True)
class TableDiff:
    """A table or namespace that differs between two refs.

    Snapshot ids and row counts come from each side's Iceberg metadata; None
    where the table is absent (and always for a namespace).
    """

    key: str
    kind: ChangeKind
    status: Literal["added", "dropped", "changed"]
    old_snapshot_id: int | None
    new_snapshot_id: int | None
    old_rows: int | None
    new_rows: int | None


class Lakehouse:
    """Iceberg tables in ``warehouse``, versioned by the catalog at ``catalog``.

    Defaults: catalog ``sqlite:///{home}/catalog.db``, warehouse
    ``file://{home}/warehouse``; ``s3://bucket/prefix`` is an S3-compatible
    store, configured by the AWS environment (see :mod:`store.warehouse`).
    ``io_properties`` are pyiceberg FileIO settings (for example ``s3.endpoint``)
    that override the environment's, used for every table read and write.
    Branches, tags, log and merge are on :attr:`catalog`.

    Raises:
        StorageError: an object-store warehouse cannot be reached (no such
            bucket, refused credentials, no answer from the endpoint).
    """

    def __init__(
        self,
        home: str | Path,
        warehouse: str | None = None,
        catalog: str | None = None,
        *,
        io_properties: dict[str, str] | None = None,
    ) -> None:
        self.home = Path(home).expanduser().resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        if warehouse is None:
            warehouse = f"file://{self.home}/warehouse"
        elif "://" not in warehouse:
            # A bare path would be resolved against whatever directory a worker runs in.
            warehouse = f"file://{Path(warehouse).expanduser().resolve()}"
        self.warehouse = warehouse.rstrip("/")
        self.io_properties = storage.io_properties(io_properties)
        storage.check_warehouse(self.warehouse, self.io_properties)
        self.catalog = VersionedCatalog(catalog or f"sqlite:///{self.home}/catalog.db")
        self._metadata: MutableMapping[str, Any] = Recent(METADATA_KEPT)
        logger.info(
            "lakehouse at %s: catalog %r, warehouse %s", self.home, self.catalog, self.warehouse
        )

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lakehouse({str(self.home)!r}, warehouse={self.warehouse!r})"

    def view_at(self, commit: str, ref: str) -> CommitCatalog:
        """A pyiceberg catalog over ``commit``; ``ref`` names it in messages."""
        return CommitCatalog(
            self.catalog, commit, ref=ref, warehouse=self.warehouse, properties=self.io_properties,
            metadata_cache=self._metadata,
        )

    def view(self, ref: str = "main") -> CommitCatalog:
        """A pyiceberg catalog over the commit ``ref`` resolves to.

        Raises:
            NotFound: ``ref`` does not resolve.
        """
        _, commit = self.catalog.resolve(ref)
        return self.view_at(commit, ref)

    # -- namespaces -----------------------------------------------------------

    def namespaces(self, ref: str = "main") -> list[str]:
        """Namespaces at ``ref``, sorted.

        Raises:
            NotFound: ``ref`` does not resolve.
        """
        _, commit = self.catalog.resolve(ref)
        return list(self.catalog.entries(commit, "namespace"))

    def create_namespace(self, namespace: str, ref: str = "main") -> str:
        """Create ``namespace`` on the branch of ``ref`` as a commit of its own; return its hash.

        Raises:
            InvalidInput: a bad name, or ``ref`` is not a branch.
            AlreadyExists: the namespace exists.
            NotFound: ``ref`` does not resolve.
            CommitConflict: ``ref`` names a commit (``main@<hash>``) that is no
                longer the branch head.
        """
        check_namespace(namespace)

        def plan(head: str) -> tuple[list[Change], str]:
            if self.catalog.get(head, namespace, "namespace") is not None:
                raise AlreadyExists(f"namespace {namespace!r} already exists at ref {ref!r}")
            change = Change(key=namespace, kind="namespace", value=NAMESPACE_PRESENT)
            return [change], f"create namespace {namespace}"

        return self._commit_planned(ref, "create namespace", plan)

    def drop_namespace(self, namespace: str, ref: str = "main") -> str:
        """Drop the empty ``namespace`` on the branch of ``ref`` as one commit; return its hash.

        Raises:
            InvalidInput: a bad name, tables still in the namespace (up to five
                are named), or ``ref`` is not a branch.
            NotFound: no such namespace, or ``ref`` does not resolve.
            CommitConflict: ``ref`` names a commit that is no longer the branch head.
        """
        check_namespace(namespace)

        def plan(head: str) -> tuple[list[Change], str]:
            if self.catalog.get(head, namespace, "namespace") is None:
                raise missing_namespace(namespace, ref)
            tables = list(self.catalog.entries(head, "table", prefix=f"{namespace}."))
            if tables:
                shown = ", ".join(tables[:_TABLES_SHOWN])
                more = len(tables) - _TABLES_SHOWN
                listed = shown + (f" and {more} more" if more > 0 else "")
                raise InvalidInput(
                    f"cannot drop namespace {namespace!r} at ref {ref!r}: it still has "
                    f"{len(tables)} table{'' if len(tables) == 1 else 's'} ({listed}); "
                    "drop them first"
                )
            change = Change(key=namespace, kind="namespace", value=None)
            return [change], f"drop namespace {namespace}"

        return self._commit_planned(ref, "drop namespace", plan)

    def _commit_planned(
        self, ref: str, what: str, plan: Callable[[str], tuple[list[Change], str]]
    ) -> str:
        """Commit ``plan(head)`` on the branch of ``ref``; plan again if the branch moved.
        A plan with no changes commits nothing: the head is returned.

        A pinned ref (``main@<hash>``) is not retried: the caller asked for that base.
        """
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            branch, head = self.catalog.resolve(ref)
            if branch is None:
                raise InvalidInput(f"cannot {what} on ref {ref!r}: it is not a branch")
            changes, message = plan(head)
            if not changes:
                return head
            try:
                return self.catalog.commit(branch, head, changes, message)
            except CommitConflict:
                if "@" in ref or attempt == _COMMIT_ATTEMPTS:
                    raise
                logger.info("%s: branch %s moved, trying again", what, branch)
        raise AssertionError("unreachable")

    # -- tables ---------------------------------------------------------------

    def tables(self, namespace: str | None = None, ref: str = "main") -> list[str]:
        """Table keys at ``ref``, sorted; only those in ``namespace`` if given.

        Raises:
            NotFound: ``ref`` does not resolve, or ``namespace`` does not exist.
            InvalidInput: a bad namespace name.
        """
        _, commit = self.catalog.resolve(ref)
        if namespace is None:
            return list(self.catalog.entries(commit, "table"))
        check_namespace(namespace)
        if self.catalog.get(commit, namespace, "namespace") is None:
            raise missing_namespace(namespace, ref)
        return list(self.catalog.entries(commit, "table", prefix=f"{namespace}."))

    def table_info(self, key: str, ref: str = "main") -> TableInfo:
        """Metadata location, snapshot, schema and totals of table ``key`` at ``ref``.

        Raises:
            NotFound: no such table, or ``ref`` does not resolve.
            InvalidInput: ``key`` is not ``namespace.table``.
        """
        split_key(key)
        return table_info(load_table(self.view(ref), key), key)

    def drop_table(self, key: str, ref: str = "main") -> str:
        """Drop table ``key`` on the branch of ``ref`` as one commit; return its hash.

        Older commits keep the table and its files.

        Raises:
            NotFound: no such table, or ``ref`` does not resolve.
            InvalidInput: a bad key, or ``ref`` is not a branch.
            CommitConflict: the table changed on the branch meanwhile.
        """
        split_key(key)
        transaction = self.begin(ref)
        transaction.require_branch()
        transaction.drop(key)
        return transaction.publish(f"drop table {key}")

    def revert_table(self, key: str, branch: str, to_ref: str) -> tuple[str, bool]:
        """Make table ``key`` on ``branch`` what it is at ``to_ref``, as one commit.

        The table gets the metadata it has at ``to_ref`` (its data files are
        shared, not copied); if it does not exist there, it is dropped.
        Returns the new commit hash and True; the branch's head and False if the
        table is already as at ``to_ref`` (nothing is committed).

        Raises:
            InvalidInput: a bad key, ``branch`` is not a branch, or the table exists
                neither on ``branch`` nor at ``to_ref``.
            NotFound: a ref does not resolve, or the table's namespace does not
                exist on ``branch``.
            CommitConflict: ``branch`` names a commit that is no longer its head.
        """
        split_key(key)
        namespace, _ = split_key(key)
        _, source = self.catalog.resolve(to_ref)
        wanted = self.catalog.get(source, key)

        unchanged = False

        def plan(head: str) -> tuple[list[Change], str]:
            nonlocal unchanged
            current = self.catalog.get(head, key)
            unchanged = current == wanted
            if unchanged:
                if wanted is None:
                    raise InvalidInput(
                        f"table {key!r} exists neither on {branch!r} nor at {to_ref!r} "
                        "(absent on both); nothing to revert"
                    )
                return [], ""  # already as at to_ref: nothing to do
            if wanted is not None and self.catalog.get(head, namespace, "namespace") is None:
                raise NotFound(
                    f"namespace {namespace!r} not found at ref {branch!r}; "
                    f"create it with: faas namespace create {namespace}"
                )
            return [Change(key=key, kind="table", value=wanted)], f"revert {key} to {to_ref}"

        commit = self._commit_planned(branch, f"revert table {key}", plan)
        return commit, not unchanged

    def diff(self, from_ref: str, to_ref: str) -> list[TableDiff]:
        """Tables and namespaces that differ from ``from_ref`` to ``to_ref``.

        Sorted by kind (namespaces first), then key. Reads only the metadata
        files of the tables that differ.

        Raises:
            NotFound: a ref does not resolve.
        """
        view = self.view(from_ref)
        out: list[TableDiff] = []
        for d in self.catalog.diff(from_ref, to_ref):
            status: Literal["added", "dropped", "changed"] = (
                "added" if d.old is None else "dropped" if d.new is None else "changed"
            )
            old = new = None
            if d.kind == "table":
                old = table_info(view.table_at(d.key, d.old), d.key) if d.old else None
                new = table_info(view.table_at(d.key, d.new), d.key) if d.new else None
            out.append(
                TableDiff(
                    key=d.key,
                    kind=d.kind,
                    status=status,
                    old_snapshot_id=old.snapshot_id if old else None,
                    new_snapshot_id=new.snapshot_id if new else None,
                    old_rows=old.row_count if old else None,
                    new_rows=new.row_count if new else None,
                )
            )
        return out

    def begin(self, ref: str = "main", author: str = "faas") -> Transaction:
        """Start a transaction on the current commit of ``ref``.

        Raises:
            NotFound: ``ref`` does not resolve.
        """
        return Transaction(self, ref, author=author)

    def import_files(
        self,
        key: str,
        paths: Sequence[str] | str,
        ref: str = "main",
        mode: WriteMode = "replace",
        format: str | None = None,
        plan: Sequence[PlanColumn] | None = None,
    ) -> TableInfo:
        """Import CSV/TSV/Parquet files (globs allowed) into table ``key``, as one commit;
        ``plan``: an import plan (store.importer.plan_files, edited) for files that disagree.

        Raises:
            NotFound: the namespace does not exist, or a path or glob matches nothing.
            InvalidInput: a bad key, mode or format, a file that does not parse, files
                that disagree with no plan to settle it, or ``ref`` is not a branch.
            CommitConflict: the table changed on the branch while importing.
        """
        namespace, _ = split_key(key)
        transaction = self.begin(ref)
        transaction.require_branch()
        transaction.require_namespace(namespace)
        files = expand_paths(paths)
        data = read_files(files, format, plan)
        transaction.write(key, data, mode)
        n = len(files)
        commit = transaction.publish(f"import {key} from {n} file{'' if n == 1 else 's'}")
        logger.info("imported %d rows into %s from %d files", data.num_rows, key, n)
        return table_info(load_table(self.view_at(commit, ref), key), key)

    def scan(
        self,
        key: str,
        ref: str = "main",
        columns: Sequence[str] | None = None,
        row_filter: str | None = None,
        snapshot_id: int | None = None,
    ) -> pa.Table:
        """Read table ``key`` at ``ref`` with optional projection, filter and snapshot.

        Raises:
            NotFound: no such table or snapshot, or ``ref`` does not resolve.
            InvalidInput: a bad filter or an unknown column.
        """
        table = load_table(self.view(ref), key)
        return scan_table(
            table,
            columns=columns,
            row_filter=row_filter,
            snapshot_id=snapshot_id,
            name=f"table {key!r}",
        )

    def query(self, sql: str, namespace: str | None = None, ref: str = "main") -> pa.Table:
        """Run a DuckDB SELECT over the tables at ``ref``.

        Bare table names are looked up in ``namespace``; ``ns.table`` names are keys.

        Raises:
            NotFound: the SQL reads a table that does not exist.
            InvalidInput: the SQL does not parse or fails to run.
        """
        if namespace is not None:
            check_namespace(namespace)
        names = referenced_tables(sql)
        view = self.view(ref)
        tables: dict[str, pa.Table] = {}
        for name in names:
            if "." in name:
                key = name
            elif namespace is not None:
                key = f"{namespace}.{name}"
            else:
                raise NotFound(
                    f"table {name!r} not found: give a namespace, or write it as namespace.{name}"
                )
            try:
                split_key(key)
            except InvalidInput as e:
                raise NotFound(f"table {key!r} not found at ref {ref!r}") from e
            tables[name] = scan_table(load_table(view, key), name=f"table {key!r}")
        return query_tables(sql, tables)


# Parsed Iceberg metadata files a lakehouse keeps between views (planning reads every
# table of a project at each submit; most have not changed since the last one).
METADATA_KEPT = 512


class Recent(OrderedDict):  # type: ignore[type-arg]
    """A dict that forgets its least recently used entries past ``size``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
