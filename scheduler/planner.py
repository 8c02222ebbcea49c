"""Plan a submitted project against the catalog, as the scheduler does for every submit."""

from __future__ import annotations

import uuid
from typing import Any

from faas.protocol.errors import InvalidInput, NotFound, PlanInvalid
from faas.protocol.messages import SubmitRun
from faas.scheduler.dag import (
    CACHE_KEY_PROPERTY,
    EXACT_PROPERTY,
    Plan,
    SecretLookup,
    SourceTable,
    build_plan,
    model_input_problems,
)
from faas.scheduler.reader import Project, read_project
from faas.store.transaction import load_table, missing_namespace, table_info


def plan_submission(
    lh: Any, request: SubmitRun, python_versions: set[str] | None,
    project: Project | None = None, secrets: SecretLookup | None = None,
) -> Plan:
    """Resolve the project's inputs at the ref's head commit, and plan it (``project``:
    its files read already, see scheduler.analysis; else they are read here).

    Runs on the scheduler's store thread. Raises PlanInvalid (every problem at
    once), NotFound or InvalidInput.
    """
    if project is None:
        project = read_project(request.files, partial=True)
    branch, head = lh.catalog.resolve(request.ref)
    if branch is None and not request.dry_run:
        raise InvalidInput(
            f"ref {request.ref!r} is not a branch: a run publishes its outputs to a branch "
            f"(plan against it with --dry-run, or branch from it: faas branch create NAME "
            f"--from {request.ref})"
        )
    # Everything is read at one commit, whatever lands on the branch meanwhile.
    at = f"@{head}"
    if request.namespace not in lh.namespaces(at):
        raise missing_namespace(request.namespace, request.ref)

    view = lh.view_at(head, request.ref)
    found: dict[str, SourceTable | None] = {}

    def lookup(key: str) -> SourceTable | None:
        # One metadata read per table, however many models read it.
        if key not in found:
            try:
                info = table_info(load_table(view, key), key)
            except NotFound:
                found[key] = None
            else:
                found[key] = SourceTable(
                    key=key, metadata_location=info.metadata_location,
                    snapshot_id=info.snapshot_id, schema=info.schema,
                    size_bytes=info.size_bytes, row_count=info.row_count,
                )
        return found[key]

    plan = build_plan(
        project, request.namespace, request.ref, request.params, lookup,
        python_versions=python_versions, salt=uuid.uuid4().hex[:8] if request.no_cache else "",
        secrets=secrets,
    )
    plan.branch = branch
    plan.base = head
    if not request.no_cache:
        for name, node in plan.nodes.items():
            if node.spec.materialize != "replace":
                continue  # an append adds its rows again on every run
            try:
                info = table_info(load_table(view, node.key), node.key)
            except NotFound:
                continue
            if info.properties.get(CACHE_KEY_PROPERTY) == node.cache_key:
                plan.published[name] = node.cache_key
                plan.published_columns[name] = list(info.schema.names)
                if info.properties.get(EXACT_PROPERTY) != "true":
                    continue  # its rows were converted: readers must have the output itself
                plan.published_tables[name] = SourceTable(
                    key=node.key, metadata_location=info.metadata_location,
                    snapshot_id=info.snapshot_id, schema=info.schema,
                    size_bytes=info.size_bytes, row_count=info.row_count,
                )
    problems = model_input_problems(
        plan, lookup, {name: t.schema for name, t in plan.published_tables.items()}
    )
    if problems:
        raise PlanInvalid(problems)
    return plan
