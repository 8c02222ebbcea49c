"""Bounds a daemon keeps whatever its peers do: idle client connections are closed;
queries stop at their timeout, when their client goes, and past the result size; what a
daemon creates only its user can read."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from faas.protocol.auth import ADMIN_TOKEN, load_token
from faas.protocol.connection import connect
from faas.protocol.errors import ConnectionClosed
from faas.protocol.messages import ListNamespaces
from faas.protocol.replies import ClientReply, Namespaces
from faas.scheduler.server import Scheduler
from tests.conftest import (
    EXAMPLE,
    ROOT,
    Cluster,
    import_example,
    import_territories,
    one_line_error,
    scheduler_only,
    start_daemon,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

TOKEN = b"t" * 64


def test_an_idle_client_connection_is_closed_and_the_scheduler_goes_on(tmp_path: Path) -> None:
    async def go() -> None:
        async with Scheduler(home=tmp_path / "home", token=TOKEN, listen="127.0.0.1:0",
                             client_idle_timeout=0.5) as scheduler:
            decoder = msgspec.msgpack.Decoder(ClientReply)
            admin = load_token(tmp_path / "home" / ADMIN_TOKEN)  # clients are users
            idle = await connect(scheduler.address, decoder, token=admin, role="client",
                                 host_id="idle")
            # It says nothing: the scheduler hangs up on it (a clean close, not our own
            # timeout, which would be PeerVanished).
            with pytest.raises(ConnectionClosed):
                await idle.recv(timeout=30)
            await idle.aclose()
            # A client that asks gets its answer, on a connection of its own.
            busy = await connect(scheduler.address, decoder, token=admin, role="client",
                                 host_id="busy")
            await busy.send(ListNamespaces())
            assert isinstance(await busy.recv(timeout=30), Namespaces)
            await busy.aclose()

    asyncio.run(go())


# Ten billion products: far longer than any test waits, unless it is stopped.
ENDLESS = "SELECT sum(a.range * b.range) AS s FROM range(100000) a, range(100000) b"


def test_queries_stop_at_their_timeout_when_their_client_goes_and_past_their_size(
    tmp_path: Path, example_data: Path
) -> None:
    with scheduler_only(tmp_path, args=["--query-result-limit", "64KiB"]) as c:
        c.add_worker(tmp_path, "w")
        c.wait_workers(1)
        worker_log = tmp_path / "w.log"

        def stopped() -> int:
            return len(re.findall(r"query query-\w+ stopped", worker_log.read_text()))
        import_territories(c, example_data)

        proc = c.faas("query", ENDLESS, "--timeout", "1")
        line = one_line_error(proc, "ran past its timeout of 1s and was stopped")
        assert "faas query --timeout" in line
        wait_until(lambda: stopped() == 1, "the worker to stop it")

        # A client killed mid-query: the scheduler sees it go and the worker stops the query.
        client = subprocess.Popen(
            [sys.executable, "-m", "faas.client.cli", "query", ENDLESS], env=c.env(), cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: c.json("info")["workers"][0]["functions"], "the query to start")
        client.kill()
        client.wait()
        wait_until(lambda: stopped() == 2, "the worker to stop it")
        wait_until(lambda: not c.json("info")["workers"][0]["functions"], "the worker to be idle")

        # Past the result limit: one line with a hint; a small answer still comes.
        big = c.faas("query", "SELECT * FROM range(100000)")
        assert "add a LIMIT, or aggregate" in one_line_error(big, "more than the 64 KiB")
        rows = c.json("query", "SELECT count(*) AS n FROM territories", "-n", "adventure")
        assert rows == [{"n": 10}]
        assert c.alive()


def test_a_query_result_streams_in_pieces_and_stops_when_its_reader_leaves(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A result of many pieces arrives whole and in order, more pieces than the worker may
    send ahead; a reader that leaves after the first piece of an endless result stops the
    query on the worker, and the next query is answered."""
    import pyarrow as pa

    from faas.client.client import Client
    from faas.scheduler.helper_tasks import QUERY_WINDOW

    client = Client(cluster.address, token_file=str(cluster.token_file))
    worker_log = tmp_path / "worker.log"

    async def whole() -> list[pa.Table]:
        sql = "SELECT range AS i, 'row ' || range AS s FROM range(1000000) ORDER BY i"
        return [piece async for piece in client.query_pieces(sql)]

    pieces = asyncio.run(whole())
    assert len(pieces) > 2 * QUERY_WINDOW
    table = pa.concat_tables(pieces)
    assert table.column("i").to_pylist() == list(range(1_000_000))
    assert table.column("s")[999_999].as_py() == "row 999999"

    async def first_piece_only() -> int:
        endless = "SELECT a.range * 1000000 + b.range AS v FROM range(1000000) a, range(1000000) b"
        async with contextlib.aclosing(client.query_pieces(endless)) as pieces:
            async for piece in pieces:
                return int(piece.num_rows)
        raise AssertionError("no piece came")

    assert asyncio.run(first_piece_only()) > 0
    wait_until(lambda: re.search(r"query query-\w+ stopped", worker_log.read_text()),
               "the worker to stop the query")
    wait_until(lambda: not cluster.json("info")["workers"][0]["functions"], "the worker to be idle")
    assert cluster.json("query", "SELECT 42 AS answer") == [{"answer": 42}]


def test_what_the_daemons_create_is_their_users_alone(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    """Catalog, warehouse, run records, logs, objects, environments: files 0600, directories
    0700 (the test made the home and the token; the daemons made everything else)."""
    import_example(cluster, example_data)
    cluster.faas("submit", str(EXAMPLE), "-n", "adventure", check=True)
    made = [p for root in (cluster.home, cluster.shm_dir, tmp_path / "envs", tmp_path / "spill")
            for p in [root, *root.rglob("*")]
            if p.exists() and not p.is_symlink() and p not in (cluster.home, cluster.home / "token")]
    assert len(made) > 20
    assert [p for p in made if p.stat().st_mode & 0o077] == []
    assert any(p.suffix == ".arrow" for p in made) and any(p.suffix == ".parquet" for p in made)


def test_a_worker_imports_only_under_its_import_roots(tmp_path: Path, example_data: Path) -> None:
    with scheduler_only(tmp_path) as c:
        worker, _ = start_daemon(
            ["worker", "--scheduler", c.address, "--token-file", str(c.worker_token),
             "--shm-dir", str(tmp_path / "shm"), "--import-root", str(tmp_path / "allowed")],
            "faasd worker", tmp_path / "worker.log",
        )
        c.workers.append(worker)
        c.wait_workers(1)
        (tmp_path / "allowed").mkdir()
        shutil.copy(example_data / "territories.csv", tmp_path / "allowed")
        c.faas("namespace", "create", "adventure", check=True)
        for path in (example_data / "territories.csv", example_data / "no-such.csv"):
            proc = c.faas("table", "import", "adventure.t", str(path))
            one_line_error(proc, "only files under its import roots", "--import-root")
        c.faas("table", "import", "adventure.t", str(tmp_path / "allowed" / "territories.csv"),
               check=True)
        assert c.json("table", "get", "adventure.t")["rows"] == 10
