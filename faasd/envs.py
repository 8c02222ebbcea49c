"""Function environments: one uv-built virtualenv per (Python, pip pins), cached on disk.

A spec that asks for nothing beyond the worker's own Python runs on the worker's
own interpreter. Anything else gets a virtualenv at ``root/<key>``, built once
(``uv venv`` + ``uv pip install``) and marked complete by ``faas-env.json``,
written last: a directory without it died half-way and is removed and rebuilt.
An asyncio lock per key in this process and ``flock`` on ``root/<key>.lock``
across processes make two builders of one key build it once.

The faas runtime (``faas``, ``protocol``, ``faasd``, ``store``) is never
installed: ``root/_runtime`` holds symlinks to the running packages, and a
``.pth`` file in each environment appends it to ``sys.path``. An environment
on the worker's Python version also appends the worker's site-packages
*after* its own, so user pins shadow ours and pyarrow & co. exist once. On
another version the base packages (pyarrow, msgspec, pyiceberg, duckdb) are
installed too, pinned to the worker's versions unless the user pins them.

Packages are hardlinked from uv's cache (``UV_LINK_MODE=hardlink``), so one
wheel used by many environments is on disk once. The cache is uv's default
(``~/.cache/uv``) unless ``UV_CACHE_DIR`` says otherwise; it must be on the
same filesystem as ``root``, or uv falls back to copying (and says so).
uv never downloads a Python (``UV_PYTHON_DOWNLOADS=never``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from faas.protocol.errors import EnvironmentFailed

log = logging.getLogger(__name__)

LogSink = Callable[[str], Awaitable[None]]

LAYOUT_VERSION = 1  # bump when the on-disk layout of an environment changes
MARKER = "faas-env.json"
RUNTIME_DIR = "_runtime"
RUNTIME_PACKAGES = ("faas",)
BASE_PACKAGES = ("msgspec", "pyarrow", "pyiceberg", "duckdb")
PTH_FILE = "_faas_runtime.pth"
UV_TIMEOUT = 600.0
PROBE_TIMEOUT = 60.0

_NAME = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)(?:\[([A-Za-z0-9._,\- ]*)\])?$")
_SPEC = re.compile(r"^[A-Za-z0-9.*+!<>=~, ]*$")
_PYTHON = re.compile(r"^\d+\.\d+$")
_OPERATORS = "<>=!~"

# Run inside each candidate interpreter: its version, its executable, where its
# packages live and which versions of the base packages it has.
_PROBE = """
import importlib.metadata as md, importlib.util as u, json, os, sys, sysconfig
paths, versions = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]], {}
for name in BASE_PACKAGES:
    spec = u.find_spec(name)
    if spec is not None and spec.origin:
        paths.append(os.path.dirname(os.path.dirname(spec.origin)) if spec.submodule_search_locations
                     else os.path.dirname(spec.origin))
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        pass
print(json.dumps({"version": ".".join(map(str, sys.version_info[:3])), "executable": sys.executable,
                  "paths": list(dict.fromkeys(paths)), "versions": versions}))
""".replace("BASE_PACKAGES", repr(BASE_PACKAGES))


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _normalize(name: str, spec: str) -> tuple[str, str]:
    """One pin in canonical form: ``("tomli-w", "==1.0.0")``; ``""`` means any version."""
    name, spec = str(name).strip(), str(spec).strip()
    match = _NAME.match(name)
    if match is None:
        raise EnvironmentFailed(f"invalid pip package name {name!r}")
    if not _SPEC.match(spec):
        raise EnvironmentFailed(f"invalid version {spec!r} for pip package {name!r}")
    base, extras = _canonical(match[1]), match[2]
    if extras is not None:
        names = sorted({_canonical(e.strip()) for e in extras.split(",") if e.strip()})
        base += f"[{','.join(names)}]" if names else ""
    if spec in ("", "*"):
        return base, ""
    return base, spec if spec[0] in _OPERATORS else f"=={spec}"


def _requirement(name: str, spec: str) -> str:
    name, spec = _normalize(name, spec)
    return name + spec


@dataclass(frozen=True)
class EnvSpec:
    """What a function asks for: a Python ``major.minor`` (None: the worker's) and pip pins."""

    python: str | None
    pip: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, python: str | None, pip: Mapping[str, str]) -> EnvSpec:
        if python is not None and not _PYTHON.match(str(python).strip()):
            raise EnvironmentFailed(f"Python version {python!r} must be major.minor, like '3.11'")
        pins = sorted(_normalize(name, spec) for name, spec in pip.items())
        return cls(str(python).strip() if python is not None else None, tuple(pins))

    def requirements(self) -> list[str]:
        """The pins as requirement strings for the installer, sorted."""
        return sorted(_requirement(name, spec) for name, spec in self.pip)

    def __str__(self) -> str:
        python = f"Python {self.python}" if self.python else "the worker's Python"
        return python + (f" with {', '.join(self.requirements())}" if self.pip else "")


@dataclass(frozen=True)
class Environment:
    key: str  # cache key (hex)
    python: str  # the interpreter to start function processes with
    cached: bool  # True if nothing was built for this call
    path: Path | None  # the environment's directory; None for the worker's own interpreter


@dataclass(frozen=True)
class _Interpreter:
    version: str  # full version, "3.11.7"
    path: str
    paths: tuple[str, ...]  # where its packages live
    versions: Mapping[str, str]  # base package -> installed version

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


def _uv_bin() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError) as exc:
        raise EnvironmentFailed(f"the uv installer is not available on this worker: {exc}") from exc


def _uv_environ() -> dict[str, str]:
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1", NO_COLOR="1")
    env.setdefault("UV_LINK_MODE", "hardlink")  # an operator may say "copy"
    env.pop("VIRTUAL_ENV", None)  # uv would prefer the worker's own venv when discovering
    return env


def _probe(python: str) -> _Interpreter | None:
    try:
        out = subprocess.run(
            [python, "-c", _PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT,
            check=True, stdin=subprocess.DEVNULL,
        ).stdout
        info = json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        log.warning("cannot use Python interpreter %s: %s", python, exc)
        return None
    # Keep the path we were given for a venv (its site-packages matter); resolve shims
    # (pyenv) to the interpreter they start, so a build does not depend on shell state.
    path = python if info["executable"] == os.path.abspath(python) else info["executable"]
    return _Interpreter(info["version"], path, tuple(info["paths"]), info["versions"])


def _reason(lines: Sequence[str]) -> str:
    """uv's key error line: its ``error:`` headline and the deepest cause under it."""
    error = cause = ""
    in_cause = False
    for line in lines:
        text = line.strip()
        if line.startswith("error:"):
            error, cause, in_cause = text[len("error:"):].strip(), "", False
        elif re.match(r"^\s+(cause:|caused by:|[├╰]─▶)", line, re.IGNORECASE):
            cause, in_cause = re.sub(r"^(cause:|caused by:|[├╰]─▶)\s*", "", text, flags=re.IGNORECASE), True
        elif in_cause and text and line.startswith("   "):
            cause += " " + text
        else:
            in_cause = False
    found = ": ".join(p for p in (error, cause) if p)
    if not found:
        found = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
    return found if len(found) <= 600 else found[:597] + "..."


class EnvironmentCache:
    """Builds and caches function environments under ``root``.

    ``installs`` counts builds: each build is one ``uv venv`` plus at most one
    ``uv pip install``, counted once, whether it succeeded or not.
    """

    timeout: float = UV_TIMEOUT  # per uv call, seconds

    def __init__(
        self, root: Path, *, base_python: str = sys.executable, extra_interpreters: Sequence[str] = ()
    ) -> None:
        self.root = Path(root).absolute()
        self.base_python = base_python
        self.extra_interpreters = tuple(extra_interpreters)
        self.installs = 0
        self._own: _Interpreter | None = None  # probed on first use: most workers never need it
        if base_python == sys.executable:
            self.own_version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        else:
            self._own = _probe(base_python)
            if self._own is None:
                raise EnvironmentFailed(f"the worker's Python {base_python} does not run")
            self.own_version = self._own.minor
        self._found: dict[str, _Interpreter] | None = None
        self._found_lock = threading.Lock()
        self._locks: dict[str, asyncio.Lock] = {}

    # -- interpreters ------------------------------------------------------------

    def interpreters(self) -> dict[str, str]:
        """``"3.11"`` -> interpreter path: the worker's own, the extra ones, and uv's installed."""
        return {minor: i.path for minor, i in self._discover().items()}

    def _own_interpreter(self) -> _Interpreter | None:
        """The worker's own, without the search for the others (slow with pyenv shims)."""
        with self._found_lock:
            self._own = self._own or _probe(self.base_python)
            return self._own

    def _discover(self) -> dict[str, _Interpreter]:
        own = self._own_interpreter()
        with self._found_lock:
            if self._found is None:
                found = {own.minor: own} if own else {}
                for minor, path in [(None, p) for p in self.extra_interpreters] + self._uv_pythons():
                    interp = None if minor in found else _probe(path)
                    if interp is not None:
                        found.setdefault(interp.minor, interp)
                log.info("Python interpreters for function environments: %s",
                         ", ".join(f"{m} ({i.path})" for m, i in sorted(found.items())))
                self._found = found
            return self._found

    def _uv_pythons(self) -> list[tuple[str | None, str]]:
        """First path per version that ``uv python list --only-installed`` finds (CPython)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(
                [_uv_bin(), "python", "list", "--only-installed", "--output-format", "json"],
                capture_output=True, text=True, timeout=PROBE_TIMEOUT, env=_uv_environ(),
                cwd=self.root, stdin=subprocess.DEVNULL, check=True,
            )
            entries = json.loads(proc.stdout)
        except (EnvironmentFailed, OSError, subprocess.SubprocessError, ValueError) as exc:
            log.warning("cannot list Python interpreters with uv: %s", exc)
            return []
        # uv warns on stderr about every pyenv shim it cannot run; that is not our concern.
        seen: dict[str, str] = {}
        for e in entries:
            if e.get("implementation") == "cpython" and e.get("variant", "default") == "default":
                parts = e.get("version_parts") or {}
                seen.setdefault(f"{parts.get('major')}.{parts.get('minor')}", e["path"])
        return list(seen.items())

    # -- environments ------------------------------------------------------------

    async def ensure(self, spec: EnvSpec, log: LogSink | None = None) -> Environment:
        """The environment for ``spec``, built now if it is not on disk yet.

        Raises EnvironmentFailed: no interpreter for the version, or uv failed
        (``detail`` holds uv's whole output).
        """
        pins = spec.requirements()
        minor = spec.python or self.own_version
        if minor == self.own_version and not pins:
            key = hashlib.sha256(f"base:{self.base_python}".encode()).hexdigest()[:32]
            return Environment(key=key, python=self.base_python, cached=True, path=None)
        own = self._own or await asyncio.to_thread(self._own_interpreter)
        if own is None:
            raise EnvironmentFailed(f"the worker's Python {self.base_python} cannot be inspected")
        same = minor == self.own_version
        interp = own if same else await self._other_interpreter(minor)
        pth = [str(self.root / RUNTIME_DIR), *(own.paths if same else ())]
        base = [] if same else self._base_requirements(spec, own)
        blob = json.dumps({
            "layout": LAYOUT_VERSION, "python": interp.version, "interpreter": interp.path,
            "pins": pins, "base": base, "pth": pth,
        }, sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:32]
        path = self.root / key
        env = Environment(key=key, python=str(path / "bin" / "python"), cached=True, path=path)
        if self._complete(path, key):
            return env
        lock = self._locks.setdefault(key, asyncio.Lock())
        if lock.locked():
            await _say(log, f"waiting for another build of the environment for {spec}")
        async with lock:
            if self._complete(path, key):
                return env
            async with self._file_lock(key, spec, log):
                if self._complete(path, key):  # another process built it meanwhile
                    return env
                await self._build(spec, interp, path, key, pins, base, pth, log)
        return Environment(key=key, python=env.python, cached=False, path=path)

    async def _other_interpreter(self, minor: str) -> _Interpreter:
        found = self._found if self._found is not None else await asyncio.to_thread(self._discover)
        if minor not in found:
            have = ", ".join(sorted(found, key=lambda v: tuple(int(p) for p in v.split("."))))
            raise EnvironmentFailed(f"no Python {minor} on this worker (it has: {have or 'none'})")
        return found[minor]

    @staticmethod
    def _base_requirements(spec: EnvSpec, own: _Interpreter) -> list[str]:
        """Our base packages for another Python version, at the worker's versions; a user's
        pin of one of them replaces ours."""
        mine = {_canonical(name.split("[")[0]) for name, _ in spec.pip}
        return [
            f"{name}=={own.versions[name]}" if name in own.versions else name
            for name in BASE_PACKAGES if name not in mine
        ]

    @staticmethod
    def _complete(path: Path, key: str) -> bool:
        try:
            marker = json.loads((path / MARKER).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(marker, dict) and marker.get("key") == key and (path / "bin" / "python").exists()

    @contextlib.asynccontextmanager
    async def _file_lock(self, key: str, spec: EnvSpec, sink: LogSink | None) -> AsyncIterator[None]:
        """flock on ``root/<key>.lock``, polled: a cancelled wait must not leave a thread
        blocked in flock that takes the lock later and never lets go."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline, delay = time.monotonic() + 2 * self.timeout + 60, 0.02
            while not _try_flock(fd):
                if delay == 0.02:
                    await _say(sink, f"waiting for another process building the environment for {spec}")
                if time.monotonic() > deadline:
                    raise EnvironmentFailed(f"timed out waiting for another process to build {spec}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
            yield
        finally:
            os.close(fd)  # releases the lock

    async def _build(
        self, spec: EnvSpec, interp: _Interpreter, path: Path, key: str, pins: list[str],
        base: list[str], pth: list[str], sink: LogSink | None,
    ) -> None:
        self.installs += 1
        t0 = time.perf_counter()
        log.info("building environment %s for %s", key, spec)
        await _say(sink, f"building the environment for {spec} (Python {interp.version})")
        self._link_runtime()
        if await asyncio.to_thread(lambda: path.exists() or path.is_symlink()):
            log.info("removing incomplete environment %s", path)
            await asyncio.to_thread(shutil.rmtree, path, True)
        try:
            await self._uv(["venv", "--no-project", "--python", interp.path, str(path)], spec, sink)
            if pins or base:
                await self._uv(["pip", "install", "--python", str(path / "bin" / "python"), *base, *pins],
                               spec, sink)
            sites = sorted(await asyncio.to_thread(lambda: list(path.glob("lib/*/site-packages"))))
            if not sites:
                raise EnvironmentFailed(f"uv made no site-packages for {spec} in {path}")
            (sites[0] / PTH_FILE).write_text("".join(p + "\n" for p in pth))
            marker = {"key": key, "python": interp.version, "interpreter": interp.path,
                      "pins": pins, "base": base, "created": time.time()}
            tmp = path / f".{MARKER}.tmp"
            tmp.write_text(json.dumps(marker, indent=1) + "\n")
            os.replace(tmp, path / MARKER)  # last: from here on the environment is complete
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)  # never leave a half-built environment
            raise
        log.info("built environment %s for %s in %.1f s", key, spec, time.perf_counter() - t0)

    def _link_runtime(self) -> None:
        """``root/_runtime/<pkg>`` -> the package directories this worker runs from."""
        runtime = self.root / RUNTIME_DIR
        runtime.mkdir(parents=True, exist_ok=True)
        for name in RUNTIME_PACKAGES:
            found = importlib.util.find_spec(name)
            if found is None or not found.submodule_search_locations:
                raise EnvironmentFailed(f"cannot find the faas runtime package {name!r} on this worker")
            target = os.path.realpath(next(iter(found.submodule_search_locations)))
            link = runtime / name
            if link.is_symlink() and os.readlink(link) == target:
                continue
            tmp = runtime / f".{name}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(target, target_is_directory=True)
            os.replace(tmp, link)  # atomic: a starting function never sees no link

    async def _uv(self, args: list[str], spec: EnvSpec, sink: LogSink | None) -> None:
        """Run uv, streaming its output to ``sink`` line by line; raise EnvironmentFailed."""
        lines: list[str] = []
        try:
            proc = await asyncio.create_subprocess_exec(
                _uv_bin(), *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=_uv_environ(), cwd=self.root,
                start_new_session=True, limit=1 << 20,
            )
        except OSError as exc:
            raise EnvironmentFailed(f"cannot start uv for the environment for {spec}: {exc}") from exc
        try:
            async with asyncio.timeout(self.timeout):
                assert proc.stdout is not None
                async for raw in proc.stdout:
                    line = raw.decode("utf-8", "replace").rstrip()
                    lines.append(line)
                    if not _ADVICE.match(line):
                        await _say(sink, line)
                code = await proc.wait()
        except TimeoutError:
            raise EnvironmentFailed(
                f"building the environment for {spec} took longer than {self.timeout:g} s; stopped",
                detail="\n".join(lines),
            ) from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # uv and the builds it started
                await proc.wait()
        if code != 0:
            raise EnvironmentFailed(
                f"cannot build the environment for {spec}: {_reason(lines) or f'uv exited with {code}'}",
                detail="\n".join(lines),
            )


# uv's advice to a person at a shell ("Activate with: source .../bin/activate"): faas
# activates the environment itself, so it is not passed on.
_ADVICE = re.compile(r"^\s*Activate with:")


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


async def _say(sink: LogSink | None, line: str) -> None:
    log.debug("[env] %s", line)
    try:
        if sink is not None:
            await sink("[env] " + line)
    except Exception:  # noqa: BLE001 - a broken log stream must not break the build
        log.debug("environment log sink failed", exc_info=True)
