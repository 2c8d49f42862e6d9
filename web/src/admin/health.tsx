// Health: figure tiles with the numbers of GET /health (log, tiers, disk, processor,
// processes), a refresh button. The tiles' root carries them all as data-series (as the
// API answered), each tile its own; data-render-ms once drawn.
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { api } from "../api";
import { seriesAttr } from "../components/chart";
import { ApiErrorBox } from "../components/errors";
import { when } from "./common";

export interface Health {
  log: { size_bytes: number; records: number; events: number; lag_events: Record<string, number>; lag_max: number };
  tiers: {
    hot: { rows: number; bytes: number };
    warm: { files: number; rows: number; bytes: number };
    cold: { files: number; rows: number; bytes: number };
  };
  disk: { free_bytes: number; total_bytes: number };
  processor: {
    running: boolean; position: number; last_write_at: number | null; failures: number;
    dead_letters: number; dead_letter_events: number;
  };
  core: { up: boolean; pid: number; uptime_s: number };
  workers: { configured: number; up: number };
  at: number;
}

type Unit = "bytes" | "count";

interface Tile {
  key: string;
  label: string;
  unit: Unit;
  value: (h: Health) => number;
}

/** The tiles, in order; `key` is the number's path in the answer. */
export const TILES: Tile[] = [
  { key: "log.size_bytes", label: "Log size", unit: "bytes", value: (h) => h.log.size_bytes },
  { key: "log.events", label: "Events in the log", unit: "count", value: (h) => h.log.events },
  { key: "log.lag_max", label: "Log lag (events)", unit: "count", value: (h) => h.log.lag_max },
  { key: "tiers.hot.rows", label: "Hot rows", unit: "count", value: (h) => h.tiers.hot.rows },
  { key: "tiers.hot.bytes", label: "Hot size", unit: "bytes", value: (h) => h.tiers.hot.bytes },
  { key: "tiers.warm.files", label: "Warm files", unit: "count", value: (h) => h.tiers.warm.files },
  { key: "tiers.warm.bytes", label: "Warm size", unit: "bytes", value: (h) => h.tiers.warm.bytes },
  { key: "tiers.cold.files", label: "Cold files", unit: "count", value: (h) => h.tiers.cold.files },
  { key: "tiers.cold.bytes", label: "Cold size", unit: "bytes", value: (h) => h.tiers.cold.bytes },
  { key: "disk.free_bytes", label: "Disk free", unit: "bytes", value: (h) => h.disk.free_bytes },
  { key: "processor.position", label: "Processor position", unit: "count", value: (h) => h.processor.position },
  { key: "processor.failures", label: "Processor failures in a row", unit: "count", value: (h) => h.processor.failures },
  { key: "processor.dead_letters", label: "Dead letters", unit: "count", value: (h) => h.processor.dead_letters },
  { key: "workers.up", label: "Collector workers up", unit: "count", value: (h) => h.workers.up },
];

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export function formatValue(n: number, unit: Unit): string {
  if (unit === "count") return n.toLocaleString("en-US");
  let v = n;
  let i = 0;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${UNITS[i]}`;
}

function Tiles({ health, since }: { health: Health; since: number }) {
  const root = useRef<HTMLDivElement>(null);
  const values = TILES.map((t) => t.value(health));
  useLayoutEffect(() => {
    root.current?.setAttribute("data-render-ms", (performance.now() - since).toFixed(1));
  }, [health, since]);
  return (
    <div ref={root} class="health-tiles" role="list" aria-label="Health figures"
      data-series={seriesAttr(TILES.map((t) => t.key), [{ name: "health", values }])}>
      {TILES.map((t, i) => (
        <div role="listitem" class="health-tile" key={t.key} data-key={t.key}
          data-series={seriesAttr([t.key], [{ name: t.label, values: [values[i]] }])}>
          <span class="tile-label">{t.label}</span>
          <data class="tile-value" value={String(values[i])}>{formatValue(values[i], t.unit)}</data>
        </div>
      ))}
    </div>
  );
}

function Status({ health }: { health: Health }) {
  const p = health.processor;
  return (
    <ul class="health-status">
      <li>Processor: <strong>{p.running ? "running" : "stopped"}</strong>
        {p.last_write_at ? `, last write ${when(p.last_write_at)}` : ", no write since start"}
        {p.dead_letter_events ? `, ${p.dead_letter_events} events set aside` : ""}</li>
      <li>Core: <strong>{health.core.up ? "up" : "down"}</strong> (pid {health.core.pid},
        up {Math.round(health.core.uptime_s)} s)</li>
      <li>Collector workers: <strong>{health.workers.up}</strong> of {health.workers.configured} up</li>
      <li>Lag per consumer group: {Object.entries(health.log.lag_events)
        .map(([g, n]) => `${g} ${n}`).join(", ") || "none"}</li>
      <li>Disk: {formatValue(health.disk.free_bytes, "bytes")} free of {formatValue(health.disk.total_bytes, "bytes")}</li>
      <li class="muted">As of {when(health.at)}</li>
    </ul>
  );
}

export function HealthPanel() {
  const [health, setHealth] = useState<Health | null>(null);
  const [since, setSince] = useState(0);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const load = async () => {
    setBusy(true);
    try {
      const h = await api<Health>("GET", "/health");
      setSince(performance.now());
      setHealth(h);
      setError(null);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  useEffect(() => { void load(); }, []);
  return (
    <section aria-labelledby="health-title" class="admin-section">
      <h2 id="health-title">Health</h2>
      <button type="button" class="secondary" onClick={load} disabled={busy}>
        {busy ? "Refreshing…" : "Refresh"}
      </button>
      <ApiErrorBox error={error} />
      {health === null && error === null ? <p class="loading">Loading health…</p> : null}
      {health !== null ? (
        <>
          <Tiles health={health} since={since} />
          <Status health={health} />
        </>
      ) : null}
    </section>
  );
}
