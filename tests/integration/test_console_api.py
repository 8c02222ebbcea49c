"""The console's HTTP API against a real scheduler: each endpoint answers what the CLI's
--json says for the same thing, pages query results, streams a run's events as they
happen, checks roles and tokens."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import (
    Cluster,
    Gate,
    add_user,
    gated_project,
    http_cluster,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, example_data: Path) -> Iterator[Cluster]:
    """See http_cluster: main with adventure.territories and tag v1, dev with adventure.more."""
    with http_cluster(tmp_path_factory.mktemp("console"), example_data) as c:
        yield c


def _call(c: Cluster, path: str, body: Any = None, token: str | None = None,
          raw: bool = False) -> Any:
    base = c.json("info")["iceberg"].rsplit("/iceberg", 1)[0]
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"Authorization": f"Bearer {token or c.token_file.read_text().strip()}",
                 "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        data = response.read()
    return data if raw else json.loads(data)


def _status(c: Cluster, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    try:
        return 200, _call(c, path, body, token)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_catalog_endpoints_answer_what_the_cli_json_says(served: Cluster) -> None:
    c = served
    assert _call(c, "/api/v1/whoami") == {"user": "admin", "role": "admin"}
    assert _call(c, "/api/v1/branches") == c.json("branch", "ls")
    assert _call(c, "/api/v1/tags") == c.json("tag", "ls")
    assert _call(c, "/api/v1/namespaces?ref=dev") == c.json("namespace", "ls", "--ref", "dev")
    assert _call(c, "/api/v1/tables?ref=dev&namespace=adventure") == c.json(
        "table", "ls", "-n", "adventure", "--ref", "dev")
    log = _call(c, "/api/v1/log?ref=dev&n=5")
    assert log == c.json("log", "dev", "-n", "5")
    assert log[0]["tables"] == ["adventure.more"]  # what each commit changed
    assert _call(c, "/api/v1/diff?from=main&to=dev") == c.json("branch", "diff", "main", "dev")
    table = _call(c, "/api/v1/tables/adventure.territories?ref=v1")
    snapshots = table.pop("snapshots")
    assert table == c.json("table", "get", "adventure.territories", "--ref", "v1")
    assert [s["snapshot_id"] for s in snapshots][-1] == table["snapshot_id"]
    cluster = _call(c, "/api/v1/cluster")
    assert [w["worker_id"] for w in cluster["workers"]] == [
        w["worker_id"] for w in c.json("info")["workers"]]


def test_queries_page_and_export(served: Cluster) -> None:
    c = served
    sql = "SELECT SalesTerritoryKey AS k, Region FROM territories ORDER BY k"
    everything = c.json("query", sql, "-n", "adventure")
    first = _call(c, "/api/v1/query", {"sql": sql, "namespace": "adventure", "limit": 4})
    assert [col["name"] for col in first["columns"]] == ["k", "Region"]
    assert first["rows"] == [[r["k"], r["Region"]] for r in everything[:4]]
    assert first["more"] is True and first["seconds"] >= 0
    last = _call(c, "/api/v1/query", {"sql": sql + ";", "namespace": "adventure",
                                      "offset": 8, "limit": 4})
    assert last["rows"] == [[r["k"], r["Region"]] for r in everything[8:12]]
    assert last["more"] is (len(everything) > 12)
    status, error = _status(c, "/api/v1/query", {"sql": "SELECT nope FROM territories",
                                                  "namespace": "adventure"})
    assert status == 400 and "nope" in error["error"]["message"], error
    assert "\n" not in error["error"]["message"]
    status, error = _status(c, "/api/v1/query", {"sql": "SELECT 1", "ref": "no-such-ref"})
    assert status == 404 and error["error"]["kind"] == "NotFound"

    # What a browser's numbers cannot hold exactly, or JSON cannot spell, comes as text.
    odd = ("SELECT 9007199254740993::BIGINT AS big, -9007199254740993::BIGINT AS low, "
           "9007199254740991::BIGINT AS safe, 'nan'::DOUBLE AS nan, '-inf'::DOUBLE AS inf, "
           "[9007199254740993, 1]::BIGINT[] AS list, {'n': 9007199254740993} AS struct, true AS yes")
    raw = _call(c, "/api/v1/query", {"sql": odd}, raw=True)

    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON a browser parses: {constant}")

    assert json.loads(raw, parse_constant=refuse)["rows"] == [[
        "9007199254740993", "-9007199254740993", 9007199254740991, "NaN", "-Infinity",
        ["9007199254740993", 1], {"n": "9007199254740993"}, True]]

    query = f"sql={urllib.request.quote(sql)}&namespace=adventure"
    csv = _call(c, f"/api/v1/export?{query}&format=csv", raw=True).decode()
    assert csv.splitlines()[0] == '"k","Region"' and len(csv.splitlines()) == len(everything) + 1
    parquet = _call(c, f"/api/v1/export?{query}&format=parquet", raw=True)
    assert pq.read_table(pa.BufferReader(parquet)).num_rows == len(everything)


def test_a_runs_events_stream_as_they_happen_and_readers_cannot_cancel(
    served: Cluster, tmp_path: Path, gate: Gate,
) -> None:
    c = served
    project = gated_project(tmp_path, gate)
    run_id = c.faas("submit", str(project), "-n", "adventure", "--detach", check=True
                    ).stdout.strip()
    base = c.json("info")["iceberg"].rsplit("/iceberg", 1)[0]
    request = urllib.request.Request(
        f"{base}/api/v1/jobs/{run_id}/events",
        headers={"Authorization": f"Bearer {c.token_file.read_text().strip()}"})
    lines: list[str] = []
    seen_before = threading.Event()

    def read() -> None:
        with urllib.request.urlopen(request, timeout=120) as response:
            for raw in response:
                lines.append(raw.decode().rstrip("\n"))
                if "before the gate" in lines[-1]:
                    seen_before.set()

    reader = threading.Thread(target=read)
    reader.start()
    # The line printed before the gate arrives while the function still waits there.
    assert seen_before.wait(60), lines
    assert not any("after the gate" in line for line in lines)
    reader_token = add_user(c, tmp_path, "rita", "reader").read_text().strip()
    status, error = _status(c, f"/api/v1/jobs/{run_id}/cancel", {}, token=reader_token)
    assert status == 403 and "user 'rita' (reader) may not" in error["error"]["message"]
    assert _call(c, f"/api/v1/jobs/{run_id}", token=reader_token)["status"] == "running"
    gate.touch()
    reader.join(60)
    assert any("after the gate" in line for line in lines)
    assert lines[-2:] == ["event: end", 'data: {"status":"success"}'] or \
        lines[-3:-1] == ["event: end", 'data: {"status":"success"}'], lines[-4:]
    jobs = _call(c, "/api/v1/jobs")
    assert jobs[0]["run_id"] == run_id and jobs == c.json("job", "ls")[: len(jobs)]
    assert jobs[0]["user"] == "admin"  # who submitted it


def test_a_bad_token_is_refused(served: Cluster) -> None:
    status, error = _status(served, "/api/v1/branches", token="admin:" + "0" * 32)
    assert status == 401 and error["error"]["message"].startswith("a faas user token is needed")
    assert served.alive()
