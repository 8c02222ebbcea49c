"""The catalog on a real PostgreSQL server: a Lakehouse end to end, racing clients, bad URIs.

Needs the server binaries (see tests/pg.py); without them these tests are skipped.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from faas.protocol.errors import CommitConflict, InvalidInput, NotFound
from faas.store import Lakehouse
from faas.store.catalog import ROOT_COMMIT, Change, VersionedCatalog
from tests.conftest import OpenLake
from tests.pg import PostgresServer

pytestmark = pytest.mark.timeout(60)

PASSWORD = "s3cret-pw"


@pytest.fixture
def lake(open_lake: OpenLake, tmp_path: Path, postgres_url: str) -> Lakehouse:
    return open_lake(warehouse=str(tmp_path / "warehouse"), catalog=postgres_url)


def test_lakehouse_on_postgresql(lake: Lakehouse, tmp_path: Path, postgres_url: str) -> None:
    lake.create_namespace("shop")
    csv = tmp_path / "customers.csv"
    csv.write_text("CustomerId,Country\n1,France\n2,Japan\n3,France\n")
    info = lake.import_files("shop.customers", str(csv))
    assert info.key == "shop.customers"

    transaction = lake.begin()
    transaction.write("shop.orders", pa.table({"OrderId": [10, 11, 12], "CustomerId": [1, 2, 3]}))
    transaction.write("shop.lines", pa.table({"OrderId": [10, 10, 12], "Quantity": [1, 4, 2]}))
    published = transaction.publish("two tables")

    assert lake.catalog.head("main") == published
    assert lake.catalog.log("main", 1)[0].message == "two tables"
    assert lake.tables("shop") == ["shop.customers", "shop.lines", "shop.orders"]
    assert lake.scan("shop.lines", row_filter="Quantity > 1").sort_by("Quantity").to_pylist() == [
        {"OrderId": 12, "Quantity": 2},
        {"OrderId": 10, "Quantity": 4},
    ]
    result = lake.query(
        "SELECT c.Country, sum(l.Quantity) AS quantity FROM lines l "
        "JOIN orders o USING (OrderId) JOIN customers c USING (CustomerId) "
        "GROUP BY c.Country ORDER BY c.Country",
        namespace="shop",
    )
    assert result.to_pylist() == [{"Country": "France", "quantity": 7}]

    # The catalog really lives in PostgreSQL: another client sees the same branch.
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT name, kind, head FROM refs").fetchall()
        changed = conn.execute(
            'SELECT key FROM commit_changes WHERE "commit" = %s ORDER BY key', [published]
        ).fetchall()
    assert rows == [("main", "branch", published)]
    assert changed == [("shop.lines",), ("shop.orders",)]
    with Lakehouse(tmp_path / "other", warehouse=lake.warehouse, catalog=postgres_url) as other:
        assert other.tables("shop") == ["shop.customers", "shop.lines", "shop.orders"]


def test_postgres_scheme_alias(postgres_url: str) -> None:
    alias = postgres_url.replace("postgresql://", "postgres://", 1)
    with VersionedCatalog(alias) as vc:
        assert vc.head("main") == ROOT_COMMIT


def _race(clients: dict[str, VersionedCatalog], base: str, value: str) -> dict[str, object]:
    """Each client commits on main from ``base`` at the same moment; hash or error by name."""
    barrier = threading.Barrier(len(clients), timeout=10)
    outcomes: dict[str, object] = {}

    def commit(name: str) -> None:
        barrier.wait()
        try:
            outcomes[name] = clients[name].commit(
                "main", base, [Change(f"shop.{name}", "table", value)], name
            )
        except CommitConflict as e:
            outcomes[name] = e

    threads = [threading.Thread(target=commit, args=(name,)) for name in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    return outcomes


def test_racing_clients_one_commit_wins(postgres_url: str) -> None:
    first, second = VersionedCatalog(postgres_url), VersionedCatalog(postgres_url)
    try:
        for round_ in range(10):
            base = first.head("main")
            outcomes = _race({"a": first, "b": second}, base, str(round_))
            [winner] = [v for v in outcomes.values() if isinstance(v, str)]
            [loser] = [v for v in outcomes.values() if isinstance(v, CommitConflict)]
            assert loser.expected == base
            assert loser.found == winner
            assert first.head("main") == second.head("main") == winner
            # The loser's commit row went away with its transaction.
            assert [c.hash for c in second.log("main", 2)] == [winner, base]
        with psycopg.connect(postgres_url) as conn:
            [(n,)] = conn.execute("SELECT count(*) FROM commits").fetchall()
        assert n == 11
    finally:
        first.close()
        second.close()


def test_many_clients_open_a_new_catalog_at_once(catalog_uri: str) -> None:
    # Every opener finds the tables missing; exactly one creates them and the root.
    n = 6
    barrier = threading.Barrier(n, timeout=10)
    errors: list[BaseException] = []
    heads: list[str] = []

    def open_catalog() -> None:
        barrier.wait()
        try:
            with VersionedCatalog(catalog_uri) as vc:
                heads.append(vc.head("main"))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=open_catalog) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert heads == [ROOT_COMMIT] * n


def test_connection_dropped_by_the_server_is_replaced(postgres_url: str) -> None:
    with VersionedCatalog(postgres_url) as vc:
        head = vc.head("main")
        database = postgres_url.rsplit("/", 1)[1]
        with psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres") as admin:
            [(killed,)] = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name = 'faas'",
                [database],
            ).fetchall()
        assert killed >= 1
        # The pool pings the dead connection, drops it and opens a new one.
        assert vc.head("main") == head
        assert vc.commit("main", head, [Change("a.t", "table", "1")], "after") != head


# -- bad URIs and unreachable servers -----------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _assert_one_line_without_password(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message
    assert PASSWORD not in message
    assert "Traceback" not in message
    return message


def test_unreachable_server_is_not_found() -> None:
    port = _closed_port()
    uri = f"postgresql://faas:{PASSWORD}@127.0.0.1:{port}/catalog"
    with pytest.raises(NotFound) as caught:
        VersionedCatalog(uri)
    message = _assert_one_line_without_password(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "Connection refused" in message


def test_unreachable_server_through_lakehouse(tmp_path: Path) -> None:
    port = _closed_port()
    with pytest.raises(NotFound, match=f"127.0.0.1:{port}"):
        Lakehouse(tmp_path, catalog=f"postgresql://faas:{PASSWORD}@127.0.0.1:{port}/c")


def test_missing_database_is_not_found(postgres_server: PostgresServer) -> None:
    port = postgres_server.port
    uri = f"postgresql://faas:{PASSWORD}@127.0.0.1:{port}/no_such_db"
    with pytest.raises(NotFound) as caught:
        VersionedCatalog(uri)
    message = _assert_one_line_without_password(caught.value)
    assert f"'no_such_db' at 127.0.0.1:{port}" in message
    assert 'database "no_such_db" does not exist' in message


def test_server_that_never_answers_times_out() -> None:
    # A listening socket that never accepts: the TCP handshake completes, then
    # nothing; connect_timeout (2 s, the least libpq allows) ends the wait.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        uri = f"postgresql://faas:{PASSWORD}@127.0.0.1:{port}/c?connect_timeout=2"
        started = time.monotonic()
        with pytest.raises(NotFound) as caught:
            VersionedCatalog(uri)
        assert time.monotonic() - started < 30
    message = _assert_one_line_without_password(caught.value)
    assert f"127.0.0.1:{port}" in message


def test_user_without_create_privilege_is_invalid_input(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        # The default from PostgreSQL 15 on; explicit for older servers.
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    database = postgres_url.rsplit("/", 1)[1]
    uri = f"postgresql://{role}:{PASSWORD}@127.0.0.1:{postgres_server.port}/{database}"
    with pytest.raises(InvalidInput) as caught:
        VersionedCatalog(uri)
    message = _assert_one_line_without_password(caught.value)
    assert f"user {role!r}: permission denied for schema public" in message


@pytest.mark.parametrize(
    "uri",
    [
        f"postgresql://faas:{PASSWORD}@127.0.0.1:notaport/db",
        "no scheme at all",
        "",
    ],
)
def test_unparsable_uri_is_invalid_input(uri: str) -> None:
    with pytest.raises(InvalidInput, match="is not a database URL") as caught:
        VersionedCatalog(uri)
    _assert_one_line_without_password(caught.value)


@pytest.mark.parametrize(
    "uri",
    [
        f"mysql://faas:{PASSWORD}@127.0.0.1/db",
        f"postgresql+psycopg2://faas:{PASSWORD}@127.0.0.1/db",
        "sqlite+aiosqlite:///catalog.db",
    ],
)
def test_unsupported_database_is_invalid_input(uri: str) -> None:
    with pytest.raises(InvalidInput, match="unsupported catalog database") as caught:
        VersionedCatalog(uri)
    message = _assert_one_line_without_password(caught.value)
    assert "postgresql://user@host:port/database" in message
