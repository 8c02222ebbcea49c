"""VersionedCatalog: refs, commits, compare-and-swap, resolution of keys through history."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from faas.protocol.errors import CommitConflict, InvalidInput, NotFound
from faas.store.catalog import ROOT_COMMIT, Change, VersionedCatalog

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[VersionedCatalog]:
    vc = VersionedCatalog(f"sqlite:///{tmp_path}/catalog.db")
    try:
        yield vc
    finally:
        vc.close()


def test_new_catalog_has_main_at_root(catalog: VersionedCatalog) -> None:
    assert catalog.resolve("main") == ("main", ROOT_COMMIT)
    assert catalog.head("main") == ROOT_COMMIT
    [root] = catalog.log("main", 10)
    assert root.hash == ROOT_COMMIT
    assert root.parents == []
    assert catalog.entries(ROOT_COMMIT) == {}


def test_commit_moves_head_and_records_metadata(catalog: VersionedCatalog) -> None:
    head = catalog.head("main")
    new = catalog.commit(
        "main",
        head,
        [Change("ns", "namespace", "{}")],
        "create ns",
        author="ana",
        properties={"run": "7"},
    )
    assert len(new) == 64 and all(c in "0123456789abcdef" for c in new)
    assert catalog.head("main") == new
    latest = catalog.log("main", 1)[0]
    assert (latest.hash, latest.parents, latest.message, latest.author) == (
        new,
        [head],
        "create ns",
        "ana",
    )
    assert latest.properties == {"run": "7"}
    assert latest.created_at.tzinfo is not None


def test_get_and_entries_walk_history(catalog: VersionedCatalog) -> None:
    c1 = catalog.commit("main", catalog.head("main"), [Change("a.t", "table", "loc1")], "t1")
    c2 = catalog.commit(
        "main", c1, [Change("a.t", "table", "loc2"), Change("a.u", "table", "u1")], "t2"
    )
    c3 = catalog.commit("main", c2, [Change("a.u", "table", None)], "drop u")
    assert catalog.get(c1, "a.t") == "loc1"
    assert catalog.get(c3, "a.t") == "loc2"
    assert catalog.get(c2, "a.u") == "u1"
    assert catalog.get(c3, "a.u") is None
    assert catalog.get(ROOT_COMMIT, "a.t") is None
    assert catalog.entries(c2) == {"a.t": "loc2", "a.u": "u1"}
    assert catalog.entries(c3) == {"a.t": "loc2"}
    assert catalog.entries(c2, prefix="a.u") == {"a.u": "u1"}
    # A table and a namespace with the same key do not shadow each other.
    assert catalog.entries(c3, kind="namespace") == {}


def test_entries_prefix_is_literal(catalog: VersionedCatalog) -> None:
    c1 = catalog.commit(
        "main",
        catalog.head("main"),
        [Change("a_b.t", "table", "x"), Change("aXb.t", "table", "y")],
        "two",
    )
    assert catalog.entries(c1, prefix="a_b.") == {"a_b.t": "x"}


def test_get_unknown_commit_is_not_found(catalog: VersionedCatalog) -> None:
    with pytest.raises(NotFound, match="commit"):
        catalog.get("0" * 64, "a.t")


def test_stale_expected_head_conflicts(catalog: VersionedCatalog) -> None:
    base = catalog.head("main")
    winner = catalog.commit("main", base, [Change("a.t", "table", "1")], "first")
    with pytest.raises(CommitConflict) as caught:
        catalog.commit("main", base, [Change("a.u", "table", "2")], "second")
    assert (caught.value.branch, caught.value.expected, caught.value.found) == (
        "main",
        base,
        winner,
    )
    assert catalog.head("main") == winner
    assert catalog.get(winner, "a.u") is None
    assert [c.message for c in catalog.log("main", 5)] == ["first", "root"]


def test_concurrent_commits_from_one_base_have_one_winner(catalog: VersionedCatalog) -> None:
    base = catalog.head("main")
    results: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def attempt(i: int) -> None:
        start.wait()
        try:
            results.append(catalog.commit("main", base, [Change(f"a.t{i}", "table", "x")], f"c{i}"))
        except BaseException as e:  # collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 1
    assert len(errors) == 3 and all(isinstance(e, CommitConflict) for e in errors)
    assert catalog.head("main") == results[0]


def test_commit_to_unknown_branch_is_not_found(catalog: VersionedCatalog) -> None:
    with pytest.raises(NotFound, match="'dev'"):
        catalog.commit("dev", ROOT_COMMIT, [], "x")


def test_change_twice_in_one_commit_is_invalid(catalog: VersionedCatalog) -> None:
    with pytest.raises(InvalidInput, match="twice"):
        catalog.commit(
            "main", ROOT_COMMIT, [Change("a.t", "table", "1"), Change("a.t", "table", "2")], "x"
        )
    with pytest.raises(InvalidInput, match="kind"):
        catalog.commit("main", ROOT_COMMIT, [Change("a.t", "view", "1")], "x")  # type: ignore[arg-type]
    assert catalog.head("main") == ROOT_COMMIT


def test_resolve_forms(catalog: VersionedCatalog) -> None:
    c1 = catalog.commit("main", ROOT_COMMIT, [Change("a.t", "table", "1")], "one")
    c2 = catalog.commit("main", c1, [Change("a.t", "table", "2")], "two")
    assert catalog.resolve("main") == ("main", c2)
    assert catalog.resolve(f"main@{c1[:8]}") == ("main", c1)
    assert catalog.resolve(f"main@{c1[:8].upper()}") == ("main", c1)
    assert catalog.resolve(f"@{c1[:10]}") == (None, c1)
    assert catalog.resolve(f"@{c2}") == (None, c2)


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        ("nope", "'nope'"),
        ("main@", "not a commit hash"),
        ("main@xyz", "not a commit hash"),
        ("@", "not a commit hash"),
        ("@" + "f" * 64, "no commit starts with"),
        ("", "ref ''"),
    ],
)
def test_resolve_unknown_ref_is_not_found(
    catalog: VersionedCatalog, ref: str, fragment: str
) -> None:
    with pytest.raises(NotFound) as caught:
        catalog.resolve(ref)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_resolve_ambiguous_prefix(catalog: VersionedCatalog) -> None:
    head = ROOT_COMMIT
    hashes = [head]
    # 17 commits guarantee two share a first hex digit.
    for i in range(16):
        head = catalog.commit("main", head, [Change("a.t", "table", str(i))], f"c{i}")
        hashes.append(head)
    firsts = [h[0] for h in hashes]
    shared = next(c for c in firsts if firsts.count(c) > 1)
    with pytest.raises(InvalidInput, match="ambiguous"):
        catalog.resolve(f"@{shared}")


def test_log_limits_and_follows_first_parents(catalog: VersionedCatalog) -> None:
    head = ROOT_COMMIT
    for i in range(5):
        head = catalog.commit("main", head, [], f"c{i}")
    assert [c.message for c in catalog.log("main", 3)] == ["c4", "c3", "c2"]
    assert len(catalog.log("main", 100)) == 6
    assert catalog.log("main", 0) == []
    assert [c.message for c in catalog.log(f"@{catalog.log('main', 2)[1].hash[:12]}", 2)] == [
        "c3",
        "c2",
    ]


def test_reopen_keeps_history(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/nested/dir/catalog.db"
    with VersionedCatalog(uri) as first:
        new = first.commit("main", ROOT_COMMIT, [Change("a.t", "table", "1")], "one")
    with VersionedCatalog(uri) as second:
        assert second.head("main") == new
        assert second.get(new, "a.t") == "1"


def test_in_memory_catalog() -> None:
    with VersionedCatalog("sqlite://") as vc:
        new = vc.commit("main", ROOT_COMMIT, [Change("a.t", "table", "1")], "one")
        assert vc.entries(vc.head("main")) == {"a.t": "1"}
        assert vc.resolve("main") == ("main", new)


def test_the_state_of_a_commit_written_here_comes_from_its_parents_without_a_walk(
    tmp_path: Path,
) -> None:
    """After a long history, reading the head a run writes on costs no walk of it: the
    state of a commit made here is its parent's with its changes. It is what another
    catalog on the same database finds by walking, for tables and namespaces alike."""
    from sqlalchemy import event

    url = f"sqlite:///{tmp_path}/catalog.db"
    catalog = VersionedCatalog(url)
    statements: list[str] = []
    event.listen(catalog._engine, "before_cursor_execute",
                 lambda _c, _cur, sql, *_: statements.append(sql))
    head = catalog.commit("main", catalog.head("main"), [Change("a", "namespace", "{}")], "ns")
    for i in range(60):
        changes = [Change(f"a.t{i % 7}", "table", f"loc{i}")]
        if i % 10 == 9:
            changes.append(Change(f"a.t{(i + 3) % 7}", "table", None))
        head = catalog.commit("main", head, changes, f"c{i}")
    assert catalog.get(head, "a.t0") == "loc56"  # one walk: the state of this head
    for i in range(60, 70):
        statements.clear()
        changes = [Change(f"a.t{i % 7 + 2}", "table", f"loc{i}"), Change("a.t1", "table", None)]
        head = catalog.commit("main", head, changes, f"c{i}")
        assert catalog.get(head, f"a.t{i % 7 + 2}") == f"loc{i}" and catalog.get(head, "a.t1") is None
        assert catalog.entries(head, "namespace") == {"a": "{}"}
        assert not [s for s in statements if "chain" in s]

    other = VersionedCatalog(url)
    try:
        for kind in ("table", "namespace"):
            assert catalog.entries(head, kind) == other.entries(head, kind)
        assert catalog.entries(head, prefix="a.t") == other.entries(head, prefix="a.t")
        assert [catalog.get(head, f"a.t{i}") for i in range(9)] == [
            other.get(head, f"a.t{i}") for i in range(9)]
    finally:
        other.close()
        catalog.close()
