"""What one function task may touch, and how its sandbox is described.

Every task gets a directory of its own in the worker's shared memory,
``<shm root>/tasks/<task id>``:

- ``in/``: hard links to its input objects and to the cached columns of its
  scans (the worker wrote those entries: faasd.columns.prefetch), and the other
  scans the worker read for it (faasd.scans: IPC files, FIFOs for streams, or the
  data files of a local table, which the sandbox binds read-only on mount points
  there). Links share the objects' pages, so nothing is copied; the sandbox binds
  ``in/`` read-only, so the function can map its inputs but neither write them nor
  see any other object or column of the worker;
- ``out/``: where the function writes its output object (and, for a direct
  output on object storage, its Parquet files). The worker moves the object
  into its store when the function has ended: from then on it is only ever
  bound read-only, and no process of the function is left to hold it writable.

A direct output on a local warehouse is written into a staging directory beside
the table's data files (same filesystem, so the files are renamed into place
afterwards, not copied); the function sees that directory alone of the warehouse,
bound at ``out/parquet``, so not even its path tells it where the warehouse is.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

from faas.faasd.sandbox import SandboxSpec
from faas.faasd.scans import TaskScans
from faas.store import warehouse

log = logging.getLogger(__name__)

# Passed on to every function from the worker's environment, when set.
PASSED_ON = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "PYTHONHASHSEED")


def base_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every function (and every zygote) starts from: what a Python
    program needs to run, none of the worker's settings or secrets."""
    env = os.environ if environ is None else environ
    out = {k: env[k] for k in PASSED_ON if k in env}
    out.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    out["HOME"] = out["TMPDIR"] = "/tmp"
    return out


def local_path(uri: str) -> str | None:
    """The local path of a ``file://`` URI or a path, read as the warehouse reads it; None
    for object storage."""
    return warehouse.filesystem(uri)[1] if warehouse.is_local(uri) else None


class TaskBox:
    """The directory of one task: ``in/`` read-only to it, ``out/`` its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inbox = root / "in"
        self.outbox = root / "out"
        self.staging: Path | None = None
        # The scans the worker read for it; their stream threads end with the task.
        self.scans: TaskScans | None = None
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.outbox.mkdir(exist_ok=True)

    def link_in(self, path: str | os.PathLike[str]) -> Path:
        """A hard link to ``path`` in ``in/`` (the same pages); a copy where the file is on
        another filesystem (an object spilled to disk)."""
        source = Path(path)
        target = self.inbox / source.name
        if target.exists():
            return target
        try:
            os.link(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            log.info("copying %s into task %s: it is on another filesystem", source, self.root.name)
            shutil.copyfile(source, target)
        return target

    def parquet_dir(self, directory_uri: str, *, sandboxed: bool) -> str:
        """Where the function writes a direct output's Parquet files: ``out/parquet``
        (a sandbox binds the staging directory of a local warehouse there)."""
        inside = self.outbox / "parquet"
        inside.mkdir(exist_ok=True)
        local = local_path(directory_uri)
        if local is None:  # object storage: the worker uploads them
            return str(inside)
        self.staging = Path(local) / f".faas-{self.root.name}"
        self.staging.mkdir(parents=True, exist_ok=True)
        return str(inside if sandboxed else self.staging)

    def publish_parquet(self, files: Sequence[str], directory_uri: str) -> list[str]:
        """Move the function's Parquet files into ``directory_uri``; their URIs there, as
        :func:`store.files.write_parquet` gives them."""
        filesystem, directory = warehouse.filesystem(directory_uri)
        scheme = urlparse(directory_uri).scheme
        local = local_path(directory_uri)
        out = []
        for written in files:
            source = local_path(written) or written
            name = os.path.basename(source)
            if self.staging is not None:  # the function may have named it by its mount
                source = str(self.staging / name)
            if local is not None:
                os.replace(source, os.path.join(local, name))
            else:
                import pyarrow.fs as pafs

                with warehouse.storage_errors(f"cannot write {directory_uri}/{name}"):
                    pafs.copy_files(source, f"{directory.rstrip('/')}/{name}",
                                    destination_filesystem=filesystem)
                os.unlink(source)
            out.append(f"{directory_uri.rstrip('/')}/{name}" if scheme else os.path.join(local or "", name))
        return out

    def close(self) -> None:
        """Remove the task's directories (its streams stop first)."""
        if self.scans is not None:
            self.scans.close()
        shutil.rmtree(self.root, ignore_errors=True)
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)


def sandbox_spec(
    *, box: TaskBox, project: Path, scratch: int, file_size: int, network: bool,
    hide: Sequence[str],
) -> SandboxSpec:
    """The sandbox of one task: its project files and inputs (scans included) read-only;
    its output directories writable; what the worker keeps private hidden."""
    moved = {str(box.outbox / "parquet"): str(box.staging)} if box.staging is not None else {}
    bound = dict(box.scans.binds) if box.scans is not None else {}
    return SandboxSpec(
        ro=[str(project), str(box.inbox)], rw=[str(box.outbox)], moved=moved, bound=bound,
        hide=list(hide),
        scratch=scratch, file_size=file_size, network=network, cwd=str(project),
    )
