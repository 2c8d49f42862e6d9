// Retention as a cohort heat table: an HTML table whose cells are shaded by the share of
// the cohort that came back; data-series carries the numbers as the API answered them.
import { useLayoutEffect, useRef } from "preact/hooks";
import { seriesAttr } from "../components/chart";
import type { RetentionResult } from "./series";
import { toSeries } from "./series";

function share(v: number | undefined, size: number): number {
  return v === undefined || size <= 0 ? 0 : Math.min(1, v / size);
}

function shade(p: number): string {
  return `rgba(29, 78, 216, ${(0.06 + 0.84 * p).toFixed(3)})`;
}

export function HeatTable({ result, since }: { result: RetentionResult; since: number }) {
  const root = useRef<HTMLDivElement>(null);
  const s = toSeries(result)!;
  const n = s.series.length - 1;
  useLayoutEffect(() => {
    root.current?.setAttribute("data-render-ms", (performance.now() - since).toFixed(1));
  });
  return (
    <div class="heat chart" ref={root} data-series={seriesAttr(s.labels, s.series)} data-kind="heat">
      <div class="table-scroll" tabIndex={0} role="region" aria-label={`Retention by ${result.period}`}>
        <table>
          <caption class="visually-hidden">Retention by cohort: persons who came back in each {result.period} after</caption>
          <thead>
            <tr>
              <th scope="col">Cohort</th>
              <th scope="col">Size</th>
              {Array.from({ length: n }, (_, i) => <th scope="col" key={i}>{result.period} {i}</th>)}
            </tr>
          </thead>
          <tbody>
            {result.cohorts.map((c) => (
              <tr key={c.start}>
                <th scope="row">{c.start}</th>
                <td class="num">{c.size}</td>
                {Array.from({ length: n }, (_, i) => {
                  const v = c.values[i];
                  const p = share(v, c.size);
                  return v === undefined ? <td key={i} /> : (
                    <td key={i} class="num heat-cell" title={`${(100 * p).toFixed(1)}%`}
                      style={{ background: shade(p), color: p > 0.45 ? "#fff" : "#111827" }}>{v}</td>
                  );
                })}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </div>
  );
}

/** The heat table drawn on a canvas, for the PNG download. */
export function heatCanvas(result: RetentionResult): HTMLCanvasElement {
  const n = Math.max(0, ...result.cohorts.map((c) => c.values.length));
  const cw = 64, rh = 26, head = 110, cols = n + 1;
  const canvas = document.createElement("canvas");
  canvas.width = head + cols * cw + 8;
  canvas.height = (result.cohorts.length + 1) * rh + 8;
  const ctx = canvas.getContext("2d")!;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = "12px sans-serif";
  ctx.textBaseline = "middle";
  ctx.fillStyle = "#111827";
  ctx.fillText("cohort", 4, rh / 2);
  ctx.fillText("size", head + 4, rh / 2);
  for (let i = 0; i < n; i++) ctx.fillText(`${result.period} ${i}`, head + (i + 1) * cw + 4, rh / 2);
  result.cohorts.forEach((c, r) => {
    const y = (r + 1) * rh;
    ctx.fillStyle = "#111827";
    ctx.fillText(c.start, 4, y + rh / 2);
    ctx.fillText(String(c.size), head + 4, y + rh / 2);
    c.values.forEach((v, i) => {
      const p = share(v, c.size);
      ctx.fillStyle = shade(p);
      ctx.fillRect(head + (i + 1) * cw, y, cw - 2, rh - 2);
      ctx.fillStyle = p > 0.45 ? "#fff" : "#111827";
      ctx.fillText(String(v), head + (i + 1) * cw + 4, y + rh / 2);
    });
  });
  return canvas;
}
