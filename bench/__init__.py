"""Benchmarks: each module measures one thing against a baseline timed in the same run
and writes its figures to ``bench/results/<name>.json`` (``make bench``)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


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
