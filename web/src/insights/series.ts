// Insight answers as the numbers a chart draws (data-series: labels and series exactly as
// the API answered them) and as a table. One mapping per kind; the Playwright tests apply
// the same mapping to the API's answer and compare.
import type { Cell } from "../components/download";

export type Doc = Record<string, unknown> & { kind: string };
export interface Named { name: string; values: (number | null)[] }
export interface SeriesData { labels: (string | number)[]; series: Named[] }
export interface TableData { columns: string[]; rows: Cell[][] }

export interface TrendSeries {
  label: string; event?: string | null; dates: string[]; values: (number | null)[];
  breakdown_value?: unknown; is_other?: boolean; compare?: string;
}
export interface TrendsResult { kind: "trends"; series: TrendSeries[] }
export interface FunnelStep {
  event: string | null; label?: string | null; count: number; conversion: number;
  conversion_from_previous: number; median_seconds_to_convert: number | null;
}
export interface FunnelResult {
  kind: "funnel"; steps: FunnelStep[];
  breakdown?: { breakdown_value: unknown; steps: FunnelStep[] }[];
}
export interface RetentionResult { kind: "retention"; period: string; cohorts: { start: string; size: number; values: number[] }[] }
export interface PathsResult { kind: "paths"; paths: { steps: string[]; count: number }[] }
export interface StickinessResult { kind: "stickiness"; series: { label: string; intervals: number[]; values: number[] }[] }
export interface LifecycleResult {
  kind: "lifecycle"; dates: string[]; new: number[]; returning: number[]; resurrecting: number[]; dormant: number[];
}
export interface SqlResult { kind: "sql"; columns: string[]; rows: Cell[][]; truncated: boolean }
export type Result = TrendsResult | FunnelResult | RetentionResult | PathsResult | StickinessResult
  | LifecycleResult | SqlResult;

export const LIFECYCLE = ["new", "returning", "resurrecting", "dormant"] as const;

/** A breakdown value as text: null is "(not set)", anything else as JSON would show it. */
export function valueText(v: unknown): string {
  if (v === null || v === undefined) return "(not set)";
  return typeof v === "string" ? v : JSON.stringify(v);
}

/** A trends series' name: its label, its breakdown value when the answer is broken down
 * (some series has a value: without a breakdown every series carries null), compare. */
export function trendName(s: TrendSeries, brokenDown: boolean): string {
  const parts = [s.label];
  if (brokenDown) parts.push(valueText(s.breakdown_value));
  if (s.compare) parts.push(s.compare);
  return parts.join(" · ");
}

export function stepName(s: FunnelStep, i: number): string {
  return `${i + 1}. ${s.label ?? s.event ?? "any event"}`;
}

/** The chart's numbers for a kind's answer (null: the kind has no chart, e.g. sql). */
export function toSeries(r: Result): SeriesData | null {
  switch (r.kind) {
    case "trends": {
      const first = r.series.find((s) => s.compare !== "previous") ?? r.series[0];
      const brokenDown = r.series.some((s) => s.breakdown_value !== null && s.breakdown_value !== undefined);
      return { labels: first ? first.dates : [], series: r.series.map((s) => ({ name: trendName(s, brokenDown), values: s.values })) };
    }
    case "funnel":
      return { labels: r.steps.map(stepName), series: [{ name: "count", values: r.steps.map((s) => s.count) }] };
    case "retention": {
      const n = Math.max(0, ...r.cohorts.map((c) => c.values.length));
      return {
        labels: r.cohorts.map((c) => c.start),
        series: [{ name: "size", values: r.cohorts.map((c) => c.size) },
          ...Array.from({ length: n }, (_, i) => ({ name: `${r.period} ${i}`, values: r.cohorts.map((c) => c.values[i] ?? null) }))],
      };
    }
    case "paths":
      return { labels: r.paths.map((p) => p.steps.join(" → ")), series: [{ name: "sessions", values: r.paths.map((p) => p.count) }] };
    case "stickiness":
      return { labels: r.series[0]?.intervals ?? [], series: r.series.map((s) => ({ name: s.label, values: s.values })) };
    case "lifecycle":
      return { labels: r.dates, series: LIFECYCLE.map((k) => ({ name: k, values: r[k] })) };
    default:
      return null;
  }
}

/** The funnel's breakdown as a chart: one series of counts per breakdown value. */
export function funnelBreakdown(r: FunnelResult): SeriesData | null {
  if (!r.breakdown || r.breakdown.length === 0) return null;
  return { labels: r.steps.map(stepName), series: r.breakdown.map((b) => ({ name: valueText(b.breakdown_value), values: b.steps.map((s) => s.count) })) };
}

/** The answer's numbers as a table: rows as the API gave them. */
export function toTable(r: Result): TableData {
  switch (r.kind) {
    case "sql":
      return { columns: r.columns, rows: r.rows.map((row) => row.map((v) => (v !== null && typeof v === "object" ? JSON.stringify(v) : v))) };
    case "funnel": {
      const rows: Cell[][] = [];
      const add = (bv: string, steps: FunnelStep[]) => steps.forEach((s, i) => rows.push([
        bv, stepName(s, i), s.count, s.conversion, s.conversion_from_previous,
        i === 0 ? null : steps[i - 1].count - s.count, s.median_seconds_to_convert]));
      add("(all)", r.steps);
      for (const b of r.breakdown ?? []) add(valueText(b.breakdown_value), b.steps);
      return { columns: ["breakdown", "step", "count", "conversion", "conversion_from_previous", "drop_off", "median_seconds_to_convert"], rows };
    }
    case "paths":
      return { columns: ["path", "sessions"], rows: r.paths.map((p) => [p.steps.join(" → "), p.count]) };
    default: {
      const s = toSeries(r);
      if (!s) return { columns: [], rows: [] };
      return {
        columns: [r.kind === "retention" ? "cohort" : r.kind === "stickiness" ? "intervals" : "date", ...s.series.map((x) => x.name)],
        rows: s.labels.map((l, i) => [l, ...s.series.map((x) => x.values[i] ?? null)]),
      };
    }
  }
}
