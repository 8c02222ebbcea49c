"""Declared table schemas, read statically, and what they let the planner check.

A project declares schemas as classes deriving from ``faas.TableSchema`` (or Bauplan's
``bauplan.TableSchema``) whose annotations are columns of faas's field types::

    class Order(faas.TableSchema):
        order_id: faas.Int64                      # required: no nulls
        country: faas.String | None               # optional
        note: Annotated[faas.String | None, faas.TableField(doc="free text")]

A model declares its output with one (``-> Annotated[pyarrow.Table, Order]``) or with a
plain ``columns=[...]`` list, and an input the columns it reads
(``faas.Model("orders", projection_schema=Order)``). Before anything runs the planner
checks every input against what its upstream declares, or against the table it scans:
the columns must exist, with the declared types, and a required column cannot be read
from one that may hold nulls. The function's result is checked against its declaration
when it returns (faasd/contracts.py).
"""

from __future__ import annotations

import ast
from typing import Any

import pyarrow as pa

from faas import FIELD_TYPES
from faas.protocol.messages import Contract, ContractColumn

# What the SDKs a project may be written with are imported as: faas's own, and Bauplan's
# (whose projects run unchanged: see faas/compat/bauplan).
SDK_MODULES = ("faas", "bauplan")


def _named(node: ast.expr, *names: str) -> str | None:
    """The name ``node`` refers to if it is one of ``names`` (bare, or an attribute of an
    SDK module or of ``typing``)."""
    if isinstance(node, ast.Name) and node.id in names:
        return node.id
    if (isinstance(node, ast.Attribute) and node.attr in names and isinstance(node.value, ast.Name)
            and node.value.id in (*SDK_MODULES, "typing", "typing_extensions")):
        return node.attr
    return None


def is_schema_class(cls: ast.ClassDef) -> bool:
    return any(_named(b, "TableSchema") for b in cls.bases)


def read_schemas(path: str, tree: ast.Module, problems: list[str]) -> dict[str, Contract]:
    """The schema classes a module defines (at its top level), by class name."""
    found: dict[str, Contract] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and is_schema_class(node):
            found[node.name] = _read_schema(path, node, problems)
    return found


def _read_schema(path: str, cls: ast.ClassDef, problems: list[str]) -> Contract:
    columns = []
    for stmt in cls.body:
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
            continue
        where = f"{path}:{stmt.lineno}"
        typed = _field(stmt.annotation, where, problems)
        if typed is not None:
            columns.append(ContractColumn(name=stmt.target.id, type=typed[0], nullable=typed[1]))
    if not columns:
        problems.append(f"{path}:{cls.lineno}: schema {cls.name!r} declares no columns "
                        "(write them as annotations: order_id: faas.Int64)")
    return Contract(name=cls.name, columns=columns)


def _field(node: ast.expr, where: str, problems: list[str],
           optional: bool = False) -> tuple[str, bool] | None:
    """(Arrow type, nullable) of a column's annotation."""
    if isinstance(node, ast.Subscript) and _named(node.value, "Annotated"):
        if optional:
            problems.append(f"{where}: only the data type may be marked optional: write "
                            "Annotated[faas.String | None, ...]")
            return None
        inner = node.slice.elts[0] if isinstance(node.slice, ast.Tuple) else node.slice
        return _field(inner, where, problems)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        sides = [node.left, node.right]
        rest = [s for s in sides if not (isinstance(s, ast.Constant) and s.value is None)]
        if len(rest) == 1:
            found = _field(rest[0], where, problems, optional=True)
            return (found[0], True) if found else None
    if isinstance(node, ast.Subscript) and _named(node.value, "Optional"):
        found = _field(node.slice, where, problems, optional=True)
        return (found[0], True) if found else None
    if isinstance(node, ast.Subscript) and _named(node.value, "Decimal128"):
        return "decimal128", False
    name = _named(node, *FIELD_TYPES)
    if name is None:
        problems.append(
            f"{where}: {ast.unparse(node)!r} is not a field type (use one of faas."
            f"{', faas.'.join(FIELD_TYPES)}; add '| None' for a column that may be null)"
        )
        return None
    return FIELD_TYPES[name].arrow, False


def returned_schema(returns: ast.expr | None) -> str | None:
    """The schema class named by a return annotation ``Annotated[pyarrow.Table, S]``."""
    if not (isinstance(returns, ast.Subscript) and _named(returns.value, "Annotated")):
        return None
    items = returns.slice.elts if isinstance(returns.slice, ast.Tuple) else []
    if len(items) < 2:
        return None
    target = items[1]
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    return ast.unparse(target)


def annotated_call(annotation: ast.expr | None) -> ast.Call | None:
    """The ``faas.Model(...)`` / ``faas.Parameter(...)`` of ``Annotated[T, faas.Model(...)]``."""
    if not (isinstance(annotation, ast.Subscript) and _named(annotation.value, "Annotated")):
        return None
    items = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else []
    for item in items[1:]:
        if isinstance(item, ast.Call) and _named(item.func, "Model", "Parameter"):
            return item
    return None


def arrow_schema(contract: Contract) -> pa.Schema:
    """A contract as an Arrow schema, for checking filters (any type: null)."""
    def arrow(t: str) -> pa.DataType:
        if not t:
            return pa.null()
        if t == "decimal128":
            return pa.decimal128(38, 10)
        return pa.type_for_alias(t) if "[" not in t else _timestamp_or_date(t)
    return pa.schema([pa.field(c.name, arrow(c.type), nullable=c.nullable)
                      for c in contract.columns])


def _timestamp_or_date(t: str) -> pa.DataType:
    if t.startswith("date32"):
        return pa.date32()
    if t.startswith("date64"):
        return pa.date64()
    unit = t[t.index("[") + 1:].split(",")[0].rstrip("]")
    return pa.timestamp(unit, tz="UTC" if "tz=UTC" in t else None)


def projection_problems(
    projection: Contract, where: str, what: str, *, declared: Contract | None = None,
    table: pa.Schema | None = None,
) -> list[str]:
    """Columns of ``projection`` that its source (an upstream's ``declared`` contract, or
    a ``table``'s schema) cannot give: absent, of another type, or possibly null where
    the projection wants a required column."""
    problems = []
    given: dict[str, tuple[Any, bool]] = {}
    if declared is not None:
        given = {c.name: (c.type, c.nullable) for c in declared.columns}
    elif table is not None:
        given = {f.name: (f.type, f.nullable) for f in table}
    for column in projection.columns:
        if column.name not in given:
            problems.append(f"{where}: {what} has no column {column.name!r} (it has: "
                            f"{', '.join(given)})")
            continue
        found, nullable = given[column.name]
        if not found:  # declared without a type (columns=[...]): only its name is known
            continue
        if not column.accepts(found):
            problems.append(f"{where}: {projection.name}.{column.name} is {column.type}, but "
                            f"{what} has it as {str(found).replace('large_', '')}")
        elif nullable and not column.nullable:
            problems.append(f"{where}: {projection.name}.{column.name} is required, but "
                            f"{what} may hold nulls in it (declare it '| None')")
    return problems


def check_declared_filter(row_filter: str, contract: Contract, model: str) -> None:
    """Check an input's filter on a model against what the model declares it returns: its
    columns (and, where every column is typed, their types).

    Raises:
        InvalidInput: the filter does not parse, names a column the model does not
            declare, or compares a column with a literal of the wrong type.
    """
    from faas.protocol.errors import InvalidInput
    from faas.store.scan import check_filter, filter_columns

    names = [c.name for c in contract.columns]
    for column in filter_columns(row_filter):
        if column not in names:
            raise InvalidInput(f"bad filter {row_filter!r}: model {model!r} declares no column "
                               f"{column!r} (it declares: {', '.join(names)})")
    if all(c.type for c in contract.columns):
        check_filter(row_filter, arrow_schema(contract), f"model {model!r}")
