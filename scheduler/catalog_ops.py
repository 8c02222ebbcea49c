"""Catalog requests from clients, answered on the scheduler's store thread.

Each request is handled by one synchronous call, so a request sees one
consistent catalog and store calls never interleave.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from faas.protocol.errors import InvalidInput
from faas.protocol.messages import (
    CreateNamespace,
    CreateRef,
    DeleteRef,
    Diff,
    DropNamespace,
    DropTable,
    GetTable,
    ListNamespaces,
    ListRefs,
    ListTables,
    Log,
    Merge,
    PruneRuns,
    RevertTable,
)
from faas.protocol.replies import (
    Column,
    Commit,
    Commits,
    Differences,
    KeyDifference,
    Merged,
    MergedChange,
    NamespaceChanged,
    Namespaces,
    Pruned,
    Ref,
    RefDeleted,
    Refs,
    Table,
    TableDropped,
    TableReverted,
    Tables,
)


def describe_commit(c: Any, tables: list[str] | None = None) -> Commit:
    return Commit(
        hash=c.hash, parents=list(c.parents), message=c.message, author=c.author,
        created_at=c.created_at.isoformat(), properties=dict(c.properties),
        tables=tables or [],
    )


def describe_ref(r: Any) -> Ref:
    return Ref(
        name=r.name, kind=r.kind, head=r.head, message=r.commit.message,
        created_at=r.commit.created_at.isoformat(),
    )


def table_fields(info: Any) -> dict[str, Any]:
    """What :class:`Table` (and :class:`Imported`) say of a store ``TableInfo``."""
    return {
        "key": info.key,
        "metadata_location": info.metadata_location,
        "snapshot_id": info.snapshot_id,
        "rows": info.row_count,
        "files": info.file_count,
        "bytes": info.size_bytes,
        "schema": [Column(name=f.name, type=str(f.type)) for f in info.schema],
        "partitioned_by": info.partitioned_by,
    }


CatalogReply = (
    Namespaces | NamespaceChanged | Tables | Table | TableDropped | TableReverted | Refs | Ref
    | RefDeleted | Merged | Differences | Commits | Pruned
)


def handle(
    lh: Any, request: Any, running_branches: Iterable[str] = (), author: str = "faas"
) -> CatalogReply:
    """Answer one catalog request. Raises the store's typed errors."""
    cat = lh.catalog
    match request:
        case ListNamespaces(ref=ref):
            return Namespaces(names=lh.namespaces(ref))
        case CreateNamespace(name=name, ref=ref):
            return NamespaceChanged(namespace=name, commit=lh.create_namespace(name, ref))
        case DropNamespace(name=name, ref=ref):
            return NamespaceChanged(namespace=name, commit=lh.drop_namespace(name, ref))
        case ListTables(namespace=ns, ref=ref):
            return Tables(keys=lh.tables(ns, ref))
        case GetTable(key=key, ref=ref):
            return Table(**table_fields(lh.table_info(key, ref)))
        case DropTable(key=key, ref=ref):
            return TableDropped(key=key, commit=lh.drop_table(key, ref))
        case RevertTable(key=key, branch=branch, to_ref=to_ref):
            commit, changed = lh.revert_table(key, branch, to_ref)
            return TableReverted(key=key, commit=commit, changed=changed)
        case ListRefs(kind=kind, include_runs=include_runs):
            refs = cat.branches(include_runs=include_runs) if kind == "branch" else cat.tags()
            return Refs(refs=[describe_ref(r) for r in refs])
        case CreateRef(kind=kind, name=name, from_ref=from_ref):
            create = cat.create_branch if kind == "branch" else cat.create_tag
            return describe_ref(create(name, from_ref))
        case DeleteRef(kind=kind, name=name):
            (cat.delete_branch if kind == "branch" else cat.delete_tag)(name)
            return RefDeleted(name=name, kind=kind)
        case Merge(source=source, into=into, message=message, fast_forward=ff):
            result = cat.merge(source, into, message=message, fast_forward=ff, author=author)
            return Merged(
                commit=result.commit,
                fast_forward=result.fast_forward,
                changes=[
                    MergedChange(key=c.key, kind=c.kind, dropped=c.value is None)
                    for c in result.changes
                ],
            )
        case Diff(from_ref=a, to_ref=b):
            return Differences(changes=[
                KeyDifference(
                    key=d.key, kind=d.kind, status=d.status,
                    old_snapshot_id=d.old_snapshot_id, new_snapshot_id=d.new_snapshot_id,
                    old_rows=d.old_rows, new_rows=d.new_rows,
                )
                for d in lh.diff(a, b)
            ])
        case Log(ref=ref, n=n):
            found = cat.log(ref, n)
            changed = cat.changed_tables([c.hash for c in found])
            return Commits(commits=[describe_commit(c, changed[c.hash]) for c in found])
        case PruneRuns(older_than=older_than):
            return Pruned(branches=cat.prune_run_branches(keep=running_branches, older_than=older_than))
    raise InvalidInput(f"unsupported request {type(request).__name__}")
