// Tabulator, with the few modules the console uses, for result grids and lists.
import {
  Tabulator,
  FormatModule,
  ResizeColumnsModule,
  SortModule,
  InteractionModule,
  TooltipModule,
} from "tabulator-tables";
import { escapeHtml } from "./ui.js";

Tabulator.registerModule([FormatModule, ResizeColumnsModule, SortModule, InteractionModule, TooltipModule]);

/** A cell value as text: null, lists and structs included. */
export function cellText(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function valueFormatter(cell) {
  const v = cell.getValue();
  if (v === null || v === undefined) return '<span class="null">NULL</span>';
  return escapeHtml(cellText(v));
}

const NUMERIC = /^(u?int|tinyint|smallint|bigint|integer|long|float|double|decimal|real|hugeint|number)/i;

/**
 * A grid of a query's page: `columns` [{name, type}] and `rows` as arrays.
 * Fields are c0, c1, ... so column names with dots or spaces stay plain titles.
 */
export function resultGrid(el, columns, rows, { height = "100%" } = {}) {
  const cols = columns.map((c, i) => ({
    title: c.name,
    field: `c${i}`,
    headerTooltip: `${c.name}: ${c.type}`,
    formatter: valueFormatter,
    hozAlign: NUMERIC.test(c.type || "") ? "right" : "left",
    headerSort: false,
    maxInitialWidth: 360,
    tooltip: true,
  }));
  const data = rows.map((r) => {
    const o = {};
    r.forEach((v, i) => (o[`c${i}`] = v));
    return o;
  });
  return new Tabulator(el, {
    data,
    columns: cols,
    layout: "fitDataStretch",
    height,
    placeholder: "No rows",
    columnDefaults: { resizable: true },
  });
}

/** A list grid: Tabulator's own column definitions over row objects. */
export function listGrid(el, columns, data, opts = {}) {
  return new Tabulator(el, {
    data,
    columns,
    layout: "fitDataStretch",
    placeholder: opts.placeholder || "Nothing yet",
    columnDefaults: { resizable: true, headerSort: opts.sort ?? true },
    ...opts.tabulator,
  });
}

/** Replaces a list grid's rows once it is built (setData before that is lost). */
export function setRows(table, rows) {
  if (table.initialized) return table.replaceData(rows);
  return new Promise((resolve) => table.on("tableBuilt", () => resolve(table.replaceData(rows))));
}
