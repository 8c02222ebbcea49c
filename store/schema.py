"""The versioned catalog's SQL tables, its records, and the queries shared by its parts.

Three tables hold everything:

- ``refs``: one row per branch or tag (name, kind, head commit). Branch
  creation inserts one row; a commit or merge moves ``head`` with a
  compare-and-swap.
- ``commits``: immutable, content-addressed; ``parent`` is the first parent
  (the branch's previous head), ``parent2`` the merged-in head of a merge.
- ``commit_changes``: what each commit changed, one row per key. A merge commit
  records every key it brings in from ``parent2``, so the value of a key at a
  commit is always the nearest change along first parents.

Everything here is SQLAlchemy Core that runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.selectable import CTE

from faas.protocol.errors import InvalidInput, NotFound

ChangeKind = Literal["table", "namespace"]
CHANGE_KINDS: frozenset[str] = frozenset({"table", "namespace"})

# The value recorded for a namespace that exists; namespaces have no properties yet,
# but a JSON object leaves room for them.
NAMESPACE_PRESENT = "{}"

# Every catalog starts from the same empty root, so two processes that open a new
# catalog at once agree on it, and every branch shares it as a common ancestor.
ROOT_COMMIT = hashlib.sha256(b"faas:root").hexdigest()

_HEX = re.compile(r"[0-9a-f]+")

metadata = MetaData()

refs = Table(
    "refs",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("kind", String(16), nullable=False),  # 'branch' | 'tag'
    Column("head", String(64), nullable=False),
)

commits = Table(
    "commits",
    metadata,
    Column("hash", String(64), primary_key=True),
    Column("parent", String(64), nullable=True),
    Column("parent2", String(64), nullable=True),
    Column("message", Text, nullable=False),
    Column("author", String(255), nullable=False),
    Column("created_at", String(40), nullable=False),  # UTC ISO 8601
    Column("properties", Text, nullable=False),  # JSON object of str -> str
)

commit_changes = Table(
    "commit_changes",
    metadata,
    Column("commit", String(64), ForeignKey("commits.hash"), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("key", String(512), primary_key=True),
    Column("value", Text, nullable=True),  # NULL = dropped
    Index("ix_commit_changes_key_commit", "key", "commit"),
)

# Results a run learned that outlive every process: what an expectation concluded
# from inputs with a given cache key. Keyed by (kind, cache key); never part of a ref.
results = Table(
    "results",
    metadata,
    Column("kind", String(32), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),  # JSON
    Column("created_at", String(40), nullable=False),
)


@dataclass(frozen=True)
class Change:
    """One key changed by a commit: a table's new metadata location, or a namespace.

    ``value`` None means the key was dropped.
    """

    key: str
    kind: ChangeKind = "table"
    value: str | None = None


@dataclass(frozen=True)
class CommitInfo:
    hash: str
    parents: list[str]
    message: str
    author: str
    created_at: datetime
    properties: dict[str, str] = field(default_factory=dict)


def first_parent_chain(start: str, max_depth: int | None = None, name: str = "chain") -> CTE:
    """Recursive CTE of (hash, parent, depth) along first parents from ``start``.

    With ``max_depth`` the walk stops there (``start`` is depth 0).
    """
    base = select(commits.c.hash, commits.c.parent, literal(0, Integer).label("depth")).where(
        commits.c.hash == start
    )
    chain = base.cte(name, recursive=True)
    step = select(commits.c.hash, commits.c.parent, (chain.c.depth + 1).label("depth")).where(
        commits.c.hash == chain.c.parent
    )
    if max_depth is not None:
        step = step.where(chain.c.depth < max_depth)
    return chain.union_all(step)


def ancestry(start: str, name: str = "reach") -> CTE:
    """Recursive CTE of (hash, parent, parent2) of ``start`` and all its ancestors.

    UNION (not UNION ALL) stops the walk at commits already reached through
    another path, so each commit appears once.
    """
    base = select(commits.c.hash, commits.c.parent, commits.c.parent2).where(
        commits.c.hash == start
    )
    reach = base.cte(name, recursive=True)
    step = select(commits.c.hash, commits.c.parent, commits.c.parent2).where(
        or_(commits.c.hash == reach.c.parent, commits.c.hash == reach.c.parent2)
    )
    return reach.union(step)


def require_commit(conn: Connection, commit: str) -> None:
    """Raises NotFound if ``commit`` does not exist."""
    if conn.execute(select(commits.c.hash).where(commits.c.hash == commit)).first() is None:
        raise NotFound(f"commit {commit[:12]!r} not found")


def commit_by_prefix(conn: Connection, prefix: str, ref: str) -> str:
    """The one commit whose hash starts with ``prefix`` (lower-case hex); ``ref`` is for messages.

    Raises:
        NotFound: ``prefix`` is not hex, or no commit starts with it.
        InvalidInput: several commits start with it.
    """
    if not prefix or len(prefix) > 64 or not _HEX.fullmatch(prefix):
        raise NotFound(f"ref {ref!r} not found: {prefix!r} is not a commit hash")
    rows = conn.execute(
        select(commits.c.hash).where(commits.c.hash.startswith(prefix)).limit(2)
    ).all()
    if not rows:
        raise NotFound(f"ref {ref!r} not found: no commit starts with {prefix!r}")
    if len(rows) > 1:
        raise InvalidInput(f"ref {ref!r} is ambiguous: several commits start with {prefix!r}")
    return str(rows[0].hash)


def is_ancestor(conn: Connection, commit: str, tip: str) -> bool:
    """True if ``commit`` is ``tip`` or reachable from it through any parent."""
    if commit == tip:
        return True
    reach = ancestry(tip)
    hit = conn.execute(select(reach.c.hash).where(reach.c.hash == commit).limit(1)).first()
    return hit is not None


MAX_AUTHOR = 255


def has_prefix(column: Any, prefix: str) -> Any:
    """``column`` starts with ``prefix``, case-sensitively on every backend.

    (SQLite's LIKE ignores ASCII case, so ``startswith`` would let ``Shop.x`` match ``shop.``.)
    """
    return func.substr(column, 1, len(prefix)) == prefix


def check_changes(changes: Iterable[Change]) -> None:
    seen: set[tuple[str, str]] = set()
    for change in changes:
        if change.kind not in CHANGE_KINDS:
            raise InvalidInput(
                f"change of {change.key!r} has unknown kind {change.kind!r}; "
                f"expected one of {sorted(CHANGE_KINDS)}"
            )
        if (change.kind, change.key) in seen:
            raise InvalidInput(f"{change.kind} {change.key!r} changed twice in one commit")
        seen.add((change.kind, change.key))


def commit_hash(
    parent: str,
    parent2: str | None,
    changes: list[Change],
    message: str,
    author: str,
    created_at: str,
    properties: dict[str, str],
) -> str:
    body = {
        "parent": parent,
        "parent2": parent2,
        "changes": sorted([c.kind, c.key, c.value] for c in changes),
        "message": message,
        "author": author,
        "created_at": created_at,
        "properties": properties,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def commit_info(row: Any) -> CommitInfo:
    parents = [p for p in (row.parent, row.parent2) if p]
    return CommitInfo(
        hash=row.hash,
        parents=parents,
        message=row.message,
        author=row.author,
        created_at=datetime.fromisoformat(row.created_at),
        properties=json.loads(row.properties or "{}"),
    )
