"""From a read project to a plan: resolve inputs at a ref, build and order the DAG."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from protocol.errors import PlanInvalid
from protocol.messages import ObjectInput, ScanInput
from scheduler.project import ModelSpec, Project


@dataclass(frozen=True)
class SourceTable:
    """What the planner needs to know of a catalog table at the run's ref."""

    key: str
    metadata_location: str
    snapshot_id: int | None
    schema: pa.Schema


@dataclass
class PlanNode:
    spec: ModelSpec
    key: str
    inputs: list[ScanInput | ObjectInput]
    deps: list[str] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Plan:
    namespace: str
    ref: str
    nodes: dict[str, PlanNode]
    order: list[str]
    # The branch the run publishes to, and the commit every input was read at.
    branch: str | None = None
    base: str = ""

    def describe(self) -> list[dict[str, object]]:
        out = []
        for name in self.order:
            n = self.nodes[name]
            out.append(
                {
                    "name": name,
                    "output": n.key,
                    "materialize": n.spec.materialize,
                    "python": n.spec.python,
                    "pip": n.spec.pip,
                    "depends_on": n.deps,
                    "inputs": [
                        {"param": i.param, "from": getattr(i, "key", None) or getattr(i, "node"),
                         "columns": i.columns, "filter": i.filter}
                        for i in n.inputs
                    ],
                }
            )
        return out


def table_key(name: str, namespace: str) -> str:
    return name if "." in name else f"{namespace}.{name}"


def _find_cycle(deps: dict[str, list[str]]) -> list[str]:
    """One cycle in a graph that has one, as a list of names ending where it started."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in deps[n]:
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(deps):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def build_plan(
    project: Project,
    namespace: str,
    ref: str,
    params: dict[str, str],
    lookup: Callable[[str], SourceTable | None],
) -> Plan:
    """Resolve every input and order the nodes; raise PlanInvalid listing every problem."""
    problems: list[str] = []
    by_name = {m.name: m for m in project.models}
    declared = project.config.get("parameters", {}) if project.config else {}
    nodes: dict[str, PlanNode] = {}
    used_params: set[str] = set()
    for m in project.models:
        node = PlanNode(spec=m, key=table_key(m.name, namespace), inputs=[])
        for inp in m.inputs:
            if inp.name in by_name and "." not in inp.name:
                upstream = by_name[inp.name]
                if inp.columns and upstream.columns:
                    for col in inp.columns:
                        if col not in upstream.columns:
                            problems.append(
                                f"{inp.where}: column {col!r} is not among the declared columns "
                                f"of model {inp.name!r}: {', '.join(upstream.columns)}"
                            )
                if inp.name not in node.deps:
                    node.deps.append(inp.name)
                node.inputs.append(
                    ObjectInput(
                        param=inp.param, node=inp.name, object_id=inp.name,
                        columns=inp.columns, filter=inp.filter,
                    )
                )
                continue
            key = table_key(inp.name, namespace)
            table = lookup(key)
            if table is None:
                problems.append(
                    f"{inp.where}: model {m.name!r} reads {inp.name!r}, which is neither a model "
                    f"of this project nor a table at ref {ref!r} (looked for {key!r})"
                )
                continue
            if inp.columns:
                names = table.schema.names
                for col in inp.columns:
                    if col not in names:
                        problems.append(
                            f"{inp.where}: table {key!r} has no column {col!r} "
                            f"(it has: {', '.join(names)})"
                        )
            node.inputs.append(
                ScanInput(
                    param=inp.param, key=key, metadata_location=table.metadata_location,
                    snapshot_id=table.snapshot_id, columns=inp.columns, filter=inp.filter,
                )
            )
        for p in m.params:
            used_params.add(p.name)
            if p.name in params:
                node.params[p.param] = params[p.name]
            elif isinstance(declared.get(p.name), dict) and "default" in declared[p.name]:
                node.params[p.param] = str(declared[p.name]["default"])
            else:
                problems.append(
                    f"{p.where}: parameter {p.name!r} has no value: pass --param {p.name}=VALUE"
                )
        if node.key in {i.key for i in node.inputs if isinstance(i, ScanInput)} and m.materialize:
            problems.append(
                f"{m.where}: model {m.name!r} writes table {node.key!r}, which it also reads"
            )
        nodes[m.name] = node
    for name in sorted(set(params) - used_params - set(declared)):
        problems.append(f"--param {name}: the project has no parameter {name!r}")

    order: list[str] = []
    remaining = {n: list(node.deps) for n, node in nodes.items()}
    ready = sorted(n for n, d in remaining.items() if not d)
    while ready:
        n = ready.pop(0)
        order.append(n)
        for other, deps in remaining.items():
            if n in deps:
                deps.remove(n)
                if not deps and other not in order and other not in ready:
                    ready.append(other)
        ready.sort()
    if len(order) < len(nodes):
        cycle = _find_cycle({n: node.deps for n, node in nodes.items()})
        where = nodes[cycle[0]].spec.where if cycle else "project"
        problems.append(f"{where}: models depend on each other in a cycle: {' -> '.join(cycle)}")
    if problems:
        raise PlanInvalid(problems)
    return Plan(namespace=namespace, ref=ref, nodes=nodes, order=order)
