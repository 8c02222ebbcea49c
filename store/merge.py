"""Merge bases, diffs and merges of the versioned catalog.

A diff between two commits needs only the commits on their first-parent
chains since those chains meet: a key that none of them changed has the value
it had where the chains meet, on both sides. So a diff costs what changed
since the two sides parted, not the size of the catalog.

A merge is three-way on keys. The merge commit (first parent: the target head,
second parent: the source head) records every key the source changed since
the merge base, with its value at the source, so reading a key along first
parents stays correct after the merge.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update

from faas.protocol.errors import CommitConflict, InvalidInput, MergeConflict
from faas.store.failpoints import failpoint
from faas.store.schema import (
    Change,
    ChangeKind,
    ancestry,
    commit_changes,
    commits,
    first_parent_chain,
    is_ancestor,
    refs,
    require_commit,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

logger = logging.getLogger(__name__)

# A merge whose target moved underneath it is recomputed against the new head
# this many times before CommitConflict is raised.
MERGE_ATTEMPTS = 5

# Keys per IN (...) list: well under SQLite's and PostgreSQL's parameter limits.
_CHUNK = 500
# How far back along first parents a walk looks first: the commits a run's publish and
# merge compare are usually this close, and a walk with a bound does not read the whole
# history (a full walk, the fallback, grows with it).
NEAR = 64

Key = tuple[ChangeKind, str]
Values = tuple[str | None, str | None]  # (old, new); None = absent


@dataclass(frozen=True)
class KeyDiff:
    """A key whose value differs between two commits; None means absent on that side."""

    key: str
    kind: ChangeKind
    old: str | None
    new: str | None


@dataclass(frozen=True)
class MergeResult:
    """``commit`` is the target's head after the merge.

    ``fast_forward`` is True when the target only moved to the source head (no
    new commit). ``changes`` are the keys the merge brought into the target,
    with their new values; empty when there was nothing to merge.
    """

    commit: str
    fast_forward: bool
    changes: list[Change]


class MergeMixin:
    """Merge-base, diff and merge operations of :class:`store.catalog.VersionedCatalog`."""

    if TYPE_CHECKING:
        _engine: Engine

        def resolve(self, ref: str) -> tuple[str | None, str]: ...

        def head(self, branch: str) -> str: ...

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
        ) -> str: ...

    # -- history --------------------------------------------------------------

    def is_ancestor(self, commit: str, tip: str) -> bool:
        """True if ``commit`` is ``tip`` or reachable from it through any parent.

        Raises:
            NotFound: either commit does not exist.
        """
        with self._engine.connect() as conn:
            require_commit(conn, commit)
            require_commit(conn, tip)
            return is_ancestor(conn, commit, tip)

    def merge_base(self, a: str, b: str) -> str:
        """A best common ancestor of commits ``a`` and ``b``, through both parents.

        Best: no other common ancestor descends from it. The root commit is an
        ancestor of every commit, so there always is one. When several are
        best (criss-cross merges) the newest is returned.

        Raises:
            NotFound: either commit does not exist.
        """
        with self._engine.connect() as conn:
            require_commit(conn, a)
            require_commit(conn, b)
            # a is a near first-parent ancestor of b (a run's branch merged back into what
            # it came from, nothing else merged meanwhile): a is the only best.
            if _depth_on_chain(conn, b, a, NEAR) is not None:
                return a
            # Walk back from b through commits that are not ancestors of a; the
            # walk stops on the first ancestors of a it meets. Every best common
            # ancestor is among those: the path to it crosses no other common one.
            of_a = ancestry(a, "of_a")
            start = select(commits.c.hash, commits.c.parent, commits.c.parent2).where(
                commits.c.hash == b
            )
            walk = start.cte("walk", recursive=True)
            step = select(commits.c.hash, commits.c.parent, commits.c.parent2).where(
                or_(commits.c.hash == walk.c.parent, commits.c.hash == walk.c.parent2),
                walk.c.hash.not_in(select(of_a.c.hash)),
            )
            walk = walk.union(step)
            met = list(
                conn.execute(
                    select(walk.c.hash).where(walk.c.hash.in_(select(of_a.c.hash)))
                ).scalars()
            )
            if len(met) > 1:
                met = [c for c in met if not any(d != c and is_ancestor(conn, c, d) for d in met)]
                times = dict(
                    conn.execute(
                        select(commits.c.hash, commits.c.created_at).where(commits.c.hash.in_(met))
                    ).all()
                )
                met.sort(key=lambda c: (times[c], c), reverse=True)
        if not met:
            raise AssertionError(f"commits {a[:12]} and {b[:12]} have no common ancestor")
        return str(met[0])

    # -- diff -----------------------------------------------------------------

    def diff(self, from_ref: str, to_ref: str) -> list[KeyDiff]:
        """Every table and namespace key whose value differs from ``from_ref`` to ``to_ref``.

        Sorted by kind, then key. ``old``/``new`` None: absent on that side.

        Raises:
            NotFound: a ref does not resolve.
            InvalidInput: a hash prefix matches several commits.
        """
        _, old = self.resolve(from_ref)
        _, new = self.resolve(to_ref)
        return self.diff_commits(old, new)

    def diff_commits(self, old: str, new: str) -> list[KeyDiff]:
        """Like :meth:`diff`, between two commit hashes.

        Raises:
            NotFound: either commit does not exist.
        """
        with self._engine.connect() as conn:
            require_commit(conn, old)
            require_commit(conn, new)
            values = _diff_values(conn, old, new)
        return [
            KeyDiff(key=key, kind=kind, old=o, new=n)
            for (kind, key), (o, n) in sorted(values.items())
        ]

    # -- merge ----------------------------------------------------------------

    def merge(
        self,
        source_ref: str,
        into_branch: str,
        *,
        message: str | None = None,
        author: str = "faas",
        properties: dict[str, str] | None = None,
        fast_forward: bool = False,
    ) -> MergeResult:
        """Merge ``source_ref`` (any ref form) into branch ``into_branch``.

        - Nothing to merge (the source head is already in the target's history):
          no commit; the target head is returned with no changes.
        - ``fast_forward`` and the target head is an ancestor of the source: the
          target moves to the source head; no commit.
        - Otherwise one merge commit on the target (parents: target head, source
          head) holding every key the source changed since the merge base. A key
          that the target also changed since the base, to another value, is a
          conflict and nothing is written.

        If the target moves while merging, the merge is worked out again against
        the new head, up to ``MERGE_ATTEMPTS`` times.

        Raises:
            InvalidInput: the source is the target branch itself, the target is a
                tag, or it is not a plain branch name.
            NotFound: a ref does not resolve.
            MergeConflict: both sides changed the same keys (sorted in ``keys``).
            CommitConflict: the target kept moving.
        """
        if "@" in into_branch:
            raise InvalidInput(
                f"cannot merge into {into_branch!r}: give a branch name, without '@<commit>'"
            )
        source_branch, source = self.resolve(source_ref)
        if source_branch == into_branch:
            raise InvalidInput(
                f"cannot merge {source_ref!r} into {into_branch!r}: it is the same branch"
            )
        for attempt in range(1, MERGE_ATTEMPTS + 1):
            try:
                return self._merge_once(
                    source_ref, source, into_branch, message, author, properties, fast_forward
                )
            except CommitConflict:
                if attempt == MERGE_ATTEMPTS:
                    raise
                logger.info("merge into %s: the branch moved, merging again", into_branch)
        raise AssertionError("unreachable")

    def _merge_once(
        self,
        source_ref: str,
        source: str,
        target: str,
        message: str | None,
        author: str,
        properties: dict[str, str] | None,
        fast_forward: bool,
    ) -> MergeResult:
        target_head = self.head(target)
        base = self.merge_base(target_head, source)
        if base == source:
            logger.info("merge %s into %s: nothing to merge", source_ref, target)
            return MergeResult(commit=target_head, fast_forward=False, changes=[])
        if fast_forward and base == target_head:
            return self._fast_forward(source, target, target_head)
        failpoint("merge.after_base")
        with self._engine.connect() as conn:
            theirs = _diff_values(conn, base, source)
            ours = _diff_values(conn, base, target_head)
            # A key both sides changed to the same value is no conflict.
            conflicts = {
                key
                for (kind, key), (_, new) in theirs.items()
                if (kind, key) in ours and ours[(kind, key)][1] != new
            }
            conflicts |= _namespace_conflicts(theirs, ours)
        failpoint("merge.after_diff")
        if conflicts:
            raise MergeConflict(source_ref, target, sorted(conflicts))
        changes = [
            Change(key=key, kind=kind, value=new)
            for (kind, key), (_, new) in sorted(theirs.items())
        ]
        commit = self._write_commit(
            target,
            target_head,
            changes,
            message if message is not None else f"merge {source_ref} into {target}",
            author,
            properties,
            parent2=source,
            step="merge",
        )
        logger.info(
            "merged %s (%s, base %s) into %s as %s: %d changes",
            source_ref,
            source[:12],
            base[:12],
            target,
            commit[:12],
            len(changes),
        )
        return MergeResult(commit=commit, fast_forward=False, changes=changes)

    def _fast_forward(self, source: str, target: str, target_head: str) -> MergeResult:
        with self._engine.connect() as conn:
            values = _diff_values(conn, target_head, source)
        with self._engine.begin() as conn:
            moved = conn.execute(
                update(refs)
                .where(refs.c.name == target, refs.c.kind == "branch", refs.c.head == target_head)
                .values(head=source)
            ).rowcount
            if moved != 1:
                found = conn.execute(select(refs.c.head).where(refs.c.name == target)).scalar()
                raise CommitConflict(target, target_head, found or "(deleted)")
            failpoint("merge.fast_forward.after_cas")
        failpoint("merge.fast_forward.after_db_commit")
        logger.info("fast-forwarded %s from %s to %s", target, target_head[:12], source[:12])
        changes = [
            Change(key=key, kind=kind, value=new)
            for (kind, key), (_, new) in sorted(values.items())
        ]
        return MergeResult(commit=source, fast_forward=True, changes=changes)

    def changed_keys(self, old: str, new: str) -> set[Key]:
        """The (kind, key) pairs whose value differs between commits ``old`` and ``new``."""
        with self._engine.connect() as conn:
            return set(_diff_values(conn, old, new))


# -- queries --------------------------------------------------------------------


def _diff_values(conn: Connection, old: str, new: str) -> dict[Key, Values]:
    """(kind, key) -> (value at ``old``, value at ``new``) for every key that differs."""
    if old == new:
        return {}
    # First-parent chains are linked lists: once they meet they run together, so a meet
    # found within bounded walks of both is the first one.
    meet = _meet(conn, old, new, NEAR) or _meet(conn, old, new, None)
    if meet is None:
        raise AssertionError(f"commits {old[:12]} and {new[:12]} share no first-parent history")
    side_old = _changes_above(conn, old, meet.depth)
    side_new = _changes_above(conn, new, meet.depth_new)
    one_sided = [k for k in side_old.keys() ^ side_new.keys()]
    at_meet = _values_at(conn, meet.hash, one_sided)
    out: dict[Key, Values] = {}
    for k in side_old.keys() | side_new.keys():
        a = side_old[k] if k in side_old else at_meet.get(k)
        b = side_new[k] if k in side_new else at_meet.get(k)
        if a != b:
            out[k] = (a, b)
    return out


def _meet(conn: Connection, old: str, new: str, window: int | None) -> Any:
    """Where the first-parent chains of ``old`` and ``new`` meet (its hash and depth on
    each), looking at most ``window`` commits back on each; None if not within that."""
    chain_old = first_parent_chain(old, max_depth=window, name="chain_old")
    chain_new = first_parent_chain(new, max_depth=window, name="chain_new")
    return conn.execute(
        select(chain_old.c.hash, chain_old.c.depth, chain_new.c.depth.label("depth_new"))
        .select_from(chain_old.join(chain_new, chain_old.c.hash == chain_new.c.hash))
        .order_by(chain_old.c.depth)
        .limit(1)
    ).first()


def _depth_on_chain(conn: Connection, start: str, target: str, window: int) -> int | None:
    """How many first parents back from ``start`` ``target`` is, if within ``window``."""
    chain = first_parent_chain(start, max_depth=window, name="near")
    row = conn.execute(select(chain.c.depth).where(chain.c.hash == target).limit(1)).first()
    return None if row is None else int(row.depth)


def _changes_above(conn: Connection, start: str, depth: int) -> dict[Key, str | None]:
    """The nearest change of each key among the first ``depth`` commits of ``start``'s chain."""
    if depth <= 0:
        return {}
    chain = first_parent_chain(start, max_depth=depth - 1)
    stmt = (
        select(commit_changes.c.kind, commit_changes.c.key, commit_changes.c.value)
        .select_from(commit_changes.join(chain, commit_changes.c.commit == chain.c.hash))
        .order_by(chain.c.depth)
    )
    found: dict[Key, str | None] = {}
    for kind, key, value in conn.execute(stmt):
        found.setdefault((kind, key), value)
    return found


def _values_at(conn: Connection, commit: str, keys: Iterable[Key]) -> dict[Key, str | None]:
    """The value of each of ``keys`` at ``commit``; keys absent there are left out."""
    by_kind: dict[ChangeKind, list[str]] = {}
    for kind, key in keys:
        by_kind.setdefault(kind, []).append(key)
    found: dict[Key, str | None] = {}
    # The recent commits first; only keys not changed there need the whole chain.
    for window in (NEAR, None):
        for of_kind, names in by_kind.items():
            left = [n for n in names if (of_kind, n) not in found]
            for i in range(0, len(left), _CHUNK):
                chain = first_parent_chain(commit, max_depth=window)
                stmt = (
                    select(commit_changes.c.kind, commit_changes.c.key, commit_changes.c.value)
                    .select_from(commit_changes.join(chain, commit_changes.c.commit == chain.c.hash))
                    .where(
                        commit_changes.c.kind == of_kind,
                        commit_changes.c.key.in_(left[i : i + _CHUNK]),
                    )
                    .order_by(chain.c.depth)
                )
                for k, key, value in conn.execute(stmt):
                    found.setdefault((k, key), value)
        if all((kind, n) in found for kind, names in by_kind.items() for n in names):
            break
    return {k: v for k, v in found.items() if v is not None}


def _namespace_conflicts(theirs: dict[Key, Values], ours: dict[Key, Values]) -> set[str]:
    """Namespaces the merge would break, from what each side changed since the base.

    The source brings tables into a namespace the target dropped; or the source
    dropped a namespace the target put tables in.
    """
    broken = set()
    for (kind, key), (_, new) in theirs.items():
        if kind == "table" and new is not None:
            ns = key.split(".", 1)[0]
            if ours.get(("namespace", ns), (None, "kept"))[1] is None and (
                theirs.get(("namespace", ns), (None, None))[1] is None
            ):
                broken.add(ns)
        elif kind == "namespace" and new is None:
            if any(
                k == "table"
                and name.startswith(f"{key}.")
                and value is not None
                and theirs.get((k, name), (None, value))[1] is not None
                for (k, name), (_, value) in ours.items()
            ):
                broken.add(key)
    return broken
