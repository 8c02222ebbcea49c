"""From a read project to a plan: resolve inputs at a ref, build and order the DAG."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
import pyarrow as pa

from faas.protocol.errors import FaasError, PlanInvalid
from faas.protocol.messages import ObjectInput, ParamValue, ScanInput
from faas.protocol.replies import NodeKind, PlannedInput, PlannedNode
from faas.scheduler.contracts import check_declared_filter, projection_problems
from faas.scheduler.filters import bind_filter, filter_parameters
from faas.scheduler.reader import ModelSpec, Project


@dataclass(frozen=True)
class SourceTable:
    """What the planner needs to know of a catalog table at the run's ref."""

    key: str
    metadata_location: str
    snapshot_id: int | None
    schema: pa.Schema
    # Bytes of data files at that snapshot (compressed), and rows, for memory estimates.
    size_bytes: int = 0
    row_count: int = 0


@dataclass
class PlanNode:
    spec: ModelSpec
    key: str
    inputs: list[ScanInput | ObjectInput]
    deps: list[str] = field(default_factory=list)
    params: dict[str, ParamValue] = field(default_factory=dict)
    # Parameters of type secret: param -> the secret's name, and its value's digest (for
    # the cache key). Their values are the plan's secret_values, never in params.
    secrets: dict[str, str] = field(default_factory=dict)
    secret_digests: dict[str, str] = field(default_factory=dict)
    # The model's overwrite_filter, its parameters bound.
    overwrite_filter: str = ""
    # Compressed bytes this node scans from tables, and about how many bytes they take
    # decoded into Arrow (for estimating its memory).
    scan_bytes: int = 0
    scan_decoded: int = 0
    # Hash of everything the output depends on (see cache_key), and the name of the
    # output object on the workers: the key itself, unless the run bypasses the cache.
    cache_key: str = ""
    object_id: str = ""

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
    # Output tables whose snapshot at the base commit was made from a node's cache key
    # (node name -> key): publishing that output again would change nothing.
    published: dict[str, str] = field(default_factory=dict)
    # ... and their columns there (a strict run checks them against the model's declaration).
    published_columns: dict[str, list[str]] = field(default_factory=dict)
    # ... and those tables as they are at the base commit, for readers to scan.
    published_tables: dict[str, SourceTable] = field(default_factory=dict)
    # The secrets the run's functions read, by name: handed to the workers that run them,
    # nowhere else (not in describe(), job records or cache keys).
    secret_values: dict[str, str] = field(default_factory=dict, repr=False)

    def depth(self) -> dict[str, int]:
        """Each node's level in the DAG: 0 reads only tables, else 1 + its deepest upstream."""
        depth: dict[str, int] = {}
        for name in self.order:
            deps = self.nodes[name].deps
            depth[name] = 1 + max(depth[d] for d in deps) if deps else 0
        return depth

    def describe(self) -> list[PlannedNode]:
        """The plan as a dry run shows it, nodes in ``order``."""
        depth = self.depth()
        out = []
        for name in self.order:
            n = self.nodes[name]
            out.append(PlannedNode(
                name=name,
                kind=cast(NodeKind, n.spec.kind),
                level=depth[name],
                where=n.spec.where,
                output=None if n.spec.is_expectation else n.key,
                materialize=n.spec.materialize,
                python=n.spec.python,
                pip=n.spec.pip,
                memory=n.spec.memory,
                cpus=n.spec.cpus,
                internet_access=n.spec.internet_access,
                params={**n.params, **{p: f"<secret {s}>" for p, s in n.secrets.items()}},
                depends_on=n.deps,
                cache_key=n.cache_key,
                inputs=[
                    PlannedInput(
                        param=i.param,
                        from_=i.key if isinstance(i, ScanInput) else i.node,
                        source="table" if isinstance(i, ScanInput) else "model",
                        snapshot_id=i.snapshot_id if isinstance(i, ScanInput) else None,
                        columns=i.columns,
                        filter=i.filter,
                    )
                    for i in n.inputs
                ],
            ))
        return out


PARAM_TYPES: dict[str, type] = {
    "str": str, "string": str, "int": int, "integer": int, "float": float, "bool": bool,
    "boolean": bool, "secret": str,
}
# A secret's value and its digest (for cache keys), or None when it is not set.
SecretLookup = Callable[[str], "tuple[str, str] | None"]


def _typed(name: str, raw: Any, decl: dict[str, Any]) -> ParamValue:
    """Convert a parameter value (from --param, or a TOML default) to its declared type."""
    kind = PARAM_TYPES[str(decl.get("type", "str"))]
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"parameter {name!r} is a bool: use true or false, not {raw!r}")
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ValueError(f"parameter {name!r} is {decl.get('type')}: {raw!r} is not one") from None
    return value  # type: ignore[no-any-return]


def resolve_params(
    declared: dict[str, Any], given: dict[str, str], used: set[str], problems: list[str],
    secrets: SecretLookup | None = None, digests: dict[str, str] | None = None,
) -> dict[str, ParamValue]:
    """Every parameter's value: --param, else the TOML default, typed as declared; a
    secret's from ``secrets`` (its digest into ``digests``)."""
    values: dict[str, ParamValue] = {}
    for name, decl in declared.items():
        if not isinstance(decl, dict):
            problems.append(f"faas_project.toml: [parameters.{name}] must be a table")
            continue
        if str(decl.get("type", "str")) not in PARAM_TYPES:
            problems.append(
                f"faas_project.toml: parameter {name!r} has type {decl.get('type')!r}; use one of "
                f"str, int, float, bool, secret"
            )
            continue
        if decl.get("type") == "secret":
            _secret(name, decl, given, used, problems, secrets, values, digests)
            continue
        raw = given.get(name, decl.get("default"))
        if raw is None:
            if decl.get("required", False) or name in used:
                hint = f": {decl['description']}" if decl.get("description") else ""
                problems.append(
                    f"parameter {name!r} is required: pass --param {name}=VALUE{hint}"
                )
            continue
        try:
            values[name] = _typed(name, raw, decl)
        except ValueError as exc:
            problems.append(f"--param {name}: {exc}" if name in given else f"faas_project.toml: {exc}")
    for name in used - set(declared):
        if name in given:
            values[name] = given[name]  # undeclared parameters are strings
    for name in sorted(set(given) - used - set(declared)):
        problems.append(f"--param {name}: the project has no parameter {name!r}")
    return values


def _secret(
    name: str, decl: dict[str, Any], given: dict[str, str], used: set[str], problems: list[str],
    secrets: SecretLookup | None, values: dict[str, ParamValue], digests: dict[str, str] | None,
) -> None:
    """A secret parameter's value, from the scheduler's secrets only."""
    how = f"store it with 'faas secret set {name}' (the value is read from standard input)"
    if name in given:
        problems.append(f"--param {name}: {name!r} is a secret parameter: {how}; a value on "
                        "the command line stays in shell histories and process lists")
        return
    try:
        found = secrets(name) if secrets is not None else None
    except FaasError as exc:
        problems.append(f"parameter {name!r}: {exc}")
        return
    if found is None:
        if decl.get("required", False) or name in used:
            problems.append(f"secret {name!r} is not set: {how}")
        return
    values[name] = found[0]
    if digests is not None:
        digests[name] = found[1]


def decoded_width(t: pa.DataType) -> int:
    """About how many bytes one value of type ``t`` takes in Arrow (strings: a guess)."""
    try:
        return max(int(t.bit_width) // 8, 1)
    except ValueError:  # variable width: strings, binary, nested
        return 32


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


def model_input_problems(
    plan: Plan, lookup: Callable[[str], SourceTable | None],
    published: dict[str, pa.Schema] | None = None,
) -> list[str]:
    """Columns that models ask of other models and will not find, said before anything
    runs, wherever the upstream's columns are known without running it: a SQL model's
    SELECT list (bound over its inputs' schemas), or an output published from the same
    cache key. (Declared columns, @faas.model(columns=...), are checked by build_plan.)"""
    from faas.store.query import result_columns

    published = published or {}
    known: dict[str, pa.Schema | None] = {}

    def schema_of(name: str) -> pa.Schema | None:
        if name in known:
            return known[name]
        known[name] = None
        node = plan.nodes[name]
        if name in published:
            known[name] = published[name]
        elif node.spec.kind == "sql":
            schemas: dict[str, pa.Schema] = {}
            for i in node.inputs:
                if isinstance(i, ScanInput):
                    table = lookup(i.key)
                    source = table.schema if table is not None else None
                else:
                    source = schema_of(i.node)
                if source is None:
                    return None
                schemas[i.param] = source
            names = result_columns(node.spec.sql, schemas, node.params)
            if names is not None:
                # Only names matter to readers; types stay unknown (null).
                known[name] = pa.schema([pa.field(n, pa.null()) for n in names])
        return known[name]

    problems = []
    for node in plan.nodes.values():
        for ref in node.spec.inputs:
            upstream = plan.nodes.get(ref.name)
            if upstream is None or not ref.columns or upstream.spec.columns:
                continue
            schema = schema_of(ref.name)
            if schema is None:
                continue
            for column in ref.columns:
                if column not in schema.names:
                    problems.append(
                        f"{ref.where}: {upstream.spec.label} {ref.name!r} has no column "
                        f"{column!r} (it has: {', '.join(schema.names)})"
                    )
    return problems


def build_plan(
    project: Project,
    namespace: str,
    ref: str,
    params: dict[str, str],
    lookup: Callable[[str], SourceTable | None],
    python_versions: set[str] | None = None,
    salt: str = "",
    secrets: SecretLookup | None = None,
) -> Plan:
    """Resolve every input and order the nodes; raise PlanInvalid listing every problem.

    ``python_versions``: what the registered workers offer; None skips that check.
    ``salt``: makes output object ids unique to one run (see assign_cache_keys).
    """
    from faas.store.query import check_predicate
    from faas.store.scan import check_filter

    problems: list[str] = list(project.problems)
    by_name = {m.name: m for m in project.models if not m.is_expectation}
    declared = project.config.get("parameters", {}) if project.config else {}
    used = {p.name for m in project.models for p in m.params}
    # Filters may name parameters too ($name, as Bauplan's do).
    used |= {name for m in project.models for text in
             [*(i.filter for i in m.inputs), m.overwrite_filter] if text
             for name in filter_parameters(text)}
    digests: dict[str, str] = {}
    values = resolve_params(declared, params, used, problems, secrets, digests)
    nodes: dict[str, PlanNode] = {}

    def bound(text: str | None, where: str) -> str | None:
        if not text:
            return text
        try:
            return bind_filter(text, values, set(digests))
        except FaasError as exc:
            problems.append(f"{where}: {exc}")
            return None

    for m in project.models:
        if python_versions is not None and m.python and m.python not in python_versions:
            offered = ", ".join(sorted(python_versions)) or "none (no worker is registered)"
            problems.append(
                f"{m.where}: {m.label} {m.name!r} asks for Python {m.python}, which no worker "
                f"offers (workers have: {offered})"
            )
        node = PlanNode(spec=m, key=table_key(m.name, namespace), inputs=[],
                        overwrite_filter=bound(m.overwrite_filter, m.where) or "")
        for inp in m.inputs:
            inp = dataclasses.replace(inp, filter=bound(inp.filter, inp.where))
            if inp.name in by_name and "." not in inp.name:
                upstream = by_name[inp.name]
                if inp.filter:
                    try:
                        check_predicate(inp.filter)
                        if upstream.contract is not None:
                            check_declared_filter(inp.filter, upstream.contract, inp.name)
                    except FaasError as exc:
                        problems.append(f"{inp.where}: {exc}")
                if inp.projection is not None and upstream.contract is not None:
                    problems += projection_problems(
                        inp.projection, inp.where, f"model {inp.name!r}", declared=upstream.contract
                    )
                elif inp.columns and upstream.columns:
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
                        param=inp.param, node=inp.name, object_id="",
                        columns=inp.columns, filter=inp.filter, stream=inp.stream,
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
            if inp.projection is not None:
                problems += projection_problems(
                    inp.projection, inp.where, f"table {key!r}", table=table.schema
                )
            elif inp.columns:
                names = table.schema.names
                for col in inp.columns:
                    if col not in names:
                        problems.append(
                            f"{inp.where}: table {key!r} has no column {col!r} "
                            f"(it has: {', '.join(names)})"
                        )
            if inp.filter:
                try:
                    check_filter(inp.filter, table.schema, repr(key))
                except FaasError as exc:
                    problems.append(f"{inp.where}: {exc}")
            if inp.columns and table.schema.names:
                node.scan_bytes += table.size_bytes * len(inp.columns) // len(table.schema.names)
            else:
                node.scan_bytes += table.size_bytes
            read = [f for f in table.schema if not inp.columns or f.name in inp.columns]
            node.scan_decoded += table.row_count * sum(decoded_width(f.type) for f in read)
            node.inputs.append(
                ScanInput(
                    param=inp.param, key=key, metadata_location=table.metadata_location,
                    snapshot_id=table.snapshot_id, columns=inp.columns, filter=inp.filter,
                    stream=inp.stream,
                )
            )
        for p in m.params:
            if p.name in digests:  # a secret: its value stays out of the node
                node.secrets[p.param] = p.name
                node.secret_digests[p.param] = digests[p.name]
            elif p.name in values:
                node.params[p.param] = values[p.name]
            elif p.name not in declared:
                problems.append(
                    f"{p.where}: parameter {p.name!r} has no value: pass --param {p.name}=VALUE"
                )
        if node.key in {i.key for i in node.inputs if isinstance(i, ScanInput)} and m.materialize:
            problems.append(
                f"{m.where}: model {m.name!r} writes table {node.key!r}, which it also reads"
            )
        nodes[m.name] = node

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
    plan = Plan(namespace=namespace, ref=ref, nodes=nodes, order=order,
                secret_values={name: str(values[name]) for name in digests})
    assign_cache_keys(plan, salt)
    return plan


CACHE_KEY_VERSION = 1
# The snapshot summary property a run sets on the tables it publishes: the cache key
# of the node that made the rows.
CACHE_KEY_PROPERTY = "faas.cache-key"
# ... and whether the table's rows are the output's exactly ("true"): its Arrow types
# needed no conversion for Iceberg, so a reader may scan the table for the output.
EXACT_PROPERTY = "faas.exact"


def cache_key(node: PlanNode, upstream: dict[str, str]) -> str:
    """What a node's output depends on, hashed: its code, environment, parameters, and
    each input's identity (a table's snapshot, or the upstream node's key) with the
    projection and filter applied to it. Same key, same output."""
    spec = node.spec
    inputs: list[Any] = []
    for i in node.inputs:
        if isinstance(i, ScanInput):
            # A table without a snapshot has no rows; its metadata file names it.
            source = i.snapshot_id if i.snapshot_id is not None else i.metadata_location
            inputs.append(["table", i.param, i.key, source, i.columns, i.filter])
        else:
            inputs.append(["model", i.param, upstream[i.node], i.columns, i.filter])
    identity = [
        CACHE_KEY_VERSION, spec.kind, spec.code_hash, spec.module, spec.function, spec.python,
        sorted(spec.pip.items()), sorted(node.params.items()), inputs,
        # A secret by its digest (equal values, equal keys), never its value.
        *([sorted(node.secret_digests.items())] if node.secret_digests else []),
        # Never the same twice: a node that must always run, and so what reads it.
        None if spec.cache else secrets.token_hex(16),
    ]
    return hashlib.sha256(msgspec.json.encode(identity)).hexdigest()[:32]


def assign_cache_keys(plan: Plan, salt: str = "") -> None:
    """Give every node its cache key and output object id, in DAG order.

    With a ``salt`` (a run that bypasses the cache) object ids are unique to the
    run, so nothing it makes is ever taken for a cached result.
    """
    keys: dict[str, str] = {}
    for name in plan.order:
        node = plan.nodes[name]
        node.cache_key = keys[name] = cache_key(node, keys)
        node.object_id = f"{node.cache_key}-{salt}" if salt else node.cache_key
        node.inputs = [
            msgspec.structs.replace(i, object_id=plan.nodes[i.node].object_id)
            if isinstance(i, ObjectInput) else i
            for i in node.inputs
        ]
