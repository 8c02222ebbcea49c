-- bauplan: materialization_strategy=REPLACE
SELECT ProductName, units, revenue
FROM product_sales
ORDER BY revenue DESC, ProductName
LIMIT 10
