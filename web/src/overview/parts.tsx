// The overview's panels: figure tiles, top lists with bars, the consent panel. Each chart
// element carries data-series with the numbers it draws, as the API answered them.
import { Chart, seriesAttr, type Series } from "../components/chart";
import type { ConsentDay, Figures, PurposeStats, Row } from "./types";

const FIGURES: { key: keyof Omit<Figures, "previous">; name: string }[] = [
  { key: "visitors", name: "Visitors" },
  { key: "pageviews", name: "Page views" },
  { key: "sessions", name: "Sessions" },
  { key: "bounce_rate", name: "Bounce rate" },
  { key: "visit_duration_s", name: "Visit duration" },
];

export function show(key: string, v: number): string {
  if (key === "bounce_rate") return `${(v * 100).toFixed(1)} %`;
  if (key === "visit_duration_s") {
    const s = Math.round(v);
    return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
  }
  return v.toLocaleString("en");
}

export function Tile({ id, name, value, previous, since }: { id: string; name: string; value: number; previous?: number; since?: number }) {
  const series: Series[] = [{ name: "current", values: [value] }];
  if (previous !== undefined) series.push({ name: "previous", values: [previous] });
  return (
    <li class="ov-tile" data-figure={id} data-series={seriesAttr([id], series)}
      data-render-ms={since !== undefined ? (performance.now() - since).toFixed(1) : undefined}>
      <p class="name">{name}</p>
      <p class="value">{show(id, value)}</p>
      {previous !== undefined ? <p class="prev">previous period: {show(id, previous)}</p> : null}
    </li>
  );
}

export function Tiles({ figures, current, since }: { figures: Figures; current: number | null; since: number }) {
  return (
    <ul class="ov-tiles" aria-label="Figures">
      {current !== null ? <Tile id="current_visitors" name="Current visitors (last 5 min)" value={current} /> : null}
      {FIGURES.map((f) => (
        <Tile key={f.key} id={f.key} name={f.name} value={figures[f.key]}
          previous={figures.previous ? figures.previous[f.key] : undefined} since={since} />
      ))}
    </ul>
  );
}

/** A top list: one button per row (a click adds it as a filter), a bar by visitors. */
export function TopList({ id, title, rows, onPick }: { id: string; title: string; rows: Row[]; onPick?: (row: Row) => void }) {
  const max = Math.max(1, ...rows.map((r) => r.visitors));
  const labels = rows.map((r) => r.value);
  const series = [{ name: "visitors", values: rows.map((r) => r.visitors) },
    { name: "pageviews", values: rows.map((r) => r.pageviews) }];
  const head = `ov-${id}-title`;
  return (
    <section class="panel" aria-labelledby={head}>
      <h2 id={head}>{title}</h2>
      {rows.length === 0 ? <p class="muted">No data for this range.</p> : null}
      <ol class="ov-bars" data-breakdown={id} data-series={seriesAttr(labels, series)}>
        {rows.map((r, i) => (
          <li key={i}>
            <button type="button" class="ov-bar" data-value={r.value} onClick={() => onPick?.(r)}>
              <span class="fill" style={{ width: `${(100 * r.visitors) / max}%` }} aria-hidden="true" />
              <span class="label">{r.value}</span>
              <span class="num">{r.visitors.toLocaleString("en")}
                <span class="visually-hidden"> visitors, {r.pageviews} page views: add as a filter</span></span>
            </button>
          </li>
        ))}
      </ol>
    </section>
  );
}

/** The share of visitors and events with consent per purpose (bars), and refusals and
 *  withdrawals over the days of the range (stacked bars; the ledger's counts per day,
 *  summed over sources). */
export function ConsentPanel({ purposes, days, byDay, gpc }: { purposes: PurposeStats[]; days: string[]; byDay: ConsentDay[] | null; gpc: number | null }) {
  const labels = purposes.map((p) => p.purpose);
  const series = [
    { name: "visitors_with_consent_share", values: purposes.map((p) => p.visitors_with_consent_share) },
    { name: "events_with_consent_share", values: purposes.map((p) => p.events_with_consent_share) },
  ];
  const over: Series[] = [];
  if (byDay) {
    const keys = new Set<string>();
    for (const r of byDay) {
      if (r.refused) keys.add(`${r.purpose} refused`);
      if (r.withdrawn) keys.add(`${r.purpose} withdrawn`);
    }
    for (const key of [...keys].sort()) {
      const [purpose, what] = key.split(" ");
      const values = days.map((d) => byDay.filter((r) => r.day === d && r.purpose === purpose)
        .reduce((n, r) => n + (what === "refused" ? r.refused : r.withdrawn), 0));
      over.push({ name: key, values });
    }
  }
  return (
    <section class="panel" aria-labelledby="ov-consent-title">
      <h2 id="ov-consent-title">Consent</h2>
      <ul class="ov-bars ov-bars-static" data-consent="shares" data-series={seriesAttr(labels, series)}>
        {purposes.map((p) => (
          <li key={p.purpose}>
            <div class="ov-bar">
              <span class="fill" style={{ width: `${100 * p.visitors_with_consent_share}%` }} aria-hidden="true" />
              <span class="label">{p.purpose}</span>
              <span class="num">{(100 * p.visitors_with_consent_share).toFixed(1)} % of visitors,{" "}
                {(100 * p.events_with_consent_share).toFixed(1)} % of events</span>
            </div>
          </li>
        ))}
      </ul>
      {gpc !== null ? <p class="muted">Events sent with Global Privacy Control: {(100 * gpc).toFixed(1)} %</p> : null}
      <h3>Refusals and withdrawals per day</h3>
      {byDay === null ? <p class="loading">Loading…</p>
        : over.length ? <Chart kind="stacked" labels={days} series={over} title="Refusals and withdrawals per day" height={200} />
          : <p class="muted">No refusals or withdrawals in this range.</p>}
    </section>
  );
}
