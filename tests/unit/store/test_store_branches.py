"""Branches and tags: lifecycle, name rules, every bad input, and that creation copies nothing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from faas.protocol.errors import AlreadyExists, CommitConflict, InvalidInput, NotFound
from faas.store import refs as refs_module
from faas.store.catalog import Change, VersionedCatalog
from faas.store.lakehouse import Lakehouse
from faas.store.refs import RefInfo

pytestmark = pytest.mark.timeout(60)


def state(vc: VersionedCatalog) -> Any:
    """Everything a ref operation could change: every ref and the history of each."""
    refs = vc.branches(include_runs=True) + vc.tags()
    return sorted((r.name, r.kind, r.head, [c.hash for c in vc.log(r.name, 1000)]) for r in refs)


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(error.value)
    assert text and "\n" not in text
    return text


# -- creating and listing -------------------------------------------------------


def test_create_branch_points_at_the_head_of_main(catalog: VersionedCatalog) -> None:
    head = catalog.head("main")
    info = catalog.create_branch("dev")
    assert isinstance(info, RefInfo)
    assert (info.name, info.kind, info.head) == ("dev", "branch", head)
    assert info.commit.hash == head and info.commit.message == "t1"
    assert [b.name for b in catalog.branches()] == ["dev", "main"]
    assert catalog.tags() == []
    assert catalog.entries(catalog.head("dev")) == catalog.entries(head)
    # No commit was made: the history of main is unchanged and dev shares it.
    assert [c.hash for c in catalog.log("dev", 10)] == [c.hash for c in catalog.log("main", 10)]


def test_create_branch_from_every_ref_form(catalog: VersionedCatalog) -> None:
    first = catalog.log("main", 10)[1].hash
    catalog.create_tag("v1", f"@{first[:10]}")
    assert catalog.create_branch("a", f"main@{first[:8]}").head == first
    assert catalog.create_branch("b", f"@{first}").head == first
    assert catalog.create_branch("c", "v1").head == first
    assert catalog.create_branch("d", "c").head == first
    assert catalog.create_branch("feature/x-1.2_y").head == catalog.head("main")


def test_commits_on_a_branch_stay_on_it(catalog: VersionedCatalog) -> None:
    main_head = catalog.head("main")
    catalog.create_branch("dev")
    new = catalog.commit("dev", main_head, [Change("ns.u", "table", "u1")], "u on dev")
    assert catalog.head("dev") == new
    assert catalog.head("main") == main_head
    assert catalog.entries(catalog.head("main")) == {"ns.t": "t1"}
    assert catalog.entries(new) == {"ns.t": "t1", "ns.u": "u1"}


def test_tags_never_move(catalog: VersionedCatalog) -> None:
    head = catalog.head("main")
    tag = catalog.create_tag("v1")
    assert (tag.name, tag.kind, tag.head) == ("v1", "tag", head)
    catalog.commit("main", head, [Change("ns.t", "table", "t2")], "t2")
    assert [t.head for t in catalog.tags()] == [head]
    assert catalog.resolve("v1") == (None, head)
    before = state(catalog)
    with pytest.raises(InvalidInput, match="'v1' is a tag") as caught:
        catalog.commit("v1", head, [Change("ns.t", "table", "x")], "onto a tag")
    one_line(caught)
    assert state(catalog) == before


def test_branches_and_tags_are_sorted_with_their_head_commit(catalog: VersionedCatalog) -> None:
    for name in ["zeta", "alpha", "mid/one"]:
        catalog.create_branch(name)
    catalog.create_tag("b-tag")
    catalog.create_tag("a-tag")
    assert [b.name for b in catalog.branches()] == ["alpha", "main", "mid/one", "zeta"]
    assert [t.name for t in catalog.tags()] == ["a-tag", "b-tag"]
    assert all(r.commit.message == "t1" for r in catalog.branches() + catalog.tags())


# -- names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "cannot be empty"),
        ("a..b", "'..'"),
        ("a//b", "'//'"),
        ("dev/", "cannot end with '/' or '.'"),
        ("dev.", "cannot end with '/' or '.'"),
        ("dev@1", "'@'"),
        ("@abc", "'@'"),
        ("-dev", "starting with a letter or digit"),
        (".dev", "starting with a letter or digit"),
        ("/dev", "starting with a letter or digit"),
        ("de v", "use letters, digits"),
        ("dév", "use letters, digits"),
        ("a" * 201, "over the limit of 200"),
    ],
)
def test_bad_ref_names_are_refused(catalog: VersionedCatalog, name: str, rule: str) -> None:
    before = state(catalog)
    for create in (catalog.create_branch, catalog.create_tag):
        with pytest.raises(InvalidInput) as caught:
            create(name)
        text = one_line(caught)
        assert "invalid ref name" in text and rule in text
        assert repr(name[:20]).rstrip("'") in text
    assert state(catalog) == before


def test_longest_name_is_accepted(catalog: VersionedCatalog) -> None:
    name = "a" * 200
    assert catalog.create_branch(name).name == name


def test_run_names_are_reserved(catalog: VersionedCatalog) -> None:
    before = state(catalog)
    for create in (catalog.create_branch, catalog.create_tag):
        with pytest.raises(InvalidInput, match="reserved") as caught:
            create("run/abc")
        one_line(caught)
    assert state(catalog) == before
    info = catalog.create_run_branch("abc", f"@{catalog.head('main')}")
    assert (info.name, info.kind) == ("run/abc", "branch")
    assert [b.name for b in catalog.branches()] == ["main"]
    assert [b.name for b in catalog.branches(include_runs=True)] == ["main", "run/abc"]
    with pytest.raises(AlreadyExists):
        catalog.create_run_branch("abc", "main")
    with pytest.raises(InvalidInput, match="invalid ref name"):
        catalog.create_run_branch("a..b", "main")


# -- bad refs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_ref", "fragment"),
    [
        ("nope", "no branch or tag named 'nope'"),
        ("@zz", "'zz' is not a commit hash"),
        ("main@", "'' is not a commit hash"),
        ("main@xyz", "'xyz' is not a commit hash"),
        ("@" + "f" * 64, "no commit starts with"),
        ("", "ref ''"),
    ],
)
def test_branch_from_a_bad_ref_is_not_found(
    catalog: VersionedCatalog, from_ref: str, fragment: str
) -> None:
    before = state(catalog)
    for create in (catalog.create_branch, catalog.create_tag):
        with pytest.raises(NotFound) as caught:
            create("dev", from_ref)
        assert fragment in one_line(caught)
    assert state(catalog) == before


def test_branch_from_a_commit_outside_the_history_of_a_branch(catalog: VersionedCatalog) -> None:
    catalog.create_branch("dev")
    elsewhere = catalog.commit("dev", catalog.head("dev"), [], "only on dev")
    before = state(catalog)
    with pytest.raises(NotFound, match="not in the history of 'main'") as caught:
        catalog.create_branch("x", f"main@{elsewhere[:12]}")
    one_line(caught)
    assert state(catalog) == before


@pytest.mark.parametrize(
    ("existing", "kind"), [("dev", "branch"), ("v1", "tag"), ("main", "branch")]
)
def test_create_existing_name_is_already_exists(
    catalog: VersionedCatalog, existing: str, kind: str
) -> None:
    catalog.create_branch("dev")
    catalog.create_tag("v1")
    before = state(catalog)
    for create in (catalog.create_branch, catalog.create_tag):
        with pytest.raises(AlreadyExists) as caught:
            create(existing)
        assert f"a {kind} named {existing!r} already exists" in one_line(caught)
    assert state(catalog) == before


# -- deleting -------------------------------------------------------------------


def test_delete_branch_keeps_its_commits_reachable_by_hash(catalog: VersionedCatalog) -> None:
    catalog.create_branch("dev")
    commit = catalog.commit("dev", catalog.head("dev"), [Change("ns.u", "table", "u")], "u")
    catalog.delete_branch("dev")
    assert [b.name for b in catalog.branches()] == ["main"]
    with pytest.raises(NotFound):
        catalog.resolve("dev")
    assert catalog.resolve(f"@{commit[:12]}") == (None, commit)
    assert catalog.get(commit, "ns.u") == "u"
    # The name is free again.
    assert catalog.create_branch("dev", f"@{commit}").head == commit


def test_delete_tag(catalog: VersionedCatalog) -> None:
    catalog.create_tag("v1")
    catalog.delete_tag("v1")
    assert catalog.tags() == []
    catalog.create_branch("v1")  # the name is free for a branch now


def test_delete_main_is_refused(catalog: VersionedCatalog) -> None:
    before = state(catalog)
    with pytest.raises(InvalidInput, match="default branch") as caught:
        catalog.delete_branch("main")
    one_line(caught)
    assert state(catalog) == before


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda vc: vc.delete_branch("nope"), NotFound, "'nope'"),
        (lambda vc: vc.delete_tag("nope"), NotFound, "'nope'"),
        (lambda vc: vc.delete_branch("v1"), InvalidInput, "is a tag"),
        (lambda vc: vc.delete_tag("dev"), InvalidInput, "is a branch"),
        (lambda vc: vc.delete_tag("main"), InvalidInput, "is a branch"),
        (lambda vc: vc.delete_branch("a..b"), InvalidInput, "invalid ref name"),
        (lambda vc: vc.delete_branch("main@abc"), InvalidInput, "invalid ref name"),
        (lambda vc: vc.delete_branch("dev", expected_head="0" * 64), CommitConflict, "'dev'"),
    ],
)
def test_bad_deletes_change_nothing(
    catalog: VersionedCatalog, call: Any, error: type[Exception], fragment: str
) -> None:
    catalog.create_branch("dev")
    catalog.create_tag("v1")
    before = state(catalog)
    with pytest.raises(error) as caught:
        call(catalog)
    assert fragment in one_line(caught)
    assert state(catalog) == before


def test_delete_branch_with_expected_head(catalog: VersionedCatalog) -> None:
    head = catalog.create_branch("dev").head
    catalog.delete_branch("dev", expected_head=head)
    assert [b.name for b in catalog.branches()] == ["main"]


def test_head_of_a_tag_or_unknown_branch(catalog: VersionedCatalog) -> None:
    catalog.create_tag("v1")
    with pytest.raises(InvalidInput, match="is a tag"):
        catalog.head("v1")
    with pytest.raises(NotFound, match="'nope'"):
        catalog.head("nope")


# -- pruning run branches -------------------------------------------------------


def test_prune_run_branches_keeps_runs_in_flight(catalog: VersionedCatalog) -> None:
    for run_id in ["r1", "r2", "r3"]:
        catalog.create_run_branch(run_id, "main")
    catalog.create_branch("dev")
    deleted = catalog.prune_run_branches(keep=["r2", "run/r3"])
    assert deleted == ["run/r1"]
    assert [b.name for b in catalog.branches(include_runs=True)] == [
        "dev",
        "main",
        "run/r2",
        "run/r3",
    ]
    assert catalog.prune_run_branches() == ["run/r2", "run/r3"]
    assert catalog.prune_run_branches() == []


def test_prune_run_branches_older_than(
    catalog: VersionedCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog.create_run_branch("old", "main")
    catalog.create_run_branch("new", "main")
    catalog.commit("run/new", catalog.head("main"), [], "fresh commit on the run branch")
    made = {b.name: b.commit.created_at for b in catalog.branches(include_runs=True)}
    assert made["run/old"] < made["run/new"]
    # The clock stands an hour after the newer head: "old" is older than that by the gap.
    now = made["run/new"] + timedelta(hours=1)
    monkeypatch.setattr(refs_module, "_now", lambda: now)
    gap = (made["run/new"] - made["run/old"]).total_seconds()
    assert catalog.prune_run_branches(older_than=3600 + gap + 1) == []
    assert catalog.prune_run_branches(older_than=3600 + gap / 2) == ["run/old"]
    assert [b.name for b in catalog.branches(include_runs=True)] == ["main", "run/new"]


# -- through the lakehouse: no data copied ----------------------------------------


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_branch_creation_copies_no_files(tmp_path: Path, catalog_uri: str) -> None:
    with Lakehouse(tmp_path / "home", catalog=catalog_uri) as lake:
        lake.create_namespace("sales")
        tx = lake.begin()
        tx.write("sales.orders", pa.table({"id": [1, 2, 3], "qty": [5, 1, 2]}))
        tx.write("sales.regions", pa.table({"region": ["eu", "asia"]}))
        tx.publish("seed")
        warehouse = tmp_path / "home" / "warehouse"
        files = _files(warehouse)
        assert files
        lake.catalog.create_branch("dev")
        lake.catalog.create_tag("v1")
        assert _files(warehouse) == files
        for ref in ("dev", "v1"):
            assert lake.tables(ref=ref) == lake.tables() == ["sales.orders", "sales.regions"]
            assert lake.namespaces(ref) == ["sales"]
            assert lake.scan("sales.orders", ref=ref) == lake.scan("sales.orders")
            assert (
                lake.table_info("sales.orders", ref).metadata_location
                == lake.table_info("sales.orders").metadata_location
            )
        # A write on the branch leaves main as it was.
        tx = lake.begin("dev")
        tx.write("sales.orders", pa.table({"id": [9], "qty": [9]}))
        tx.publish("dev write")
        assert lake.scan("sales.orders", ref="dev").num_rows == 1
        assert lake.scan("sales.orders").num_rows == 3
        with pytest.raises(InvalidInput, match="not a branch"):
            _publish_on(lake, "v1")


def _publish_on(lake: Lakehouse, ref: str) -> None:
    tx = lake.begin(ref)
    tx.write("sales.regions", pa.table({"region": ["x"]}))
    tx.publish("onto a tag")


def test_namespace_prefix_is_case_sensitive(catalog_uri: str) -> None:
    from faas.store.catalog import Change, VersionedCatalog

    cat = VersionedCatalog(catalog_uri)
    cat.commit("main", cat.head("main"), [
        Change("shop", "namespace", "{}"), Change("Shop", "namespace", "{}"),
        Change("shop.a", "table", "file:///a"), Change("Shop.b", "table", "file:///b"),
    ], "two namespaces differing in case")
    assert list(cat.entries(cat.head("main"), "table", prefix="shop.")) == ["shop.a"]
    cat.close()


def test_overlong_names_are_refused_before_the_database(catalog_uri: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from faas.protocol.errors import InvalidInput
    from faas.store.catalog import Change, VersionedCatalog
    from faas.store.keys import split_key

    with pytest.raises(InvalidInput, match="over 255 characters"):
        split_key("ns." + "t" * 300)
    cat = VersionedCatalog(catalog_uri)
    head = cat.head("main")
    with pytest.raises(InvalidInput, match="author"):
        cat.commit("main", head, [Change("ns", "namespace", "{}")], "m", author="a" * 300)
    assert cat.head("main") == head
    cat.close()
