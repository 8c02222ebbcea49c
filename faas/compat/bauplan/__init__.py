"""Bauplan's SDK, as faas runs Bauplan projects unchanged.

In a function process ``import bauplan`` resolves here: faas's runner puts the folder
above this one on the function's import path (after its environment's packages; a
project whose environment installs a package named ``bauplan`` itself is refused when it
is planned). Nothing here is published as a package of that name.

As in Bauplan, the decorators only mark functions: faas reads ``@bauplan.model``,
``@bauplan.python``, ``@bauplan.expectation``, ``@bauplan.resources``, ``bauplan.Model``
and ``bauplan.Parameter`` statically from the source when it plans a run, as it reads
its own. ``bauplan.Client`` is faas's synchronous client (:class:`faas.Client`), whose
methods carry Bauplan's names.
"""

from __future__ import annotations

import typing
from collections.abc import Callable

from faas import (
    Any,
    Binary,
    Bool,
    Date32,
    Date64,
    Decimal128,
    Float32,
    Float64,
    Int32,
    Int64,
    String,
    TableField,
    TableSchema,
    TimestampMicro,
    TimestampMicroUTC,
    TimestampNano,
    TimestampNanoUTC,
)
from faas import Model as _Model
from faas import Parameter as _Parameter

__all__ = [
    "Client", "Model", "Parameter", "model", "python", "expectation", "resources", "extras",
    "TableSchema", "TableField", "Any", "Bool", "Int32", "Int64", "Float32", "Float64", "String",
    "Binary", "Date32", "Date64", "TimestampMicro", "TimestampNano", "TimestampMicroUTC",
    "TimestampNanoUTC", "Decimal128", "standard_expectations",
]

F = typing.TypeVar("F", bound=Callable[..., typing.Any])
ModelMaterializationStrategy = typing.Literal["NONE", "REPLACE", "APPEND", "OVERWRITE_PARTITIONS"]
ModelCacheStrategy = typing.Literal["NONE", "DEFAULT"]


def _mark(**meta: typing.Any) -> Callable[[F], F]:
    def wrap(fn: F) -> F:
        fn.__bauplan__ = {**getattr(fn, "__bauplan__", {}), **meta}  # type: ignore[attr-defined]
        return fn

    return wrap


def model(
    name: str | None = None,
    columns: list[str] | None = None,
    partitioned_by: str | list[str] | tuple[str, ...] | None = None,
    materialization_strategy: ModelMaterializationStrategy | None = None,
    cache_strategy: ModelCacheStrategy | None = None,
    internet_access: bool | None = None,
    overwrite_filter: str | None = None,
    **kwargs: typing.Any,
) -> Callable[[F], F]:
    """A model: its return value is table ``name`` (default: the function's name)."""
    return _mark(model={"name": name, "columns": columns, "partitioned_by": partitioned_by,
                        "materialization_strategy": materialization_strategy,
                        "cache_strategy": cache_strategy, "internet_access": internet_access,
                        "overwrite_filter": overwrite_filter})


def python(version: str | None = None, pip: dict[str, str] | None = None,
           **kwargs: typing.Any) -> Callable[[F], F]:
    """The function's Python version and pip packages."""
    return _mark(python={"version": version, "pip": dict(pip or {})})


def expectation(**kwargs: typing.Any) -> Callable[[F], F]:
    """An expectation: takes inputs like a model, returns a bool."""
    return _mark(expectation=True)


def resources(cpus: float | None = None, memory: int | str | None = None,
              memory_swap: int | str | None = None, timeout: int | None = None,
              **kwargs: typing.Any) -> Callable[[F], F]:
    """What the function may use: cores, memory, seconds."""
    return _mark(resources={"cpus": cpus, "memory": memory, "timeout": timeout})


def extras(*args: str) -> Callable[[F], F]:
    """Extras of Bauplan's own package; faas's functions need none."""
    return _mark(extras=list(args))


class Model(_Model):
    """An input: a catalog table or another model, by name, with the columns and rows to
    read (``columns``, or a ``projection_schema``; ``filter``)."""

    def __init__(self, name: str, columns: list[str] | None = None, filter: str | None = None,
                 ref: str | None = None, projection_schema: type[TableSchema] | None = None,
                 **kwargs: typing.Any) -> None:
        super().__init__(name, columns, filter, projection_schema=projection_schema)


class Parameter(_Parameter):
    """A run parameter (``faas run --param NAME=VALUE``, or bauplan_project.yml's default)."""

    def __init__(self, param_name: str) -> None:
        super().__init__(param_name)

    @property
    def param_name(self) -> str:
        return self.name


def __getattr__(name: str) -> typing.Any:
    if name == "Client":  # faas's synchronous client; asyncio and msgspec only when asked
        from faas.client.sync import Client

        return Client
    if name == "standard_expectations":  # bauplan's, however this module was imported
        import importlib

        return importlib.import_module(f"{__name__}.standard_expectations")
    raise AttributeError(f"module 'bauplan' has no attribute {name!r}")
