"""The Lakehouse: Iceberg tables under a versioned catalog, in one warehouse.

Every read names a ref (``main``, ``main@<hash>``, ``@<hash>``, a tag) and sees
the tables as they were at that commit. Every write goes through a
:class:`store.Transaction` and lands as one commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import pyarrow as pa

from protocol.errors import AlreadyExists, CommitConflict, InvalidInput, NotFound
from store.catalog import NAMESPACE_PRESENT, Change, VersionedCatalog
from store.iceberg import CommitCatalog
from store.importer import expand_paths, read_files
from store.keys import check_namespace, split_key
from store.query import query_tables, referenced_tables
from store.scan import scan_table
from store.transaction import TableInfo, Transaction, WriteMode, load_table, table_info

logger = logging.getLogger(__name__)

# create_namespace retries a lost compare-and-swap this many times; the change
# does not depend on the rest of the catalog, so a retry is always safe.
_NAMESPACE_COMMIT_ATTEMPTS = 5


class Lakehouse:
    """Iceberg tables in ``warehouse``, versioned by the catalog at ``catalog``.

    Defaults: catalog ``sqlite:///{home}/catalog.db``, warehouse
    ``file://{home}/warehouse``. ``io_properties`` are pyiceberg FileIO settings
    (for example ``s3.endpoint``) used for every table read and write.
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
        self.io_properties = dict(io_properties or {})
        self.catalog = VersionedCatalog(catalog or f"sqlite:///{self.home}/catalog.db")
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
            self.catalog, commit, ref=ref, warehouse=self.warehouse, properties=self.io_properties
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
        for attempt in range(1, _NAMESPACE_COMMIT_ATTEMPTS + 1):
            branch, head = self.catalog.resolve(ref)
            if branch is None:
                raise InvalidInput(f"cannot create namespace on ref {ref!r}: it is not a branch")
            if self.catalog.get(head, namespace, "namespace") is not None:
                raise AlreadyExists(f"namespace {namespace!r} already exists at ref {ref!r}")
            change = Change(key=namespace, kind="namespace", value=NAMESPACE_PRESENT)
            try:
                return self.catalog.commit(branch, head, [change], f"create namespace {namespace}")
            except CommitConflict:
                # A pinned commit cannot be retried: the caller asked for that base.
                if "@" in ref or attempt == _NAMESPACE_COMMIT_ATTEMPTS:
                    raise
                logger.info("create namespace %s: branch %s moved, retrying", namespace, branch)
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
            raise NotFound(f"namespace {namespace!r} not found at ref {ref!r}")
        return list(self.catalog.entries(commit, "table", prefix=f"{namespace}."))

    def table_info(self, key: str, ref: str = "main") -> TableInfo:
        """Metadata location, snapshot, schema and totals of table ``key`` at ``ref``.

        Raises:
            NotFound: no such table, or ``ref`` does not resolve.
            InvalidInput: ``key`` is not ``namespace.table``.
        """
        split_key(key)
        return table_info(load_table(self.view(ref), key), key)

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
    ) -> TableInfo:
        """Import CSV/TSV/Parquet files (globs allowed) into table ``key``, as one commit.

        Raises:
            NotFound: the namespace does not exist, or a path or glob matches nothing.
            InvalidInput: a bad key, mode or format, a file that does not parse,
                or ``ref`` is not a branch.
            CommitConflict: the branch moved while importing.
        """
        namespace, _ = split_key(key)
        transaction = self.begin(ref)
        transaction.require_branch()
        transaction.require_namespace(namespace)
        files = expand_paths(paths)
        data = read_files(files, format)
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
