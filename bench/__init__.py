"""Benchmarks: each module measures one thing against a baseline timed in the same run
and writes its figures to ``bench/results/<name>.json`` (``make bench``)."""

from __future__ import annotations

import compileall
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
# faas's code, as installed: the SDK, its subpackages (links in a checkout), the compat shims.
PACKAGES = ("faas", "client", "protocol", "scheduler", "store", "faasd")


def as_installed() -> None:
    """Run faas as an install has it: every module compiled to bytecode (pip compiles what
    it installs), and every process this benchmark starts free to read and write .pyc
    files. Without this, PYTHONDONTWRITEBYTECODE in the caller's environment made each
    ``faas`` command compile its modules from source again (40-50 ms a command)."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
    for package in PACKAGES:
        compileall.compile_dir(ROOT / package, quiet=1)


def machine(**extra: Any) -> dict[str, Any]:
    """What the figures were measured on."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "system": platform.system(), "memory_gib": round(memory / 2**30, 1), **extra,
    }


def save(name: str, out: dict[str, Any]) -> None:
    """Write a benchmark's figures to bench/results/NAME.json and print them."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(out, indent=2)
    (RESULTS / f"{name}.json").write_text(text + "\n")
    print(text)
