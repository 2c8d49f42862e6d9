// The insight builder's forms, one per kind: each edits the insight document (the same
// object the JSON view shows), never a copy of its own.
import { Check, Num, Select, Text } from "./fields";
import type { Doc } from "./series";

export const KINDS = ["trends", "funnel", "retention", "paths", "stickiness", "lifecycle"] as const;
export type Kind = (typeof KINDS)[number];
const MATHS = ["total", "persons", "sessions", "unique", "sum", "avg", "min", "max", "median", "p90", "p99"] as const;
const INTERVALS = ["hour", "day", "week", "month"] as const;
export const EVENTS_LIST = "insight-events";

export function defaultDoc(kind: Kind): Doc {
  const range = { date_from: "-7d" };
  switch (kind) {
    case "trends": return { kind, series: [{ event: "$page", math: "total" }], interval: "day", ...range };
    case "funnel": return { kind, steps: [{ event: "$page" }, { event: "Signed Up" }], window: "7d", ...range };
    case "retention": return { kind, start_event: "$page", return_event: "$page", period: "day", periods: 7 };
    case "paths": return { kind, start_event: "$page", depth: 4, limit: 20, ...range };
    case "stickiness": return { kind, series: [{ event: "$page" }], interval: "day", ...range };
    case "lifecycle": return { kind, event: "$page", interval: "day", ...range };
  }
}

type Obj = Record<string, unknown>;
const str = (v: unknown): string => (typeof v === "string" ? v : "");
const num = (v: unknown, d: number): number => (typeof v === "number" ? v : d);
/** A text field's value into the document: empty means "not set" (the field is removed). */
function put(doc: Doc, key: string, v: unknown): Doc {
  const out: Doc = { ...doc };
  if (v === "" || v === null || v === undefined || v === false) delete out[key];
  else out[key] = v;
  return out;
}
function items(doc: Doc, key: string): Obj[] {
  const v = doc[key];
  return Array.isArray(v) ? (v.filter((x) => x && typeof x === "object") as Obj[]) : [];
}
function putItem(doc: Doc, key: string, i: number, field: string, v: unknown): Doc {
  const list = items(doc, key).map((x, j) => {
    if (j !== i) return x;
    const o: Obj = { ...x };
    if (v === "" || v === undefined) delete o[field];
    else o[field] = v;
    return o;
  });
  return { ...doc, [key]: list };
}

interface FormProps { doc: Doc; set: (d: Doc) => void }

function SeriesList({ doc, set, math }: FormProps & { math: boolean }) {
  const list = items(doc, "series");
  return (
    <fieldset class="series-list">
      <legend>Series</legend>
      {list.map((s, i) => (
        <div class="row" key={i}>
          <Text id={`series-${i}-event`} label={`${String.fromCharCode(65 + i)}: event`} value={str(s.event)} list={EVENTS_LIST}
            placeholder="any event" onChange={(v) => set(putItem(doc, "series", i, "event", v === "" ? null : v))} />
          {math ? <Select id={`series-${i}-math`} label="Math" value={(str(s.math) || "total") as (typeof MATHS)[number]}
            options={MATHS} onChange={(v) => set(putItem(doc, "series", i, "math", v))} /> : null}
          {math ? <Text id={`series-${i}-property`} label="Property (unique, sum, avg…)" value={str(s.property)}
            onChange={(v) => set(putItem(doc, "series", i, "property", v))} /> : null}
          {list.length > 1 ? <button type="button" class="secondary" aria-label={`Remove series ${String.fromCharCode(65 + i)}`}
            onClick={() => set({ ...doc, series: list.filter((_, j) => j !== i) })}>Remove</button> : null}
        </div>
      ))}
      {list.length < 26 ? <button type="button" class="secondary"
        onClick={() => set({ ...doc, series: [...list, { event: "$page", ...(math ? { math: "total" } : {}) }] })}>Add series</button> : null}
    </fieldset>
  );
}

function Trends({ doc, set, chart, setChart }: FormProps & { chart: "line" | "bar"; setChart: (c: "line" | "bar") => void }) {
  return (
    <>
      <SeriesList doc={doc} set={set} math />
      <div class="row">
        <Select id="trends-interval" label="Interval" value={(str(doc.interval) || "day") as (typeof INTERVALS)[number]}
          options={INTERVALS} onChange={(v) => set(put(doc, "interval", v))} />
        <Text id="trends-breakdown" label="Breakdown (property)" value={str(doc.breakdown)} onChange={(v) => set(put(doc, "breakdown", v))} />
        <Text id="trends-formula" label="Formula" placeholder="A/B*100" value={str(doc.formula)} onChange={(v) => set(put(doc, "formula", v))} />
        <Check id="trends-compare" label="Compare with the previous period" checked={doc.compare === true}
          onChange={(v) => set(put(doc, "compare", v))} />
        <Select id="trends-chart" label="Chart" value={chart} options={["line", "bar"] as const} onChange={setChart} />
      </div>
    </>
  );
}

function Funnel({ doc, set }: FormProps) {
  const steps = items(doc, "steps");
  return (
    <>
      <fieldset>
        <legend>Steps</legend>
        {steps.map((s, i) => (
          <div class="row" key={i}>
            <Text id={`step-${i}-event`} label={`Step ${i + 1}`} value={str(s.event)} list={EVENTS_LIST} placeholder="any event"
              onChange={(v) => set(putItem(doc, "steps", i, "event", v === "" ? null : v))} />
            {steps.length > 2 ? <button type="button" class="secondary" aria-label={`Remove step ${i + 1}`}
              onClick={() => set({ ...doc, steps: steps.filter((_, j) => j !== i) })}>Remove</button> : null}
          </div>
        ))}
        {steps.length < 20 ? <button type="button" class="secondary" onClick={() => set({ ...doc, steps: [...steps, { event: "$page" }] })}>
          Add step</button> : null}
      </fieldset>
      <div class="row">
        <Text id="funnel-window" label="Window" placeholder="7d" value={str(doc.window)} onChange={(v) => set(put(doc, "window", v))} />
        <Select id="funnel-order" label="Order" value={(str(doc.order) || "ordered") as "ordered" | "strict" | "any"}
          options={["ordered", "strict", "any"] as const} onChange={(v) => set(put(doc, "order", v))} />
        <Text id="funnel-breakdown" label="Breakdown (property)" value={str(doc.breakdown)} onChange={(v) => set(put(doc, "breakdown", v))} />
      </div>
    </>
  );
}

function Retention({ doc, set }: FormProps) {
  return (
    <div class="row">
      <Text id="ret-start" label="Start event" value={str(doc.start_event)} list={EVENTS_LIST} onChange={(v) => set(put(doc, "start_event", v))} />
      <Text id="ret-return" label="Return event" value={str(doc.return_event)} list={EVENTS_LIST} onChange={(v) => set(put(doc, "return_event", v))} />
      <Select id="ret-period" label="Period" value={(str(doc.period) || "week") as (typeof INTERVALS)[number]} options={INTERVALS}
        onChange={(v) => set(put(doc, "period", v))} />
      <Num id="ret-periods" label="Periods" value={num(doc.periods, 8)} min={1} max={120} onChange={(v) => set(put(doc, "periods", v))} />
      <Select id="ret-mode" label="Mode" value={(str(doc.mode) || "first_time") as "first_time" | "recurring"}
        options={["first_time", "recurring"] as const} onChange={(v) => set(put(doc, "mode", v))} />
    </div>
  );
}

function Paths({ doc, set }: FormProps) {
  return (
    <div class="row">
      <Text id="paths-start" label="Start event" value={str(doc.start_event)} list={EVENTS_LIST} onChange={(v) => set(put(doc, "start_event", v))} />
      <Text id="paths-end" label="End event" value={str(doc.end_event)} list={EVENTS_LIST} onChange={(v) => set(put(doc, "end_event", v))} />
      <Num id="paths-depth" label="Depth" value={num(doc.depth, 3)} min={2} max={10} onChange={(v) => set(put(doc, "depth", v))} />
      <Num id="paths-limit" label="Paths" value={num(doc.limit, 20)} min={1} max={1000} onChange={(v) => set(put(doc, "limit", v))} />
      <Select id="paths-type" label="Steps are" value={(str(doc.path_type) || "event") as "event" | "page"}
        options={[["event", "events"], ["page", "pages"]] as const} onChange={(v) => set(put(doc, "path_type", v))} />
    </div>
  );
}

function Lifecycle({ doc, set }: FormProps) {
  return (
    <div class="row">
      <Text id="life-event" label="Event" value={str(doc.event)} list={EVENTS_LIST} placeholder="any event"
        onChange={(v) => set(put(doc, "event", v))} />
      <Select id="life-interval" label="Interval" value={(str(doc.interval) || "day") as (typeof INTERVALS)[number]}
        options={INTERVALS} onChange={(v) => set(put(doc, "interval", v))} />
    </div>
  );
}

function Stickiness({ doc, set }: FormProps) {
  return (
    <>
      <SeriesList doc={doc} set={set} math={false} />
      <Select id="stick-interval" label="Interval" value={(str(doc.interval) || "day") as (typeof INTERVALS)[number]}
        options={INTERVALS} onChange={(v) => set(put(doc, "interval", v))} />
    </>
  );
}

export function Common({ doc, set, cohorts }: FormProps & { cohorts: { id: number; name: string }[] }) {
  return (
    <div class="row">
      <Text id="date-from" label="From" placeholder="-7d" value={str(doc.date_from)} onChange={(v) => set(put(doc, "date_from", v))} />
      <Text id="date-to" label="To" placeholder="today" value={str(doc.date_to)} onChange={(v) => set(put(doc, "date_to", v))} />
      <Select id="doc-cohort" label="Cohort" value={typeof doc.cohort === "number" ? String(doc.cohort) : ""}
        options={[["", "everyone"], ...cohorts.map((c): [string, string] => [String(c.id), c.name])]}
        onChange={(v) => set(put(doc, "cohort", v === "" ? null : Number(v)))} />
    </div>
  );
}

export function KindForm({ doc, set, chart, setChart }: FormProps & { chart: "line" | "bar"; setChart: (c: "line" | "bar") => void }) {
  switch (doc.kind) {
    case "trends": return <Trends doc={doc} set={set} chart={chart} setChart={setChart} />;
    case "funnel": return <Funnel doc={doc} set={set} />;
    case "retention": return <Retention doc={doc} set={set} />;
    case "paths": return <Paths doc={doc} set={set} />;
    case "stickiness": return <Stickiness doc={doc} set={set} />;
    case "lifecycle": return <Lifecycle doc={doc} set={set} />;
    default: return <p class="muted">This kind has no form: edit its JSON below.</p>;
  }
}
