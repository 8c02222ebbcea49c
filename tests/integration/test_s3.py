"""The S3 warehouse, against a real S3-compatible server (moto) on 127.0.0.1.

moto's server runs as a subprocess on a port it picks; the store and the
daemons reach it through the usual AWS environment variables (or
``--s3-endpoint``), as they would reach MinIO or AWS.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from faas.faasd.columns import scan_cached
from faas.faasd.launch import stop_daemon
from faas.protocol.auth import ADMIN_TOKEN
from faas.protocol.errors import StorageError
from faas.protocol.messages import ScanInput
from faas.store import Lakehouse, scan_metadata, write_parquet
from faas.store.warehouse import io_properties
from tests.conftest import (
    EXAMPLE,
    ROOT,
    SOURCE_TABLES,
    Cluster,
    OpenLake,
    import_example,
    one_line_error,
    start_daemon,
)

sys.path.insert(0, str(EXAMPLE))
import reference  # (the example's DuckDB-only reference outputs)

pytestmark = pytest.mark.timeout(120)

ACCESS_KEY = "faas-test-key"
SECRET_KEY = "faas-test-secret"
REGION = "us-east-1"
# Anything here could point the SDK somewhere other than the test server.
_AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


# moto's server (and boto3) live in a virtualenv of their own, beside this one
# (tests/s3-server.txt, installed by `make test`): botocore brings `six`, which the
# function-environment tests need absent from the workers' base environment. This
# process talks to the server through pyarrow and plain HTTP only.
S3_SERVER_PYTHON = Path(sys.prefix) / "s3-server" / "bin" / "python"
_LISTING = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@dataclass
class S3Server:
    endpoint: str
    proc: subprocess.Popen[bytes]
    home: Path

    def env(
        self, *, endpoint: bool = True, key: str = ACCESS_KEY, secret: str = SECRET_KEY
    ) -> dict[str, str]:
        """AWS variables for a process that uses this server (``endpoint`` False: pass it
        another way, such as ``--s3-endpoint``)."""
        env = {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": REGION,
            # No profile files or instance metadata: only what is set here counts.
            "AWS_CONFIG_FILE": str(self.home / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.home / "no-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        if endpoint:
            env["AWS_ENDPOINT_URL"] = self.endpoint
        return env

    def filesystem(self, key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            region=REGION,
            access_key=key,
            secret_key=secret,
            allow_bucket_creation=True,
            allow_bucket_deletion=True,
        )

    def create_bucket(self) -> str:
        name = f"faas-{uuid.uuid4().hex[:12]}"
        self.filesystem().create_dir(name)
        return name

    def keys(self, bucket: str) -> list[str]:
        """Every object key in ``bucket``, directory markers included (ListObjectsV2;
        moto answers unsigned requests unless told to check credentials)."""
        keys: list[str] = []
        token = ""
        while True:
            params = {"list-type": "2", **({"continuation-token": token} if token else {})}
            query = urllib.parse.urlencode(params)
            with urllib.request.urlopen(f"{self.endpoint}/{bucket}?{query}", timeout=10) as r:
                root = ElementTree.fromstring(r.read())
            keys += [k.text or "" for k in root.iter(f"{_LISTING}Key")]
            token = root.findtext(f"{_LISTING}NextContinuationToken") or ""
            if root.findtext(f"{_LISTING}IsTruncated") != "true" or not token:
                return sorted(keys)


def _start_moto(home: Path, env: dict[str, str] | None = None) -> S3Server:
    """``python -m moto.server`` on 127.0.0.1, port 0; its address read from its log."""
    if not S3_SERVER_PYTHON.exists():
        pytest.fail(
            f"moto's S3 server is not installed: no {S3_SERVER_PYTHON}; run `make test`, or "
            f"python3 -m venv {S3_SERVER_PYTHON.parents[1]} && "
            f"{S3_SERVER_PYTHON} -m pip install -r tests/s3-server.txt"
        )
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(S3_SERVER_PYTHON), "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=home,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(
            r"Running on (http://127\.0\.0\.1:\d+)", log_path.read_text(errors="replace")
        )
        if found:
            return S3Server(endpoint=found.group(1), proc=proc, home=home)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_daemon(proc)  # type: ignore[arg-type]
    raise RuntimeError(f"moto did not start; its log:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = _start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        stop_daemon(server.proc)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _no_outside_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def aws(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """This process's AWS environment pointed at the test server."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


@pytest.fixture
def bucket(s3: S3Server) -> str:
    return s3.create_bucket()


@pytest.fixture
def lake(aws: S3Server, bucket: str, open_lake: OpenLake) -> Lakehouse:
    return open_lake("sales", warehouse=f"s3://{bucket}/wh")


ORDERS = pa.table(
    {
        "OrderId": [1, 2, 3, 4],
        "Region": ["Europe", "Asia", "Europe", "America"],
        "OrderQuantity": [1, 5, 3, 2],
    }
)


def _write(lake: Lakehouse, key: str, data: pa.Table, ref: str = "main") -> str:
    transaction = lake.begin(ref)
    transaction.write(key, data)
    return transaction.publish(f"write {key}")


# -- settings -------------------------------------------------------------------


def test_io_properties_come_from_the_aws_environment() -> None:
    assert io_properties(environ={}) == {}
    assert io_properties(environ={"AWS_DEFAULT_REGION": "eu-west-1"}) == {"s3.region": "eu-west-1"}
    # An endpoint without a region gets us-east-1: pyiceberg would otherwise ask AWS.
    assert io_properties(environ={"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}) == {
        "s3.endpoint": "http://127.0.0.1:9000",
        "s3.region": "us-east-1",
    }
    env = {
        "AWS_ENDPOINT_URL": "http://general",
        "AWS_ENDPOINT_URL_S3": "http://s3-only",
        "AWS_REGION": "eu-central-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "left-to-the-sdk",
    }
    assert io_properties(environ=env) == {
        "s3.endpoint": "http://s3-only",
        "s3.region": "eu-central-1",
    }
    assert io_properties({"s3.region": "ap-south-1"}, environ=env)["s3.region"] == "ap-south-1"


# -- the store on S3 --------------------------------------------------------------


def test_tables_are_written_and_scanned_in_the_bucket(
    lake: Lakehouse, s3: S3Server, bucket: str
) -> None:
    _write(lake, "sales.orders", ORDERS)
    info = lake.table_info("sales.orders")
    assert info.metadata_location.startswith(f"s3://{bucket}/wh/sales/orders-")
    assert info.row_count == 4
    got = lake.scan("sales.orders", columns=["Region", "OrderId"], row_filter="OrderQuantity > 1")
    assert got.column_names == ["Region", "OrderId"]
    assert sorted(got.column("OrderId").to_pylist()) == [2, 3, 4]
    # A worker reads it from the metadata location alone.
    alone = scan_metadata(
        info.metadata_location, columns=["OrderId"], row_filter="Region = 'Europe'"
    )
    assert sorted(alone.column("OrderId").to_pylist()) == [1, 3]
    assert lake.query(
        "SELECT sum(OrderQuantity) AS n FROM orders", namespace="sales"
    ).to_pylist() == [{"n": 11}]

    keys = s3.keys(bucket)
    assert any(k.endswith(".metadata.json") for k in keys), keys
    assert any(k.startswith("wh/sales/orders-") and k.endswith(".parquet") for k in keys), keys
    assert all(k.startswith("wh/sales/") for k in keys), keys
    assert not (lake.home / "warehouse").exists()


def test_import_and_worker_files_go_to_the_bucket(
    lake: Lakehouse, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    csv = tmp_path / "orders.csv"
    csv.write_text("OrderId,Region\n1,Europe\n2,Asia\n")
    info = lake.import_files("sales.imported", [str(csv)])
    assert info.row_count == 2 and info.metadata_location.startswith(f"s3://{bucket}/wh/")

    # The worker's way: Parquet written into the directory the scheduler hands out,
    # then registered by the scheduler with add_files.
    transaction = lake.begin()
    directory = transaction.data_location("sales.from_worker")
    assert directory.startswith(f"s3://{bucket}/wh/sales/from_worker-")
    path = write_parquet(ORDERS, directory, "part-0")
    assert path == f"{directory}/part-0.parquet"
    transaction.add_files("sales.from_worker", [path], ORDERS.schema)
    transaction.publish("add files")
    info = lake.table_info("sales.from_worker")
    assert info.row_count == 4 and info.file_count == 1
    key = path.removeprefix(f"s3://{bucket}/")
    assert key in s3.keys(bucket)
    # No directory marker objects: S3 has no directories.
    assert not [k for k in s3.keys(bucket) if k.endswith("/")]

    # A function process's way: through the column cache, settings from the environment.
    scan = ScanInput(
        param="t",
        key="sales.from_worker",
        metadata_location=info.metadata_location,
        columns=["OrderQuantity", "OrderId"],
        filter="OrderQuantity >= 2",
    )
    table, stats = scan_cached(scan, tmp_path / "cache")
    assert sorted(table.column("OrderId").to_pylist()) == [2, 3, 4]
    assert stats.columns_read == ["OrderQuantity", "OrderId"]
    again, stats = scan_cached(scan, tmp_path / "cache")
    assert again.equals(table) and stats.columns_cached == ["OrderQuantity", "OrderId"]


def test_branches_and_merges_keep_their_metadata_in_the_bucket(
    lake: Lakehouse, s3: S3Server, bucket: str
) -> None:
    _write(lake, "sales.orders", ORDERS)
    lake.catalog.create_branch("dev")
    _write(lake, "sales.orders", ORDERS.slice(0, 2), ref="dev")
    _write(lake, "sales.extra", ORDERS, ref="dev")
    assert lake.table_info("sales.orders", "main").row_count == 4
    assert lake.table_info("sales.orders", "dev").row_count == 2
    diff = {d.key: d.status for d in lake.diff("main", "dev")}
    assert diff == {"sales.orders": "changed", "sales.extra": "added"}

    lake.catalog.merge("dev", "main")
    assert lake.table_info("sales.orders", "main").row_count == 2
    assert lake.scan("sales.extra", "main").num_rows == 4
    metadata = [k for k in s3.keys(bucket) if k.endswith(".metadata.json")]
    # orders: created on main, replaced on dev; extra: created on dev.
    assert len(metadata) == 3, metadata
    for key in ("sales.orders", "sales.extra"):
        location = lake.table_info(key, "main").metadata_location
        assert location.removeprefix(f"s3://{bucket}/") in metadata


# -- errors -------------------------------------------------------------------------


def test_a_missing_bucket_is_named_at_start(aws: S3Server, tmp_path: Path) -> None:
    with pytest.raises(
        StorageError,
        match=r"^warehouse s3://no-such-bucket/wh: bucket 'no-such-bucket' does not exist",
    ):
        Lakehouse(tmp_path / "home", warehouse="s3://no-such-bucket/wh")


def test_a_bucket_gone_after_start_fails_on_first_use(
    aws: S3Server, bucket: str, tmp_path: Path
) -> None:
    with Lakehouse(tmp_path / "home", warehouse=f"s3://{bucket}/wh") as lake:
        lake.create_namespace("sales")
        aws.filesystem().delete_dir(bucket)
        with pytest.raises(StorageError) as raised:
            _write(lake, "sales.orders", ORDERS)
        message = str(raised.value)
        assert "\n" not in message and f"s3://{bucket}/wh" in message, message
    with pytest.raises(StorageError) as raised:
        write_parquet(ORDERS, f"s3://{bucket}/wh/sales/data", "part-0")
    message = str(raised.value)
    assert "\n" not in message and message.startswith(
        f"cannot write s3://{bucket}/wh/sales/data/part-0.parquet: "
    )


def test_an_unreachable_endpoint_is_one_line(
    aws: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    with pytest.raises(
        StorageError,
        match=r"^warehouse s3://any-bucket/wh: cannot connect to http://127\.0\.0\.1:1",
    ):
        Lakehouse(tmp_path / "home", warehouse="s3://any-bucket/wh")


# Run by moto's own interpreter, which has boto3: an IAM user allowed everything, and its key.
_MAKE_USER = """
import json, sys
import boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="setup", aws_secret_access_key="setup")
iam.create_user(UserName="faas")
policy = {"Version": "2012-10-17",
          "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
iam.put_user_policy(UserName="faas", PolicyName="all", PolicyDocument=json.dumps(policy))
key = iam.create_access_key(UserName="faas")["AccessKey"]
print(json.dumps({k: key[k] for k in ("AccessKeyId", "SecretAccessKey")}))
"""


@pytest.fixture(scope="module")
def secured_s3(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[S3Server, str, str, str]]:
    """A moto server that checks credentials: (server, bucket, key id, secret).

    moto lets the first INITIAL_NO_AUTH_ACTION_COUNT requests through unchecked:
    here the three that make a user with a key; everything after needs that key.
    """
    server = _start_moto(
        tmp_path_factory.mktemp("moto-auth"), {"INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    )
    try:
        made = subprocess.run(
            [str(S3_SERVER_PYTHON), "-c", _MAKE_USER, server.endpoint],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        key = json.loads(made.stdout)
        bucket_name = "faas-secured"
        server.filesystem(key["AccessKeyId"], key["SecretAccessKey"]).create_dir(bucket_name)
        yield server, bucket_name, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        stop_daemon(server.proc)  # type: ignore[arg-type]


def test_bad_credentials_are_one_line(
    secured_s3: tuple[S3Server, str, str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server, bucket_name, key, secret = secured_s3
    for name, value in server.env(key=key, secret=secret).items():
        monkeypatch.setenv(name, value)
    with Lakehouse(tmp_path / "good", warehouse=f"s3://{bucket_name}/wh"):
        pass  # the right key gets in
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StorageError) as raised:
        Lakehouse(tmp_path / "bad", warehouse=f"s3://{bucket_name}/wh")
    message = str(raised.value)
    assert message.startswith(
        f"warehouse s3://{bucket_name}/wh: access denied at {server.endpoint}"
    )
    assert "AWS_SECRET_ACCESS_KEY" in message and "\n" not in message

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "faas.faasd",
            "--log-level",
            "WARNING",
            "scheduler",
            "--listen",
            "127.0.0.1:0",
            "--home",
            str(tmp_path / "cli"),
            "--warehouse",
            f"s3://{bucket_name}/wh",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    one_line_error(proc, "faasd: error: ", f"s3://{bucket_name}/wh", "access denied")


# Reads its table twice without the cache, whole and streamed, and looks at what it has.
_PROBE = """
import os
import socket

import faas


@faas.model()
def probe(t=faas.Model("territories"), s=faas.Model("territories", stream=True)):
    print("storage settings:", sorted(k for k in os.environ if k.startswith("AWS")))
    try:
        socket.create_connection(("127.0.0.1", PORT), timeout=2).close()
        print("store reachable")
    except OSError as exc:
        print("store unreachable:", type(exc).__name__)
    print("streamed rows:", sum(b.num_rows for b in s))
    return t
"""


def test_functions_get_their_scans_from_the_worker_with_no_credentials_and_no_network(
    s3: S3Server, bucket: str, tmp_path: Path, example_data: Path
) -> None:
    """Without the cache, and streamed, a function's scans of an S3 table come from its
    worker: the function holds no storage setting, cannot reach the store, and reads
    every row."""
    home = tmp_path / "home"
    sched, address = start_daemon(
        ["scheduler", "--listen", "127.0.0.1:0", "--home", str(home),
         "--warehouse", f"s3://{bucket}/probe"],
        "faasd scheduler listening on", tmp_path / "scheduler.log", env=s3.env(),
    )
    c = Cluster(home=home, address=address, token_file=home / ADMIN_TOKEN,
                worker_token=home / "token", scheduler=sched)
    try:
        c.add_worker(tmp_path, "worker", env=s3.env())
        c.faas("namespace", "create", "adventure", check=True)
        c.faas("table", "import", "adventure.territories", str(example_data / "territories.csv"),
               check=True)
        project = tmp_path / "probe"
        project.mkdir()
        port = urllib.parse.urlsplit(s3.endpoint).port
        (project / "models.py").write_text(_PROBE.replace("PORT", str(port)))
        proc = c.faas("submit", str(project), "-n", "adventure", "--no-cache")
        assert proc.returncode == 0, proc.stderr
        said = proc.stdout + proc.stderr
        assert "storage settings: []" in said, said
        assert "store unreachable: " in said and "store reachable" not in said, said
        assert "streamed rows: 10" in said, said
        assert "probe: done (10 rows)" in said, said

        # Parquet files already in the bucket, registered as a table with no copy.
        fs = s3.filesystem()
        for i in range(2):
            with fs.open_output_stream(f"{bucket}/landing/day={i}/part.parquet") as out:
                pq.write_table(pa.table({"day": [i, i], "v": [1.5, 2.5]}), out)
        made = c.json("table", "create-external", "adventure.landing",
                      "--from", f"s3://{bucket}/landing/*/part.parquet")
        assert (made["rows"], made["files"]) == (4, 2)
        assert c.json("query", "SELECT count(*) AS n, sum(day) AS d FROM landing",
                      "-n", "adventure") == [{"n": 4, "d": "2"}]
        assert not [k for k in s3.keys(bucket) if k.startswith("probe/adventure/landing")
                    and k.endswith(".parquet")]
    finally:
        for w in c.workers:
            stop_daemon(w)
        stop_daemon(sched)


def test_scheduler_names_a_missing_bucket_in_one_line(s3: S3Server, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "faas.faasd",
            "--log-level",
            "WARNING",
            "scheduler",
            "--listen",
            "127.0.0.1:0",
            "--home",
            str(tmp_path / "home"),
            "--warehouse",
            "s3://no-such-bucket/wh",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **s3.env()},
    )
    one_line_error(
        proc,
        "faasd: error: warehouse s3://no-such-bucket/wh: bucket 'no-such-bucket' does not exist",
    )


# -- a cluster on S3 -----------------------------------------------------------------


@pytest.mark.timeout(300)
def test_example_pipeline_on_an_s3_warehouse(
    s3: S3Server, bucket: str, tmp_path: Path, example_data: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    token_file = home / "token"
    token_file.write_text("test-cluster-token-" + os.urandom(8).hex() + "\n")
    warehouse = f"s3://{bucket}/wh"
    # The scheduler gets the endpoint from AWS_ENDPOINT_URL; the worker from
    # --s3-endpoint, which its function processes then inherit.
    sched, address = start_daemon(
        [
            "scheduler",
            "--listen",
            "127.0.0.1:0",
            "--home",
            str(home),
            "--token-file",
            str(token_file),
            "--warehouse",
            warehouse,
        ],
        "faasd scheduler listening on",
        tmp_path / "scheduler.log",
        env=s3.env(),
    )
    c = Cluster(home=home, address=address, token_file=home / ADMIN_TOKEN, worker_token=token_file,
                scheduler=sched)
    try:
        c.add_worker(tmp_path, "worker", "--s3-endpoint", s3.endpoint, env=s3.env(endpoint=False))
        import_example(c, example_data)
        proc = c.faas("submit", str(EXAMPLE), "-n", "adventure", "--json")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["status"] == "success", result
        assert sorted(result["tables"]) == [
            "adventure.dim_country",
            "adventure.dim_product",
            "adventure.fact_sale",
        ]
        for name, table in reference.expected(str(example_data)).items():
            rows = c.json("query", f"SELECT count(*) AS n FROM {name}", "--namespace", "adventure")
            assert rows[0]["n"] == table.num_rows, name
            info = c.json("table", "get", f"adventure.{name}")
            assert info["metadata_location"].startswith(f"{warehouse}/adventure/{name}-"), info

        keys = s3.keys(bucket)
        for name in (*SOURCE_TABLES, "dim_country", "dim_product", "fact_sale"):
            mine = [k for k in keys if k.startswith(f"wh/adventure/{name}-")]
            assert any(k.endswith(".parquet") for k in mine), (name, keys)
            assert any(k.endswith(".metadata.json") for k in mine), (name, keys)
        assert not (home / "warehouse").exists()
        assert c.alive()
    finally:
        for w in c.workers:
            stop_daemon(w)
        stop_daemon(sched)
