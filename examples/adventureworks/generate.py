"""Deterministic AdventureWorks-shaped CSV generator.

Writes five CSV files (``product``, ``product_category``, ``product_subcategory``,
``sale``, ``territories``) that look like the public AdventureWorks sales extracts,
including their real-world quirks: CRLF line ends, a header row, product names
with commas that are quoted (``"Mountain-200 Black, 38"``) and a couple of names
holding a double quote escaped as ``""``.

The same ``(rows, seed)`` always produces byte-identical files. The dimension
tables depend only on the seed; ``sale`` depends on the seed and the row count.

Sale rows are generated column-wise with pyarrow compute in fixed-size chunks
(random bytes come from a seeded ``random.Random``), so ten million rows take
seconds rather than minutes and memory stays bounded by the chunk size.

Usage::

    python examples/adventureworks/generate.py --rows 20000 --out examples/adventureworks/data

or ``from generate import generate; generate(out_dir, rows, seed)``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_ROWS = 20_000
DEFAULT_SEED = 42
DEFAULT_OUT = Path(__file__).resolve().parent / "data"

CRLF = "\r\n"
CHUNK_ROWS = 1 << 20  # fixed: changing it changes the random stream, hence the bytes
FIRST_PRODUCT_KEY = 214
FIRST_ORDER_NUMBER = 43697
FIRST_DAY = _dt.date(2020, 1, 1)
LAST_DAY = _dt.date(2022, 6, 30)
NEW_ORDER_PROB_256 = 140  # a sale line starts a new order with probability 140/256

FILES = (
    "product.csv",
    "product_category.csv",
    "product_subcategory.csv",
    "sale.csv",
    "territories.csv",
)

# --------------------------------------------------------------------------- dimensions

CATEGORIES = [(1, "Bikes"), (2, "Components"), (3, "Clothing"), (4, "Accessories")]

# (ProductSubcategoryKey, SubcategoryName, ProductCategoryKey, SKU prefix, sales weight)
SUBCATEGORIES = [
    (1, "Mountain Bikes", 1, "BK", 3.0),
    (2, "Road Bikes", 1, "BK", 3.0),
    (3, "Touring Bikes", 1, "BK", 2.0),
    (4, "Handlebars", 2, "HB", 0.3),
    (5, "Bottom Brackets", 2, "BB", 0.3),
    (6, "Brakes", 2, "BR", 0.3),
    (7, "Chains", 2, "CH", 0.3),
    (8, "Cranksets", 2, "CS", 0.3),
    (9, "Derailleurs", 2, "DR", 0.3),
    (10, "Forks", 2, "FK", 0.3),
    (11, "Headsets", 2, "HS", 0.3),
    (12, "Mountain Frames", 2, "FR", 0.3),
    (13, "Pedals", 2, "PD", 0.3),
    (14, "Road Frames", 2, "FR", 0.3),
    (15, "Saddles", 2, "SE", 0.3),
    (16, "Touring Frames", 2, "FR", 0.3),
    (17, "Wheels", 2, "WH", 0.3),
    (18, "Bib-Shorts", 3, "SB", 2.0),
    (19, "Caps", 3, "CA", 6.0),
    (20, "Gloves", 3, "GL", 4.0),
    (21, "Jerseys", 3, "LJ", 6.0),
    (22, "Shorts", 3, "SH", 3.0),
    (23, "Socks", 3, "SO", 2.0),
    (24, "Tights", 3, "TG", 1.0),
    (25, "Vests", 3, "VE", 2.0),
    (26, "Bike Racks", 4, "RA", 1.0),
    (27, "Bike Stands", 4, "ST", 1.0),
    (28, "Bottles and Cages", 4, "BC", 16.0),
    (29, "Cleaners", 4, "CL", 3.0),
    (30, "Fenders", 4, "FE", 3.0),
    (31, "Helmets", 4, "HL", 12.0),
    (32, "Hydration Packs", 4, "HY", 2.0),
    (33, "Lights", 4, "LT", 1.0),
    (34, "Locks", 4, "LO", 1.0),
    (35, "Panniers", 4, "PA", 1.0),
    (36, "Pumps", 4, "PU", 1.0),
    (37, "Tires and Tubes", 4, "TT", 25.0),
]

# Product families: (subcategory key, name template, colors, sizes, cost range in dollars).
# "{c}" is the color and "{s}" the size; a family yields one product per color x size.
_FRAME_S = ["38", "42", "44", "46", "48"]
_S5 = ["40", "42", "44", "48", "52"]
_FRAME_R = ["44", "48", "52", "56", "58", "62"]
_R6 = ["44", "48", "52", "58", "60", "62"]
_T5 = ["44", "50", "54", "58", "62"]
FAMILIES = [
    (1, "Mountain-100 {c}, {s}", ["Silver", "Black"], ["38", "42", "44", "48"], (1800, 2200)),
    (1, "Mountain-200 {c}, {s}", ["Silver", "Black"], ["38", "42", "46"], (1100, 1300)),
    (1, "Mountain-300 {c}, {s}", ["Black"], ["38", "40", "44", "48"], (550, 650)),
    (1, "Mountain-400-W {c}, {s}", ["Silver"], ["38", "40", "42", "46"], (400, 450)),
    (1, "Mountain-500 {c}, {s}", ["Silver", "Black"], ["40", "42", "44", "48", "52"], (290, 320)),
    (2, "Road-150 {c}, {s}", ["Red"], ["44", "48", "52", "56", "62"], (2100, 2300)),
    (2, "Road-250 {c}, {s}", ["Red", "Black"], ["44", "48", "52", "58"], (1500, 1600)),
    (2, "Road-350-W {c}, {s}", ["Yellow"], ["40", "42", "44", "48"], (1000, 1100)),
    (2, "Road-450 {c}, {s}", ["Red"], ["44", "48", "52", "58", "60"], (850, 900)),
    (2, "Road-550-W {c}, {s}", ["Yellow"], ["38", "40", "42", "44", "48"], (700, 750)),
    (2, "Road-650 {c}, {s}", ["Red", "Black"], ["44", "48", "52", "58", "60", "62"], (400, 500)),
    (2, "Road-750 {c}, {s}", ["Black"], ["44", "48", "52", "58"], (330, 350)),
    (3, "Touring-1000 {c}, {s}", ["Yellow", "Blue"], ["46", "50", "54", "60"], (1450, 1500)),
    (3, "Touring-2000 {c}, {s}", ["Blue"], ["46", "50", "54", "60"], (750, 800)),
    (3, "Touring-3000 {c}, {s}", ["Blue", "Yellow"], ["44", "50", "54", "58", "62"], (440, 470)),
    (4, "{s} Mountain Handlebars", ["Silver"], ["LL", "ML", "HL"], (20, 60)),
    (4, "{s} Road Handlebars", ["Silver"], ["LL", "ML", "HL"], (20, 60)),
    (4, "{s} Touring Handlebars", ["Silver"], ["LL", "HL"], (20, 60)),
    (5, "{s} Bottom Bracket", ["Grey"], ["LL", "ML", "HL"], (20, 55)),
    (6, "{s} Brakes", ["Silver"], ["Front", "Rear"], (45, 50)),
    (7, "Chain", ["Silver"], [""], (8, 10)),
    (8, "{s} Crankset", ["Black"], ["LL", "ML", "HL"], (75, 180)),
    (9, "{s} Derailleur", ["Silver"], ["Front", "Rear"], (40, 55)),
    (10, "{s} Fork", ["Black"], ["LL", "ML", "HL"], (65, 100)),
    (11, "{s} Headset", ["Silver"], ["LL", "ML", "HL"], (15, 60)),
    (12, "HL Mountain Frame - {c}, {s}", ["Silver", "Black"], _FRAME_S, (600, 750)),
    (12, "ML Mountain Frame - {c}, {s}", ["Black"], ["38", "40", "44", "48"], (200, 210)),
    (12, "ML Mountain Frame-W - {c}, {s}", ["Silver"], ["38", "40", "42", "46"], (200, 210)),
    (12, "LL Mountain Frame - {c}, {s}", ["Silver", "Black"], _S5, (140, 150)),
    (13, "{s} Mountain Pedal", ["Silver/Black"], ["LL", "ML", "HL"], (17, 50)),
    (13, "{s} Road Pedal", ["Silver/Black"], ["LL", "ML", "HL"], (17, 50)),
    (13, "Touring Pedal", ["Silver/Black"], [""], (35, 40)),
    (14, "HL Road Frame - {c}, {s}", ["Red", "Black"], _FRAME_R, (860, 870)),
    (14, "ML Road Frame - {c}, {s}", ["Red"], ["44", "48", "52", "58", "60"], (350, 360)),
    (14, "ML Road Frame-W - {c}, {s}", ["Yellow"], ["38", "40", "42", "44", "48"], (350, 360)),
    (14, "LL Road Frame - {c}, {s}", ["Red", "Black"], _R6, (180, 190)),
    (15, "{s} Mountain Seat/Saddle", ["Black"], ["LL", "ML", "HL"], (12, 25)),
    (15, "{s} Road Seat/Saddle", ["Black"], ["LL", "ML", "HL"], (12, 25)),
    (15, "{s} Touring Seat/Saddle", ["Black"], ["LL", "ML", "HL"], (12, 25)),
    (16, "HL Touring Frame - {c}, {s}", ["Yellow", "Blue"], ["46", "50", "54", "60"], (600, 610)),
    (16, "LL Touring Frame - {c}, {s}", ["Yellow", "Blue"], _T5, (190, 200)),
    (17, "{s} Mountain Front Wheel", ["Black"], ["LL", "ML", "HL"], (25, 135)),
    (17, "{s} Mountain Rear Wheel", ["Black"], ["LL", "ML", "HL"], (40, 145)),
    (17, "{s} Road Front Wheel", ["Black"], ["LL", "ML", "HL"], (40, 150)),
    (17, "{s} Road Rear Wheel", ["Black"], ["LL", "ML", "HL"], (50, 160)),
    (17, "Touring Front Wheel", ["Black"], [""], (90, 95)),
    (17, "Touring Rear Wheel", ["Black"], [""], (100, 110)),
    (18, "Men's Bib-Shorts, {s}", ["Multi"], ["S", "M", "L"], (35, 38)),
    (19, "AWC Logo Cap", ["Multi"], [""], (6, 7)),
    (20, "Full-Finger Gloves, {s}", ["Black"], ["S", "M", "L"], (15, 16)),
    (20, "Half-Finger Gloves, {s}", ["Black"], ["S", "M", "L"], (9, 10)),
    (21, "Long-Sleeve Logo Jersey, {s}", ["Multi"], ["S", "M", "L", "XL"], (38, 39)),
    (21, "Short-Sleeve Classic Jersey, {s}", ["Yellow"], ["S", "M", "L", "XL"], (41, 42)),
    (22, "Men's Sports Shorts, {s}", ["Black"], ["S", "M", "L", "XL"], (24, 25)),
    (22, "Women's Mountain Shorts, {s}", ["Black"], ["S", "M", "L"], (26, 27)),
    (23, "Mountain Bike Socks, {s}", ["White"], ["M", "L"], (3, 4)),
    (23, "Racing Socks, {s}", ["White"], ["M", "L"], (3, 4)),
    (24, "Women's Tights, {s}", ["Black"], ["S", "M", "L"], (30, 31)),
    (25, "Classic Vest, {s}", ["Blue"], ["S", "M", "L"], (23, 24)),
    (26, "Hitch Rack - 4-Bike", ["Silver"], [""], (44, 45)),
    (27, "All-Purpose Bike Stand", ["Silver"], [""], (59, 60)),
    (28, "Water Bottle - 30 oz.", ["Clear"], [""], (1, 2)),
    (28, "Mountain Bottle Cage", ["Black"], [""], (3, 4)),
    (28, "Road Bottle Cage", ["Black"], [""], (3, 4)),
    (29, "Bike Wash - Dissolver", ["Green"], [""], (2, 3)),
    (30, 'Fender Set - Mountain 26"', ["Black"], [""], (8, 9)),
    (31, "Sport-100 Helmet, {c}", ["Red", "Black", "Blue"], [""], (13, 14)),
    (32, "Hydration Pack - 70 oz.", ["Silver"], [""], (20, 21)),
    (33, "Headlights - Dual-Beam", ["Black"], [""], (14, 15)),
    (33, "Headlights - Weatherproof", ["Black"], [""], (18, 19)),
    (33, "Taillights - Battery-Powered", ["Red"], [""], (5, 6)),
    (34, "Cable Lock", ["Silver"], [""], (10, 11)),
    (35, "Touring-Panniers, Large", ["Grey"], [""], (51, 52)),
    (36, "Minipump", ["Silver"], [""], (8, 9)),
    (36, "Mountain Pump", ["Silver"], [""], (10, 11)),
    (37, "Patch Kit/8 Patches", ["Multi"], [""], (1, 2)),
    (37, 'Mountain Tire Tube, 26"', ["Black"], [""], (1, 2)),
    (37, "Road Tire Tube", ["Black"], [""], (1, 2)),
    (37, "Touring Tire Tube", ["Black"], [""], (1, 2)),
    (37, "{s} Mountain Tire", ["Black"], ["LL", "ML", "HL"], (9, 13)),
    (37, "{s} Road Tire", ["Black"], ["LL", "ML", "HL"], (8, 12)),
    (37, "Touring Tire", ["Black"], [""], (10, 11)),
]

# (SalesTerritoryKey, Region, Country, Continent, sales weight)
TERRITORIES = [
    (1, "Northwest", "United States", "North America", 14.0),
    (2, "Northeast", "United States", "North America", 0.5),
    (3, "Central", "United States", "North America", 0.5),
    (4, "Southwest", "United States", "North America", 20.0),
    (5, "Southeast", "United States", "North America", 0.5),
    (6, "Canada", "Canada", "North America", 12.0),
    (7, "France", "France", "Europe", 8.0),
    (8, "Germany", "Germany", "Europe", 8.0),
    (9, "Australia", "Australia", "Pacific", 24.0),
    (10, "United Kingdom", "United Kingdom", "Europe", 10.0),
]

COLOR_CODES = {
    "Black": "B", "Blue": "U", "Clear": "C", "Green": "N", "Grey": "G", "Multi": "M",
    "Red": "R", "Silver": "S", "Silver/Black": "K", "White": "W", "Yellow": "Y",
}

# OrderQuantity -> weight (most lines are a single item, as in the real data)
QUANTITY_WEIGHTS = [(1, 70), (2, 18), (3, 7), (4, 4), (5, 1)]


# --------------------------------------------------------------------------- CSV helpers


def _field(value: object) -> str:
    """One CSV field: quoted only when needed, embedded quotes doubled (RFC 4180)."""
    text = str(value)
    if any(ch in text for ch in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_text(header: list[str], rows: list[tuple]) -> str:
    lines = [",".join(header)]
    lines.extend(",".join(_field(v) for v in row) for row in rows)
    return CRLF.join(lines) + CRLF


def _money(units: int) -> str:
    """Ten-thousandths of a dollar as a 4-decimal string (exact, no float rounding)."""
    return f"{units // 10_000}.{units % 10_000:04d}"


def _write_atomic(path: Path, chunks) -> int:
    tmp = path.with_name(path.name + ".tmp")
    size = 0
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            size += len(chunk)
    os.replace(tmp, path)
    return size


# --------------------------------------------------------------------------- products


def build_products(seed: int) -> list[tuple]:
    """Product rows, depending only on the seed (not on the sale row count)."""
    rng = random.Random(f"adventureworks-products-{seed}")
    prefix = {key: code for key, _, _, code, _ in SUBCATEGORIES}
    rows = []
    skus: set[str] = set()
    key = FIRST_PRODUCT_KEY
    for family_no, (sub, template, colors, sizes, (lo, hi)) in enumerate(FAMILIES):
        base_cost = rng.randint(lo * 10_000, hi * 10_000)
        markup = rng.uniform(1.55, 2.3)
        for color in colors:
            for size in sizes:
                name = template.format(c=color, s=size).strip()
                # a little spread per variant; price strictly above cost
                cost = max(5_000, base_cost + rng.randint(-base_cost // 50, base_cost // 50))
                # list prices end in .99, like the real catalogue
                price = max(cost + 100, (int(cost * markup) // 10_000 + 1) * 10_000 - 100)
                sku = f"{prefix[sub]}-{family_no:02d}{COLOR_CODES[color]}"
                sku += f"-{size}" if size else ""
                while sku in skus:  # never happens with the catalogue above; be safe
                    sku += "X"
                skus.add(sku)
                rows.append((key, sub, name, sku, color, _money(cost), _money(price)))
                key += 1
    return rows


# --------------------------------------------------------------------------- sales


def _lookup_table(weighted: list[tuple[object, float]], size: int) -> list[object]:
    """Expand (value, weight) pairs to a table where value i fills ~weight share of slots."""
    total = sum(w for _, w in weighted)
    table: list[object] = []
    for value, weight in weighted:
        table.extend([value] * max(1, round(weight / total * size)))
    return table


def _uniform_index(rng: random.Random, n: int, bound: int) -> pa.Array:
    """n indices in [0, bound) from 32 random bits each: (u32 * bound) >> 32."""
    raw = pa.py_buffer(rng.randbytes(4 * n))
    u32 = pa.Array.from_buffers(pa.uint32(), n, [None, raw])
    scaled = pc.multiply(pc.cast(u32, pa.uint64()), pa.scalar(bound, pa.uint64()))
    return pc.cast(pc.shift_right(scaled, pa.scalar(32, pa.uint64())), pa.int64())


def _date_strings() -> pa.Array:
    days = (LAST_DAY - FIRST_DAY).days + 1
    out = []
    for i in range(days):
        d = FIRST_DAY + _dt.timedelta(days=i)
        out.append(f"{d.month}/{d.day}/{d.year}")  # m/d/Y, no zero padding
    return pa.array(out, pa.string())


def _sale_chunks(rows: int, seed: int, product_keys: list[int], product_weights: list[float]):
    """Yield the sale CSV as bytes-like chunks (header first)."""
    yield ("OrderDate,OrderNumber,ProductKey,TerritoryKey,OrderQuantity" + CRLF).encode()
    if rows <= 0:
        return
    rng = random.Random(f"adventureworks-sales-{seed}")
    dates = _date_strings()
    n_days = len(dates)
    product_table = pa.array(
        [str(k) for k in _lookup_table(list(zip(product_keys, product_weights, strict=True)), 1 << 16)],
        pa.string(),
    )
    territory_table = pa.array(
        [str(k) for k in _lookup_table([(t[0], t[4]) for t in TERRITORIES], 1000)], pa.string()
    )
    # the line terminator rides on the last field so one element-wise join builds each line
    quantity_table = pa.array(
        [f"{q}{CRLF}" for q in _lookup_table(QUANTITY_WEIGHTS, 100)], pa.string()
    )
    expected_orders = 1.0 + (rows - 1) * NEW_ORDER_PROB_256 / 256.0
    orders_so_far = 0  # orders opened before the current chunk
    carry_territory = 0  # territory index of the last order of the previous chunk
    for start in range(0, rows, CHUNK_ROWS):
        n = min(CHUNK_ROWS, rows - start)
        # --- order boundaries: each line starts a new order with p = 140/256
        flags = pa.Array.from_buffers(pa.uint8(), n, [None, pa.py_buffer(rng.randbytes(n))])
        new_order = pc.cast(pc.less(flags, pa.scalar(NEW_ORDER_PROB_256, pa.uint8())), pa.int64())
        if start == 0:  # the very first line always opens order 0
            new_order = pa.concat_arrays([pa.array([1], pa.int64()), new_order[1:]])
        local = pc.cumulative_sum(new_order)  # orders opened so far in this chunk
        order_ord = pc.add(local, orders_so_far - 1)  # global 0-based order ordinal
        orders_so_far += pc.sum(new_order).as_py()
        # --- territory: drawn once per order (at the line that opens it); lines before
        # the chunk's first opening continue the previous chunk's last order
        drawn = _uniform_index(rng, n, len(territory_table))
        opened = pc.filter(drawn, pc.cast(new_order, pa.bool_()))
        per_order = pa.concat_arrays([pa.array([carry_territory], pa.int64()), opened])
        territory = pc.take(per_order, local)
        carry_territory = per_order[-1].as_py()
        # --- order date: monotone in the order number, with sales growing over time
        # (density ~ 1 + 2t on [0, 1]; inverse CDF t = (sqrt(1 + 8x) - 1) / 2)
        x = pc.divide(pc.add(pc.cast(order_ord, pa.float64()), 0.5), expected_orders)
        t = pc.divide(pc.subtract(pc.sqrt(pc.add(pc.multiply(x, 8.0), 1.0)), 1.0), 2.0)
        day = pc.cast(pc.floor(pc.multiply(t, float(n_days))), pa.int64())
        day = pc.min_element_wise(day, pa.scalar(n_days - 1, pa.int64()))
        order_number = pc.binary_join_element_wise(
            pa.scalar("SO"), pc.cast(pc.add(order_ord, FIRST_ORDER_NUMBER), pa.string()), ""
        )
        line = pc.binary_join_element_wise(
            pc.take(dates, day),
            order_number,
            pc.take(product_table, _uniform_index(rng, n, len(product_table))),
            pc.take(territory_table, territory),
            pc.take(quantity_table, _uniform_index(rng, n, len(quantity_table))),
            ",",
        )
        # the joined lines are contiguous in the string array's data buffer
        assert line.offset == 0 and line.null_count == 0
        nbytes = pc.sum(pc.binary_length(line)).as_py()
        yield memoryview(line.buffers()[2])[:nbytes]


# --------------------------------------------------------------------------- entry points


def generate(out_dir: str | os.PathLike = DEFAULT_OUT, rows: int = DEFAULT_ROWS,
             seed: int = DEFAULT_SEED) -> dict:
    """Write the five CSV files into ``out_dir`` and return a summary dict.

    Summary: ``{"out", "seed", "rows" (sale rows), "bytes" (all files),
    "seconds", "files": {name: {"rows", "bytes"}}}``; per-file rows exclude the header.
    """
    if rows < 0:
        raise ValueError("rows must be >= 0")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, int]] = {}

    def small(name: str, header: list[str], data: list[tuple]) -> None:
        size = _write_atomic(out / name, [_csv_text(header, data).encode("utf-8")])
        files[name] = {"rows": len(data), "bytes": size}

    products = build_products(seed)
    small(
        "product.csv",
        ["ProductKey", "ProductSubcategoryKey", "ProductName", "ProductSKU", "ProductColor",
         "ProductCost", "ProductPrice"],
        products,
    )
    small("product_category.csv", ["ProductCategoryKey", "CategoryName"], CATEGORIES)
    small(
        "product_subcategory.csv",
        ["ProductSubcategoryKey", "SubcategoryName", "ProductCategoryKey"],
        [s[:3] for s in SUBCATEGORIES],
    )
    small(
        "territories.csv",
        ["SalesTerritoryKey", "Region", "Country", "Continent"],
        [t[:4] for t in TERRITORIES],
    )

    sub_weight = {s[0]: s[4] for s in SUBCATEGORIES}
    per_sub = {}
    for p in products:
        per_sub[p[1]] = per_sub.get(p[1], 0) + 1
    weights = [sub_weight[p[1]] / per_sub[p[1]] for p in products]
    sale = _sale_chunks(rows, seed, [p[0] for p in products], weights)
    size = _write_atomic(out / "sale.csv", sale)
    files["sale.csv"] = {"rows": rows, "bytes": size}

    files = {name: files[name] for name in FILES}
    return {
        "out": str(out),
        "seed": seed,
        "rows": rows,
        "bytes": sum(f["bytes"] for f in files.values()),
        "seconds": round(time.perf_counter() - t0, 3),
        "files": files,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows of sale.csv")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output directory")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    args = parser.parse_args(argv)
    summary = generate(args.out, args.rows, args.seed)
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
