"""Where embedded mode keeps its state, and the active branch kept there.

Imports nothing but the standard library's ``os`` and ``pathlib``: the command line and
the synchronous client (:mod:`faas.client.sync`) both read it before anything else.
"""

from __future__ import annotations

import os
from pathlib import Path


def home_path(home: str | os.PathLike[str] | None = None) -> Path:
    """``home``, else ``FAAS_HOME``, else ``~/.faas``, as an absolute path."""
    return Path(home or os.environ.get("FAAS_HOME") or "~/.faas").expanduser().absolute()


def active_branch(home: Path) -> str:
    """The branch ``faas checkout`` chose in ``home`` (``HOME/HEAD``), ``main`` until then."""
    try:
        name = (home / "HEAD").read_text().strip()
    except FileNotFoundError:
        return "main"
    return name or "main"
