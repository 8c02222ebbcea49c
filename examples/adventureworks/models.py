"""AdventureWorks example models: two dimensions and a sales fact table.

Each model is a plain Python function. Its parameters name the tables it reads
(``faas.Model("sale", columns=[...])``: a source table or another model) and it
returns a ``pyarrow.Table``. The planner reads the decorators statically, so their
arguments are literals; third-party imports live inside the function bodies.

Every model opens its own in-memory DuckDB connection rather than using the
module-level default one, so models can run side by side in one process. A model may
return a DuckDB relation (or any Arrow stream) instead of a table: faas then writes its
rows as DuckDB produces them.
"""

import faas


@faas.model(materialize="replace")
@faas.python("3.11")
def dim_product(
    product=faas.Model(
        "product",
        columns=[
            "ProductKey",
            "ProductSubcategoryKey",
            "ProductName",
            "ProductSKU",
            "ProductColor",
            "ProductCost",
            "ProductPrice",
        ],
    ),
    product_subcategory=faas.Model(
        "product_subcategory",
        columns=["ProductSubcategoryKey", "SubcategoryName", "ProductCategoryKey"],
    ),
    product_category=faas.Model(
        "product_category",
        columns=["ProductCategoryKey", "CategoryName"],
    ),
):
    """One row per product, with its subcategory and category names."""
    import duckdb

    with duckdb.connect() as con:
        con.register("product", product)
        con.register("product_subcategory", product_subcategory)
        con.register("product_category", product_category)
        return con.sql(
            """
            SELECT
                CAST(p.ProductKey AS BIGINT)    AS ProductKey,
                CAST(p.ProductName AS VARCHAR)  AS ProductName,
                CAST(p.ProductSKU AS VARCHAR)   AS ProductSKU,
                CAST(p.ProductColor AS VARCHAR) AS ProductColor,
                CAST(p.ProductCost AS DOUBLE)   AS ProductCost,
                CAST(p.ProductPrice AS DOUBLE)  AS ProductPrice,
                CAST(s.SubcategoryName AS VARCHAR) AS SubcategoryName,
                CAST(c.CategoryName AS VARCHAR)    AS CategoryName
            FROM product AS p
            LEFT JOIN product_subcategory AS s
                ON s.ProductSubcategoryKey = p.ProductSubcategoryKey
            LEFT JOIN product_category AS c
                ON c.ProductCategoryKey = s.ProductCategoryKey
            ORDER BY ProductKey
            """
        ).to_arrow_table()


@faas.model(materialize="replace")
@faas.python("3.11")
def dim_country(
    territories=faas.Model(
        "territories",
        columns=["SalesTerritoryKey", "Region", "Country", "Continent"],
    ),
):
    """One row per sales territory."""
    import duckdb

    with duckdb.connect() as con:
        con.register("territories", territories)
        return con.sql(
            """
            SELECT
                CAST(SalesTerritoryKey AS BIGINT) AS SalesTerritoryKey,
                CAST(Region AS VARCHAR)    AS Region,
                CAST(Country AS VARCHAR)   AS Country,
                CAST(Continent AS VARCHAR) AS Continent
            FROM territories
            ORDER BY SalesTerritoryKey
            """
        ).to_arrow_table()


@faas.model(materialize="replace")
@faas.python("3.11")
def fact_sale(
    # Streamed: DuckDB reads the sale rows as its query runs, never all held at once.
    sale=faas.Model(
        "sale",
        columns=["OrderDate", "OrderNumber", "ProductKey", "TerritoryKey", "OrderQuantity"],
        stream=True,
    ),
    dim_product=faas.Model(
        "dim_product",
        columns=["ProductKey", "ProductCost", "ProductPrice"],
    ),
    dim_country=faas.Model(
        "dim_country",
        columns=["SalesTerritoryKey", "Country"],
    ),
):
    """One row per sale line, priced from dim_product and placed by dim_country."""
    import duckdb

    # Left open and returned as a relation: DuckDB streams the result into the table's
    # Parquet files while it computes it, so it is never held whole.
    con = duckdb.connect()
    con.register("sale", sale)
    con.register("dim_product", dim_product)
    con.register("dim_country", dim_country)
    return con.sql(
        """
        WITH s AS (
            SELECT
                CAST(OrderNumber AS VARCHAR)                  AS OrderNumber,
                CAST(strptime(OrderDate, '%m/%d/%Y') AS DATE) AS OrderDate,
                CAST(ProductKey AS BIGINT)                    AS ProductKey,
                CAST(TerritoryKey AS BIGINT)                  AS TerritoryKey,
                CAST(OrderQuantity AS BIGINT)                 AS OrderQuantity
            FROM sale
        )
        SELECT
            s.OrderNumber,
            s.OrderDate,
            s.ProductKey,
            c.Country,
            s.OrderQuantity,
            s.OrderQuantity * p.ProductPrice AS Revenue,
            s.OrderQuantity * p.ProductCost  AS Cost,
            s.OrderQuantity * p.ProductPrice - s.OrderQuantity * p.ProductCost AS Profit,
            md5(CAST(s.ProductKey AS VARCHAR) || '-' || c.Country) AS ProductCountryKey
        FROM s
        LEFT JOIN dim_product AS p ON p.ProductKey = s.ProductKey
        LEFT JOIN dim_country AS c ON c.SalesTerritoryKey = s.TerritoryKey
        """
    )
