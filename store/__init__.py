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
    "Change": "store.catalog",
    "CommitInfo": "store.catalog",
    "VersionedCatalog": "store.catalog",
    "KeyDiff": "store.merge",
    "MergeResult": "store.merge",
    "RefInfo": "store.refs",
    "TableDiff": "store.lakehouse",
    "write_parquet": "store.files",
    "read_source_files": "store.importer",
    "Lakehouse": "store.lakehouse",
    "query_tables": "store.query",
    "scan_metadata": "store.scan",
    "TableInfo": "store.transaction",
    "Transaction": "store.transaction",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'store' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
