"""Expected outputs of the AdventureWorks models, computed without faas.

DuckDB reads the generated CSV files directly and applies the same logic as
``models.py``. Integration tests compare what faas materialises with this.

The CSV dialect and column types are spelled out rather than sniffed: DuckDB's
sniffer recognises ``1/13/2021`` and would turn ``OrderDate`` into a DATE, whereas
the source table (and the model) sees it as text.

Usage: ``expected(data_dir) -> {"dim_product": Table, "dim_country": Table,
"fact_sale": Table}``, or ``python reference.py DATA_DIR`` for a summary.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow as pa

# column name -> DuckDB type, in file order
SCHEMAS: dict[str, dict[str, str]] = {
    "product": {
        "ProductKey": "BIGINT",
        "ProductSubcategoryKey": "BIGINT",
        "ProductName": "VARCHAR",
        "ProductSKU": "VARCHAR",
        "ProductColor": "VARCHAR",
        "ProductCost": "DOUBLE",
        "ProductPrice": "DOUBLE",
    },
    "product_category": {"ProductCategoryKey": "BIGINT", "CategoryName": "VARCHAR"},
    "product_subcategory": {
        "ProductSubcategoryKey": "BIGINT",
        "SubcategoryName": "VARCHAR",
        "ProductCategoryKey": "BIGINT",
    },
    "sale": {
        "OrderDate": "VARCHAR",
        "OrderNumber": "VARCHAR",
        "ProductKey": "BIGINT",
        "TerritoryKey": "BIGINT",
        "OrderQuantity": "BIGINT",
    },
    "territories": {
        "SalesTerritoryKey": "BIGINT",
        "Region": "VARCHAR",
        "Country": "VARCHAR",
        "Continent": "VARCHAR",
    },
}

# sort keys that make each expected table's row order total
SORT_KEYS: dict[str, list[str]] = {
    "dim_product": ["ProductKey"],
    "dim_country": ["SalesTerritoryKey"],
    "fact_sale": ["OrderNumber", "ProductKey", "OrderQuantity"],
}


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _read_csv(path: Path, schema: dict[str, str]) -> str:
    columns = ", ".join(f"{_sql_str(k)}: {_sql_str(v)}" for k, v in schema.items())
    return (
        f"read_csv({_sql_str(str(path))}, header = true, delim = ',', quote = '\"', "
        f"escape = '\"', new_line = '\\r\\n', auto_detect = false, columns = {{{columns}}})"
    )


DIM_PRODUCT = """
SELECT
    p.ProductKey, p.ProductName, p.ProductSKU, p.ProductColor,
    p.ProductCost, p.ProductPrice, s.SubcategoryName, c.CategoryName
FROM src_product AS p
LEFT JOIN src_product_subcategory AS s ON s.ProductSubcategoryKey = p.ProductSubcategoryKey
LEFT JOIN src_product_category AS c ON c.ProductCategoryKey = s.ProductCategoryKey
ORDER BY p.ProductKey
"""

DIM_COUNTRY = """
SELECT SalesTerritoryKey, Region, Country, Continent
FROM src_territories
ORDER BY SalesTerritoryKey
"""

FACT_SALE = """
SELECT
    s.OrderNumber,
    strptime(s.OrderDate, '%m/%d/%Y')::DATE AS OrderDate,
    s.ProductKey,
    t.Country,
    s.OrderQuantity,
    s.OrderQuantity * p.ProductPrice AS Revenue,
    s.OrderQuantity * p.ProductCost AS Cost,
    s.OrderQuantity * p.ProductPrice - s.OrderQuantity * p.ProductCost AS Profit,
    md5(s.ProductKey::VARCHAR || '-' || t.Country) AS ProductCountryKey
FROM src_sale AS s
LEFT JOIN src_product AS p ON p.ProductKey = s.ProductKey
LEFT JOIN src_territories AS t ON t.SalesTerritoryKey = s.TerritoryKey
ORDER BY s.OrderNumber, s.ProductKey, s.OrderQuantity
"""


def expected(data_dir: str | os.PathLike) -> dict[str, pa.Table]:
    """The three model outputs for the CSV files in ``data_dir``, sorted by SORT_KEYS."""
    import duckdb

    data = Path(data_dir)
    with duckdb.connect() as con:
        for name, schema in SCHEMAS.items():
            path = data / f"{name}.csv"
            if not path.is_file():
                raise FileNotFoundError(path)
            con.execute(f"CREATE VIEW src_{name} AS SELECT * FROM {_read_csv(path, schema)}")
        return {
            "dim_product": con.sql(DIM_PRODUCT).to_arrow_table(),
            "dim_country": con.sql(DIM_COUNTRY).to_arrow_table(),
            "fact_sale": con.sql(FACT_SALE).to_arrow_table(),
        }


if __name__ == "__main__":
    data_dir = sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent / "data"
    for model, table in expected(data_dir).items():
        print(f"{model}: {table.num_rows} rows")
        for field in table.schema:
            print(f"  {field.name}: {field.type}")
