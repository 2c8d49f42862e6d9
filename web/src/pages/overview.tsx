// The overview, one page like Plausible's: figures (with current visitors, refreshed every
// 10 s), visitors and page views per day, top lists (a click on a row adds a filter), a
// date range with comparison, and consent beside the traffic. State is in the query string.
// Each panel is its own request (in parallel) and shows as soon as its answer arrives.
import { useEffect, useState } from "preact/hooks";
import { api } from "../api";
import { Chart, type Series } from "../components/chart";
import { ApiErrorBox } from "../components/errors";
import { route } from "../router";
import "../overview/overview.css";
import { daysOf, usePanels, type Panel } from "../overview/load";
import { ConsentPanel, Tiles, TopList } from "../overview/parts";
import { body, PRESETS, readState, writeState, type State } from "../overview/state";
import type { ConsentStats, Filter, Row } from "../overview/types";

const LISTS: { id: string; title: string; field: string }[] = [
  { id: "pages", title: "Top pages", field: "page" },
  { id: "entry_pages", title: "Entry pages", field: "entry_page" },
  { id: "exit_pages", title: "Exit pages", field: "exit_page" },
  { id: "referrers", title: "Referrers", field: "referrer" },
  { id: "utm_campaigns", title: "Campaigns (source / medium / campaign)", field: "utm_campaign" },
  { id: "countries", title: "Countries", field: "country" },
  { id: "regions", title: "Regions", field: "region" },
  { id: "devices", title: "Devices", field: "device" },
  { id: "browsers", title: "Browsers", field: "browser" },
  { id: "os", title: "Operating systems", field: "os" },
];

/** One request each, in parallel (the API's `panels`). */
const PANELS = ["figures", "series", ...LISTS.map((l) => l.id), "consent"];

const LABELS: Record<string, string> = { page: "Page", entry_page: "Entry page", exit_page: "Exit page",
  referrer: "Referrer", utm_source: "UTM source", utm_medium: "UTM medium", utm_campaign: "UTM campaign",
  country: "Country", region: "Region", device: "Device", browser: "Browser", os: "OS", source: "Source" };

function filterOf(field: string, row: Row): Filter {
  if (field === "utm_campaign") {
    if (row.utm_campaign) return { field: "utm_campaign", value: row.utm_campaign };
    if (row.utm_source) return { field: "utm_source", value: row.utm_source };
    return { field: "utm_medium", value: row.utm_medium ?? "" };
  }
  return { field, value: row.value };
}

function useCurrentVisitors(): number | null {
  const [n, setN] = useState<number | null>(null);
  useEffect(() => {
    let live = true;
    const tick = () => api<{ visitors: number }>("GET", "/overview/current")
      .then((r) => { if (live) setN(r.visitors); }).catch(() => { if (live) setN(null); });
    tick();
    const timer = setInterval(tick, 10_000);
    return () => { live = false; clearInterval(timer); };
  }, []);
  return n;
}

function Controls({ state }: { state: State }) {
  return (
    <form class="ov-controls" aria-label="Date range" onSubmit={(e) => e.preventDefault()}>
      <div class="field">
        <label for="ov-range">Range</label>
        <select id="ov-range" value={state.range}
          onChange={(e) => writeState({ range: (e.target as HTMLSelectElement).value, from: undefined, to: undefined })}>
          {PRESETS.map((p) => <option key={p.id} value={p.id}>{p.label}</option>)}
        </select>
      </div>
      {state.range === "custom" ? (
        <>
          <div class="field">
            <label for="ov-from">From</label>
            <input id="ov-from" type="date" value={state.from} max={state.to}
              onChange={(e) => writeState({ from: (e.target as HTMLInputElement).value, to: state.to })} />
          </div>
          <div class="field">
            <label for="ov-to">To</label>
            <input id="ov-to" type="date" value={state.to} min={state.from}
              onChange={(e) => writeState({ to: (e.target as HTMLInputElement).value, from: state.from })} />
          </div>
        </>
      ) : null}
      <label class="check">
        <input type="checkbox" id="ov-compare" checked={state.compare}
          onChange={(e) => writeState({ compare: (e.target as HTMLInputElement).checked })} />
        Compare with the previous period
      </label>
    </form>
  );
}

function Chips({ filters }: { filters: Filter[] }) {
  if (!filters.length) return null;
  return (
    <ul class="ov-chips" aria-label="Filters">
      {filters.map((f, i) => (
        <li key={i}>
          <button type="button" data-filter={f.field}
            aria-label={`Remove filter ${LABELS[f.field] ?? f.field} is ${f.value}`}
            onClick={() => writeState({ filters: filters.filter((_, j) => j !== i) })}>
            {LABELS[f.field] ?? f.field} is {f.value} <span aria-hidden="true">×</span>
          </button>
        </li>
      ))}
    </ul>
  );
}

/** A panel not answered yet (or failed): its frame, heading and state. */
function Pending({ id, title, panel }: { id: string; title: string; panel?: Panel }) {
  return (
    <section class="panel" aria-labelledby={`ov-${id}-title`} aria-busy={!panel}>
      <h2 id={`ov-${id}-title`}>{title}</h2>
      {panel?.error ? <ApiErrorBox error={panel.error} /> : <p class="loading">Loading…</p>}
    </section>
  );
}

export default function Page() {
  void route.value; // re-render on a change of the query string
  const state = readState();
  const { panels } = usePanels(body(state), PANELS);
  const [consent, setConsent] = useState<ConsentStats | null>(null);
  const [consentError, setConsentError] = useState<unknown>(null);
  const current = useCurrentVisitors();
  const source = state.filters.find((f) => f.field === "source")?.value;
  const days = daysOf(state.from, state.to);

  useEffect(() => {
    let live = true;
    const q = new URLSearchParams({ from: state.from, to: state.to });
    if (source) q.set("source", source);
    setConsent(null);
    setConsentError(null);
    api<ConsentStats>("GET", "/consent/stats?" + q.toString())
      .then((c) => { if (live) setConsent(c); })
      .catch((e: unknown) => { if (live) setConsentError(e); });
    return () => { live = false; };
  }, [state.from, state.to, source]);

  const addFilter = (f: Filter) => {
    if (state.filters.some((g) => g.field === f.field && g.value === f.value)) return;
    writeState({ filters: [...state.filters, f] });
  };
  const figures = panels.figures;
  const daily = panels.series;
  const s = daily?.data?.series;
  const series: Series[] = s ? [
    { name: "visitors", values: s.visitors },
    { name: "pageviews", values: s.pageviews },
    ...(s.previous ? [
      { name: "previous visitors", values: s.previous.visitors },
      { name: "previous pageviews", values: s.previous.pageviews }] : []),
  ] : [];
  const shares = panels.consent;
  return (
    <section aria-labelledby="page-title" aria-busy={PANELS.some((p) => !panels[p])}>
      <h1 id="page-title">Overview</h1>
      <Controls state={state} />
      <Chips filters={state.filters} />
      <ApiErrorBox error={consentError} />
      {figures?.data?.figures ? <Tiles figures={figures.data.figures} current={current} since={figures.since} />
        : figures?.error ? <ApiErrorBox error={figures.error} /> : <p class="loading">Loading the figures…</p>}
      {s && daily ? (
        <section class="panel" aria-labelledby="ov-chart-title">
          <h2 id="ov-chart-title">Visitors and page views per day</h2>
          <Chart kind="line" labels={s.labels} series={series}
            title="Visitors and page views per day" since={daily.since} />
        </section>
      ) : <Pending id="chart" title="Visitors and page views per day" panel={daily} />}
      <div class="ov-grid">
        {LISTS.map((l) => {
          const rows = panels[l.id]?.data?.breakdowns?.[l.id];
          return rows ? (
            <TopList key={l.id} id={l.id} title={l.title} rows={rows}
              onPick={(r) => addFilter(filterOf(l.field, r))} />
          ) : <Pending key={l.id} id={l.id} title={l.title} panel={panels[l.id]} />;
        })}
        {shares?.data?.consent ? (
          <ConsentPanel purposes={shares.data.consent} days={days}
            byDay={consent ? consent.by_day : null} gpc={consent ? consent.gpc_share : null} />
        ) : <Pending id="consent" title="Consent" panel={shares} />}
      </div>
    </section>
  );
}
