"""Which faas this is: the release, plus a fingerprint of the installed source.

A resident daemon records the build it runs; a command of another build replaces
it, so an upgrade (or, in a source checkout, an edit) never talks to stale code.
The fingerprint is the size and modification time of every module of ours: a
stat per file, about a millisecond, and no file is read. A daemon also records which
settings it took from the environment that started it (settings_fingerprint).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

VERSION = "0.1.0"
# The faas package itself, then its subpackages.
PACKAGES = ("", "protocol", "scheduler", "store", "faasd", "client")
_ROOT = Path(__file__).parents[1]  # the faas package (not resolved: in a checkout the
# subpackages are links from faas/ to the top-level folders)


def build_id() -> str:
    """``VERSION+<12 hex>``: the same for every process started from the same files."""
    h = hashlib.sha256()
    for package in PACKAGES:
        try:
            entries = sorted(os.scandir(_ROOT / package), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith(".py"):
                st = entry.stat()
                h.update(f"{package or 'faas'}/{entry.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return f"{VERSION}+{h.hexdigest()[:12]}"


def settings_fingerprint(env: dict[str, str] | None = None) -> str:
    """A hash of the settings a daemon takes from the environment of the command that
    starts it and hands to its functions (the AWS_* variables)."""
    items = sorted((k, v) for k, v in (env or os.environ).items() if k.startswith("AWS_"))
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]
