"""Versioned catalog, Iceberg tables, import, scans and SQL queries.

Usable as a library with no server: the scheduler uses the catalog side
(:class:`Lakehouse`, :class:`VersionedCatalog`); workers use the warehouse
helpers (:func:`scan_metadata`, :func:`write_parquet`, :func:`query_tables`),
which need no catalog access.

Names load on first use, so a function process that only scans a table does
not pay for SQLAlchemy and the catalog at start.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Change": "faas.store.catalog",
    "CommitInfo": "faas.store.catalog",
    "VersionedCatalog": "faas.store.catalog",
    "KeyDiff": "faas.store.merge",
    "MergeResult": "faas.store.merge",
    "RefInfo": "faas.store.refs",
    "TableDiff": "faas.store.lakehouse",
    "write_parquet": "faas.store.files",
    "read_source_files": "faas.store.importer",
    "Lakehouse": "faas.store.lakehouse",
    "query_tables": "faas.store.query",
    "scan_metadata": "faas.store.scan",
    "TableInfo": "faas.store.transaction",
    "Transaction": "faas.store.transaction",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'faas.store' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
