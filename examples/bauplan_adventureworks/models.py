"""The AdventureWorks pipeline written for Bauplan, as its tutorials write pipelines.

Nothing here names faas: ``faas run --project-dir examples/bauplan_adventureworks
--namespace adventure`` runs it unchanged, ``import bauplan`` resolving to the module faas
gives Bauplan projects. Each model asks for the columns it reads, queries its inputs with
DuckDB by their parameter names and returns DuckDB's result with ``.arrow()``.
"""

import bauplan


@bauplan.model()
@bauplan.python("3.11", pip={"duckdb": "1.0.0"})
def sale_lines(
    sale=bauplan.Model(
        "sale",
        columns=["OrderNumber", "ProductKey", "TerritoryKey", "OrderQuantity"],
        filter="OrderQuantity >= $min_quantity",
    ),
    min_quantity=bauplan.Parameter("min_quantity"),
):
    import duckdb

    return duckdb.sql(f"""
        SELECT OrderNumber, ProductKey, TerritoryKey, OrderQuantity
        FROM sale
        WHERE OrderQuantity >= {int(min_quantity)}
    """).arrow()


@bauplan.model(materialization_strategy="REPLACE")
@bauplan.python("3.11", pip={"duckdb": "1.0.0"})
def product_sales(
    sale_lines=bauplan.Model("sale_lines"),
    product=bauplan.Model("product", columns=["ProductKey", "ProductName", "ProductPrice"]),
):
    import duckdb

    return duckdb.sql("""
        SELECT p.ProductKey, p.ProductName,
               SUM(s.OrderQuantity) AS units,
               ROUND(SUM(s.OrderQuantity * p.ProductPrice), 2) AS revenue
        FROM sale_lines AS s
        JOIN product AS p ON p.ProductKey = s.ProductKey
        GROUP BY p.ProductKey, p.ProductName
        ORDER BY revenue DESC, p.ProductKey
    """).arrow()


@bauplan.model(materialization_strategy="REPLACE")
@bauplan.python("3.11", pip={"duckdb": "1.0.0"})
def country_sales(
    sale_lines=bauplan.Model("sale_lines", columns=["OrderNumber", "TerritoryKey", "OrderQuantity"]),
    territories=bauplan.Model("territories", columns=["SalesTerritoryKey", "Country"]),
):
    import duckdb

    return duckdb.sql("""
        SELECT t.Country,
               COUNT(DISTINCT s.OrderNumber) AS orders,
               SUM(s.OrderQuantity) AS units
        FROM sale_lines AS s
        JOIN territories AS t ON t.SalesTerritoryKey = s.TerritoryKey
        GROUP BY t.Country
        ORDER BY t.Country
    """).arrow()


@bauplan.expectation()
@bauplan.python("3.11")
def every_country_is_named(data=bauplan.Model("country_sales", columns=["Country"])):
    from bauplan.standard_expectations import expect_column_no_nulls

    return expect_column_no_nulls(data, "Country")
