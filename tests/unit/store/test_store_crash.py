"""Crash safety: a process killed at any failpoint leaves the catalog before or after the
operation, never between.

For each failpoint in :data:`store.failpoints.FAILPOINTS`, a subprocess runs the
operation that passes it with ``FAAS_FAILPOINT`` set and dies there with status
86. The test then opens the catalog and checks that it is exactly as before
the operation (same refs, heads, histories and rows) or, for failpoints after
the database commit, exactly as the same operation leaves a catalog that did
not crash. Then the catalog must take the next operation.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from sqlalchemy import func, select

from faas.store.catalog import Change, VersionedCatalog
from faas.store.failpoints import ENV_VAR, EXIT_CODE, FAILPOINTS
from faas.store.lakehouse import Lakehouse
from faas.store.schema import commit_changes, commits
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(120)


# The child imports only what its operation needs: pyiceberg only for a transaction.
CHILD = """
import sys
operation, home, uri, code = sys.argv[1:5]
from faas.store.catalog import Change, VersionedCatalog
if operation == "transaction":
    import pyarrow as pa
    from faas.store.lakehouse import Lakehouse
    lake = Lakehouse(home, catalog=uri)
    vc = lake.catalog
else:
    vc = VersionedCatalog(uri)
exec(code)
"""

# Failpoints passed once the operation's database transaction has committed.
COMMITTED = ("after_db_commit", "transaction.after_catalog_commit")


def _table(n: int) -> pa.Table:
    return pa.table({"x": list(range(n))})


def prepare(home: str, uri: str) -> None:
    """The catalog every operation starts from.

    main: ns, ns.a, ns.d; dev (from main before ns.d): ns.b; ahead (from
    main's head): ns.c, so merging it into main can fast-forward; tag v1.
    """
    with Lakehouse(home, catalog=uri) as lake:
        vc = lake.catalog
        lake.create_namespace("ns")
        _write(lake, "main", "ns.a", 1)
        vc.create_branch("dev")
        _write(lake, "dev", "ns.b", 2)
        _write(lake, "main", "ns.d", 3)
        vc.create_branch("ahead")
        _write(lake, "ahead", "ns.c", 4)
        vc.create_tag("v1")


def _write(lake: Lakehouse, ref: str, key: str, rows: int) -> str:
    tx = lake.begin(ref)
    tx.write(key, _table(rows))
    return tx.publish(f"write {key} on {ref}")


def operation_of(failpoint: str) -> str:
    for prefix in (
        "merge.fast_forward.",
        "commit.",
        "merge.",
        "branch.create.",
        "branch.delete.",
        "tag.create.",
        "tag.delete.",
        "transaction.",
    ):
        if failpoint.startswith(prefix):
            return prefix.rstrip(".")
    raise AssertionError(f"no operation passes failpoint {failpoint!r}")


# Each operation as code, run the same way in the child (see CHILD) and in the test.
OPERATIONS = {
    "commit": 'vc.commit("main", vc.head("main"), [Change("ns2", "namespace", "{}")], "commit")',
    "merge": 'vc.merge("dev", "main", properties={"why": "test"})',
    "merge.fast_forward": 'vc.merge("ahead", "main", fast_forward=True)',
    "branch.create": 'vc.create_branch("feature", "dev")',
    "branch.delete": 'vc.delete_branch("dev")',
    "tag.create": 'vc.create_tag("v2", "dev")',
    "tag.delete": 'vc.delete_tag("v1")',
    # Begun before main's last commit (ns.d), so publish also has to check keys
    # and commit on top of the moved head.
    "transaction": (
        'tx = lake.begin("main@" + vc.log("main", 2)[1].hash)\n'
        'tx.write("ns.e", pa.table({"x": [1, 2, 3]}))\n'
        'tx.publish("transaction")'
    ),
}


def operate(operation: str, home: str, uri: str) -> None:
    """Run ``operation`` on the catalog that :func:`prepare` made, in this process."""
    with Lakehouse(home, catalog=uri) as lake:
        exec(OPERATIONS[operation], {"lake": lake, "vc": lake.catalog, "pa": pa, "Change": Change})


def exact(vc: VersionedCatalog) -> Any:
    """Everything, hashes included: refs, their histories, and the row counts."""
    refs = vc.branches(include_runs=True) + vc.tags()
    with vc._engine.connect() as conn:
        rows = (
            conn.execute(select(func.count()).select_from(commits)).scalar(),
            conn.execute(select(func.count()).select_from(commit_changes)).scalar(),
        )
    return (
        sorted((r.name, r.kind, r.head, [c.hash for c in vc.log(r.name, 100)]) for r in refs),
        rows,
    )


def shape(vc: VersionedCatalog) -> Any:
    """What a catalog holds, without hashes and times: comparable across catalogs."""
    out = []
    for r in vc.branches(include_runs=True) + vc.tags():
        log = vc.log(r.name, 100)
        out.append(
            (
                r.name,
                r.kind,
                [(c.message, len(c.parents), sorted(c.properties.items())) for c in log],
                sorted(vc.entries(r.head, "namespace")),
                sorted(vc.entries(r.head, "table")),
            )
        )
    return sorted(out)


@functools.cache
def _reference(operation: str, tmp: str) -> Any:
    home = Path(tmp) / operation
    uri = f"sqlite:///{home}/catalog.db"
    prepare(str(home), uri)
    operate(operation, str(home), uri)
    with VersionedCatalog(uri) as vc:
        return shape(vc)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("reference"))


def _check_readable(lake: Lakehouse) -> None:
    """Every ref resolves and every table it holds can be read."""
    vc = lake.catalog
    for r in vc.branches(include_runs=True) + vc.tags():
        assert vc.resolve(r.name)[1] == r.head
        for key in lake.tables(ref=r.name):
            assert lake.scan(key, ref=r.name).num_rows > 0


@pytest.mark.parametrize("failpoint", FAILPOINTS)
def test_crash_leaves_before_or_after(
    failpoint: str, tmp_path: Path, catalog_uri: str, reference_dir: str
) -> None:
    assert ENV_VAR not in os.environ
    operation = operation_of(failpoint)
    home = str(tmp_path / "home")
    prepare(home, catalog_uri)
    with VersionedCatalog(catalog_uri) as vc:
        before = exact(vc)
        before_shape = shape(vc)
    after_shape = _reference(operation, reference_dir)
    assert after_shape != before_shape

    proc = subprocess.run(
        [sys.executable, "-c", CHILD, operation, home, catalog_uri, OPERATIONS[operation]],
        cwd=ROOT,
        env={**os.environ, ENV_VAR: failpoint},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_CODE, f"exit {proc.returncode}:\n{proc.stderr}"

    with Lakehouse(home, catalog=catalog_uri) as lake:
        vc = lake.catalog
        if failpoint.endswith(COMMITTED):
            assert shape(vc) == after_shape
        else:
            assert exact(vc) == before
        _check_readable(lake)
        # The catalog takes the next operation: the interrupted one, if it did
        # not happen, then a plain commit.
        if not failpoint.endswith(COMMITTED):
            operate(operation, home, catalog_uri)
            assert shape(vc) == after_shape
        head = vc.head("main")
        vc.commit("main", head, [Change("later", "namespace", "{}")], "next")
        assert vc.log("main", 1)[0].parents == [head]
        _check_readable(lake)


def test_failpoint_without_the_variable_is_free() -> None:
    from faas.store.failpoints import failpoint

    failpoint("commit.before_insert")  # returns: the variable is not set
