// The overview's state, kept in the query string: ?range=today|7d|30d|custom, &from=&to=
// (custom), &compare=1, &filters=<JSON list of [field, value]>.
import { params, setParams } from "../router";
import type { Filter, OverviewBody } from "./types";

export const PRESETS: { id: string; label: string; days: number }[] = [
  { id: "today", label: "Today", days: 1 },
  { id: "7d", label: "Last 7 days", days: 7 },
  { id: "30d", label: "Last 30 days", days: 30 },
  { id: "custom", label: "Custom range", days: 0 },
];

export const FIELDS = ["page", "entry_page", "exit_page", "referrer", "utm_source", "utm_medium",
  "utm_campaign", "country", "region", "device", "browser", "os", "source"];

export interface State {
  range: string;
  from: string;
  to: string;
  compare: boolean;
  filters: Filter[];
}

function isoDay(d: Date): string {
  return d.toISOString().slice(0, 10);
}

const DAY = /^\d{4}-\d{2}-\d{2}$/;

function parseFilters(raw: string | null): Filter[] {
  if (!raw) return [];
  try {
    const list: unknown = JSON.parse(raw);
    if (!Array.isArray(list)) return [];
    return list.filter((f): f is [string, string] => Array.isArray(f) && f.length === 2
      && typeof f[0] === "string" && typeof f[1] === "string" && FIELDS.includes(f[0]))
      .slice(0, 20).map(([field, value]) => ({ field, value }));
  } catch {
    return [];
  }
}

export function readState(): State {
  const p = params();
  const range = PRESETS.some((x) => x.id === p.get("range")) ? p.get("range")! : "30d";
  const today = new Date();
  let from: string;
  let to = isoDay(today);
  if (range === "custom") {
    const f = p.get("from") ?? "";
    const t = p.get("to") ?? "";
    to = DAY.test(t) ? t : to;
    from = DAY.test(f) ? f : isoDay(new Date(Date.parse(to) - 29 * 86400000));
  } else {
    const days = PRESETS.find((x) => x.id === range)!.days;
    from = isoDay(new Date(today.getTime() - (days - 1) * 86400000));
  }
  return { range, from, to, compare: p.get("compare") === "1", filters: parseFilters(p.get("filters")) };
}

export function writeState(s: Partial<State>): void {
  const out: Record<string, string | null> = {};
  if (s.range !== undefined) out.range = s.range === "30d" ? null : s.range;
  if (s.from !== undefined) out.from = s.from;
  if (s.to !== undefined) out.to = s.to;
  if (s.compare !== undefined) out.compare = s.compare ? "1" : null;
  if (s.filters !== undefined) {
    out.filters = s.filters.length ? JSON.stringify(s.filters.map((f) => [f.field, f.value])) : null;
  }
  setParams(out);
}

export function body(s: State): OverviewBody {
  return { from: s.from, to: s.to, compare: s.compare, filters: s.filters, limit: 10 };
}
