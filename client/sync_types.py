"""What faas's synchronous client (:mod:`faas.client.sync`) returns where Bauplan's shapes
differ from faas's replies, and how it reads the arguments Bauplan's methods take."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from faas.protocol.errors import InvalidInput, RunCancelled, from_wire
from faas.protocol.replies import Imported, JobEvent, PlannedNode

T = TypeVar("T")

RUN_STATUS = {"success": "SUCCESS", "failed": "FAILED", "cancelled": "CANCELLED"}
# Job states as Bauplan (JobState) and faas (JobSummary.status, RunState) name them.
JOB_STATUS = {
    "running": "running", "not_started": "running",
    "complete": "success", "success": "success",
    "fail": "failed", "failed": "failed",
    "abort": "cancelled", "cancelled": "cancelled", "canceled": "cancelled",
}
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# -- what the methods return, where Bauplan's shape differs from faas's replies ------------


@dataclass(frozen=True)
class Namespace:
    """A namespace; ``commit``: the commit that created it (:meth:`Client.create_namespace`)."""

    name: str
    commit: str | None = None


@dataclass(frozen=True)
class TableEntry:
    """A table as :meth:`Client.get_tables` lists it (:meth:`Client.get_table` tells more)."""

    namespace: str
    name: str

    @property
    def fqn(self) -> str:
        """``namespace.name``."""
        return f"{self.namespace}.{self.name}"

    @property
    def key(self) -> str:
        return self.fqn


@dataclass(frozen=True)
class RunState:
    """A run as :meth:`Client.run` leaves it.

    ``job_status``: ``"SUCCESS"``, ``"FAILED"`` or ``"CANCELLED"``; None for a detached run
    (it goes on: :meth:`Client.get_job`). ``error``: the one-line error of a run that did
    not succeed; ``error_kind`` its faas error type, ``error_detail`` the traceback.
    ``user_logs``: every line the functions printed, in order (``.node``, ``.stream``,
    ``.line``). ``branch``: the run's transaction branch, kept when it did not succeed.
    A dry run runs nothing: its ``plan`` is what would run."""

    job_id: str | None
    job_status: str | None
    project_dir: str
    ref: str
    namespace: str
    error: str | None = None
    error_kind: str | None = None
    error_detail: str = ""
    user_logs: list[JobEvent] = field(default_factory=list)
    commit: str | None = None
    tables: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    branch: str | None = None
    duration: float | None = None
    dry_run: bool = False
    detach: bool = False
    plan: list[PlannedNode] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        """The lines the run's functions printed, in order."""
        return [e.line for e in self.user_logs if e.line is not None]

    def raise_for_status(self) -> RunState:
        """Raise the run's typed error unless it succeeded (or is still going); else
        return the state."""
        if self.job_status in (None, "SUCCESS"):
            return self
        if self.job_status == "CANCELLED":
            raise RunCancelled(self.error or f"run {self.job_id} was cancelled",
                               detail=self.error_detail)
        raise from_wire(self.error_kind or "FunctionFailed",
                        self.error or f"run {self.job_id} failed", self.error_detail)


@dataclass(frozen=True)
class ImportState:
    """An import that succeeded (a failed one raises): ``table``, the table it made or
    added to, and the commit that published it."""

    table: Imported
    job_id: str | None = None
    job_status: str = "SUCCESS"
    error: str | None = None


# -- arguments -------------------------------------------------------------------------------


def name_of(value: Any) -> str:
    """A name given as a string, or as an object with a ``name`` (a Ref, a Namespace)."""
    if isinstance(value, str):
        return value
    name = getattr(value, "name", None)
    if isinstance(name, str):
        return name
    raise TypeError(f"expected a name, or an object with one, not {type(value).__name__}")


def table_key(table: Any, namespace: Any) -> str:
    """``NAMESPACE.TABLE`` of a table given by name, with or without its namespace, or as
    an object (a Table, a TableEntry)."""
    key = table if isinstance(table, str) else getattr(table, "key", None)
    if not isinstance(key, str):
        raise TypeError(f"expected a table name, or a table, not {type(table).__name__}")
    ns = name_of(namespace) if namespace is not None else None
    if "." in key:
        if ns is not None and key.rpartition(".")[0] != ns:
            raise InvalidInput(f"table {key!r} is not in namespace {ns!r}")
        return key
    if ns is None:
        raise InvalidInput(f"table {key!r} has no namespace: write NAMESPACE.{key}, or "
                           "pass namespace=")
    return f"{ns}.{key}"


def quote_ident(name: str) -> str:
    return name if IDENTIFIER.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def run_params(parameters: dict[str, Any] | None) -> dict[str, str]:
    """Run parameters as faas takes them (text, typed by the project); None: the default."""
    out: dict[str, str] = {}
    for name, value in (parameters or {}).items():
        if value is None:
            continue
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def on_off(what: str, value: str | bool | None) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return value == "on"
    raise InvalidInput(f"{what} must be 'on' or 'off', not {value!r}")


def listed(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) or not isinstance(value, Iterable) else list(value)


def job_id_of(job: Any) -> str:
    if isinstance(job, str):
        return job
    for attr in ("run_id", "job_id", "id"):
        value = getattr(job, attr, None)
        if isinstance(value, str):
            return value
    raise TypeError(f"expected a job id, or a job, not {type(job).__name__}")


def job_status_of(status: Any) -> str:
    name = str(status).rsplit(".", 1)[-1].lower()
    if name not in JOB_STATUS:
        raise InvalidInput(f"unknown job status {status!r}: use running, success, failed or "
                           "cancelled")
    return JOB_STATUS[name]


def as_time(value: str | datetime) -> datetime:
    """A time, given as a datetime or ISO text; one without a zone is taken as UTC."""
    when = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def first(items: list[T], limit: int | None) -> list[T]:
    return items[:limit] if limit is not None else items

