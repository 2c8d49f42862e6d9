// <Chart kind="line"|"bar"|"stacked" labels series /> on uPlot (canvas). The root carries
// the numbers it draws as data-series (exactly as given: the API's answer) and, once
// drawn, data-render-ms (ms from `since`, default: this render, to the end of drawing).
// It resizes with its container; a legend and a visually hidden table give the numbers
// to those who cannot see the canvas.
import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";

export interface Series {
  name: string;
  values: (number | null)[];
}

export type ChartKind = "line" | "bar" | "stacked";

export interface ChartProps {
  kind: ChartKind;
  labels: (string | number)[];
  series: Series[];
  /** accessible name of the chart */
  title?: string;
  height?: number;
  /** performance.now() when the answer was in hand (default: when this render began) */
  since?: number;
}

export const PALETTE = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2",
  "#db2777", "#65a30d", "#4b5563", "#ea580c"];

export function color(i: number): string {
  return PALETTE[i % PALETTE.length];
}

/** The data-series attribute's JSON: what a chart draws, as the API gave it. */
export function seriesAttr(labels: (string | number)[], series: Series[]): string {
  return JSON.stringify({ labels, series: series.map((s) => ({ name: s.name, values: s.values })) });
}

/** Stacked bars: each series' top, positives and negatives stacked apart. */
function stackedTops(series: Series[], n: number): (number | null)[][] {
  const pos = new Array<number>(n).fill(0);
  const neg = new Array<number>(n).fill(0);
  return series.map((s) => s.values.slice(0, n).map((v, x) => {
    if (v === null || v === undefined) return null;
    if (v >= 0) return (pos[x] += v);
    return (neg[x] += v);
  }));
}

/** Bars of several series side by side in each label's slot (uPlot's x0/size facets, in
 * fractions of the plotting area; the x scale spans [-0.5, n - 0.5]). */
function groupedBars(n: number, m: number): uPlot.Series.PathBuilder {
  const group = 0.8;
  const each = group / Math.max(1, m);
  const slots = Math.max(1, n);
  const facet = (f: (k: number, i: number) => number) => ({
    unit: 2 as const,
    values: (_u: uPlot, sidx: number, i0: number, i1: number) => {
      const out: number[] = [];
      for (let i = i0; i <= i1; i++) out.push(f(sidx - 1, i));
      return out;
    },
  });
  return uPlot.paths.bars!({
    disp: {
      x0: facet((k, i) => (i + (1 - group) / 2 + k * each) / slots),
      size: facet(() => (each * 0.92) / slots),
    },
  });
}

function options(props: ChartProps, width: number, height: number): uPlot.Options {
  const { kind, labels, series } = props;
  const n = labels.length;
  const bars = kind === "stacked" || (kind === "bar" && series.length === 1)
    ? uPlot.paths.bars!({ size: [0.7, 80], gap: 1 })
    : kind === "bar" ? groupedBars(n, series.length) : undefined;
  const order = series.map((_, i) => i);
  if (kind === "stacked") order.reverse(); // the tallest stack first, the lower ones over it
  return {
    width,
    height,
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
    scales: {
      x: { time: false, range: [-0.5, Math.max(0.5, n - 0.5)] },
      // bars start at 0; lines too (counts): the range always holds 0
      y: { range: (_u, min, max) => uPlot.rangeNum(Math.min(0, min), Math.max(0, max, min === max ? 1 : 0), 0.1, true) },
    },
    axes: [
      {
        incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
        // room for the longest label (about 7 px a character) between two ticks
        space: Math.max(40, 12 + 7 * Math.max(0, ...labels.map((l) => String(l).length))),
        values: (_u, splits) => splits.map((v) => (Number.isInteger(v) && v >= 0 && v < n
          ? String(labels[v]) : "")),
      },
      { size: 60 },
    ],
    series: [
      {},
      ...order.map((i) => ({
        label: series[i].name,
        stroke: color(i),
        width: kind === "line" ? 2 : 1,
        fill: kind === "line" ? undefined : color(i),
        paths: bars,
        points: { show: kind === "line" && n < 60 },
      })),
    ],
  };
}

function data(props: ChartProps): uPlot.AlignedData {
  const n = props.labels.length;
  const xs = Array.from({ length: n }, (_, i) => i);
  const ys = props.kind === "stacked" ? stackedTops(props.series, n)
    : props.series.map((s) => s.values.slice(0, n));
  if (props.kind === "stacked") ys.reverse();
  return [xs, ...ys] as uPlot.AlignedData;
}

export function Chart(props: ChartProps) {
  const root = useRef<HTMLDivElement>(null);
  const plotBox = useRef<HTMLDivElement>(null);
  const began = props.since ?? performance.now();
  const height = props.height ?? 260;

  useEffect(() => {
    const box = plotBox.current;
    const el = root.current;
    if (!box || !el) return;
    const width = Math.max(200, Math.floor(box.clientWidth || 600));
    const plot = new uPlot(options(props, width, height), data(props), box);
    el.setAttribute("data-render-ms", (performance.now() - began).toFixed(1));
    const ro = new ResizeObserver(() => {
      const w = Math.max(200, Math.floor(box.clientWidth));
      if (w !== plot.width) plot.setSize({ width: w, height });
    });
    ro.observe(box);
    return () => {
      ro.disconnect();
      plot.destroy();
    };
  }, [props.kind, JSON.stringify(props.labels), JSON.stringify(props.series), height]);

  const name = props.title ?? "Chart";
  return (
    <figure class="chart" ref={root} data-series={seriesAttr(props.labels, props.series)}
      data-kind={props.kind}>
      <div class="chart-plot" ref={plotBox} role="img" aria-label={name} />
      <ul class="chart-legend" aria-label={`${name}: legend`}>
        {props.series.map((s, i) => (
          <li key={s.name + i}>
            <span class="swatch" style={{ background: color(i) }} aria-hidden="true" />
            {s.name}
          </li>
        ))}
      </ul>
      <table class="visually-hidden">
        <caption>{name}</caption>
        <thead>
          <tr>
            <th scope="col">Label</th>
            {props.series.map((s, i) => <th scope="col" key={i}>{s.name}</th>)}
          </tr>
        </thead>
        <tbody>
          {props.labels.map((l, x) => (
            <tr key={x}>
              <th scope="row">{String(l)}</th>
              {props.series.map((s, i) => <td key={i}>{s.values[x] ?? ""}</td>)}
            </tr>
          ))}
        </tbody>
      </table>
    </figure>
  );
}
