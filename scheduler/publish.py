"""A run's side of the catalog: the tables it writes, each output's commit to the run's
branch, and the one merge that publishes them all (``RunCoordinator`` mixes this in)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from faas.protocol.errors import InvalidInput, NotFound
from faas.protocol.worker_messages import (
    TaskDone,
)
from faas.scheduler.dag import CACHE_KEY_PROPERTY, EXACT_PROPERTY, Plan, PlanNode
from faas.store.files import iceberg_schema

if TYPE_CHECKING:
    from faas.scheduler.run_host import RunHost

log = logging.getLogger(__name__)


class Publishing:
    """What a run commits and publishes. The coordinator provides the run's state."""

    scheduler: RunHost
    author: str
    run_id: str
    plan: Plan
    use_cache: bool
    skipped: set[str]
    committed: list[str]

    async def _published(self, branch: str) -> tuple[str, list[str]]:
        """Publish, to the end: once the merge starts it finishes, so a cancel meanwhile
        (a closing scheduler) waits for it and the run ends as it really did."""
        publish = asyncio.ensure_future(self._publish(branch))
        while True:
            try:
                return await asyncio.shield(publish)
            except asyncio.CancelledError:
                if publish.done():
                    return publish.result()
                log.info("run %s: cancelled while publishing; the merge finishes first",
                         self.run_id)

    def _writes(self, node: PlanNode) -> bool:
        """Whether the node's table is written by this run (not published already from
        the same key, not skipped)."""
        published = self.use_cache and node.name in self.plan.published
        return bool(node.spec.materialize) and not published and node.name not in self.skipped

    def _begin_all(self, branch: str) -> dict[str, tuple[Any, str]]:
        """A transaction on the run's branch and its data directory for every table the
        run may write (store thread). Each publishes its own table: the branch's head
        moving under one by another's commit is no conflict."""
        begun = {}
        for node in self.plan.nodes.values():
            if self._writes(node):
                tx = self.scheduler.lakehouse.begin(branch, author=self.author)
                begun[node.name] = (tx, tx.data_location(node.key))
        return begun

    def _commit_output(self, tx: Any, node: PlanNode, done: TaskDone) -> str:
        """Commit one materialized output to the run's branch (store thread)."""
        schema = pa.ipc.read_schema(
            pa.py_buffer(done.output.schema if done.output is not None else done.schema)
        )
        tx.add_files(
            node.key, done.files, schema, node.spec.materialize,
            properties={
                CACHE_KEY_PROPERTY: node.cache_key,
                EXACT_PROPERTY: str(iceberg_schema(schema).equals(schema)).lower(),
            },
            partitioned_by=node.spec.partitioned_by, overwrite_filter=node.overwrite_filter,
        )
        return str(tx.publish(
            f"run {self.run_id}: {node.name} -> {node.key}",
            {"run_id": self.run_id, "model": node.name},
        ))

    async def _publish(self, branch: str) -> tuple[str, list[str]]:
        """Merge the run's branch into the target as one commit, then drop the run branch."""
        # Only what changed: outputs published by an earlier run with the same key are not
        # committed again.
        tables = list(self.committed)
        log.info("run %s publishing %d tables", self.run_id, len(tables))
        lh = self.scheduler.lakehouse
        catalog = lh.catalog
        target = self.plan.branch
        assert target is not None
        # Outputs not committed because the base already had them must still be there.
        kept = [
            self.plan.nodes[n].key for n in self.plan.published
            if self.plan.nodes[n].key not in self.committed
        ]

        def unchanged(key: str) -> bool:
            try:
                now = lh.table_info(key, target).metadata_location
            except NotFound:
                return False
            return bool(now == lh.table_info(key, f"@{self.plan.base}").metadata_location)

        def merge() -> str:
            moved = [key for key in kept if not unchanged(key)]
            if moved:
                raise InvalidInput(
                    f"{', '.join(moved)} changed on {target!r} while run {self.run_id} was "
                    f"going, so this run's other outputs no longer match it; run it again"
                )
            if not tables:
                catalog.delete_branch(branch)
                return ""
            result = catalog.merge(
                branch, target, message=f"run {self.run_id}: {', '.join(tables)}",
                properties={"run_id": self.run_id}, author=self.author,
            )
            catalog.delete_branch(branch)
            return str(result.commit)

        return await self.scheduler.store_call(merge), tables

__all__ = ["Publishing"]
