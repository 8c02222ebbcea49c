"""Merge bases, diffs and merges; lakehouse diff, revert, drop; per-key publish conflicts."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
from sqlalchemy import insert, update

from faas.protocol.errors import CommitConflict, InvalidInput, MergeConflict, NotFound
from faas.store.catalog import ROOT_COMMIT, Change, VersionedCatalog
from faas.store.lakehouse import Lakehouse, TableDiff
from faas.store.merge import KeyDiff, MergeResult
from faas.store.schema import commit_changes, commits, refs
from tests.conftest import OpenLake

pytestmark = pytest.mark.timeout(90)


def put(vc: VersionedCatalog, branch: str, message: str, **tables: str | None) -> str:
    """One commit on ``branch`` setting each ``ns.<name>`` (None drops it)."""
    changes = [Change(f"ns.{name}", "table", value) for name, value in tables.items()]
    return vc.commit(branch, vc.head(branch), changes, message)


def state(vc: VersionedCatalog) -> Any:
    refs_ = vc.branches(include_runs=True) + vc.tags()
    return sorted((r.name, r.kind, r.head, [c.hash for c in vc.log(r.name, 1000)]) for r in refs_)


# -- merge base -------------------------------------------------------------------


def test_merge_base_of_diverged_branches(catalog: VersionedCatalog) -> None:
    fork = catalog.head("main")
    catalog.create_branch("dev")
    a = put(catalog, "main", "a", a="1")
    b = put(catalog, "dev", "b", b="1")
    assert catalog.merge_base(a, b) == fork
    assert catalog.merge_base(b, a) == fork
    assert catalog.merge_base(a, fork) == fork
    assert catalog.merge_base(a, a) == a
    assert catalog.merge_base(ROOT_COMMIT, b) == ROOT_COMMIT


def test_merge_base_follows_second_parents(catalog: VersionedCatalog) -> None:
    catalog.create_branch("dev")
    put(catalog, "dev", "d1", d="1")
    d1 = catalog.head("dev")
    put(catalog, "main", "m1", m="1")
    catalog.merge("dev", "main")
    put(catalog, "dev", "d2", d="2")
    put(catalog, "main", "m2", m="2")
    # dev's first head is now an ancestor of main through the merge's second parent.
    assert catalog.merge_base(catalog.head("main"), catalog.head("dev")) == d1


def test_merge_base_of_criss_cross_is_a_best_one(catalog: VersionedCatalog) -> None:
    catalog.create_branch("dev")
    m1 = put(catalog, "main", "m1", m="1")
    d1 = put(catalog, "dev", "d1", d="1")
    catalog.merge("dev", "main")
    # Merge main's old head into dev: a criss-cross.
    catalog.merge(f"@{m1}", "dev")
    bases = {m1, d1}
    assert catalog.merge_base(catalog.head("main"), catalog.head("dev")) in bases


def test_merge_base_of_unknown_commit(catalog: VersionedCatalog) -> None:
    with pytest.raises(NotFound, match="commit"):
        catalog.merge_base("0" * 64, catalog.head("main"))


def test_merge_base_and_merge_on_a_long_history(catalog: VersionedCatalog) -> None:
    """Thousands of commits on each side (inserted in bulk): answers stay right."""
    n = 3000
    now = datetime.now(UTC).isoformat()
    fork = catalog.head("main")
    rows: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    heads = {}
    for side in ("main", "dev"):
        parent = fork
        for i in range(n):
            h = hashlib.sha256(f"{side}{i}".encode()).hexdigest()
            rows.append(
                {
                    "hash": h,
                    "parent": parent,
                    "parent2": None,
                    "message": f"{side}{i}",
                    "author": "bulk",
                    "created_at": now,
                    "properties": "{}",
                }
            )
            changes.append(
                {"commit": h, "kind": "table", "key": f"ns.{side}{i % 50}", "value": f"v{i}"}
            )
            parent = h
        heads[side] = parent
    with catalog._engine.begin() as conn:
        conn.execute(insert(commits), rows)
        conn.execute(insert(commit_changes), changes)
        conn.execute(update(refs).where(refs.c.name == "main").values(head=heads["main"]))
        conn.execute(insert(refs).values(name="dev", kind="branch", head=heads["dev"]))
    assert catalog.merge_base(heads["main"], heads["dev"]) == fork
    assert len(catalog.diff("main", "dev")) == 100
    result = catalog.merge("dev", "main")
    assert len(result.changes) == 50
    entries = catalog.entries(catalog.head("main"))
    assert entries[f"ns.dev{(n - 1) % 50}"] == f"v{n - 1}"
    assert entries[f"ns.main{(n - 1) % 50}"] == f"v{n - 1}"
    assert catalog.merge_base(catalog.head("main"), heads["dev"]) == heads["dev"]


# -- diff -----------------------------------------------------------------------


def test_diff_between_refs(catalog: VersionedCatalog) -> None:
    catalog.create_tag("v1")
    catalog.create_branch("dev")
    put(catalog, "dev", "changes", t="t2", u="u1")
    catalog.commit("dev", catalog.head("dev"), [Change("other", "namespace", "{}")], "ns")
    put(catalog, "main", "main only", m="m1")
    assert catalog.diff("main", "dev") == [
        KeyDiff("other", "namespace", None, "{}"),
        KeyDiff("ns.m", "table", "m1", None),
        KeyDiff("ns.t", "table", "t1", "t2"),
        KeyDiff("ns.u", "table", None, "u1"),
    ]
    assert catalog.diff("v1", "main") == [KeyDiff("ns.m", "table", None, "m1")]
    assert catalog.diff("main", "main") == []
    # A change that is undone is no difference.
    put(catalog, "main", "undo", m=None)
    assert catalog.diff("v1", "main") == []


def test_diff_of_bad_refs(catalog: VersionedCatalog) -> None:
    with pytest.raises(NotFound, match="'nope'"):
        catalog.diff("main", "nope")
    with pytest.raises(NotFound, match="not a commit hash"):
        catalog.diff("@zz", "main")


# -- merge: refused -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "into", "error", "fragment"),
    [
        ("main", "main", InvalidInput, "same branch"),
        ("dev", "dev", InvalidInput, "same branch"),
        ("nope", "main", NotFound, "'nope'"),
        ("@zz", "main", NotFound, "not a commit hash"),
        ("main@", "dev", NotFound, "not a commit hash"),
        ("dev", "nope", NotFound, "'nope'"),
        ("dev", "v1", InvalidInput, "'v1' is a tag"),
        ("dev", "main@abc", InvalidInput, "give a branch name"),
    ],
)
def test_bad_merges_change_nothing(
    catalog: VersionedCatalog, source: str, into: str, error: type[Exception], fragment: str
) -> None:
    catalog.create_branch("dev")
    put(catalog, "dev", "d", d="1")
    catalog.create_tag("v1", "main")
    before = state(catalog)
    with pytest.raises(error) as caught:
        catalog.merge(source, into)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
    assert state(catalog) == before


def test_merge_own_old_commit_into_itself_is_refused(catalog: VersionedCatalog) -> None:
    old = catalog.head("main")
    put(catalog, "main", "m", m="1")
    with pytest.raises(InvalidInput, match="same branch"):
        catalog.merge(f"main@{old[:10]}", "main")


def test_nothing_to_merge_makes_no_commit(catalog: VersionedCatalog) -> None:
    catalog.create_branch("dev")
    put(catalog, "main", "m", m="1")
    before = state(catalog)
    result = catalog.merge("dev", "main")
    assert result == MergeResult(catalog.head("main"), False, [])
    assert catalog.merge("dev", "main", fast_forward=True).fast_forward is False
    assert state(catalog) == before


# -- merge: fast-forwardable ------------------------------------------------------


def test_fast_forwardable_merge_makes_one_merge_commit_by_default(
    catalog: VersionedCatalog,
) -> None:
    main_head = catalog.head("main")
    catalog.create_branch("dev")
    d1 = put(catalog, "dev", "d1", d="1")
    d2 = put(catalog, "dev", "d2", d="2", t="t2")
    result = catalog.merge("dev", "main", author="ana", properties={"run_id": "r7"})
    assert not result.fast_forward
    assert result.changes == [Change("ns.d", "table", "2"), Change("ns.t", "table", "t2")]
    [merge, previous] = catalog.log("main", 2)
    assert merge.hash == result.commit == catalog.head("main")
    assert merge.parents == [main_head, d2]
    assert (merge.message, merge.author, merge.properties) == (
        "merge dev into main",
        "ana",
        {"run_id": "r7"},
    )
    assert previous.hash == main_head
    assert catalog.entries(result.commit) == {"ns.d": "2", "ns.t": "t2"}
    assert catalog.head("dev") == d2
    assert d1 not in [c.hash for c in catalog.log("main", 10)]  # first-parent log


def test_fast_forward_moves_the_pointer(catalog: VersionedCatalog) -> None:
    catalog.create_branch("dev")
    put(catalog, "dev", "d1", d="1")
    d2 = put(catalog, "dev", "d2", d="2")
    result = catalog.merge("dev", "main", fast_forward=True)
    assert result == MergeResult(d2, True, [Change("ns.d", "table", "2")])
    assert catalog.head("main") == d2
    assert [c.message for c in catalog.log("main", 3)] == ["d2", "d1", "t1"]


def test_fast_forward_not_possible_makes_a_merge_commit(catalog: VersionedCatalog) -> None:
    catalog.create_branch("dev")
    d = put(catalog, "dev", "d", d="1")
    m = put(catalog, "main", "m", m="1")
    result = catalog.merge("dev", "main", fast_forward=True, message="custom")
    assert not result.fast_forward
    info = catalog.log("main", 1)[0]
    assert info.parents == [m, d] and info.message == "custom"


# -- merge: three-way -------------------------------------------------------------


def test_three_way_merge_of_disjoint_keys(catalog: VersionedCatalog) -> None:
    catalog.create_branch("dev")
    put(catalog, "dev", "d", d="1", t=None)
    put(catalog, "main", "m", m="1")
    result = catalog.merge("dev", "main")
    assert result.changes == [Change("ns.d", "table", "1"), Change("ns.t", "table", None)]
    assert catalog.entries(catalog.head("main")) == {"ns.d": "1", "ns.m": "1"}
    assert catalog.get(catalog.head("main"), "ns.t") is None
    # dev is untouched and can be merged again later: only its new changes come.
    put(catalog, "dev", "d2", e="1")
    put(catalog, "main", "m2", m="2")
    again = catalog.merge("dev", "main")
    assert again.changes == [Change("ns.e", "table", "1")]
    assert catalog.entries(catalog.head("main")) == {"ns.d": "1", "ns.e": "1", "ns.m": "2"}


def test_merge_back_and_forth(catalog: VersionedCatalog) -> None:
    catalog.create_branch("dev")
    put(catalog, "main", "m1", m="1")
    put(catalog, "dev", "d1", d="1")
    catalog.merge("main", "dev")
    assert catalog.entries(catalog.head("dev")) == {"ns.d": "1", "ns.m": "1", "ns.t": "t1"}
    put(catalog, "dev", "d2", m="from dev")
    result = catalog.merge("dev", "main")
    # m changed on dev after dev took main's m: no conflict, dev's value wins.
    assert result.changes == [Change("ns.d", "table", "1"), Change("ns.m", "table", "from dev")]
    assert catalog.entries(catalog.head("main")) == catalog.entries(catalog.head("dev"))


def test_conflict_names_the_keys_and_writes_nothing(catalog: VersionedCatalog) -> None:
    catalog.create_branch("dev")
    put(catalog, "dev", "d", t="dev", u="u", a="dev")
    put(catalog, "main", "m", t="main", a="main", b="b")
    before = state(catalog)
    with pytest.raises(MergeConflict) as caught:
        catalog.merge("dev", "main")
    assert caught.value.keys == ["ns.a", "ns.t"]
    assert (caught.value.source, caught.value.target) == ("dev", "main")
    assert "ns.a, ns.t" in str(caught.value) and "\n" not in str(caught.value)
    assert state(catalog) == before


def test_same_change_on_both_sides_is_no_conflict(catalog: VersionedCatalog) -> None:
    catalog.create_branch("dev")
    put(catalog, "dev", "d", t="same", d="1")
    put(catalog, "main", "m", t="same")
    result = catalog.merge("dev", "main")
    assert catalog.entries(result.commit) == {"ns.d": "1", "ns.t": "same"}


def test_two_branches_creating_the_same_table(catalog: VersionedCatalog) -> None:
    catalog.create_branch("a")
    catalog.create_branch("b")
    put(catalog, "a", "a", new="from a")
    put(catalog, "b", "b", new="from b")
    catalog.merge("a", "main")
    before = state(catalog)
    with pytest.raises(MergeConflict, match="ns.new"):
        catalog.merge("b", "main")
    assert state(catalog) == before
    assert catalog.get(catalog.head("main"), "ns.new") == "from a"


def test_namespaces_merge_like_tables(catalog: VersionedCatalog) -> None:
    catalog.create_branch("dev")
    catalog.commit("dev", catalog.head("dev"), [Change("more", "namespace", "{}")], "ns")
    catalog.commit("dev", catalog.head("dev"), [Change("more.x", "table", "x")], "x")
    catalog.merge("dev", "main")
    assert catalog.entries(catalog.head("main"), "namespace") == {"more": "{}", "ns": "{}"}
    assert catalog.get(catalog.head("main"), "more.x") == "x"


def test_table_into_a_namespace_the_target_dropped_conflicts(catalog: VersionedCatalog) -> None:
    catalog.commit("main", catalog.head("main"), [Change("tmp", "namespace", "{}")], "tmp")
    catalog.create_branch("dev")
    catalog.commit("dev", catalog.head("dev"), [Change("tmp.x", "table", "x")], "x in tmp")
    catalog.commit("main", catalog.head("main"), [Change("tmp", "namespace", None)], "drop")
    with pytest.raises(MergeConflict, match="tmp"):
        catalog.merge("dev", "main")
    # And the other way round: dev drops a namespace main put a table in.
    catalog.create_branch("dev2", "@" + catalog.log("main", 2)[1].hash)
    catalog.commit("dev2", catalog.head("dev2"), [Change("tmp", "namespace", None)], "drop")
    catalog.create_branch("dev3", "@" + catalog.log("main", 2)[1].hash)
    catalog.commit("dev3", catalog.head("dev3"), [Change("tmp.y", "table", "y")], "y")
    with pytest.raises(MergeConflict, match="tmp"):
        catalog.merge("dev2", "dev3")


def test_merge_sources_of_every_form(catalog: VersionedCatalog) -> None:
    catalog.create_branch("dev")
    d1 = put(catalog, "dev", "d1", d="1")
    put(catalog, "dev", "d2", d="2")
    catalog.create_tag("t1", f"@{d1}")
    catalog.create_branch("x")
    catalog.create_branch("y")
    catalog.create_branch("z")
    for target, source in (("x", "t1"), ("y", f"@{d1[:12]}"), ("z", f"dev@{d1[:12]}")):
        result = catalog.merge(source, target)
        assert catalog.entries(result.commit)["ns.d"] == "1"
        assert catalog.log(target, 1)[0].message == f"merge {source} into {target}"


def test_merge_retries_when_the_target_moves(
    catalog: VersionedCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog.create_branch("dev")
    put(catalog, "dev", "d", d="1")
    real = catalog._write_commit
    calls = []

    def racing(*args: Any, **kwargs: Any) -> str:
        calls.append(args)
        if len(calls) == 1:
            sneak = [Change("ns.s", "table", "1")]
            real("main", catalog.head("main"), sneak, "sneaked in", "faas", None)
        return real(*args, **kwargs)

    monkeypatch.setattr(catalog, "_write_commit", racing)
    result = catalog.merge("dev", "main")
    assert len(calls) == 2  # the merge that lost, the merge on the new head
    assert catalog.entries(result.commit) == {"ns.d": "1", "ns.s": "1", "ns.t": "t1"}
    assert catalog.log("main", 2)[1].message == "sneaked in"


def test_merge_finds_a_conflict_that_arrived_meanwhile(
    catalog: VersionedCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog.create_branch("dev")
    put(catalog, "dev", "d", d="1")
    real = catalog._write_commit
    moved: list[str] = []

    def racing(*args: Any, **kwargs: Any) -> str:
        if not moved:
            sneak = [Change("ns.d", "table", "main")]
            moved.append(real("main", catalog.head("main"), sneak, "sneaked in", "faas", None))
        return real(*args, **kwargs)

    monkeypatch.setattr(catalog, "_write_commit", racing)
    with pytest.raises(MergeConflict, match="ns.d"):
        catalog.merge("dev", "main")
    assert catalog.head("main") == moved[0]


# -- through the lakehouse --------------------------------------------------------


ORDERS = pa.table({"id": [1, 2, 3], "qty": [5, 1, 2]})


@pytest.fixture
def lake(open_lake: OpenLake, catalog_uri: str) -> Lakehouse:
    lakehouse = open_lake("sales", catalog=catalog_uri)
    write(lakehouse, "main", orders=ORDERS)
    return lakehouse


def write(lake: Lakehouse, ref: str, **tables: pa.Table) -> str:
    tx = lake.begin(ref)
    for name, data in tables.items():
        tx.write(f"sales.{name}", data)
    return tx.publish(f"write {', '.join(tables)} on {ref}")


def test_time_travel_and_tags_after_merge(lake: Lakehouse) -> None:
    before = lake.catalog.head("main")
    lake.catalog.create_tag("v1")
    lake.catalog.create_branch("dev")
    write(lake, "dev", orders=ORDERS.slice(0, 1), extra=pa.table({"x": [1]}))
    lake.create_namespace("crm", "dev")
    tx = lake.begin("dev")
    tx.write("crm.people", pa.table({"name": ["ana"]}))
    tx.publish("people")
    lake.catalog.merge("dev", "main")
    assert lake.namespaces() == ["crm", "sales"]
    assert lake.tables() == ["crm.people", "sales.extra", "sales.orders"]
    assert lake.scan("crm.people").to_pylist() == [{"name": "ana"}]
    assert lake.scan("sales.orders").num_rows == 1
    for old in (f"main@{before[:12]}", f"@{before}", "v1"):
        assert lake.namespaces(old) == ["sales"]
        assert lake.tables(ref=old) == ["sales.orders"]
        assert lake.scan("sales.orders", ref=old).num_rows == 3
    assert lake.catalog.resolve("v1") == (None, before)


def test_lakehouse_diff_reads_snapshots_and_row_counts(lake: Lakehouse) -> None:
    lake.catalog.create_branch("dev")
    old_info = lake.table_info("sales.orders")
    write(lake, "dev", orders=ORDERS.slice(0, 2), regions=pa.table({"r": ["eu"]}))
    lake.create_namespace("crm", "dev")
    new_orders = lake.table_info("sales.orders", "dev")
    regions = lake.table_info("sales.regions", "dev")
    assert lake.diff("main", "dev") == [
        TableDiff("crm", "namespace", "added", None, None, None, None),
        TableDiff(
            "sales.orders",
            "table",
            "changed",
            old_info.snapshot_id,
            new_orders.snapshot_id,
            3,
            2,
        ),
        TableDiff("sales.regions", "table", "added", None, regions.snapshot_id, None, 1),
    ]
    assert [d.status for d in lake.diff("dev", "main")] == ["dropped", "changed", "dropped"]
    assert lake.diff("main", "main") == []


def test_revert_one_table(lake: Lakehouse) -> None:
    lake.catalog.create_tag("v1")
    write(lake, "main", orders=ORDERS.slice(0, 1), regions=pa.table({"r": ["eu"]}))
    commit, changed = lake.revert_table("sales.orders", "main", "v1")
    assert changed and lake.catalog.head("main") == commit
    assert lake.catalog.log("main", 1)[0].message == "revert sales.orders to v1"
    assert lake.scan("sales.orders").num_rows == 3
    assert lake.tables() == ["sales.orders", "sales.regions"]  # only that table
    before = lake.catalog.head("main")
    # Already as at v1: nothing is committed, and that is no error.
    assert lake.revert_table("sales.orders", "main", "v1") == (before, False)
    assert lake.catalog.head("main") == before
    # Absent at the target ref: the revert drops it.
    lake.revert_table("sales.regions", "main", "v1")
    assert lake.tables() == ["sales.orders"]
    with pytest.raises(InvalidInput, match="absent on both"):
        lake.revert_table("sales.nothing", "main", "v1")
    with pytest.raises(InvalidInput, match="not a branch"):
        lake.revert_table("sales.orders", "v1", f"@{before}")
    with pytest.raises(NotFound):
        lake.revert_table("sales.orders", "main", "nope")


def test_drop_table(lake: Lakehouse) -> None:
    lake.catalog.create_tag("v1")
    commit = lake.drop_table("sales.orders")
    assert lake.catalog.head("main") == commit
    assert lake.catalog.log("main", 1)[0].message == "drop table sales.orders"
    assert lake.tables() == []
    assert lake.scan("sales.orders", ref="v1").num_rows == 3
    with pytest.raises(NotFound, match="'sales.orders'"):
        lake.drop_table("sales.orders")
    with pytest.raises(InvalidInput, match="not a branch"):
        lake.drop_table("sales.orders", "v1")
    with pytest.raises(InvalidInput, match="namespace.table"):
        lake.drop_table("orders")


def test_drop_namespace(lake: Lakehouse) -> None:
    for i in range(6):
        write(lake, "main", **{f"t{i}": pa.table({"x": [i]})})
    head = lake.catalog.head("main")
    with pytest.raises(InvalidInput) as caught:
        lake.drop_namespace("sales")
    text = str(caught.value)
    assert "still has 7 tables" in text and "and 2 more" in text and "sales.orders" in text
    assert lake.catalog.head("main") == head
    with pytest.raises(NotFound, match="'nope'"):
        lake.drop_namespace("nope")
    created = lake.create_namespace("empty")
    commit = lake.drop_namespace("empty")
    assert lake.namespaces() == ["sales"]
    assert lake.catalog.log("main", 1)[0].hash == commit
    assert lake.namespaces(f"@{created}") == ["empty", "sales"]


# -- publish: optimistic per key ----------------------------------------------------


def test_publish_on_a_moved_branch_keeps_both_changes(lake: Lakehouse) -> None:
    slow = lake.begin()
    slow.write("sales.slow", pa.table({"x": [1]}))
    fast = write(lake, "main", fast=pa.table({"x": [2]}))
    commit = slow.publish("slow")
    assert lake.catalog.log("main", 1)[0].parents == [fast]
    assert lake.catalog.head("main") == commit
    assert lake.tables() == ["sales.fast", "sales.orders", "sales.slow"]


def test_publish_conflicts_on_the_same_table(lake: Lakehouse) -> None:
    slow = lake.begin()
    slow.write("sales.orders", ORDERS.slice(0, 1))
    winner = write(lake, "main", orders=ORDERS.slice(0, 2))
    with pytest.raises(CommitConflict) as caught:
        slow.publish("slow")
    assert caught.value.found == winner and caught.value.branch == "main"
    assert "table 'sales.orders'" in str(caught.value)
    assert lake.catalog.head("main") == winner
    assert lake.scan("sales.orders").num_rows == 2


def test_publish_conflicts_when_its_namespace_was_dropped(lake: Lakehouse) -> None:
    lake.create_namespace("tmp")
    slow = lake.begin()
    slow.write("tmp.x", pa.table({"x": [1]}))
    lake.drop_namespace("tmp")
    with pytest.raises(CommitConflict, match="namespace 'tmp'"):
        slow.publish("slow")
    assert "tmp" not in lake.namespaces()


def test_publish_on_a_pinned_old_commit_checks_keys_since_it(lake: Lakehouse) -> None:
    base = lake.catalog.head("main")
    write(lake, "main", other=pa.table({"x": [1]}))
    tx = lake.begin(f"main@{base[:12]}")
    tx.write("sales.mine", pa.table({"x": [1]}))
    tx.publish("on top")
    assert lake.tables() == ["sales.mine", "sales.orders", "sales.other"]
    tx = lake.begin(f"main@{base[:12]}")
    tx.write("sales.other", pa.table({"x": [2]}))
    with pytest.raises(CommitConflict, match="sales.other"):
        tx.publish("stale")


def test_answers_are_the_same_near_and_beyond_the_bounded_walk(catalog: VersionedCatalog) -> None:
    """Merge bases, changed keys and diffs look a bounded number of commits back first
    (store.merge.NEAR) and walk the whole history only when that does not settle them:
    the answers are the same on either side of that bound."""
    from faas.store.merge import NEAR

    put(catalog, "main", "old", old="v0")
    for i in range(NEAR + 40):
        put(catalog, "main", "busy", busy=f"b{i}")
    fork = catalog.head("main")
    catalog.create_branch("dev", "main")
    dev = put(catalog, "dev", "mine", mine="m1")
    catalog.create_branch("near", "main")
    near = put(catalog, "near", "one", mine="n1")
    catalog.create_branch("far", "main")
    for i in range(NEAR + 6):
        far = put(catalog, "far", "far", far=f"f{i}")
    for i in range(NEAR + 6):
        put(catalog, "main", "busy", busy=f"later{i}")
    main = put(catalog, "main", "old again", old="v1")

    assert catalog.merge_base(fork, near) == fork  # an ancestor, close
    assert catalog.merge_base(near, fork) == fork
    assert catalog.merge_base(fork, far) == fork  # an ancestor, beyond the bound
    assert catalog.merge_base(main, dev) == fork  # diverged, the fork beyond the bound
    assert catalog.changed_keys(fork, near) == {("table", "ns.mine")}
    assert catalog.changed_keys(fork, main) == {("table", "ns.busy"), ("table", "ns.old")}
    diff = {(d.key, d.old, d.new) for d in catalog.diff("dev", "main")}
    assert diff == {("ns.mine", "m1", None), ("ns.busy", f"b{NEAR + 39}", f"later{NEAR + 5}"),
                    ("ns.old", "v0", "v1")}
    merged = catalog.merge("dev", "main")
    entries = catalog.entries(merged.commit)
    assert {k: entries.get(k) for k in ("ns.old", "ns.busy", "ns.mine", "ns.far")} == {
        "ns.old": "v1", "ns.busy": f"later{NEAR + 5}", "ns.mine": "m1", "ns.far": None,
    }
