"""Read a submitted project statically: models, their inputs and environments.

User code is parsed with :mod:`ast` and never imported or executed here.
Every problem found is collected, so the author sees all of them at once.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from faas.protocol.errors import FaasError, PlanInvalid
from faas.protocol.messages import Contract, ContractColumn, node_label
from faas.protocol.sizes import parse_size
from faas.scheduler.contracts import SDK_MODULES, annotated_call, read_schemas, returned_schema

MATERIALIZE_MODES = (None, "replace", "append", "overwrite_partitions")


@dataclass(frozen=True)
class InputRef:
    param: str
    name: str
    columns: list[str] | None
    filter: str | None
    where: str  # file:line
    stream: bool = False
    # The columns it reads, declared (projection_schema=): checked against the source.
    projection: Contract | None = None


@dataclass(frozen=True)
class ParamRef:
    param: str
    name: str
    where: str


@dataclass
class ModelSpec:
    name: str
    function: str
    module: str
    where: str
    materialize: str | None = None
    # The output table's partitions (store.partitions, written canonically), and for
    # materialize="overwrite_partitions" the rows of the table it replaces.
    partitioned_by: str = ""
    overwrite_filter: str = ""
    columns: list[str] | None = None
    # What it declares it returns (a TableSchema, or its columns list), checked when it does.
    contract: Contract | None = None
    memory: str | None = None
    timeout: float | None = None
    # Cores reserved on a worker (and its engines' thread budget); None: none reserved.
    cpus: int | None = None
    # The function's sandbox has a network (@faas.model(internet_access=True)).
    internet_access: bool = False
    python: str | None = None
    pip: dict[str, str] = field(default_factory=dict)
    inputs: list[InputRef] = field(default_factory=list)
    params: list[ParamRef] = field(default_factory=list)
    # "python" (a function), "sql" (a .sql file) or "expectation" (a check returning a bool).
    kind: str = "python"
    sql: str = ""
    # What the code of this node is, for cache keys: its own definition, the models it
    # calls, every piece of the project's Python that is not a model (imports, helpers,
    # constants), and faas_project.toml.
    code_hash: str = ""
    # False: run every time (its output changes without its code or inputs changing).
    cache: bool = True

    @property
    def is_expectation(self) -> bool:
        return self.kind == "expectation"

    @property
    def label(self) -> str:
        """How messages name this kind of node."""
        return node_label(self.kind)


@dataclass
class Project:
    name: str
    models: list[ModelSpec]
    config: dict[str, Any]
    # Problems found while reading, when read with partial=True (planning adds its own).
    problems: list[str] = field(default_factory=list)


def _called_code(
    model: ModelSpec, models: list[ModelSpec], code: dict[int, tuple[str, set[str]]]
) -> list[str]:
    """A model's code and that of every model function it calls, directly or through
    others, in any module (by name: a same-named function elsewhere is included too)."""
    by_name: dict[str, list[ModelSpec]] = {}
    for m in models:
        if id(m) in code:
            by_name.setdefault(m.function, []).append(m)
    seen = {id(model)}
    todo = [model]
    while todo:
        m = todo.pop()
        for name in sorted(code[id(m)][1]):
            for other in by_name.get(name, []):
                if id(other) not in seen:
                    seen.add(id(other))
                    todo.append(other)
    return sorted(code[i][0] for i in seen)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _decorator_name(node: ast.expr) -> str | None:
    """'model' for @faas.model(...), @faas.model, @bauplan.model(...) or @model(...)."""
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
        if target.value.id in SDK_MODULES:
            return target.attr
        return None
    if isinstance(target, ast.Name):
        return target.id
    return None


def _sdk(node: ast.expr) -> str:
    """Which SDK a decorator comes from: 'bauplan' for @bauplan.model, else 'faas'."""
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
        return target.value.id
    return "faas"


# @faas.model's arguments, in order; and @bauplan.model's, which name some differently.
FAAS_MODEL_ARGS = ("name", "materialize", "columns", "memory", "timeout", "cache", "cpus",
                   "internet_access", "partitioned_by", "overwrite_filter")
BAUPLAN_MODEL_ARGS = ("name", "columns", "partitioned_by", "materialization_strategy",
                      "cache_strategy", "internet_access", "overwrite_filter")


def check_materialize(
    mode: str | None, partitioned_by: Any, overwrite_filter: Any, columns: list[str] | None,
    where: str, problems: list[str],
) -> tuple[str, str]:
    """A model's partitions and overwrite filter, checked against its mode and declared
    columns (problems said at ``where``); each as text, "" when absent or wrong."""
    from faas.protocol.errors import InvalidInput
    from faas.scheduler.filters import placeholder
    from faas.store.partitions import describe_partitioning, parse_partitioning
    from faas.store.scan import filter_columns

    if isinstance(partitioned_by, (list, tuple)) and all(isinstance(p, str) for p in partitioned_by):
        partitioned_by = ", ".join(partitioned_by)
    if partitioned_by is not None and not isinstance(partitioned_by, str):
        problems.append(f"{where}: partitioned_by must be a string or a list of strings, "
                        f"not {partitioned_by!r}")
        partitioned_by = None
    if overwrite_filter is not None and not isinstance(overwrite_filter, str):
        problems.append(f"{where}: overwrite_filter must be a string, not {overwrite_filter!r}")
        overwrite_filter = None
    try:
        fields = parse_partitioning(partitioned_by or "", f"{where}: partitioned_by")
    except InvalidInput as exc:
        problems.append(str(exc))
        fields = []
    for part in fields:
        if columns is not None and part.column not in columns:
            problems.append(f"{where}: partitioned_by names {part.column!r}, which is not "
                            f"among the declared columns: {', '.join(columns)}")
    if mode == "overwrite_partitions" and not partitioned_by:
        problems.append(f"{where}: materialize='overwrite_partitions' needs partitioned_by "
                        "(the partitions it overwrites)")
    if overwrite_filter:
        if mode != "overwrite_partitions":
            problems.append(f"{where}: overwrite_filter is for materialize="
                            f"'overwrite_partitions', not {mode!r}")
        try:
            named = filter_columns(placeholder(overwrite_filter))
        except InvalidInput as exc:
            problems.append(f"{where}: overwrite_filter: {exc}")
            named = []
        partition_columns = {f.column for f in fields}
        if fields and (outside := [c for c in named if c not in partition_columns]):
            problems.append(
                f"{where}: overwrite_filter names {', '.join(map(repr, outside))}, which "
                f"{'is' if len(outside) == 1 else 'are'} not partitioned by "
                f"(partitions: {describe_partitioning(fields)})"
            )
    return describe_partitioning(fields), overwrite_filter or ""


class _Reader:
    def __init__(self, path: str, tree: ast.Module, schemas: dict[str, Contract]) -> None:
        self.path = path
        self.tree = tree
        self.schemas = schemas  # the project's TableSchema classes, by name
        self.problems: list[str] = []
        self.models: list[ModelSpec] = []

    def where(self, node: ast.AST) -> str:
        return f"{self.path}:{getattr(node, 'lineno', 0)}"

    def literal(self, node: ast.expr, what: str) -> Any:
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError):
            self.problems.append(
                f"{self.where(node)}: {what} must be a literal (a string, number, list or "
                f"dict written out), not {ast.unparse(node)!r}"
            )
            return None

    def call_args(
        self, call: ast.expr, names: tuple[str, ...], what: str, keyword_only: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        if not isinstance(call, ast.Call):
            return {}
        args: dict[str, Any] = {}
        every = names + keyword_only
        if len(call.args) > len(names):
            self.problems.append(f"{self.where(call)}: too many arguments to {what}")
        for name, arg in zip(names, call.args, strict=False):
            args[name] = self.literal(arg, f"argument {name!r} of {what}")
        for kw in call.keywords:
            if kw.arg is None or kw.arg not in every:
                self.problems.append(
                    f"{self.where(kw.value)}: {what} has no argument {kw.arg!r} "
                    f"(it takes {', '.join(every)})"
                )
                continue
            args[kw.arg] = self.literal(kw.value, f"argument {kw.arg!r} of {what}")
        return args

    def typed(self, args: dict[str, Any], node: ast.expr, what: str, **types: Any) -> None:
        """Drop (and report) arguments whose literal has the wrong type."""
        for name, kind in types.items():
            value = args.get(name)
            if value is None:
                continue
            ok = isinstance(value, kind)
            if ok and kind is list:
                ok = all(isinstance(v, str) for v in value)
            if ok and kind is dict:
                ok = all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
            if not ok:
                want = {str: "a string", list: "a list of strings", dict: "a dict of strings",
                        bool: "True or False"}[kind]
                self.problems.append(
                    f"{self.where(node)}: argument {name!r} of {what} must be {want}, "
                    f"not {value!r}"
                )
                del args[name]

    def read(self, module: str) -> None:
        # Layout and comments do not change code: it is hashed as its syntax tree.
        self.shared: list[str] = []
        # Each model's own code and the names it uses (for the models it calls).
        self.code: dict[int, tuple[str, set[str]]] = {}
        for node in self.tree.body:
            before = len(self.models)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.read_function(node, module)
            if len(self.models) > before:
                names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                names |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
                self.code[id(self.models[-1])] = (ast.dump(node), names)
            else:
                self.shared.append(ast.dump(node))

    def read_function(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, module: str) -> None:
        decorators = {_decorator_name(d): d for d in fn.decorator_list}
        if "expectation" in decorators:
            if "model" in decorators:
                self.problems.append(
                    f"{self.where(fn)}: {fn.name!r} is both a model and an expectation; pick one"
                )
                return
            self.read_expectation(fn, decorators, module)
            return
        if "model" not in decorators:
            return
        if isinstance(fn, ast.AsyncFunctionDef):
            self.problems.append(f"{self.where(fn)}: model {fn.name!r} must not be async")
        for kind in ("model", "python"):
            if kind in decorators and not isinstance(decorators[kind], ast.Call):
                self.problems.append(
                    f"{self.where(decorators[kind])}: write @faas.{kind}(...) with parentheses"
                )
        bauplan = _sdk(decorators["model"]) == "bauplan"
        margs = self.call_args(
            decorators["model"], BAUPLAN_MODEL_ARGS if bauplan else FAAS_MODEL_ARGS,
            f"{'bauplan' if bauplan else 'faas'}.model",
        )
        strategy = margs.pop("materialization_strategy", None)
        if bauplan:
            margs["materialize"] = strategy.lower() if isinstance(strategy, str) else strategy
            if margs["materialize"] == "none":
                margs["materialize"] = None
            if margs.pop("cache_strategy", None) == "NONE":
                margs["cache"] = False
        self.typed(
            margs, decorators["model"], "faas.model", name=str, columns=list, memory=str, cache=bool,
            internet_access=bool,
        )
        timeout = margs.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            self.problems.append(
                f"{self.where(decorators['model'])}: timeout must be a number of seconds, "
                f"not {timeout!r}"
            )
            timeout = None
        cpus = margs.get("cpus")
        if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
            self.problems.append(
                f"{self.where(decorators['model'])}: cpus must be a whole number of cores (1 or "
                f"more), not {cpus!r}"
            )
            cpus = None
        if margs.get("memory") is not None:
            try:
                parse_size(margs["memory"])
            except ValueError as exc:
                self.problems.append(f"{self.where(decorators['model'])}: memory: {exc}")
                margs["memory"] = None
        name = margs.get("name") or fn.name
        if "." in name:
            self.problems.append(
                f"{self.where(decorators['model'])}: model name {name!r} must not contain '.': "
                f"outputs go to the run's namespace (faas submit --namespace)"
            )
        materialize = margs.get("materialize")
        if materialize not in MATERIALIZE_MODES:
            self.problems.append(
                f"{self.where(decorators['model'])}: "
                + (f"materialization_strategy must be 'NONE', 'REPLACE', 'APPEND' or "
                   f"'OVERWRITE_PARTITIONS', not {strategy!r}"
                   if bauplan else
                   f"materialize must be 'replace', 'append', 'overwrite_partitions' or None, "
                   f"not {materialize!r}")
            )
            materialize = None
        contract = self.read_contract(fn, margs)
        partitioned_by, overwrite_filter = check_materialize(
            materialize, margs.get("partitioned_by"), margs.get("overwrite_filter"),
            [c.name for c in contract.columns] if contract else None,
            self.where(decorators["model"]), self.problems,
        )
        spec = ModelSpec(
            name=name,
            function=fn.name,
            module=module,
            where=self.where(fn),
            materialize=materialize,
            partitioned_by=partitioned_by,
            overwrite_filter=overwrite_filter,
            columns=[c.name for c in contract.columns] if contract else None,
            contract=contract,
            memory=margs.get("memory"),
            timeout=float(timeout) if timeout is not None else None,
            cpus=cpus,
            cache=margs.get("cache", True) is not False,
            internet_access=margs.get("internet_access", False) is True,
        )
        self.read_environment(decorators, spec)
        self.read_inputs(fn, spec)
        self.models.append(spec)

    def read_contract(self, fn: ast.FunctionDef | ast.AsyncFunctionDef,
                      margs: dict[str, Any]) -> Contract | None:
        """What a model declares it returns: ``-> Annotated[pyarrow.Table, Schema]``, or
        ``columns=[...]`` (Bauplan's ``["*"]``: anything)."""
        named = returned_schema(fn.returns)
        columns = margs.get("columns")
        if named is not None:
            if named not in self.schemas:
                self.problems.append(
                    f"{self.where(fn.returns or fn)}: model {fn.name!r} returns unknown schema "
                    f"{named!r} (a class deriving from faas.TableSchema, in the project)"
                )
                return None
            if columns is not None:
                self.problems.append(
                    f"{self.where(fn)}: model {fn.name!r} declares its columns twice "
                    f"(columns=[...] and the schema {named}): keep one"
                )
            return self.schemas[named]
        if columns is None or columns == ["*"]:
            return None
        return Contract(name="columns", columns=[ContractColumn(name=c) for c in columns])

    def read_environment(self, decorators: dict[str | None, ast.expr], spec: ModelSpec) -> None:
        """``@faas.python(version, pip)``; Bauplan's ``@bauplan.resources(cpus, memory,
        timeout)``."""
        if "python" in decorators:
            pargs = self.call_args(decorators["python"], ("version", "pip"), "faas.python")
            self.typed(pargs, decorators["python"], "faas.python", version=str, pip=dict)
            call = decorators["python"]
            given = isinstance(call, ast.Call) and (
                call.args or any(k.arg == "version" for k in call.keywords)
            )
            if isinstance(call, ast.Call) and not given:
                self.problems.append(
                    f"{self.where(decorators['python'])}: faas.python needs a version like \"3.11\""
                )
            spec.python = pargs.get("version")
            spec.pip = pargs.get("pip") or {}
            if any(re.sub(r"[-_.]+", "-", p.lower()) == "bauplan" for p in spec.pip):
                self.problems.append(
                    f"{self.where(call)}: {spec.label} {spec.name!r} installs a package named "
                    "'bauplan', which would hide the bauplan module faas provides to Bauplan "
                    "projects: remove it from pip"
                )
        if "resources" in decorators:
            call = decorators["resources"]
            rargs = self.call_args(call, ("cpus", "memory", "memory_swap", "timeout"),
                                   "bauplan.resources")
            cpus, memory, timeout = rargs.get("cpus"), rargs.get("memory"), rargs.get("timeout")
            if isinstance(cpus, (int, float)) and not isinstance(cpus, bool) and cpus > 0:
                spec.cpus = max(1, int(-(-cpus // 1)))
            elif cpus is not None:
                self.problems.append(f"{self.where(call)}: cpus must be a number, not {cpus!r}")
            if isinstance(memory, int) and not isinstance(memory, bool) and memory > 0:
                spec.memory = f"{memory}B"
            elif memory is not None:
                try:
                    parse_size(str(memory))
                    spec.memory = str(memory)
                except ValueError as exc:
                    self.problems.append(f"{self.where(call)}: memory: {exc}")
            if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
                spec.timeout = float(timeout)
            elif timeout is not None:
                self.problems.append(f"{self.where(call)}: timeout must be a number of seconds, "
                                     f"not {timeout!r}")

    def read_expectation(
        self, fn: ast.FunctionDef | ast.AsyncFunctionDef, decorators: dict[str | None, ast.expr],
        module: str,
    ) -> None:
        call = decorators["expectation"]
        if not isinstance(call, ast.Call):
            self.problems.append(f"{self.where(call)}: write @faas.expectation() with parentheses")
        else:
            self.call_args(call, (), "faas.expectation")
        spec = ModelSpec(
            name=fn.name, function=fn.name, module=module, where=self.where(fn), kind="expectation"
        )
        self.read_environment(decorators, spec)
        self.read_inputs(fn, spec)
        if not spec.inputs:
            self.problems.append(f"{self.where(fn)}: expectation {fn.name!r} reads no inputs")
        self.models.append(spec)

    def read_inputs(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, spec: ModelSpec) -> None:
        """Each parameter: a default of ``faas.Model(...)`` or ``faas.Parameter(...)``, or
        an annotation ``Annotated[pyarrow.Table, faas.Model(...)]`` (Bauplan's typed SDK)."""
        a = fn.args
        positional = a.posonlyargs + a.args
        defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults))
        defaults += list(a.defaults)
        pairs = list(zip(positional, defaults, strict=True)) + list(
            zip(a.kwonlyargs, a.kw_defaults, strict=True)
        )
        for arg, default in pairs:
            call = default if isinstance(default, ast.Call) else annotated_call(arg.annotation)
            kind = _decorator_name(call) if call is not None else None
            if call is not None and kind == "Model":
                self.read_model_input(arg.arg, call, spec)
            elif call is not None and kind == "Parameter":
                named = [k for k in call.keywords if k.arg == "param_name"]
                call = ast.Call(func=call.func, args=call.args + [k.value for k in named],
                                keywords=[k for k in call.keywords if k.arg != "param_name"],
                                lineno=call.lineno)
                pargs = self.call_args(call, ("name",), "faas.Parameter")
                spec.params.append(
                    ParamRef(param=arg.arg, name=pargs.get("name") or arg.arg, where=self.where(call))
                )
            else:
                self.problems.append(
                    f"{self.where(arg)}: parameter {arg.arg!r} of {spec.label} {spec.name!r} needs a "
                    f"default of faas.Model(...) or faas.Parameter(...)"
                )

    def read_model_input(self, param: str, call: ast.Call, spec: ModelSpec) -> None:
        """``faas.Model(name, columns, filter, stream=, projection_schema=)`` (Bauplan's
        ``ref=None`` and connectors: only where faas can honour them)."""
        special = {k.arg: k.value for k in call.keywords
                   if k.arg in ("projection_schema", "ref", "connector", "connector_config_key",
                                "connector_config_uri")}
        plain = ast.Call(func=call.func, args=call.args,
                         keywords=[k for k in call.keywords if k.arg not in special],
                         lineno=call.lineno)
        margs = self.call_args(plain, ("name", "columns", "filter"), "faas.Model",
                               keyword_only=("stream",))
        self.typed(margs, call, "faas.Model", columns=list, filter=str, stream=bool)
        for key, value in special.items():
            if key != "projection_schema" and not (isinstance(value, ast.Constant)
                                                   and value.value is None):
                self.problems.append(
                    f"{self.where(value)}: {key}= is not supported by faas: inputs are read at "
                    "the run's ref from its own catalog"
                )
        if not isinstance(margs.get("name"), str) or not margs.get("name"):
            self.problems.append(f"{self.where(call)}: faas.Model needs a table or model name")
            return
        projection = None
        columns = margs.get("columns")
        if "projection_schema" in special:
            node = special["projection_schema"]
            named = node.id if isinstance(node, ast.Name) else (
                node.attr if isinstance(node, ast.Attribute) else ast.unparse(node))
            if named not in self.schemas:
                self.problems.append(f"{self.where(node)}: projection_schema {named!r} is not a "
                                     "schema of the project (a class deriving from "
                                     "faas.TableSchema)")
            elif columns is not None:
                self.problems.append(f"{self.where(call)}: input {param!r} names its columns "
                                     "twice (columns=[...] and projection_schema=): keep one")
            else:
                projection = self.schemas[named]
                columns = [c.name for c in projection.columns]
        spec.inputs.append(
            InputRef(
                param=param, name=margs["name"], columns=columns, filter=margs.get("filter"),
                where=self.where(call), stream=bool(margs.get("stream", False)),
                projection=projection,
            )
        )


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER = re.compile(r"^\s*--\s*(faas|bauplan):\s*(.*)$")
SQL_OPTIONS = ("materialize", "memory", "cpus", "python", "partitioned_by", "overwrite_filter")
# Bauplan's header options (``-- bauplan: materialization_strategy=REPLACE``), as faas's.
BAUPLAN_SQL_OPTIONS = {
    "name": "name", "materialization_strategy": "materialize", "partitioned-by": "partitioned_by",
    "partitioned_by": "partitioned_by", "overwrite_filter": "overwrite_filter",
    "overwrite-filter": "overwrite_filter",
}


def _header_items(text: str) -> list[str]:
    """``key=value`` items of a header line: separated by spaces or commas, values may be
    quoted (``partitioned_by="day(d), country"``), spaces around ``=`` allowed."""
    import shlex

    lexer = shlex.shlex(re.sub(r"\s*=\s*", "=", text), posix=True)
    lexer.whitespace += ","
    lexer.whitespace_split = True
    return list(lexer)


def read_sql_model(path: str, text: str, problems: list[str]) -> ModelSpec | None:
    """A SQL model: ``name.sql``, one SELECT whose FROM/JOIN names are its inputs.

    Options come from header comments: ``-- faas: materialize=replace memory=2GiB``
    (or Bauplan's ``-- bauplan: materialization_strategy=REPLACE``).
    ``$name`` in the SQL is a run parameter, bound as a value when the query runs.
    """
    from faas.store.query import referenced_tables, sql_parameters

    name = path.rsplit("/", 1)[-1][: -len(".sql")]
    module = path[: -len(".sql")].replace("/", ".")
    if not _IDENT.fullmatch(name):
        problems.append(f"{path}:1: a SQL model's file name must be an identifier, not {name!r}")
        return None
    spec = ModelSpec(name=name, function="", module=module, where=f"{path}:1", kind="sql", sql=text)
    table_options: dict[str, str] = {}
    options_line = 1
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if not m:
            if line.strip() and not line.strip().startswith("--"):
                break  # options live in the header, before the query
            continue
        try:
            items = _header_items(m.group(2))
        except ValueError as exc:
            problems.append(f"{path}:{lineno}: cannot read the options: {exc}")
            continue
        for item in items:
            key, sep, value = item.partition("=")
            if m.group(1) == "bauplan":
                known = ", ".join(o + "=..." for o in BAUPLAN_SQL_OPTIONS)
                key = BAUPLAN_SQL_OPTIONS.get(key, "?")
            else:
                known = ", ".join(o + "=..." for o in SQL_OPTIONS)
            if not sep or key not in SQL_OPTIONS + ("name",):
                problems.append(f"{path}:{lineno}: unknown option {item!r} (options: {known})")
            elif key == "name":
                if _IDENT.fullmatch(value):
                    spec.name = value
                else:
                    problems.append(f"{path}:{lineno}: name must be an identifier, not {value!r}")
            elif key == "materialize":
                mode = None if value.lower() in ("none", "") else value.lower()
                if mode not in MATERIALIZE_MODES:
                    problems.append(
                        f"{path}:{lineno}: materialize must be replace, append, "
                        f"overwrite_partitions or none, not {value!r}"
                    )
                spec.materialize = mode if mode in MATERIALIZE_MODES else None
            elif key in ("partitioned_by", "overwrite_filter"):
                table_options[key] = value
                options_line = lineno
            elif key == "memory":
                try:
                    parse_size(value)
                    spec.memory = value
                except ValueError as exc:
                    problems.append(f"{path}:{lineno}: memory: {exc}")
            elif key == "cpus":
                if value.isdigit() and int(value) >= 1:
                    spec.cpus = int(value)
                else:
                    problems.append(
                        f"{path}:{lineno}: cpus must be a whole number of cores (1 or more), "
                        f"not {value!r}"
                    )
            else:
                spec.python = value
    spec.partitioned_by, spec.overwrite_filter = check_materialize(
        spec.materialize, table_options.get("partitioned_by"),
        table_options.get("overwrite_filter"), None, f"{path}:{options_line}", problems,
    )
    try:
        tables = referenced_tables(text)
        params = sql_parameters(text)
    except FaasError as exc:
        problems.append(f"{path}:{getattr(exc, 'line', None) or 1}: {exc}")
        return None
    for t in tables:
        spec.inputs.append(InputRef(param=t, name=t, columns=None, filter=None, where=f"{path}:1"))
    for p in params:
        spec.params.append(ParamRef(param=p, name=p, where=f"{path}:1"))
    return spec


def _apply_defaults(models: list[ModelSpec], config: dict[str, Any], problems: list[str]) -> None:
    """``[project] python = "3.11"`` and ``[project.pip]`` are every model's defaults."""
    section = config.get("project", {})
    python = section.get("python")
    pip = section.get("pip", {})
    if python is not None and not isinstance(python, str):
        problems.append("faas_project.toml: project.python must be a string like \"3.11\"")
        python = None
    if not isinstance(pip, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in pip.items()
    ):
        problems.append("faas_project.toml: [project.pip] must map package names to versions")
        pip = {}
    for m in models:
        if m.kind == "sql":
            continue
        m.python = m.python or python
        m.pip = {**pip, **m.pip}


def read_project(files: dict[str, str], *, partial: bool = False) -> Project:
    """Parse every model of a project.

    Raises PlanInvalid listing every problem found; with ``partial`` the problems
    are returned on the Project instead, with every model that could be read, so
    planning can report its own problems in the same breath.
    """
    from faas.scheduler.bauplan_project import bauplan_config

    problems: list[str] = []
    config: dict[str, Any] = {}
    if "faas_project.toml" in files:
        try:
            config = tomllib.loads(files["faas_project.toml"])
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"faas_project.toml: {exc}")
    bauplan = bauplan_config(files, problems)
    if bauplan is not None:
        if "faas_project.toml" in files:
            problems.append("the project has both faas_project.toml and bauplan_project.yml: "
                            "keep one")
        config = bauplan
    models: list[ModelSpec] = []
    code: dict[int, tuple[str, set[str]]] = {}
    shared = hashlib.sha256()
    trees: dict[str, ast.Module] = {}
    schemas: dict[str, Contract] = {}
    for path in sorted(files):
        if not path.endswith(".py"):
            continue
        try:
            trees[path] = ast.parse(files[path], filename=path)
        except SyntaxError as exc:
            problems.append(f"{path}:{exc.lineno or 1}: syntax error: {exc.msg}")
            continue
        except (MemoryError, RecursionError):  # nested deeper than the parser can go
            problems.append(f"{path}: nested too deeply for Python's parser to read")
            continue
        # Schemas first: a model may use one another module defines.
        schemas.update(read_schemas(path, trees[path], problems))
    for path, tree in trees.items():
        module = path[: -len(".py")].replace("/", ".")
        reader = _Reader(path, tree, schemas)
        reader.read(module)
        problems += reader.problems
        models += reader.models
        code.update(reader.code)
        shared.update(f"{path}\0{chr(0).join(reader.shared)}\0".encode())
    # A model may call anything that is not itself a model, and read the project's
    # settings: all of that is its code too.
    settings = json.dumps(config, sort_keys=True, default=str)  # its meaning, not its layout
    shared.update(settings.encode())
    for m in models:
        m.code_hash = _digest(shared.hexdigest(), *_called_code(m, models, code))
    for path in sorted(files):
        if path.endswith(".sql"):
            sql_model = read_sql_model(path, files[path], problems)
            if sql_model is not None:
                sql_model.code_hash = _digest(files[path], settings)
                models.append(sql_model)
    seen: dict[str, ModelSpec] = {}
    for m in models:
        if m.name in seen:
            problems.append(
                f"{m.where}: model name {m.name!r} is already defined at {seen[m.name].where}"
            )
            continue
        seen[m.name] = m
    models = list(seen.values())
    if not models and not problems:
        problems.append(
            "the project defines no models (functions decorated with @faas.model, or .sql files)"
        )
    for section in ("project", "parameters"):
        if section in config and not isinstance(config[section], dict):
            problems.append(f"faas_project.toml: [{section}] must be a table")
            del config[section]
    _apply_defaults(models, config, problems)
    if problems and not partial:
        raise PlanInvalid(problems)
    project_name = str(config.get("project", {}).get("name", ""))
    return Project(name=project_name, models=models, config=config, problems=problems)
