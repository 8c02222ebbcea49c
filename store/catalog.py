"""The versioned catalog: refs, commits and per-commit changes in SQL tables.

A commit records only what it changed (a table key now points at a new Iceberg
metadata location, or was dropped; a namespace was created or dropped). The
state of the catalog at a commit is found by walking its first-parent chain
back to the nearest change of each key. A merge commit (``parent2``) records
every key it brings in from its second parent as its own change, so
first-parent resolution stays correct after merges.

The tables and records live in :mod:`store.schema`; branches and tags in
:mod:`store.refs`; merge bases, diffs and merges in :mod:`store.merge`.

A commit moves a branch with one compare-and-swap of ``refs.head`` inside the
same database transaction that inserts the commit, so readers never see a head
without its commit and two writers from the same base cannot both win.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from sqlalchemy import (
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

from faas.protocol.errors import CommitConflict, InvalidInput, NotFound
from faas.store.failpoints import failpoint
from faas.store.merge import KeyDiff, MergeMixin, MergeResult
from faas.store.refs import RefInfo, RefsMixin
from faas.store.schema import (
    CHANGE_KINDS,
    MAX_AUTHOR,
    NAMESPACE_PRESENT,
    ROOT_COMMIT,
    Change,
    ChangeKind,
    CommitInfo,
    commit_by_prefix,
    commit_changes,
    commits,
    is_ancestor,
    refs,
    require_commit,
    results,
)
from faas.store.schema import check_changes as _check_changes
from faas.store.schema import commit_hash as _commit_hash
from faas.store.schema import commit_info as _commit_info
from faas.store.schema import first_parent_chain as _first_parent_chain
from faas.store.schema import metadata as _metadata

__all__ = [
    "CHANGE_KINDS",
    "NAMESPACE_PRESENT",
    "ROOT_COMMIT",
    "Change",
    "ChangeKind",
    "CommitInfo",
    "KeyDiff",
    "MergeResult",
    "RefInfo",
    "VersionedCatalog",
    "catalog_url",
]

logger = logging.getLogger(__name__)

_SQLITE_BUSY_TIMEOUT_MS = 30_000
_CATALOG_URLS = "sqlite:///path/catalog.db or postgresql://user@host:port/database"
_PG_CONNECT_TIMEOUT_S = 10
_PG_POOL_SIZE = 4
_PG_MAX_OVERFLOW = 4
_PG_POOL_TIMEOUT_S = 30
_PG_POOL_RECYCLE_S = 1800
# Whole catalog states kept, of the commits read or written last.
_STATES = 32
_PG_INSUFFICIENT_PRIVILEGE = "42501"  # SQLSTATE
# pg_advisory_xact_lock key held while a catalog database is initialized.
_PG_INIT_LOCK = int.from_bytes(
    hashlib.sha256(b"faas:catalog-init").digest()[:8], "big", signed=True
)


class VersionedCatalog(RefsMixin, MergeMixin):
    """Git-like catalog of table and namespace keys, stored with SQLAlchemy Core.

    ``uri`` is a SQLAlchemy URL: ``sqlite:///path/catalog.db`` (default for a
    local home), ``sqlite://`` for a private in-memory catalog (tests), or
    ``postgresql://...`` for a cluster.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._engine = _make_engine(uri)
        self._initialize()
        # The whole state of recent commits, (kind, key) -> value of every live key. A
        # commit never changes, so neither does its state: one walk of the history gives
        # a commit's, and a commit written here gets its own from its parent's, so reading
        # the head a run or a command works on costs no walk, however deep the history.
        self._states: OrderedDict[str, dict[tuple[str, str], str]] = OrderedDict()
        self._states_lock = threading.Lock()

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
            NotFound: no branch or tag of that name.
            InvalidInput: ``branch`` is a tag.
        """
        with self._engine.connect() as conn:
            return self._branch_head(conn, branch)

    def get(self, commit: str, key: str, kind: ChangeKind = "table") -> str | None:
        """Return the value of ``key`` at ``commit`` (a table's metadata location), or None.

        Raises:
            NotFound: ``commit`` does not exist.
        """
        return self._state(commit).get((kind, key))

    def entries(self, commit: str, kind: ChangeKind = "table", prefix: str = "") -> dict[str, str]:
        """Return every live key of ``kind`` at ``commit`` that starts with ``prefix``.

        Raises:
            NotFound: ``commit`` does not exist.
        """
        state = self._state(commit)
        return dict(sorted(
            (key, value) for (k, key), value in state.items()
            if k == kind and key.startswith(prefix)
        ))

    def _state(self, commit: str) -> dict[tuple[str, str], str]:
        """Every live key at ``commit``: kept, or found by walking its first-parent chain
        back to the nearest change of each key (a cost that grows with history depth)."""
        with self._states_lock:
            state = self._states.get(commit)
            if state is not None:
                self._states.move_to_end(commit)
                return state
        chain = _first_parent_chain(commit)
        stmt = (
            select(commit_changes.c.kind, commit_changes.c.key, commit_changes.c.value)
            .select_from(commit_changes.join(chain, commit_changes.c.commit == chain.c.hash))
            .order_by(chain.c.depth)
        )
        seen: dict[tuple[str, str], str | None] = {}
        with self._engine.connect() as conn:
            self._require_commit(conn, commit)
            for kind, key, value in conn.execute(stmt):
                # The nearest change wins; older ones are shadowed.
                seen.setdefault((kind, key), value)
        state = {k: v for k, v in seen.items() if v is not None}
        self._keep(commit, state)
        return state

    def _keep(self, commit: str, state: dict[tuple[str, str], str]) -> None:
        with self._states_lock:
            self._states[commit] = state
            self._states.move_to_end(commit)
            while len(self._states) > _STATES:
                self._states.popitem(last=False)

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

    def changed_tables(self, hashes: list[str]) -> dict[str, list[str]]:
        """The table keys each of these commits changed (added, replaced or dropped)."""
        if not hashes:
            return {}
        stmt = (
            select(commit_changes.c.commit, commit_changes.c.key)
            .where(commit_changes.c.commit.in_(hashes), commit_changes.c.kind == "table")
            .order_by(commit_changes.c.key)
        )
        found: dict[str, list[str]] = {h: [] for h in hashes}
        with self._engine.connect() as conn:
            for commit, key in conn.execute(stmt):
                found[commit].append(key)
        return found

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
            InvalidInput: a change has an unknown kind, or a key appears twice, or
                ``branch`` is a tag (tags never move).
        """
        return self._write_commit(branch, expected_head, changes, message, author, properties)

    def _write_commit(
        self,
        branch: str,
        expected_head: str,
        changes: list[Change],
        message: str,
        author: str,
        properties: dict[str, str] | None,
        parent2: str | None = None,
        step: str = "commit",
    ) -> str:
        """One commit (a merge commit if ``parent2``) and the CAS of ``branch``, atomically.

        ``step`` prefixes the names of its failpoints (``commit.*``, ``merge.*``).
        """
        _check_changes(changes)
        if len(author) > MAX_AUTHOR:
            raise InvalidInput(f"author {author[:40]!r}... is over {MAX_AUTHOR} characters")
        props = dict(properties or {})
        created_at = datetime.now(UTC).isoformat()
        new = _commit_hash(expected_head, parent2, changes, message, author, created_at, props)
        with self._engine.begin() as conn:
            failpoint(f"{step}.before_insert")
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
            failpoint(f"{step}.after_cas")
            conn.execute(
                insert(commits).values(
                    hash=new,
                    parent=expected_head,
                    parent2=parent2,
                    message=message,
                    author=author,
                    created_at=created_at,
                    properties=json.dumps(props, sort_keys=True),
                )
            )
            failpoint(f"{step}.after_commit_row")
            if changes:
                conn.execute(
                    insert(commit_changes),
                    [
                        {"commit": new, "kind": c.kind, "key": c.key, "value": c.value}
                        for c in changes
                    ],
                )
            failpoint(f"{step}.after_changes")
            failpoint(f"{step}.before_db_commit")
        failpoint(f"{step}.after_db_commit")
        with self._states_lock:
            parent = self._states.get(expected_head)
        if parent is not None:  # the new state is the parent's with these changes
            state = dict(parent)
            for c in changes:
                if c.value is None:
                    state.pop((c.kind, c.key), None)
                else:
                    state[(c.kind, c.key)] = c.value
            self._keep(new, state)
        logger.info(
            "commit %s on %s (parent %s%s, %d changes): %s",
            new[:12],
            branch,
            expected_head[:12],
            f", merging {parent2[:12]}" if parent2 else "",
            len(changes),
            message,
        )
        return new

    # -- results that outlive processes ---------------------------------------

    def recall(self, kind: str, keys: list[str]) -> dict[str, Any]:
        """The recorded results of ``kind`` for those of ``keys`` that have one."""
        if not keys:
            return {}
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(results.c.key, results.c.value).where(
                    results.c.kind == kind, results.c.key.in_(sorted(set(keys)))
                )
            )
            return {row.key: json.loads(row.value) for row in rows}

    def remember(self, kind: str, key: str, value: Any) -> None:
        """Record a result of ``kind`` for cache key ``key`` (a later record replaces it).

        The same key always yields the same result, so two writers racing on one key
        write the same value: the loser's duplicate is simply dropped."""
        row = {"kind": kind, "key": key, "value": json.dumps(value),
               "created_at": datetime.now(UTC).isoformat()}
        with self._engine.begin() as conn:
            done = conn.execute(
                update(results).where(results.c.kind == kind, results.c.key == key)
                .values(value=row["value"], created_at=row["created_at"])
            ).rowcount
            if not done:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(results).values(**row))
                except IntegrityError:
                    pass

    # -- internals ------------------------------------------------------------

    def _initialize(self) -> None:
        try:
            with self._engine.begin() as conn:
                # One opener at a time creates the tables and the root commit, in one
                # transaction; the others wait for it, then find both.
                _lock_for_initialization(conn)
                _metadata.create_all(conn)
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
            raise InvalidInput(
                f"{branch!r} is a {row.kind}, not a branch: tags never move; "
                "create a branch from it to commit"
            )
        return str(row.head)

    # Shared with the merge and refs parts; defined in store.schema.
    _require_commit = staticmethod(require_commit)
    _commit_by_prefix = staticmethod(commit_by_prefix)
    _is_ancestor = staticmethod(is_ancestor)


def catalog_url(uri: str) -> URL:
    """Parse a catalog URI into the SQLAlchemy URL the catalog connects with.

    ``postgresql://`` and ``postgres://`` (as psql and libpq spell them) use
    psycopg 3; ``sqlite:///path`` uses the standard library.

    Raises:
        InvalidInput: not a URL, or not a SQLite or PostgreSQL database.
    """
    try:
        url = make_url(uri)
    except (ArgumentError, ValueError):
        raise InvalidInput(
            f"catalog URI {_mask_password(uri)!r} is not a database URL; expected {_CATALOG_URLS}"
        ) from None
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return url
    raise InvalidInput(
        f"unsupported catalog database {url.drivername!r} in "
        f"{url.render_as_string(hide_password=True)!r}; expected {_CATALOG_URLS}"
    )


def _mask_password(uri: str) -> str:
    """``uri`` with anything that may be a password replaced by ``***``, for messages."""
    return re.sub(r"(://[^/:@]*:).*@", r"\1***@", uri)


def _make_engine(uri: str) -> Engine:
    url = catalog_url(uri)
    if url.get_backend_name() == "postgresql":
        return _postgresql_engine(url)
    database = url.database
    if not database or database == ":memory:":
        # One shared connection, or every checkout would see its own empty database.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        directory = Path(database).expanduser().parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InvalidInput(
                f"cannot create the catalog directory {str(directory)!r}: {e.strerror}"
            ) from None
        engine = create_engine(url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        # WAL lets readers proceed while a commit is being written.
        _sqlite_set_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def _sqlite_set_wal(cursor: Any) -> None:
    """Switch the database to WAL, waiting for other connections as a busy timeout would.

    On a new database the switch needs an exclusive lock, and SQLite answers
    "database is locked" at once, without its busy handler, while another
    connection holds the write lock (for instance while it creates the tables).
    """
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _lock_for_initialization(conn: Connection) -> None:
    """Serialize catalog initialization until ``conn``'s transaction ends.

    Without it, two processes opening a new catalog at once both find no tables:
    one fails to create them (PostgreSQL: a unique violation in pg_type or
    "relation already exists"; SQLite: "table already exists") and, not seeing
    the root commit yet, gives up.
    """
    if conn.dialect.name == "postgresql":
        # Transactional DDL: the tables and the root commit appear together.
        conn.execute(select(func.pg_advisory_xact_lock(_PG_INIT_LOCK)))
    elif conn.dialect.name == "sqlite":
        # Take the write lock before reading (waits up to the busy timeout); the
        # sqlite3 module would otherwise begin only at the first INSERT.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _postgresql_engine(url: URL) -> Engine:
    # Settings given in the URL (?connect_timeout=3) win over these defaults.
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        # libpq waits forever for a host that drops packets.
        connect_args["connect_timeout"] = _PG_CONNECT_TIMEOUT_S
    if "application_name" not in url.query:
        connect_args["application_name"] = "faas"
    engine = create_engine(
        url,
        # A connection the server or a proxy closed while idle is replaced, not used.
        pool_pre_ping=True,
        pool_recycle=_PG_POOL_RECYCLE_S,
        # Catalog statements are short; every worker process has its own pool, so
        # keep it small against the server's max_connections (100 by default).
        pool_size=_PG_POOL_SIZE,
        max_overflow=_PG_MAX_OVERFLOW,
        pool_timeout=_PG_POOL_TIMEOUT_S,
        connect_args=connect_args,
    )
    where = (
        f"catalog database {url.database or url.username or ''!r} at "
        f"{url.host or 'localhost'}:{url.port or 5432}"
    )

    @event.listens_for(engine, "handle_error")
    def _one_line_error(context: Any) -> Exception | None:
        # A failed pre-ping is not the caller's: the pool retries with a new connection.
        error = context.original_exception
        if context.is_pre_ping or not isinstance(error, engine.dialect.loaded_dbapi.Error):
            return None
        reason = str(error).strip().splitlines()[0].removeprefix("connection failed: ")
        if url.password:
            reason = reason.replace(str(url.password), "***")
        if context.connection is None:
            # Refused, timed out, unknown host or database, authentication failed.
            return NotFound(f"cannot connect to the {where}: {reason}")
        if getattr(error, "sqlstate", None) == _PG_INSUFFICIENT_PRIVILEGE:
            # Typically PostgreSQL 15+, where only the database owner may create
            # tables in schema public.
            return InvalidInput(
                f"{where}, user {url.username!r}: {reason}; the catalog needs a user that "
                "may create tables (for example the database owner)"
            )
        # Anything else keeps its type, so the catalog's own handling still applies.
        return None

    return engine
