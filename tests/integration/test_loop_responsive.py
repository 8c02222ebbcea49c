"""The scheduler's event loop stays free while it reads big user text.

Projects and query SQL are parsed in a helper process (scheduler/analysis.py): while an
8 MiB project is planned or a 2 MB query is read, control requests are still answered
promptly and no worker misses its heartbeats.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from faas.client.client import Client
from tests.conftest import Cluster, import_territories, write_project

pytestmark = pytest.mark.timeout(300)

# The bound for a control request while the scheduler reads big text.
PROMPT = 0.1


def _big_project(tmp: Path) -> Path:
    """Just under 8 MiB of Python (the most a project may be): one model, and module-level
    lists of strings and numbers (about a second of Python's parser)."""
    lines = ["import faas", "", "@faas.model()", "def small(t=faas.Model('territories')):",
             "    return t", ""]
    row = ", ".join(f'"{i:03d}' + "x" * 96 + '"' for i in range(8)) + ", " + ", ".join(
        str(i) for i in range(8)
    )
    size = sum(len(x) + 1 for x in lines)
    i = 0
    while size + len(row) + 20 < 8 * 2**20:  # just under the client's limit of 8 MiB
        line = f"TABLE_{i} = [{row}]"
        lines.append(line)
        size += len(line) + 1
        i += 1
    return write_project(tmp, "\n".join(lines) + "\n", "big")


def _big_sql() -> str:
    """2 MB of SQL that reads no table: a long IN list of strings."""
    items = [f"'k{i}" + "y" * 56 + "'" for i in range(32_000)]
    return f"SELECT 42 AS answer WHERE {items[7]} IN ({', '.join(items)})"


async def _latencies_while(cluster: Cluster, work: asyncio.Future[object]) -> list[float]:
    """How long each control request took while ``work`` was in flight."""
    client = Client(cluster.address, token_file=str(cluster.token_file))
    took = []
    while not work.done():
        t0 = time.perf_counter()
        info = await client.info()
        took.append(time.perf_counter() - t0)
        assert info.workers, "the worker was declared lost"
        await asyncio.sleep(0.02)
    await work
    return took


def test_control_requests_are_answered_while_a_big_project_is_planned(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    project = _big_project(tmp_path)
    (worker,) = cluster.json("info")["workers"]

    async def scenario() -> list[float]:
        client = Client(cluster.address, token_file=str(cluster.token_file))
        planning = asyncio.ensure_future(client.plan(project, namespace="adventure"))
        return await _latencies_while(cluster, planning)

    took = asyncio.run(scenario())
    assert len(took) >= 5, took  # the plan took a while: the requests really overlapped it
    assert max(took) < PROMPT, sorted(took)[-5:]
    assert [w["worker_id"] for w in cluster.json("info")["workers"]] == [worker["worker_id"]]


def test_control_requests_are_answered_while_a_big_query_is_read(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    (worker,) = cluster.json("info")["workers"]

    async def scenario() -> list[float]:
        client = Client(cluster.address, token_file=str(cluster.token_file))
        query = asyncio.ensure_future(client.query(_big_sql()))
        took = await _latencies_while(cluster, query)
        assert query.result().to_pylist() == [{"answer": 42}]
        return took

    took = asyncio.run(scenario())
    assert len(took) >= 5, took
    assert max(took) < PROMPT, sorted(took)[-5:]
    assert [w["worker_id"] for w in cluster.json("info")["workers"]] == [worker["worker_id"]]


def test_a_project_deeper_than_the_parser_goes_is_one_error_and_the_next_one_plans(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    """Python's parser runs out of memory on it: the problem names the file, and the
    scheduler (and its next parse) carry on."""
    import_territories(cluster, example_data)
    deep = write_project(tmp_path, "X = " + "-" * 2_000_000 + "1\n", "deep")
    proc = cluster.faas("submit", str(deep), "-n", "adventure", "--dry-run")
    assert proc.returncode != 0
    assert "models.py: nested too deeply for Python's parser to read" in proc.stderr, proc.stderr
    fine = write_project(tmp_path, "import faas\n\n@faas.model()\ndef ok(t=faas.Model('territories')):\n    return t\n", "fine")
    assert cluster.faas("submit", str(fine), "-n", "adventure", "--dry-run").returncode == 0
    assert cluster.alive()


def test_a_parser_process_that_dies_is_one_error_and_is_replaced() -> None:
    import os

    from faas.protocol.errors import InvalidInput
    from faas.scheduler.analysis import Analyzer, _tables

    async def scenario() -> None:
        analyzer = Analyzer()
        try:
            with pytest.raises(InvalidInput, match="^the query could not be read: reading it "
                               "stopped the scheduler's parser process$"):
                await analyzer._call(os._exit, 3, what="the query could not be read")
            # The next text goes to a new helper (small text is read in a thread: asked here).
            tables = await analyzer._call(
                _tables, "SELECT * FROM adventure.sale JOIN t USING (k)", what="the query"
            )
            assert tables == ["adventure.sale", "t"]
            files = {"models.py": "import faas\n"}
            first = await analyzer.project(files)
            assert await analyzer.project(dict(files)) is first  # kept by its files' hash
        finally:
            analyzer.close()

    asyncio.run(scenario())
