"""Running the daemons: settings from a TOML file, gentle shutdown on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GATE_CODE, ROOT, Cluster, Gate, scheduler_only, start_daemon, wait_until

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[Cluster]:
    with scheduler_only(tmp_path) as c:
        yield c


def test_a_worker_takes_its_settings_from_a_toml_file(bare: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "faasd.toml"
    config.write_text(
        f'[worker]\nscheduler = "{bare.address}"\ntoken-file = "{bare.worker_token}"\n'
        f'host-id = "from-toml"\nmemory = "3GiB"\nshm_dir = "{tmp_path / "shm"}"\n'
        f'spill-dir = "{tmp_path / "spill"}"\nenv-dir = "{tmp_path / "envs"}"\n'
    )
    # The command line wins over the file.
    proc, _ = start_daemon(
        ["worker", "--config", str(config), "--memory", "2GiB"], "faasd worker",
        tmp_path / "worker.log",
    )
    bare.workers.append(proc)
    (worker,) = bare.wait_workers(1)
    assert worker["host_id"] == "from-toml"
    assert worker["memory_total"] == 2 * 2**30
    assert (tmp_path / "shm" / f"faas-{worker['worker_id']}").is_dir()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[worker]\nmemmory = '2GiB'\n", "worker has no setting 'memmory'"),
        ("[worker\n", "faasd.toml"),
        ("worker = 3\n", "[worker] must be a table"),
    ],
)
def test_a_bad_config_file_is_one_clear_line(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "faasd.toml"
    config.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "faas.faasd", "worker", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and str(config) in lines[0], proc.stderr


def test_sigterm_lets_running_functions_finish_then_releases_shared_memory(
    bare: Cluster, example_data: Path, tmp_path: Path, gate: Gate
) -> None:
    shm = bare.add_worker(tmp_path, "leaving", "--host-id", "leaving", "--grace", "60")
    worker = bare.workers[-1]
    (info,) = bare.wait_workers(1)
    bare.faas("namespace", "create", "adventure", check=True)
    bare.faas("table", "import", "adventure.territories", str(example_data / "territories.csv"), check=True)
    project = tmp_path / "slow"
    project.mkdir()
    release = gate  # the function runs until the test has seen the drain
    (project / "models.py").write_text(
        GATE_CODE + "import faas\n\n@faas.model(materialize='replace', internet_access=True)\n"
        "def slow(t=faas.Model('territories')):\n"
        "    print('started', flush=True)\n"
        f"    wait_gate({release.address!r})\n"
        "    return t\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "faas.client.cli", "submit", str(project), "-n", "adventure", "--json"],
        env=bare.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_until(lambda: bare.json("info")["workers"][0]["functions"], "the function to start", timeout=60, every=0.1)
    worker.send_signal(signal.SIGTERM)
    # Draining: the worker says so (in its next heartbeat) and finishes what it runs.
    wait_until(lambda: bare.json("info")["workers"][0]["draining"], "the worker to say it drains",
               timeout=60, every=0.1)
    assert "(draining: finishing its functions, taking no new ones)" in bare.faas(
        "info", check=True).stdout
    assert run.poll() is None  # its function still runs
    release.touch()
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert json.loads(out)["status"] == "success"
    assert worker.wait(timeout=60) == 0
    assert not (shm / f"faas-{info['worker_id']}").exists()
    log = (tmp_path / "leaving.log").read_text()
    assert "draining" in log
