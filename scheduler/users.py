"""The users of a cluster, their roles, and what each role may ask of the scheduler.

Users live in ``HOME/users.json`` (0600): a name, a role and a secret each. ``faasd user
add NAME --role ROLE`` adds one and prints its token file (``NAME:SECRET``); the running
scheduler reads the file again when it changes. A client authenticates as a user
(protocol.auth); the workers' cluster token never makes anyone a client.

Roles, as PostgreSQL's are layered (each has what the one before has):

- ``reader``: list, read, query, plan (``--dry-run``), log, diff, jobs, cluster info;
- ``writer``: also submit runs, import, create and drop namespaces and tables, revert,
  create branches and tags, merge, cancel runs, on any branch but a protected one; set
  and delete secrets (anyone may list their names; no one reads a value back);
- ``admin``: also all of that on protected branches (``faasd scheduler --protect``,
  default ``main``), deleting them, and pruning run branches.

A scheduler with no users makes an ``admin`` (token file ``HOME/admin.token``), so a new
cluster and the embedded daemon work with no set-up.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from faas.protocol.auth import ADMIN_TOKEN, TOKEN_BYTES, USER_NAME
from faas.protocol.errors import InvalidInput, NotAllowed
from faas.protocol.messages import (
    CancelRun,
    CreateNamespace,
    CreateRef,
    DeleteRef,
    DeleteSecret,
    DropNamespace,
    DropTable,
    ImportTable,
    Merge,
    PruneRuns,
    RevertTable,
    SetSecret,
    SubmitRun,
)

ROLES = ("reader", "writer", "admin")
USERS_FILE = "users.json"


class Users:
    """``HOME/users.json``, read again whenever it changes."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / USERS_FILE
        self._seen: tuple[float, int] | None = None
        self._users: dict[str, dict[str, str]] = {}

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._users = None, {}
            return self._users
        if self._seen != (st.st_mtime, st.st_size):
            try:
                data = json.loads(self.path.read_text())
                users = data["users"]
                assert isinstance(users, dict)
            except (OSError, ValueError, KeyError, AssertionError) as exc:
                raise InvalidInput(f"users file {self.path} is damaged: {exc}") from None
            self._seen, self._users = (st.st_mtime, st.st_size), users
        return self._users

    def secret(self, name: str) -> bytes | None:
        try:
            user = self._load().get(name)
        except InvalidInput:
            return None
        return user["secret"].encode() if user else None

    def role(self, name: str) -> str | None:
        user = self._load().get(name)
        return user["role"] if user else None

    def names(self) -> dict[str, str]:
        """Every user and their role."""
        return {name: u["role"] for name, u in sorted(self._load().items())}

    def add(self, name: str, role: str) -> str:
        """Add a user (or give one a new role and secret); the text of its token file."""
        if not USER_NAME.fullmatch(name):
            raise InvalidInput(
                f"user name {name!r} must be lower-case letters, digits, '_', '.' or '-', "
                "starting with a letter"
            )
        if role not in ROLES:
            raise InvalidInput(f"role {role!r} is not one of {', '.join(ROLES)}")
        users = dict(self._load())
        secret = secrets.token_hex(TOKEN_BYTES)
        users[name] = {"role": role, "secret": secret}
        self._write(users)
        return f"{name}:{secret}\n"

    def remove(self, name: str) -> None:
        users = dict(self._load())
        if name not in users:
            raise InvalidInput(f"no user {name!r}")
        del users[name]
        self._write(users)

    def _write(self, users: dict[str, Any]) -> None:
        write_private_json(self.path, {"users": users})
        self._seen = None

    def ensure_admin(self) -> Path | None:
        """With no users yet: make ``admin`` and write its token file; its path, else None."""
        if self._load():
            return None
        token = self.path.parent / ADMIN_TOKEN
        text = self.add("admin", "admin")
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return token


def write_private_json(path: Path, data: Any) -> None:
    """Write ``data`` as the JSON file ``path``, readable by this user alone (0600), whole
    or not at all (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _branch(kind: str, name: str) -> str | None:
    return name if kind == "branch" else None


def required(request: Any) -> tuple[str, str | None]:
    """The least role ``request`` needs, and the branch it changes (None: none)."""
    match request:
        case SubmitRun(dry_run=True):
            return "reader", None
        case SubmitRun(ref=ref) | ImportTable(ref=ref) | CreateNamespace(ref=ref) | \
                DropNamespace(ref=ref) | DropTable(ref=ref):
            return "writer", ref
        case RevertTable(branch=branch):
            return "writer", branch
        case Merge(into=into):
            return "writer", into
        case CreateRef():
            return "writer", None
        case DeleteRef(kind=kind, name=name):
            return "writer", _branch(kind, name)
        case CancelRun() | SetSecret() | DeleteSecret():
            return "writer", None
        case PruneRuns():
            return "admin", None
    return "reader", None


def check(user: str, role: str | None, request: Any, protected: Iterable[str]) -> None:
    """Raise NotAllowed, in one line naming the user, their role and what it needs, unless
    ``role`` may make ``request``."""
    need, branch = required(request)
    allow(user, role, need, branch, type(request).__name__, protected)


def allow(
    user: str, role: str | None, need: str, branch: str | None, what: str,
    protected: Iterable[str],
) -> None:
    """Raise NotAllowed unless ``role`` is at least ``need`` (admin where ``branch`` is a
    protected one); ``what`` names the request in the message."""
    if branch is not None and branch in set(protected):
        need = "admin"
    have = ROLES.index(role) if role in ROLES else -1
    if have >= ROLES.index(need):
        return
    if branch is not None and need == "admin":
        raise NotAllowed(
            f"user {user!r} ({role}) may not change protected branch {branch!r} ({what}): "
            f"only an admin may; work on a branch of your own and ask an admin to merge it"
        )
    raise NotAllowed(f"user {user!r} ({role}) may not {what}: it needs the {need} role")
