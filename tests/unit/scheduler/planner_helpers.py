"""Shared by the planner tests: the example project, a fake catalog, and plan/problem helpers."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import pyarrow as pa
import pytest

from faas.protocol.errors import PlanInvalid
from faas.scheduler.dag import Plan, SecretLookup, SourceTable, build_plan
from faas.scheduler.reader import read_project
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "adventureworks"

# The example's source tables as the CSV import creates them (column order of the files).
ADVENTURE_TABLES: dict[str, dict[str, pa.DataType]] = {
    "product": {
        "ProductKey": pa.int64(),
        "ProductSubcategoryKey": pa.int64(),
        "ProductName": pa.string(),
        "ProductSKU": pa.string(),
        "ProductColor": pa.string(),
        "ProductCost": pa.float64(),
        "ProductPrice": pa.float64(),
    },
    "product_category": {"ProductCategoryKey": pa.int64(), "CategoryName": pa.string()},
    "product_subcategory": {
        "ProductSubcategoryKey": pa.int64(),
        "SubcategoryName": pa.string(),
        "ProductCategoryKey": pa.int64(),
    },
    "sale": {
        "OrderDate": pa.string(),
        "OrderNumber": pa.string(),
        "ProductKey": pa.int64(),
        "TerritoryKey": pa.int64(),
        "OrderQuantity": pa.int64(),
    },
    "territories": {
        "SalesTerritoryKey": pa.int64(),
        "Region": pa.string(),
        "Country": pa.string(),
        "Continent": pa.string(),
    },
}


class Catalog:
    """A fake catalog at one ref: ``key -> columns``; records every key looked up."""

    def __init__(self, tables: dict[str, dict[str, pa.DataType] | list[str]]) -> None:
        self.tables = tables
        self.looked_up: list[str] = []

    def __call__(self, key: str) -> SourceTable | None:
        self.looked_up.append(key)
        cols = self.tables.get(key)
        if cols is None:
            return None
        if isinstance(cols, list):
            cols = {c: pa.int64() for c in cols}
        return SourceTable(
            key=key,
            metadata_location=f"file:///warehouse/{key.replace('.', '/')}/metadata/v3.json",
            snapshot_id=abs(hash(key)) % 10_000 + 1,
            schema=pa.schema(list(cols.items())),
        )


def example_files() -> dict[str, str]:
    """The example project the way the client packs it: relative path -> text."""
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(EXAMPLE.glob("*.py"))}
    files["faas_project.toml"] = (EXAMPLE / "faas_project.toml").read_text(encoding="utf-8")
    return files


def adventure_catalog(namespace: str = "adventure") -> Catalog:
    return Catalog({f"{namespace}.{t}": cols for t, cols in ADVENTURE_TABLES.items()})


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line number of the ``nth`` line of ``text`` that contains ``needle``."""
    hits = [i for i, ln in enumerate(text.splitlines(), 1) if needle in ln]
    assert len(hits) >= nth, f"{needle!r} occurs {len(hits)} times"
    return hits[nth - 1]


def read_problems(files: dict[str, str]) -> list[str]:
    with pytest.raises(PlanInvalid) as info:
        read_project(files)
    assert info.value.problems, "PlanInvalid without problems"
    return info.value.problems


def plan(
    files: dict[str, str],
    tables: dict[str, dict[str, pa.DataType] | list[str]] | Callable[[str], SourceTable | None]
    | None = None,
    *,
    namespace: str = "ns",
    ref: str = "main",
    params: dict[str, str] | None = None,
    secrets: SecretLookup | None = None,
) -> Plan:
    lookup = tables if callable(tables) else Catalog(tables or {})
    return build_plan(read_project(files), namespace, ref, params or {}, lookup, secrets=secrets)


def plan_problems(files: dict[str, str], tables=None, **kw) -> list[str]:  # type: ignore[no-untyped-def]
    with pytest.raises(PlanInvalid) as info:
        plan(files, tables, **kw)
    assert info.value.problems, "PlanInvalid without problems"
    return info.value.problems


def only(problems: list[str], *needles: str) -> str:
    """The single problem that contains every needle."""
    hits = [p for p in problems if all(n in p for n in needles)]
    assert len(hits) == 1, f"expected one problem with {needles}, got {problems}"
    return hits[0]
