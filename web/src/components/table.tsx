// <DataTable columns rows />: headers are buttons that sort (numbers as numbers), a
// CSV button downloads what the table holds (as given, in the order shown).
import { useMemo, useState } from "preact/hooks";
import { type Cell, downloadCsv } from "./download";
import { ScrollRegion } from "./scroll";

export interface DataTableProps {
  columns: string[];
  rows: Cell[][];
  /** the CSV file's name (without .csv) */
  name?: string;
  caption?: string;
  /** cap on the rows shown (all are in the CSV) */
  limit?: number;
}

function compare(a: Cell, b: Cell): number {
  if (a === b) return 0;
  if (a === null || a === undefined) return 1;
  if (b === null || b === undefined) return -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

export function DataTable({ columns, rows, name = "table", caption, limit = 1000 }: DataTableProps) {
  const [sort, setSort] = useState<{ col: number; desc: boolean } | null>(null);
  const sorted = useMemo(() => {
    if (!sort) return rows;
    const out = rows.slice().sort((r1, r2) => compare(r1[sort.col], r2[sort.col]));
    return sort.desc ? out.reverse() : out;
  }, [rows, sort]);
  const shown = sorted.slice(0, limit);
  const toggle = (col: number) =>
    setSort((s) => (s && s.col === col ? { col, desc: !s.desc } : { col, desc: false }));
  return (
    <div class="data-table">
      <div class="table-tools">
        <span class="muted">{rows.length} row{rows.length === 1 ? "" : "s"}
          {rows.length > shown.length ? ` (first ${shown.length} shown)` : ""}</span>
        <button type="button" class="secondary" onClick={() => downloadCsv(name, columns, sorted)}>
          Download CSV
        </button>
      </div>
      <ScrollRegion label={caption ?? name}>
        <table>
          {caption ? <caption>{caption}</caption> : null}
          <thead>
            <tr>
              {columns.map((c, i) => {
                const state = sort && sort.col === i ? (sort.desc ? "descending" : "ascending") : "none";
                return (
                  <th scope="col" key={i} aria-sort={state}>
                    <button type="button" class="sort" onClick={() => toggle(i)}>
                      {c}
                      <span aria-hidden="true">{state === "ascending" ? " ▲" : state === "descending" ? " ▼" : ""}</span>
                    </button>
                  </th>
                );
              })}
            </tr>
          </thead>
          <tbody>
            {shown.map((r, j) => (
              <tr key={j}>
                {r.map((v, i) => (
                  <td key={i} class={typeof v === "number" ? "num" : undefined}>
                    {v === null || v === undefined ? "" : String(v)}
                  </td>
                ))}
              </tr>
            ))}
          </tbody>
        </table>
      </ScrollRegion>
    </div>
  );
}
