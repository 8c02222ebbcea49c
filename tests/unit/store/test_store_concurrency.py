"""Several OS processes publishing to one branch at once: optimistic concurrency per key.

Writers of different tables must all land, with no lost update; writers of the
same table each either commit or get CommitConflict, and the log holds exactly
the commits that were reported as made.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from faas.store.lakehouse import Lakehouse
from tests.conftest import ROOT, OpenLake

pytestmark = pytest.mark.timeout(180)

PROCESSES = 4

# One writer process: waits for the go file, then begins, writes and publishes
# `commits` times, and prints what happened to each attempt as JSON.
WRITER = r"""
import json, sys, time
from pathlib import Path

import pyarrow as pa

from faas.protocol.errors import CommitConflict
from faas.store.lakehouse import Lakehouse

home, uri, key, writer, commits, go = sys.argv[1:7]
lake = Lakehouse(home, catalog=uri)
deadline = time.monotonic() + 60
while not Path(go).exists():
    if time.monotonic() > deadline:
        sys.exit("the go file never appeared")
    time.sleep(0.002)
results = []
for i in range(int(commits)):
    tx = lake.begin("main")
    tx.write(key, pa.table({"writer": [int(writer)], "i": [i]}))
    try:
        results.append(["ok", tx.publish(f"writer {writer} commit {i}")])
    except CommitConflict as e:
        results.append(["conflict", e.found])
lake.close()
print(json.dumps(results))
"""


@pytest.fixture
def lake(open_lake: OpenLake, catalog_uri: str) -> Lakehouse:
    return open_lake("ns", catalog=catalog_uri)


def run_writers(lake: Lakehouse, tmp_path: Path, keys: list[str], commits: int) -> list[Any]:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(lake.home),
                lake.catalog.uri,
                key,
                str(w),
                str(commits),
                str(go),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w, key in enumerate(keys)
    ]
    try:
        go.touch()
        outputs = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    return [json.loads(out) for out, _ in outputs]


def test_writers_of_different_tables_all_land(lake: Lakehouse, tmp_path: Path) -> None:
    commits = 8
    start = lake.catalog.head("main")
    keys = [f"ns.t{w}" for w in range(PROCESSES)]
    results = run_writers(lake, tmp_path, keys, commits)
    made = [commit for per_writer in results for status, commit in per_writer]
    assert all(status == "ok" for per_writer in results for status, _ in per_writer)
    log = lake.catalog.log("main", 1000)
    assert log[PROCESSES * commits].hash == start  # every commit, on one linear history
    assert sorted(c.hash for c in log[: PROCESSES * commits]) == sorted(made)
    for info in log[: PROCESSES * commits]:
        # Each commit holds its own writer's table and nothing else.
        writer = int(info.message.split()[1])
        changed = lake.catalog.diff_commits(info.parents[0], info.hash)
        assert [d.key for d in changed] == [f"ns.t{writer}"]
    assert lake.tables() == keys
    for w, key in enumerate(keys):
        assert lake.scan(key).to_pylist() == [{"writer": w, "i": commits - 1}]


def test_writers_of_one_table_commit_or_conflict(lake: Lakehouse, tmp_path: Path) -> None:
    attempts = 6
    start = lake.catalog.head("main")
    results = run_writers(lake, tmp_path, ["ns.shared"] * PROCESSES, attempts)
    outcomes = [status for per_writer in results for status, _ in per_writer]
    assert len(outcomes) == PROCESSES * attempts
    assert set(outcomes) <= {"ok", "conflict"}
    made = [commit for per_writer in results for status, commit in per_writer if status == "ok"]
    assert made
    log = lake.catalog.log("main", 1000)
    assert log[len(made)].hash == start
    assert sorted(c.hash for c in log[: len(made)]) == sorted(made)
    # Every head a loser was told about is a commit that was made.
    seen = {c.hash for c in log}
    assert all(c in seen for per_writer in results for s, c in per_writer if s == "conflict")
    # The table holds what the last commit wrote.
    last = log[0].message.split()
    assert lake.scan("ns.shared").to_pylist() == [{"writer": int(last[1]), "i": int(last[3])}]
