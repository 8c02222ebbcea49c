"""The Iceberg REST catalog, read by PyIceberg's own RestCatalog (a client written by
others) from real daemons on loopback, by branch, tag and commit."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    ForbiddenError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
    UnauthorizedError,
)
from pyiceberg.table import CommitTableRequest, Namespace, TableIdentifier
from pyiceberg.table.update import AssertRefSnapshotId, SetPropertiesUpdate

from tests.conftest import Cluster, add_user, http_cluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, example_data: Path) -> Iterator[Cluster]:
    """See http_cluster: main with adventure.territories and tag v1, dev with adventure.more."""
    with http_cluster(tmp_path_factory.mktemp("rest"), example_data) as c:
        yield c


def _catalog(c: Cluster, ref: str, token: str | None = None) -> RestCatalog:
    url = c.json("info")["iceberg"]
    return RestCatalog("faas", uri=f"{url}/{ref}",
                       token=token if token is not None else c.token_file.read_text().strip())


def test_pyiceberg_lists_and_scans_tables_by_ref(served: Cluster) -> None:
    c = served
    main, dev, tag = _catalog(c, "main"), _catalog(c, "dev"), _catalog(c, "v1")
    assert main.list_namespaces() == [("adventure",)]
    assert main.list_tables("adventure") == [("adventure", "territories")]
    assert tag.list_tables("adventure") == [("adventure", "territories")]
    assert dev.list_tables("adventure") == [("adventure", "more"), ("adventure", "territories")]
    head = c.json("log", "main", "-n", "1")[0]["hash"]
    at_commit = _catalog(c, f"main@{head[:12]}")
    assert at_commit.list_tables("adventure") == [("adventure", "territories")]

    table = main.load_table("adventure.territories")
    got = table.scan().to_arrow()
    want = c.json("query", "SELECT * FROM territories", "-n", "adventure")
    key = sorted(want[0])[0]
    assert sorted(got.to_pylist(), key=lambda r: r[key]) == sorted(want, key=lambda r: r[key])
    assert table.metadata_location == c.json("table", "get", "adventure.territories")[
        "metadata_location"]
    assert dev.load_table("adventure.more").scan().to_arrow().num_rows == len(want)

    assert main.namespace_exists("adventure") and not main.namespace_exists("nope")
    assert main.table_exists("adventure.territories") and not main.table_exists("adventure.more")
    assert main.load_namespace_properties("adventure") == {}
    with pytest.raises(NoSuchTableError):
        main.load_table("adventure.more")
    with pytest.raises(NoSuchNamespaceError):
        main.list_tables("nope")


def test_pages_refs_and_tokens(served: Cluster, tmp_path: Path) -> None:
    """Pages as the spec says; an unknown ref and a bad token are the spec's errors, one
    line each; a reader's token may read."""
    c = served
    url = c.json("info")["iceberg"]
    token = c.token_file.read_text().strip()

    def get(path: str, auth: str | None = token) -> tuple[int, dict[str, object]]:
        request = urllib.request.Request(f"{url}/{path}")
        if auth is not None:
            request.add_header("Authorization", f"Bearer {auth}")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, whole = get("dev/v1/namespaces/adventure/tables?pageSize=1")  # no pageToken: all
    assert status == 200 and len(whole["identifiers"]) == 2 and whole["next-page-token"] is None
    status, page = get("dev/v1/namespaces/adventure/tables?pageToken=&pageSize=1")
    assert status == 200 and page["identifiers"] == [{"namespace": ["adventure"], "name": "more"}]
    status, rest = get(f"dev/v1/namespaces/adventure/tables?pageSize=1&pageToken={page['next-page-token']}")
    assert rest["identifiers"] == [{"namespace": ["adventure"], "name": "territories"}]
    assert rest["next-page-token"] is None

    for path, status in [("main/v1/namespaces/adventure", 204),
                         ("main/v1/namespaces/adventure/tables/territories", 204),
                         ("main/v1/namespaces/adventure/tables/more", 404),
                         ("main/v1/namespaces/adventure/tables/a.b", 404)]:
        head = urllib.request.Request(f"{url}/{path}", method="HEAD")
        head.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(head, timeout=10) as r:
                assert r.status == status, path
        except urllib.error.HTTPError as exc:
            assert exc.code == status, path
    status, body = get("main/v1/namespaces/adventure/views")
    assert status == 404 and body["error"]["type"] == "NotFoundException"
    assert "v1/config lists them" in body["error"]["message"]
    status, body = get("nobranch/v1/namespaces")
    assert status == 404 and body["error"]["type"] == "NoSuchReferenceException"
    assert "nobranch" in body["error"]["message"] and body["error"]["code"] == 404
    for auth in (None, "admin:wrong", "nobody:" + "x" * 43, "not-a-user-token"):
        status, body = get("main/v1/namespaces", auth)
        assert status == 401 and body["error"]["type"] == "NotAuthorizedException", auth
    with pytest.raises(UnauthorizedError):
        _catalog(c, "main", token="admin:wrong")

    reader = add_user(c, tmp_path, "bi", "reader").read_text().strip()
    assert _catalog(c, "main", token=reader).list_tables("adventure") == [
        ("adventure", "territories")]


def test_pyiceberg_appends_on_a_branch_as_one_faas_commit(served: Cluster, tmp_path: Path) -> None:
    """An append through RestCatalog on a branch: one new commit there, by the token's
    user, whose rows faas query sees; main is untouched. The loser of two commits from the
    same snapshot gets the spec's CommitFailedException and changes nothing."""
    c = served
    c.faas("branch", "create", "etl", "--from", "main", check=True)
    before = c.json("log", "etl", "-n", "50")
    main_before = c.json("log", "main", "-n", "1")
    etl = _catalog(c, "etl")
    first, second = etl.load_table("adventure.territories"), etl.load_table("adventure.territories")
    rows = first.scan().to_arrow()
    first.append(rows.slice(0, 2))

    after = c.json("log", "etl", "-n", "50")
    assert len(after) == len(before) + 1
    assert after[0]["author"] == "admin" and "adventure.territories" in after[0]["message"]
    count = "SELECT count(*) AS n FROM territories"
    assert c.json("query", count, "-n", "adventure", "--ref", "etl") == [{"n": rows.num_rows + 2}]
    assert c.json("query", count, "-n", "adventure") == [{"n": rows.num_rows}]
    assert c.json("log", "main", "-n", "1") == main_before

    # A commit that requires the snapshot the append replaced: refused, nothing changes.
    stale = AssertRefSnapshotId(ref="main", snapshot_id=second.metadata.current_snapshot_id)
    with pytest.raises(CommitFailedException, match="adventure.territories"):
        etl.commit_table(second, (stale,), (SetPropertiesUpdate(updates={"owner": "late"}),))
    assert c.json("log", "etl", "-n", "50") == after
    assert "owner" not in etl.load_table("adventure.territories").properties
    # PyIceberg's own append from the stale table hits the same refusal, reads the table
    # again and lands on top (its retry), as one more commit.
    second.append(rows.slice(0, 1))
    assert len(c.json("log", "etl", "-n", "50")) == len(after) + 1
    assert c.json("query", count, "-n", "adventure", "--ref", "etl") == [{"n": rows.num_rows + 3}]


def test_readers_tags_and_protected_branches_take_no_commits(
    served: Cluster, tmp_path: Path
) -> None:
    c = served
    head = c.json("log", "main", "-n", "1")
    reader = add_user(c, tmp_path, "viewer", "reader").read_text().strip()
    writer = add_user(c, tmp_path, "wanda", "writer").read_text().strip()
    rows = _catalog(c, "main").load_table("adventure.territories").scan().to_arrow().slice(0, 1)
    for token, ref, error, said in [
        (reader, "dev", ForbiddenError, "it needs the writer role"),
        (writer, "main", ForbiddenError, "may not change protected branch 'main'"),
        (None, "v1", Exception, "only a branch takes commits"),
    ]:
        table = _catalog(c, ref, token).load_table("adventure.territories")
        with pytest.raises(error, match=said):
            table.append(rows)
    assert c.json("log", "main", "-n", "1") == head


def test_tables_are_created_dropped_and_changed_together(served: Cluster) -> None:
    """Create through RestCatalog (one commit), append, drop (one commit, the data kept by
    older commits); a transaction over two tables is one commit, or nothing when one of its
    requirements fails."""
    c = served
    c.faas("branch", "create", "lab", "--from", "main", check=True)
    lab = _catalog(c, "lab")
    commits = len(c.json("log", "lab", "-n", "100"))
    made = lab.create_table("adventure.scores", schema=pa.schema([("who", pa.string()),
                                                                 ("score", pa.int64())]))
    made.append(pa.table({"who": ["a", "b"], "score": [1, 2]}))
    assert c.json("query", "SELECT count(*) AS n, max(score) AS m FROM scores", "-n",
                  "adventure", "--ref", "lab") == [{"n": 2, "m": 2}]
    with pytest.raises(TableAlreadyExistsError):
        lab.create_table("adventure.scores", schema=pa.schema([("x", pa.int64())]))
    assert len(c.json("log", "lab", "-n", "100")) == commits + 2
    # A staged create (as Spark's CTAS and Trino do it): nothing until the client commits
    # the table and its first rows together, as one faas commit.
    with lab.create_table_transaction("adventure.staged",
                                      schema=pa.schema([("x", pa.int64())])) as txn:
        txn.append(pa.table({"x": [1, 2, 3]}))
        assert not lab.table_exists("adventure.staged")
    assert len(c.json("log", "lab", "-n", "100")) == commits + 3
    assert c.json("query", "SELECT sum(x)::BIGINT AS s FROM staged", "-n", "adventure",
                  "--ref", "lab") == [{"s": 6}]
    other = lab.create_table("adventure.other", schema=pa.schema([("x", pa.int64())]))

    def change(table: Any, value: str, snapshot: int | None) -> dict[str, Any]:
        request = CommitTableRequest(
            identifier=TableIdentifier(namespace=Namespace(root=["adventure"]),
                                       name=table.name()[-1]),
            requirements=[AssertRefSnapshotId(ref="main", snapshot_id=snapshot)],
            updates=[SetPropertiesUpdate(updates={"step": value})],
        )
        return json.loads(request.model_dump_json(by_alias=True, exclude_none=False))

    for path, bad, said in [
        ("lab/v1/transactions/commit", {"nope": 1}, "needs table-changes"),
        ("lab/v1/namespaces/adventure/tables/scores", {"updates": "x"},
         "not a CommitTableRequest"),
    ]:
        status, body = _post(c, path, bad)
        assert status == 400 and said in body["error"]["message"], body
    scores = lab.load_table("adventure.scores")
    now = scores.metadata.current_snapshot_id
    before = len(c.json("log", "lab", "-n", "100"))
    stale = {"table-changes": [change(scores, "1", now), change(other, "1", 12345)]}
    status, body = _post(c, "lab/v1/transactions/commit", stale)
    assert status == 409 and body["error"]["type"] == "CommitFailedException", body
    assert len(c.json("log", "lab", "-n", "100")) == before
    assert "step" not in lab.load_table("adventure.scores").properties
    good = {"table-changes": [change(scores, "2", now), change(other, "2", None)]}
    assert _post(c, "lab/v1/transactions/commit", good)[0] == 204
    log = c.json("log", "lab", "-n", "100")
    assert len(log) == before + 1
    assert "adventure.other" in log[0]["message"] and "adventure.scores" in log[0]["message"]
    assert lab.load_table("adventure.scores").properties["step"] == "2"
    assert lab.load_table("adventure.other").properties["step"] == "2"

    # A commit as Java clients send it: no identifier in the body, the path names the table.
    java = {"requirements": [], "updates": [{"action": "set-properties", "updates": {"by": "java"}}]}
    assert _post(c, "lab/v1/namespaces/adventure/tables/other", java)[0] == 200
    assert lab.load_table("adventure.other").properties["by"] == "java"
    bad = {"requirements": [], "updates": [{"action": "set-current-schema", "schema-id": 99}]}
    status, body = _post(c, "lab/v1/namespaces/adventure/tables/other", bad)
    assert status == 400 and body["error"]["type"] == "BadRequestException", body
    before = len(c.json("log", "lab", "-n", "100"))

    lab.drop_table("adventure.scores")
    assert not lab.table_exists("adventure.scores")
    assert len(c.json("log", "lab", "-n", "100")) == before + 1
    old = _catalog(c, f"lab@{log[0]['hash'][:12]}")
    assert old.load_table("adventure.scores").scan().to_arrow().num_rows == 2


def _post(c: Cluster, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    url = c.json("info")["iceberg"]
    request = urllib.request.Request(f"{url}/{path}", data=json.dumps(body).encode(),
                                     method="POST")
    request.add_header("Authorization", f"Bearer {c.token_file.read_text().strip()}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_duckdb_attaches_the_catalog(served: Cluster) -> None:
    """DuckDB's iceberg extension, where this machine can install it (it is downloaded)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("INSTALL iceberg")
        con.execute("INSTALL httpfs")
    except duckdb.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        pytest.skip(f"DuckDB cannot install its iceberg extension on this machine: {first}")
    url = served.json("info")["iceberg"]
    token = served.token_file.read_text().strip()
    con.execute("LOAD iceberg")
    con.execute("LOAD httpfs")
    con.execute(f"CREATE SECRET faas (TYPE iceberg, TOKEN '{token}')")
    con.execute(f"ATTACH 'main' AS faas (TYPE iceberg, SECRET faas, ENDPOINT '{url}/main')")
    (count,) = con.execute("SELECT count(*) FROM faas.adventure.territories").fetchone()  # type: ignore[misc]
    assert count == len(served.json("query", "SELECT * FROM territories", "-n", "adventure"))
