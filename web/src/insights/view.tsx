// One insight's answer rendered: the chart of its kind (uPlot line/bar/stacked, funnel
// bars with conversion, retention heat table, paths sankey), the table of its numbers,
// and CSV / PNG downloads. Used by the insight builder and the dashboards alike.
import { useRef, useState } from "preact/hooks";
import { Chart } from "../components/chart";
import { downloadPng } from "../components/download";
import { DataTable } from "../components/table";
import { HeatTable, heatCanvas } from "./heat";
import { Sankey } from "./sankey";
import { type Doc, type FunnelResult, type Result, funnelBreakdown, stepName, toSeries, toTable } from "./series";

function pct(x: number): string {
  return `${(100 * x).toFixed(1)}%`;
}

function duration(s: number | null): string {
  if (s === null) return "—";
  if (s < 90) return `${s.toFixed(1)} s`;
  if (s < 5400) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function FunnelSteps({ result }: { result: FunnelResult }) {
  return (
    <ol class="funnel-steps" data-series={JSON.stringify({
      labels: result.steps.map(stepName),
      series: [{ name: "conversion", values: result.steps.map((s) => s.conversion) },
        { name: "conversion_from_previous", values: result.steps.map((s) => s.conversion_from_previous) },
        { name: "median_seconds_to_convert", values: result.steps.map((s) => s.median_seconds_to_convert) }],
    })}>
      {result.steps.map((s, i) => (
        <li key={i}>
          <strong>{s.label ?? s.event ?? "any event"}</strong>{" "}
          <span>{s.count}</span>{" · "}
          <span>{pct(s.conversion)} overall</span>
          {i > 0 ? <>{" · "}<span>{pct(s.conversion_from_previous)} from the step before</span>
            {" · "}<span>{result.steps[i - 1].count - s.count} dropped off</span>
            {" · "}<span>median {duration(s.median_seconds_to_convert)} to convert</span></> : null}
        </li>
      ))}
    </ol>
  );
}

export function Figure({ doc, result, since, chartType = "line", title }: {
  doc: Doc; result: Result; since: number; chartType?: "line" | "bar"; title: string;
}) {
  switch (result.kind) {
    case "trends": {
      const s = toSeries(result)!;
      return <Chart kind={chartType} labels={s.labels} series={s.series} since={since} title={title} />;
    }
    case "funnel": {
      const s = toSeries(result)!;
      const b = funnelBreakdown(result);
      return (
        <>
          <Chart kind="bar" labels={s.labels} series={s.series} since={since} title={title} />
          <FunnelSteps result={result} />
          {b ? <Chart kind="bar" labels={b.labels} series={b.series} since={since} title={`${title}: by ${String(doc.breakdown ?? "breakdown")}`} /> : null}
        </>
      );
    }
    case "retention":
      return <HeatTable result={result} since={since} />;
    case "paths":
      return <Sankey result={result} since={since} />;
    case "stickiness": {
      const s = toSeries(result)!;
      return <Chart kind="bar" labels={s.labels} series={s.series} since={since} title={title} />;
    }
    case "lifecycle": {
      const s = toSeries(result)!;
      return <Chart kind="stacked" labels={s.labels} series={s.series} since={since} title={title} />;
    }
    default:
      return null;
  }
}

export function InsightView({ doc, result, since, name, chartType, compact = false }: {
  doc: Doc; result: Result; since: number; name: string; chartType?: "line" | "bar"; compact?: boolean;
}) {
  const box = useRef<HTMLDivElement>(null);
  const [error, setError] = useState<string | null>(null);
  const [open, setOpen] = useState(false);
  const table = toTable(result);
  const png = async () => {
    setError(null);
    try {
      if (result.kind === "retention") await downloadPng(name, heatCanvas(result));
      else if (box.current) await downloadPng(name, box.current);
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
  };
  return (
    <div class="insight-view" data-kind={result.kind}>
      <div ref={box}>
        <Figure doc={doc} result={result} since={since} chartType={chartType} title={name} />
      </div>
      {result.kind === "sql" && result.truncated ? (
        <p class="notice" role="status">The answer was cut at the row limit ({result.rows.length} rows).</p>
      ) : null}
      <div class="downloads">
        {result.kind !== "sql" ? <button type="button" class="secondary" onClick={() => void png()}>Download PNG</button> : null}
      </div>
      {error ? <p class="error" role="alert">{error}</p> : null}
      {compact ? (
        <details class="numbers" onToggle={(e) => setOpen((e.currentTarget as HTMLDetailsElement).open)}>
          <summary>Numbers</summary>
          {/* only when open: a closed <details> still lays its content out (and overflows) */}
          {open ? <DataTable columns={table.columns} rows={table.rows} name={name} caption={`${name}: numbers`} /> : null}
        </details>
      ) : <DataTable columns={table.columns} rows={table.rows} name={name} caption={`${name}: numbers`} />}
    </div>
  );
}
