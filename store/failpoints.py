"""Named crash points for crash-safety tests.

``failpoint(name)`` ends the process at once (``os._exit(86)``: no cleanup, no
flushing, no rollback by Python) when the environment variable
``FAAS_FAILPOINT`` equals ``name``. A test runs an operation in a subprocess
with the variable set, then opens the catalog and checks that the operation
either happened completely or not at all. ``name:pause=SECONDS`` pauses there
instead, for a test that acts while the operation is half-way.

When the variable is unset a failpoint costs one dict lookup.
"""

from __future__ import annotations

import os

ENV_VAR = "FAAS_FAILPOINT"
EXIT_CODE = 86

# Every failpoint in the store, in the order an operation passes them. Tests
# iterate over this list, so a new failpoint gets a crash test for free.
FAILPOINTS: tuple[str, ...] = (
    # VersionedCatalog.commit (and every commit made through it)
    "commit.before_insert",
    "commit.after_cas",
    "commit.after_commit_row",
    "commit.after_changes",
    "commit.before_db_commit",
    "commit.after_db_commit",
    # VersionedCatalog.merge, three-way (a merge commit)
    "merge.after_base",
    "merge.after_diff",
    "merge.before_insert",
    "merge.after_cas",
    "merge.after_commit_row",
    "merge.after_changes",
    "merge.before_db_commit",
    "merge.after_db_commit",
    # VersionedCatalog.merge with fast_forward=True (a pointer move)
    "merge.fast_forward.after_cas",
    "merge.fast_forward.after_db_commit",
    # refs
    "branch.create.after_insert",
    "branch.create.after_db_commit",
    "branch.delete.after_delete",
    "branch.delete.after_db_commit",
    "tag.create.after_insert",
    "tag.delete.after_delete",
    # Transaction.write / add_files / publish
    "transaction.after_metadata_write",
    "transaction.before_catalog_commit",
    "transaction.after_conflict_check",
    "transaction.after_catalog_commit",
)

_environ = os.environ


def failpoint(name: str) -> None:
    """Exit the process with status 86 if ``FAAS_FAILPOINT`` is ``name``; pause it for N
    seconds if it is ``name:pause=N`` (a window for a test to act in)."""
    value = _environ.get(ENV_VAR)
    if value is None:
        return
    if value == name:
        os._exit(EXIT_CODE)
    if value.startswith(f"{name}:pause="):
        import time

        time.sleep(float(value.partition("=")[2]))
