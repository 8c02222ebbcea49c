"""Branches and tags: their names, listing, creation and deletion.

Branches and tags share one namespace of names. A branch moves with every
commit or merge on it; a tag never moves. Creating either is one row pointing
at an existing commit: no data or metadata file is copied.

Names under ``run/`` belong to the transaction branches of runs (one per run,
made by the scheduler with :meth:`RefsMixin.create_run_branch`); users cannot
create them, and :meth:`RefsMixin.prune_run_branches` removes old ones.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from faas.protocol.errors import AlreadyExists, CommitConflict, InvalidInput, NotFound
from faas.store.failpoints import failpoint
from faas.store.schema import CommitInfo, commit_info, commits, has_prefix, refs

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.sql.elements import ColumnElement

logger = logging.getLogger(__name__)

RefKind = Literal["branch", "tag"]

MAIN = "main"
RUN_PREFIX = "run/"
MAX_REF_NAME = 200

_REF_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_RULE = (
    "use letters, digits, '.', '_', '-' and '/', starting with a letter or digit, "
    f"at most {MAX_REF_NAME} characters"
)


@dataclass(frozen=True)
class RefInfo:
    """A branch or tag, with the commit it points at (for its message and time)."""

    name: str
    kind: RefKind
    head: str
    commit: CommitInfo


def _now() -> datetime:
    """The time ages are measured to (a function, so tests can set the clock)."""
    return datetime.now(UTC)


def check_ref_name(name: str) -> str:
    """Return ``name`` if it can name a branch or tag.

    Raises:
        InvalidInput: naming the name and the rule it breaks.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"invalid ref name {name!r}: a name cannot be empty; {_RULE}")
    problem = None
    if len(name) > MAX_REF_NAME:
        problem = f"it is {len(name)} characters long, over the limit of {MAX_REF_NAME}"
    elif "@" in name:
        problem = "'@' is not allowed: it separates a ref from a commit (main@<hash>)"
    elif not _REF_NAME.fullmatch(name):
        problem = _RULE
    elif ".." in name:
        problem = "'..' is not allowed"
    elif "//" in name:
        problem = "'//' is not allowed"
    elif name.endswith(("/", ".")):
        problem = "it cannot end with '/' or '.'"
    if problem is not None:
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise InvalidInput(f"invalid ref name {shown!r}: {problem}")
    return name


def run_branch_name(run_id: str) -> str:
    """The transaction branch of run ``run_id``."""
    return f"{RUN_PREFIX}{run_id}"


class RefsMixin:
    """Branch and tag operations of :class:`store.catalog.VersionedCatalog`."""

    if TYPE_CHECKING:
        _engine: Engine

        def resolve(self, ref: str) -> tuple[str | None, str]: ...

    # -- listing --------------------------------------------------------------

    def branches(self, include_runs: bool = False) -> list[RefInfo]:
        """Every branch, sorted by name; run branches (``run/*``) only if asked."""
        where = refs.c.kind == "branch"
        if not include_runs:
            where = where & ~has_prefix(refs.c.name, RUN_PREFIX)
        return self._list_refs(where)

    def tags(self) -> list[RefInfo]:
        """Every tag, sorted by name."""
        return self._list_refs(refs.c.kind == "tag")

    def ref(self, name: str) -> RefInfo:
        """The branch or tag called ``name``.

        Raises:
            NotFound: no branch or tag of that name.
        """
        found = self._list_refs(refs.c.name == name)
        if not found:
            raise NotFound(f"no branch or tag named {name!r}")
        return found[0]

    # -- creating -------------------------------------------------------------

    def create_branch(self, name: str, from_ref: str = MAIN) -> RefInfo:
        """Create branch ``name`` at the commit ``from_ref`` resolves to.

        ``from_ref`` takes any ref form: ``main``, ``main@<hash>``, ``@<hash>``, a tag.

        Raises:
            InvalidInput: a bad name, or a name under ``run/`` (reserved for runs).
            AlreadyExists: a branch or tag of that name exists.
            NotFound: ``from_ref`` does not resolve.
        """
        check_ref_name(name)
        if name.startswith(RUN_PREFIX):
            raise InvalidInput(
                f"cannot create branch {name!r}: names under {RUN_PREFIX!r} are reserved "
                "for the transaction branches of runs"
            )
        return self._create_ref(name, "branch", from_ref)

    def create_run_branch(self, run_id: str, from_ref: str) -> RefInfo:
        """Create the transaction branch ``run/<run_id>`` at ``from_ref``.

        Raises:
            InvalidInput: ``run/<run_id>`` is not a valid ref name.
            AlreadyExists: the branch exists.
            NotFound: ``from_ref`` does not resolve.
        """
        return self._create_ref(check_ref_name(run_branch_name(run_id)), "branch", from_ref)

    def create_tag(self, name: str, from_ref: str = MAIN) -> RefInfo:
        """Create tag ``name`` at the commit ``from_ref`` resolves to. Tags never move.

        Raises:
            InvalidInput: a bad name, or a name under ``run/``.
            AlreadyExists: a branch or tag of that name exists.
            NotFound: ``from_ref`` does not resolve.
        """
        check_ref_name(name)
        if name.startswith(RUN_PREFIX):
            raise InvalidInput(
                f"cannot create tag {name!r}: names under {RUN_PREFIX!r} are reserved "
                "for the transaction branches of runs"
            )
        return self._create_ref(name, "tag", from_ref)

    # -- deleting -------------------------------------------------------------

    def delete_branch(self, name: str, expected_head: str | None = None) -> None:
        """Delete branch ``name``; its commits stay reachable from other refs and by hash.

        With ``expected_head``, only if the branch still points there.

        Raises:
            InvalidInput: a bad name, ``main``, or ``name`` is a tag.
            NotFound: no branch or tag of that name.
            CommitConflict: the branch is no longer at ``expected_head``.
        """
        check_ref_name(name)
        if name == MAIN:
            raise InvalidInput(
                f"cannot delete branch {MAIN!r}: it is the default branch, every other "
                "branch starts from it"
            )
        self._delete_ref(name, "branch", expected_head)

    def delete_tag(self, name: str) -> None:
        """Delete tag ``name``.

        Raises:
            InvalidInput: a bad name, or ``name`` is a branch.
            NotFound: no branch or tag of that name.
        """
        check_ref_name(name)
        self._delete_ref(name, "tag", None)

    def prune_run_branches(
        self, keep: Iterable[str] = (), older_than: float | None = None
    ) -> list[str]:
        """Delete run branches (``run/*``) and return their names, sorted.

        ``keep`` lists runs still in flight, as run ids or as branch names
        (``run/<id>``); they are never deleted. With ``older_than`` (seconds),
        only branches whose head commit is older than that go. A branch that
        moves while being pruned is kept.
        """
        kept = {k if k.startswith(RUN_PREFIX) else run_branch_name(k) for k in keep}
        now = _now()
        deleted: list[str] = []
        for info in self._list_refs(
            (refs.c.kind == "branch") & has_prefix(refs.c.name, RUN_PREFIX)
        ):
            if info.name in kept:
                continue
            age = (now - info.commit.created_at).total_seconds()
            if older_than is not None and age < older_than:
                continue
            try:
                self._delete_ref(info.name, "branch", info.head)
            except (CommitConflict, NotFound):
                # It moved (a run is using it after all) or someone else deleted it.
                continue
            deleted.append(info.name)
        if deleted:
            logger.info("pruned %d run branches", len(deleted))
        return deleted

    # -- internals ------------------------------------------------------------

    def _list_refs(self, where: ColumnElement[bool]) -> list[RefInfo]:
        stmt = (
            select(refs.c.name, refs.c.kind, refs.c.head, commits)
            .select_from(refs.join(commits, commits.c.hash == refs.c.head))
            .where(where)
        )
        with self._engine.connect() as conn:
            found = [
                RefInfo(name=row.name, kind=row.kind, head=row.head, commit=commit_info(row))
                for row in conn.execute(stmt)
            ]
        # Sorted here, not by the database, whose collation may differ between servers.
        return sorted(found, key=lambda r: r.name)

    def _create_ref(self, name: str, kind: RefKind, from_ref: str) -> RefInfo:
        self._refuse_existing(name, kind)
        _, commit = self.resolve(from_ref)
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(refs).values(name=name, kind=kind, head=commit))
                failpoint(f"{kind}.create.after_insert")
        except IntegrityError:
            # Created by someone else between the check and the insert.
            self._refuse_existing(name, kind)
            raise
        failpoint(f"{kind}.create.after_db_commit")
        logger.info("created %s %s at %s (from %s)", kind, name, commit[:12], from_ref)
        return self.ref(name)

    def _refuse_existing(self, name: str, kind: RefKind) -> None:
        with self._engine.connect() as conn:
            existing = conn.execute(select(refs.c.kind).where(refs.c.name == name)).scalar()
        if existing is not None:
            raise AlreadyExists(
                f"cannot create {kind} {name!r}: a {existing} named {name!r} already exists"
            )

    def _delete_ref(self, name: str, kind: RefKind, expected_head: str | None) -> None:
        stmt = delete(refs).where(refs.c.name == name, refs.c.kind == kind)
        if expected_head is not None:
            stmt = stmt.where(refs.c.head == expected_head)
        with self._engine.begin() as conn:
            deleted = conn.execute(stmt).rowcount == 1
            if deleted:
                failpoint(f"{kind}.delete.after_delete")
        if deleted:
            failpoint(f"{kind}.delete.after_db_commit")
            logger.info("deleted %s %s", kind, name)
            return
        with self._engine.connect() as conn:
            row = conn.execute(select(refs.c.kind, refs.c.head).where(refs.c.name == name)).first()
        if row is None:
            raise NotFound(f"cannot delete {kind} {name!r}: no branch or tag of that name")
        if row.kind != kind:
            raise InvalidInput(f"cannot delete {kind} {name!r}: it is a {row.kind}, not a {kind}")
        assert expected_head is not None
        raise CommitConflict(name, expected_head, row.head)
