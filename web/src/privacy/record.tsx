// Record of processing (Art. 30) from the purposes registry, each storage tier's
// retention status, and the CNIL check's report.
import { api } from "../api";
import { ApiErrorBox } from "../components/errors";
import { type Json, RowsTable, saveBlob, text, useLoad } from "./common";

interface Purpose {
  id: string;
  description: string;
  basis: string;
  categories: string[];
  recipients: string[];
  enrichments: string[];
  profiling: boolean;
  tcf: number[];
  retention_days: { [tier: string]: number };
  sources: { name: string; basis: string }[];
}

interface Tier {
  tier: string;
  events: number;
  oldest: string | null;
  age_days: number | null;
  limit_days: number;
  from_days: number;
  to_days: number;
  within_limit: boolean;
}

interface ProcessingRecord {
  markdown: string;
  purposes: Purpose[];
  tiers: Tier[];
  log_retention_hours: number;
  retention_job: { interval_s: number; last_run: string | null; next_run: string | null;
    last_seconds: number | null; last_result: { [k: string]: Json } };
}

interface Cnil {
  passed: boolean;
  sources: { id: string; name: string; passed: boolean;
    checks: { condition: string; passed: boolean; found: string }[] }[];
}

function list(v: string[]): string {
  return v.length ? v.join("; ") : "none";
}

function PurposeCard({ p }: { p: Purpose }) {
  return (
    <article class="panel purpose" data-purpose={p.id}>
      <h4>{p.id}</h4>
      <p>{p.description}</p>
      <dl class="pairs">
        <div class="pair"><dt>Lawful basis (default)</dt><dd>{p.basis.replace(/_/g, " ")}</dd></div>
        <div class="pair"><dt>Sources collecting for it</dt>
          <dd>{p.sources.length ? p.sources.map((s) => `${s.name} (${s.basis.replace(/_/g, " ")})`).join("; ") : "none"}</dd></div>
        <div class="pair"><dt>Categories of personal data</dt><dd>{list(p.categories)}</dd></div>
        <div class="pair"><dt>Recipients</dt><dd>{list(p.recipients)}</dd></div>
        <div class="pair"><dt>Enrichments</dt><dd>{list(p.enrichments)}</dd></div>
        <div class="pair"><dt>Profiling</dt><dd>{p.profiling ? "yes (people may object, Art. 21)" : "no"}</dd></div>
        <div class="pair"><dt>Retention (days: hot / warm / cold)</dt>
          <dd>{`${p.retention_days.hot} / ${p.retention_days.warm} / ${p.retention_days.cold}`}</dd></div>
        <div class="pair"><dt>IAB TCF purposes</dt><dd>{p.tcf.length ? p.tcf.join(", ") : "none"}</dd></div>
      </dl>
    </article>
  );
}

function CnilReport() {
  const { data, error, loading } = useLoad(() => api<Cnil>("GET", "/privacy/cnil"), []);
  return (
    <section aria-labelledby="cnil-title">
      <h3 id="cnil-title">CNIL check</h3>
      <ApiErrorBox error={error} />
      {loading && !data ? <p class="loading">Running the CNIL check…</p> : null}
      {data ? (
        data.sources.length === 0 ? <p class="muted">No source in CNIL mode: nothing to check.</p> : (
          <>
            <p><strong>{data.passed ? "All conditions met." : "Some conditions are not met."}</strong></p>
            {data.sources.map((s) => (
              <div key={s.id} data-cnil-source={s.name}>
                <h4>{s.name} ({s.passed ? "passes" : "fails"})</h4>
                <RowsTable caption={`CNIL conditions for ${s.name}`}
                  rows={s.checks.map((c) => ({ condition: c.condition, result: c.passed ? "PASS" : "FAIL", found: c.found }))}
                  columns={["condition", "result", "found"]} />
              </div>
            ))}
          </>
        )
      ) : null}
    </section>
  );
}

export function RecordTab() {
  const { data, error, loading } = useLoad(() => api<ProcessingRecord>("GET", "/privacy/record"), []);
  return (
    <>
      <h2>Record of processing</h2>
      <ApiErrorBox error={error} />
      {loading && !data ? <p class="loading">Loading the record…</p> : null}
      {data ? (
        <>
          <button type="button" class="secondary" onClick={() => saveBlob("record-of-processing", "md",
            new Blob([data.markdown], { type: "text/markdown" }))}>Download as Markdown</button>
          <section aria-labelledby="tiers-title">
            <h3 id="tiers-title">Retention status per tier</h3>
            <div id="tier-status">
              <RowsTable caption="Retention status per storage tier"
                rows={data.tiers.map((t) => ({
                  tier: t.tier, events: t.events, oldest: t.oldest ?? "no data",
                  "age (days)": t.age_days ?? "", "limit (days)": t.limit_days,
                  "holds days": `${t.from_days}–${t.to_days}`,
                  status: t.within_limit ? "within limit" : "OVER LIMIT",
                }))}
                columns={["tier", "events", "oldest", "age (days)", "limit (days)", "holds days", "status"]} />
            </div>
            <p>
              Retention job: every {data.retention_job.interval_s} s; last run{" "}
              {data.retention_job.last_run ?? "not since the server started"}
              {data.retention_job.last_seconds !== null ? ` (${text(data.retention_job.last_seconds)} s)` : ""};
              next {data.retention_job.next_run ?? "at the next tiering pass"}.
              Raw log records are kept {data.log_retention_hours} hours.
            </p>
          </section>
          <section aria-labelledby="purposes-title">
            <h3 id="purposes-title">Purposes</h3>
            {data.purposes.map((p) => <PurposeCard key={p.id} p={p} />)}
          </section>
        </>
      ) : null}
      <CnilReport />
    </>
  );
}
