"""Functions in their own environments, through real daemons: built once, then cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cluster, import_territories, write_project

pytestmark = [pytest.mark.timeout(300), pytest.mark.package_index]

TWO_SIXES = '''
import faas


@faas.model(materialize="replace")
@faas.python("3.11", pip={"six": "1.16.0"})
def old_six(t=faas.Model("territories", columns=["Country"])):
    import six
    print(f"six {six.__version__}")
    return t


@faas.model(materialize="replace")
@faas.python("3.11", pip={"six": "1.17.0"})
def new_six(t=faas.Model("territories", columns=["Region"])):
    import six
    print(f"six {six.__version__}")
    return t


@faas.model()
def base(t=faas.Model("territories")):
    try:
        import six  # noqa: F401
        print("six in the base environment")
    except ImportError:
        print("no six in the base environment")
    return t
'''



def _setup(c: Cluster, data: Path, tmp: Path, text: str) -> Path:
    import_territories(c, data)
    return write_project(tmp, text)


def _builds(c: Cluster) -> int:
    (worker,) = c.json("info")["workers"]
    return int(worker["env_builds"])


def test_packages_per_function_built_once_then_cached(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    project = _setup(cluster, example_data, tmp_path, TWO_SIXES)
    first = cluster.faas("submit", str(project), "-n", "adventure")
    assert first.returncode == 0, first.stderr
    assert "[old_six] six 1.16.0" in first.stderr and "[new_six] six 1.17.0" in first.stderr
    assert "[base] no six in the base environment" in first.stderr
    assert "old_six: running on" in first.stderr and "(environment built)" in first.stderr
    builds = _builds(cluster)
    assert builds == 2

    # --no-cache: the functions run again (an unchanged re-run would come from the cache).
    again = cluster.faas("submit", str(project), "-n", "adventure", "--no-cache")
    assert again.returncode == 0, again.stderr
    assert "(environment built)" not in again.stderr
    assert again.stderr.count("(environment cached)") == 2
    assert _builds(cluster) == builds  # no installer ran


def test_a_package_that_does_not_exist(cluster: Cluster, example_data: Path, tmp_path: Path) -> None:
    project = _setup(cluster, example_data, tmp_path, (
        "import faas\n\n@faas.model(materialize='replace')\n"
        "@faas.python('3.11', pip={'faas-no-such-package-xyz': '1.0'})\n"
        "def m(t=faas.Model('territories')):\n    return t\n"
    ))
    before = cluster.json("log", "main", "-n", "100")
    proc = cluster.faas("submit", str(project), "-n", "adventure")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot build the environment") and "faas-no-such-package-xyz" in last
    assert "Traceback" not in proc.stderr
    assert cluster.json("log", "main", "-n", "100") == before
    assert cluster.alive()


def test_a_python_no_worker_offers(cluster: Cluster, example_data: Path, tmp_path: Path) -> None:
    project = _setup(cluster, example_data, tmp_path, (
        "import faas\n\n@faas.model()\n@faas.python('3.4')\n"
        "def m(t=faas.Model('territories')):\n    return t\n"
    ))
    proc = cluster.faas("submit", str(project), "-n", "adventure")
    assert proc.returncode == 1
    assert "models.py:5: model 'm' asks for Python 3.4, which no worker offers" in proc.stderr
    assert not [b for b in cluster.json("branch", "ls", "--all") if b["name"].startswith("run/")]
