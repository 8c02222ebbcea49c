"""Function environments, built with the real uv against the real package index.

The packages are tiny pure-Python wheels the project's own venv does not have
(six, tomli-w), plus idna, which it does have, to show a user pin shadowing ours.
uv's cache makes every build after the first a matter of hardlinks.
"""

from __future__ import annotations

import asyncio
import glob
import importlib.util
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from faas.faasd.envs import MARKER, Environment, EnvironmentCache, EnvSpec, _uv_bin, _uv_environ
from faas.protocol.errors import EnvironmentFailed

pytestmark = [pytest.mark.timeout(60), pytest.mark.package_index]

OWN = f"{sys.version_info[0]}.{sys.version_info[1]}"
MISSING = "faas-no-such-package-7c1e2b9d"


def run_in(python: str, code: str, cwd: Path) -> str:
    """Run code with an environment's interpreter, outside the repo (no '' on sys.path
    pointing at our sources) and without the worker's PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run([python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def other_python() -> str | None:
    """An interpreter of another minor version than ours, if this machine has one."""
    for v in ("3.12", "3.13"):
        for path in sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{v}*/bin/python{v}"))):
            return path
    return None


def test_spec_is_canonical() -> None:
    a = EnvSpec.of("3.11", {"Tomli_W": "*", "six": "1.16.0", "Pyiceberg[SQL-sqlite]": ">=0.9, <1"})
    assert a.pip == (("pyiceberg[sql-sqlite]", ">=0.9, <1"), ("six", "==1.16.0"), ("tomli-w", ""))
    assert a == EnvSpec.of("3.11", {"six": "==1.16.0", "tomli-w": "", "pyiceberg[sql-sqlite]": ">=0.9, <1"})
    assert a.requirements() == ["pyiceberg[sql-sqlite]>=0.9, <1", "six==1.16.0", "tomli-w"]


@pytest.mark.parametrize("python,pip,what", [
    ("3", {}, "major.minor"),
    ("3.11.7", {}, "major.minor"),
    (None, {"--index-url=http://evil": ""}, "invalid pip package name"),
    (None, {"six": "1.0 --extra-index-url http://evil"}, "invalid version"),
    (None, {"six": "@ https://example.com/six.whl"}, "invalid version"),
])
def test_bad_spec_is_refused(python: str | None, pip: dict[str, str], what: str) -> None:
    with pytest.raises(EnvironmentFailed, match=what):
        EnvSpec.of(python, pip)


def test_base_spec_runs_on_the_worker_interpreter(tmp_path: Path) -> None:
    cache = EnvironmentCache(tmp_path / "envs")
    for spec in (EnvSpec.of(None, {}), EnvSpec.of(OWN, {})):
        env = asyncio.run(cache.ensure(spec))
        assert env.python == sys.executable and env.cached and env.path is None
    assert cache.installs == 0
    assert not (tmp_path / "envs").exists()  # nothing built, not even looked for


def test_build_then_cached_after_restart(tmp_path: Path) -> None:
    assert importlib.util.find_spec("six") is None, "the worker venv must not have six"
    root = tmp_path / "envs"
    spec = EnvSpec.of(None, {"six": "1.16.0"})
    lines: list[str] = []

    async def sink(line: str) -> None:
        lines.append(line)

    cache = EnvironmentCache(root)
    env = asyncio.run(cache.ensure(spec, sink))
    assert (cache.installs, env.cached) == (1, False)
    assert env.path == root / env.key and Path(env.python).exists()
    assert lines and all(line.startswith("[env] ") for line in lines)
    assert any("six==1.16.0" in line for line in lines), lines  # uv's own output came through
    # ... but not its advice to activate the environment by hand: faas does that.
    assert not any("Activate with" in line or "activate" in line for line in lines), lines
    marker = json.loads((env.path / MARKER).read_text())
    assert marker["key"] == env.key and marker["pins"] == ["six==1.16.0"]

    out = run_in(env.python, (
        "import six, faas, faas.faasd.runner, pyarrow, msgspec, duckdb, faas.store.scan, faas.store.query, sys\n"
        "print(six.__version__, pyarrow.__version__, sys.prefix)"
    ), tmp_path)
    assert out.split() == ["1.16.0", version("pyarrow"), str(env.path)]
    assert importlib.util.find_spec("six") is None, "the build leaked into the worker venv"

    again = EnvironmentCache(root)  # as after a worker restart
    env2 = asyncio.run(again.ensure(spec))
    assert (again.installs, env2.cached, env2.key, env2.python) == (0, True, env.key, env.python)


def test_two_versions_two_environments_and_user_pins_shadow_ours(tmp_path: Path) -> None:
    cache = EnvironmentCache(tmp_path / "envs")

    async def both() -> list[Environment]:
        return [await cache.ensure(EnvSpec.of(None, {"six": v, "idna": "3.7"})) for v in ("1.16.0", "1.17.0")]

    a, b = asyncio.run(both())
    assert a.key != b.key and a.path != b.path
    assert cache.installs == 2
    code = "import six, idna, pyarrow; print(six.__version__, idna.__version__)"
    assert run_in(a.python, code, tmp_path) == "1.16.0 3.7"
    assert run_in(b.python, code, tmp_path) == "1.17.0 3.7"
    assert version("idna") != "3.7"  # the worker's own idna was shadowed, not replaced


def test_missing_package_fails_cleanly_and_the_next_build_works(tmp_path: Path) -> None:
    root = tmp_path / "envs"
    cache = EnvironmentCache(root)
    with pytest.raises(EnvironmentFailed) as info:
        asyncio.run(cache.ensure(EnvSpec.of(None, {MISSING: "1.0"})))
    err = info.value
    assert "\n" not in err.message
    assert f"{MISSING}==1.0" in err.message  # the spec
    assert f"Because {MISSING} was not found in the package registry" in err.message  # uv's reason
    assert "error:" in err.detail and MISSING in err.detail
    assert cache.installs == 1
    leftovers = [p.name for p in root.iterdir() if p.is_dir() and p.name != "_runtime"]
    assert leftovers == []

    env = asyncio.run(cache.ensure(EnvSpec.of(None, {"six": "1.16.0"})))
    assert not env.cached and run_in(env.python, "import six", tmp_path) == ""


def test_unknown_python_names_the_versions_there_are(tmp_path: Path) -> None:
    cache = EnvironmentCache(tmp_path / "envs")
    with pytest.raises(EnvironmentFailed) as info:
        asyncio.run(cache.ensure(EnvSpec.of("3.4", {"six": "1.16.0"})))
    assert info.value.message.startswith(f"no Python 3.4 on this worker (it has: {OWN}")
    assert cache.installs == 0
    assert cache.interpreters()[OWN] == sys.executable


def test_incomplete_environment_is_rebuilt(tmp_path: Path) -> None:
    root = tmp_path / "envs"
    spec = EnvSpec.of(None, {"six": "1.16.0"})
    env = asyncio.run(EnvironmentCache(root).ensure(spec))
    assert env.path is not None
    (env.path / MARKER).unlink()  # as if the worker died before the end of the build
    (env.path / "junk").write_text("x")
    cache = EnvironmentCache(root)
    env2 = asyncio.run(cache.ensure(spec))
    assert (cache.installs, env2.cached, env2.key) == (1, False, env.key)
    assert not (env.path / "junk").exists() and (env.path / MARKER).exists()


def test_shared_package_files_are_hardlinks(tmp_path: Path) -> None:
    proc = subprocess.run([_uv_bin(), "cache", "dir"], capture_output=True, text=True,
                          env=_uv_environ(), check=True, timeout=30)
    uv_cache = Path(proc.stdout.strip())
    root = tmp_path / "envs"
    root.mkdir()
    if not uv_cache.exists() or os.stat(uv_cache).st_dev != os.stat(root).st_dev:
        reason = f"uv cache {uv_cache} and {root} are on different filesystems: uv copies"
        print(reason)
        pytest.skip(reason)
    cache = EnvironmentCache(root)

    async def both() -> list[Path]:
        envs = [await cache.ensure(EnvSpec.of(None, pins))
                for pins in ({"six": "1.16.0"}, {"six": "1.16.0", "tomli-w": "1.0.0"})]
        return [e.path for e in envs if e.path is not None]

    a, b = asyncio.run(both())
    assert a != b
    sa, sb = (os.stat(next(p.glob("lib/*/site-packages/six.py"))) for p in (a, b))
    assert sa.st_ino == sb.st_ino and sa.st_nlink > 2  # both envs and uv's cache


def test_concurrent_ensure_builds_once(tmp_path: Path) -> None:
    root = tmp_path / "envs"
    spec = EnvSpec.of(None, {"tomli-w": "1.0.0"})
    one = EnvironmentCache(root)
    other = EnvironmentCache(root)  # another worker process on the same host: only the file lock

    async def race() -> list[Environment]:
        return list(await asyncio.gather(one.ensure(spec), one.ensure(spec), other.ensure(spec)))

    envs = asyncio.run(race())
    assert one.installs + other.installs == 1
    assert sorted(e.cached for e in envs) == [False, True, True]
    assert len({e.python for e in envs}) == 1


def test_other_python_version_gets_the_base_packages_installed(tmp_path: Path) -> None:
    python = other_python()
    if python is None:
        pytest.skip("no Python 3.12 or 3.13 under ~/.pyenv/versions")
    cache = EnvironmentCache(tmp_path / "envs", extra_interpreters=[python])
    minor = ".".join(python.rsplit("python", 1)[1].split(".")[:2])
    assert cache.interpreters()[minor] == python
    env = asyncio.run(cache.ensure(EnvSpec.of(minor, {"six": "1.17.0"})))
    assert cache.installs == 1 and not env.cached
    out = run_in(env.python, (
        "import sys, six, faas, faas.faasd.runner, msgspec, pyarrow, duckdb, faas.store.scan, faas.store.query\n"
        "print('%d.%d' % sys.version_info[:2], six.__version__, pyarrow.__version__, msgspec.__version__)"
    ), tmp_path)
    assert out.split() == [minor, "1.17.0", version("pyarrow"), version("msgspec")]


def test_uv_past_its_timeout_is_stopped_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "envs"
    cache = EnvironmentCache(root)
    cache.timeout = 0.001
    with pytest.raises(EnvironmentFailed, match="took longer than 0.001 s"):
        asyncio.run(cache.ensure(EnvSpec.of(None, {"six": "1.16.0"})))
    assert [p.name for p in root.iterdir() if p.is_dir()] == ["_runtime"]
    cache.timeout = 60
    assert not asyncio.run(cache.ensure(EnvSpec.of(None, {"six": "1.16.0"}))).cached


def test_cancelled_build_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "envs"
    cache = EnvironmentCache(root)

    async def cancel_midway() -> None:
        started = asyncio.Event()

        async def sink(line: str) -> None:
            if "Creating virtual environment" in line:
                started.set()

        task = asyncio.create_task(cache.ensure(EnvSpec.of(None, {"six": "1.16.0"}), sink))
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    assert [p.name for p in root.iterdir() if p.is_dir()] == ["_runtime"]
    env = asyncio.run(cache.ensure(EnvSpec.of(None, {"six": "1.16.0"})))
    assert not env.cached and cache.installs == 2
