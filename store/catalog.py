"""The versioned catalog: refs, commits and per-commit changes in SQL tables.

A commit records only what it changed (a table key now points at a new Iceberg
metadata location, or was dropped; a namespace was created or dropped). The
state of the catalog at a commit is found by walking its first-parent chain
back to the nearest change of each key. A merge commit (``parent2``, added
later) will record every key it brings in from its second parent as its own
change, so first-parent resolution stays correct after merges.

A commit moves a branch with one compare-and-swap of ``refs.head`` inside the
same database transaction that inserts the commit, so readers never see a head
without its commit and two writers from the same base cannot both win.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.selectable import CTE

from protocol.errors import CommitConflict, InvalidInput, NotFound

logger = logging.getLogger(__name__)

ChangeKind = Literal["table", "namespace"]
CHANGE_KINDS: frozenset[str] = frozenset({"table", "namespace"})

# The value recorded for a namespace that exists; namespaces have no properties yet,
# but a JSON object leaves room for them.
NAMESPACE_PRESENT = "{}"

# Every catalog starts from the same empty root, so two processes that open a new
# catalog at once agree on it, and every branch shares it as a common ancestor.
ROOT_COMMIT = hashlib.sha256(b"faas:root").hexdigest()

_SQLITE_BUSY_TIMEOUT_MS = 30_000
_HEX = re.compile(r"[0-9a-f]+")

_metadata = MetaData()

refs = Table(
    "refs",
    _metadata,
    Column("name", String(255), primary_key=True),
    Column("kind", String(16), nullable=False),  # 'branch' | 'tag'
    Column("head", String(64), nullable=False),
)

commits = Table(
    "commits",
    _metadata,
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
    _metadata,
    Column("commit", String(64), ForeignKey("commits.hash"), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("key", String(512), primary_key=True),
    Column("value", Text, nullable=True),  # NULL = dropped
    Index("ix_commit_changes_key_commit", "key", "commit"),
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


class VersionedCatalog:
    """Git-like catalog of table and namespace keys, stored with SQLAlchemy Core.

    ``uri`` is a SQLAlchemy URL: ``sqlite:///path/catalog.db`` (default for a
    local home), ``sqlite://`` for a private in-memory catalog (tests), or
    ``postgresql://...`` for a cluster.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._engine = _make_engine(uri)
        self._initialize()

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VersionedCatalog({make_url(self.uri).render_as_string(hide_password=True)!r})"

    # -- reading --------------------------------------------------------------

    def resolve(self, ref: str) -> tuple[str | None, str]:
        """Resolve a ref to ``(branch name or None, commit hash)``.

        Accepts ``main`` (a branch head), a tag name, ``main@<hash-prefix>`` (a
        commit in that branch's history; the branch is returned so a writer can
        commit on it, expecting that commit as head) and ``@<hash-prefix>`` (a
        detached commit).

        Raises:
            NotFound: no such branch, tag or commit, or the commit is not in the
                history of the named branch.
            InvalidInput: the hash prefix matches more than one commit.
        """
        name, at, prefix = ref.partition("@")
        with self._engine.connect() as conn:
            branch: str | None = None
            tip: str | None = None
            if name:
                row = conn.execute(
                    select(refs.c.kind, refs.c.head).where(refs.c.name == name)
                ).first()
                if row is None:
                    raise NotFound(f"ref {ref!r} not found: no branch or tag named {name!r}")
                branch = name if row.kind == "branch" else None
                tip = row.head
                if not at:
                    return branch, row.head
            elif not at:
                raise NotFound("ref '' not found: give a branch, a tag or @<commit>")
            commit = self._commit_by_prefix(conn, prefix.lower(), ref)
            if tip is not None and not self._is_ancestor(conn, commit, tip):
                raise NotFound(
                    f"ref {ref!r} not found: commit {commit[:12]} is not in the history of {name!r}"
                )
            return branch, commit

    def head(self, branch: str) -> str:
        """Return the head commit of ``branch``.

        Raises:
            NotFound: no branch of that name.
        """
        with self._engine.connect() as conn:
            return self._branch_head(conn, branch)

    def get(self, commit: str, key: str, kind: ChangeKind = "table") -> str | None:
        """Return the value of ``key`` at ``commit`` (a table's metadata location), or None.

        Walks the first-parent chain from ``commit`` to the nearest change of the
        key, so the cost grows with history depth.

        Raises:
            NotFound: ``commit`` does not exist.
        """
        chain = _first_parent_chain(commit)
        stmt = (
            select(commit_changes.c.value)
            .select_from(commit_changes.join(chain, commit_changes.c.commit == chain.c.hash))
            .where(commit_changes.c.kind == kind, commit_changes.c.key == key)
            .order_by(chain.c.depth)
            .limit(1)
        )
        with self._engine.connect() as conn:
            self._require_commit(conn, commit)
            row = conn.execute(stmt).first()
        return None if row is None else row.value

    def entries(self, commit: str, kind: ChangeKind = "table", prefix: str = "") -> dict[str, str]:
        """Return every live key of ``kind`` at ``commit`` that starts with ``prefix``.

        Raises:
            NotFound: ``commit`` does not exist.
        """
        chain = _first_parent_chain(commit)
        stmt = (
            select(commit_changes.c.key, commit_changes.c.value)
            .select_from(commit_changes.join(chain, commit_changes.c.commit == chain.c.hash))
            .where(commit_changes.c.kind == kind)
            .order_by(chain.c.depth)
        )
        if prefix:
            stmt = stmt.where(commit_changes.c.key.startswith(prefix, autoescape=True))
        seen: dict[str, str | None] = {}
        with self._engine.connect() as conn:
            self._require_commit(conn, commit)
            for key, value in conn.execute(stmt):
                # The nearest change wins; older ones are shadowed.
                seen.setdefault(key, value)
        return {key: value for key, value in sorted(seen.items()) if value is not None}

    def log(self, ref: str, n: int = 20) -> list[CommitInfo]:
        """Return up to ``n`` commits of the first-parent history of ``ref``, newest first.

        Raises:
            NotFound: ``ref`` does not resolve.
        """
        _, commit = self.resolve(ref)
        if n <= 0:
            return []
        chain = _first_parent_chain(commit, max_depth=n - 1)
        stmt = (
            select(commits, chain.c.depth)
            .select_from(commits.join(chain, commits.c.hash == chain.c.hash))
            .order_by(chain.c.depth)
        )
        with self._engine.connect() as conn:
            return [_commit_info(row) for row in conn.execute(stmt)]

    # -- writing --------------------------------------------------------------

    def commit(
        self,
        branch: str,
        expected_head: str,
        changes: list[Change],
        message: str,
        author: str = "faas",
        properties: dict[str, str] | None = None,
    ) -> str:
        """Add a commit with ``changes`` on ``branch`` and move the branch to it.

        The branch moves only if its head is still ``expected_head``; the commit
        and the move happen in one database transaction. Returns the new hash.

        Raises:
            CommitConflict: the branch head is no longer ``expected_head``.
            NotFound: no branch of that name.
            InvalidInput: a change has an unknown kind, or a key appears twice.
        """
        _check_changes(changes)
        props = dict(properties or {})
        created_at = datetime.now(UTC).isoformat()
        new = _commit_hash(expected_head, None, changes, message, author, created_at, props)
        with self._engine.begin() as conn:
            # The UPDATE comes first so that SQLite takes its write lock before
            # anything is read; a read-then-write transaction could fail to upgrade.
            moved = conn.execute(
                update(refs)
                .where(refs.c.name == branch, refs.c.kind == "branch", refs.c.head == expected_head)
                .values(head=new)
            ).rowcount
            if moved != 1:
                found = self._branch_head(conn, branch)
                raise CommitConflict(branch, expected_head, found)
            conn.execute(
                insert(commits).values(
                    hash=new,
                    parent=expected_head,
                    parent2=None,
                    message=message,
                    author=author,
                    created_at=created_at,
                    properties=json.dumps(props, sort_keys=True),
                )
            )
            if changes:
                conn.execute(
                    insert(commit_changes),
                    [
                        {"commit": new, "kind": c.kind, "key": c.key, "value": c.value}
                        for c in changes
                    ],
                )
        logger.info(
            "commit %s on %s (parent %s, %d changes): %s",
            new[:12],
            branch,
            expected_head[:12],
            len(changes),
            message,
        )
        return new

    # -- internals ------------------------------------------------------------

    def _initialize(self) -> None:
        try:
            _metadata.create_all(self._engine)
            with self._engine.begin() as conn:
                if conn.execute(select(commits.c.hash).limit(1)).first() is not None:
                    return
                created_at = datetime.now(UTC).isoformat()
                conn.execute(
                    insert(commits).values(
                        hash=ROOT_COMMIT,
                        parent=None,
                        parent2=None,
                        message="root",
                        author="faas",
                        created_at=created_at,
                        properties="{}",
                    )
                )
                conn.execute(insert(refs).values(name="main", kind="branch", head=ROOT_COMMIT))
            logger.info("initialized catalog %r with branch main", self)
        except (IntegrityError, OperationalError):
            # Another process initialized the same database at the same moment.
            with self._engine.connect() as conn:
                if conn.execute(select(refs.c.name).limit(1)).first() is None:
                    raise

    @staticmethod
    def _branch_head(conn: Connection, branch: str) -> str:
        row = conn.execute(select(refs.c.kind, refs.c.head).where(refs.c.name == branch)).first()
        if row is None:
            raise NotFound(f"branch {branch!r} not found")
        if row.kind != "branch":
            raise NotFound(f"branch {branch!r} not found: {branch!r} is a {row.kind}")
        return str(row.head)

    @staticmethod
    def _require_commit(conn: Connection, commit: str) -> None:
        if conn.execute(select(commits.c.hash).where(commits.c.hash == commit)).first() is None:
            raise NotFound(f"commit {commit[:12]!r} not found")

    @staticmethod
    def _commit_by_prefix(conn: Connection, prefix: str, ref: str) -> str:
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

    @staticmethod
    def _is_ancestor(conn: Connection, commit: str, tip: str) -> bool:
        """True if ``commit`` is ``tip`` or reachable from it through any parent."""
        base = select(commits.c.hash, commits.c.parent, commits.c.parent2).where(
            commits.c.hash == tip
        )
        reach = base.cte("reach", recursive=True)
        step = select(commits.c.hash, commits.c.parent, commits.c.parent2).where(
            (commits.c.hash == reach.c.parent) | (commits.c.hash == reach.c.parent2)
        )
        # UNION (not UNION ALL) stops the walk at commits already seen through a merge.
        reach = reach.union(step)
        hit = conn.execute(select(reach.c.hash).where(reach.c.hash == commit).limit(1)).first()
        return hit is not None


def _make_engine(uri: str) -> Engine:
    url = make_url(uri)
    if not url.drivername.startswith("sqlite"):
        return create_engine(uri, pool_pre_ping=True)
    database = url.database
    if not database or database == ":memory:":
        # One shared connection, or every checkout would see its own empty database.
        engine = create_engine(uri, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(uri, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers proceed while a commit is being written.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def _first_parent_chain(start: str, max_depth: int | None = None) -> CTE:
    """Recursive CTE of (hash, parent, depth) along first parents from ``start``."""
    base = select(commits.c.hash, commits.c.parent, literal(0, Integer).label("depth")).where(
        commits.c.hash == start
    )
    chain = base.cte("chain", recursive=True)
    step = select(commits.c.hash, commits.c.parent, (chain.c.depth + 1).label("depth")).where(
        commits.c.hash == chain.c.parent
    )
    if max_depth is not None:
        step = step.where(chain.c.depth < max_depth)
    return chain.union_all(step)


def _check_changes(changes: Iterable[Change]) -> None:
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


def _commit_hash(
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


def _commit_info(row: Any) -> CommitInfo:
    parents = [p for p in (row.parent, row.parent2) if p]
    return CommitInfo(
        hash=row.hash,
        parents=parents,
        message=row.message,
        author=row.author,
        created_at=datetime.fromisoformat(row.created_at),
        properties=json.loads(row.properties or "{}"),
    )
