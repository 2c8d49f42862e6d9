// Consent: the ledger's figures per purpose (grants, refusals, withdrawals, the share
// of visitors and events with consent) and per day and source, the GPC share — all as
// GET /consent/stats answers them — and one person's consent history.
import { useState } from "preact/hooks";
import { api } from "../api";
import { Chart } from "../components/chart";
import { ApiErrorBox } from "../components/errors";
import { DataTable } from "../components/table";
import type { ConsentStats } from "../overview/types";
import { Notice, RowsTable, subject, SubjectFields, useLoad } from "./common";

interface HistoryRow {
  at: string;
  purpose: string;
  granted: boolean;
  source: string;
  scope: string;
  channel: string;
  gpc: boolean;
  policy_version: string | null;
}

function pct(v: number): string {
  return `${(v * 100).toFixed(1)} %`;
}

function Figures() {
  const [from, setFrom] = useState("");
  const [to, setTo] = useState("");
  const q = new URLSearchParams();
  if (from) q.set("from", from);
  if (to) q.set("to", to);
  const qs = q.toString();
  const { data, error, loading } = useLoad(
    () => api<ConsentStats>("GET", `/consent/stats${qs ? "?" + qs : ""}`), [qs]);
  const labels = data ? data.purposes.map((p) => p.purpose) : [];
  return (
    <section aria-labelledby="consent-figures">
      <h3 id="consent-figures">Figures</h3>
      <div class="field-row">
        <div class="field">
          <label for="consent-from">From</label>
          <input id="consent-from" type="date" value={from} onChange={(e) => setFrom((e.target as HTMLInputElement).value)} />
        </div>
        <div class="field">
          <label for="consent-to">To</label>
          <input id="consent-to" type="date" value={to} onChange={(e) => setTo((e.target as HTMLInputElement).value)} />
        </div>
      </div>
      <ApiErrorBox error={error} />
      {loading && !data ? <p class="loading">Loading consent figures…</p> : null}
      {data ? (
        <>
          <p class="muted">From {data.from} to {data.to}.</p>
          <div class="tiles">
            <figure class="tile" id="gpc-share" data-series={JSON.stringify(
              { labels: ["gpc_share"], series: [{ name: "gpc_share", values: [data.gpc_share] }] })}>
              <figcaption>Events sent with GPC</figcaption>
              <strong>{pct(data.gpc_share)}</strong>
            </figure>
          </div>
          <div id="consent-statements">
            <Chart kind="stacked" title="Consent statements per purpose" labels={labels} series={[
              { name: "granted", values: data.purposes.map((p) => p.granted) },
              { name: "refused", values: data.purposes.map((p) => p.refused) },
              { name: "withdrawn", values: data.purposes.map((p) => p.withdrawn) },
            ]} />
          </div>
          <div class="chart-pair">
            <div id="consent-visitors">
              <Chart kind="bar" title="Share of visitors with consent" labels={labels} height={200} series={[
                { name: "visitors_with_consent_share", values: data.purposes.map((p) => p.visitors_with_consent_share) },
              ]} />
            </div>
            <div id="consent-events">
              <Chart kind="bar" title="Share of events with consent" labels={labels} height={200} series={[
                { name: "events_with_consent_share", values: data.purposes.map((p) => p.events_with_consent_share) },
              ]} />
            </div>
          </div>
          <h4>Per day, purpose and source</h4>
          <DataTable name="consent-by-day" caption="Consent statements per day, purpose and source"
            columns={["day", "purpose", "source", "granted", "refused", "withdrawn"]}
            rows={data.by_day.map((d) => [d.day, d.purpose, d.source, d.granted, d.refused, d.withdrawn])} />
        </>
      ) : null}
    </section>
  );
}

function PersonHistory() {
  const [kind, setKind] = useState<"userId" | "anonymousId">("userId");
  const [value, setValue] = useState("");
  const [out, setOut] = useState<{ history: HistoryRow[] } | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    setBusy(true);
    try {
      setOut(await api<{ history: HistoryRow[] }>("POST", "/privacy/consent/lookup", subject(kind, value)));
    } catch (err) {
      setOut(null);
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <section aria-labelledby="consent-person">
      <h3 id="consent-person">One person's history</h3>
      <Notice>Each lookup is recorded in the audit log (consent.viewed).</Notice>
      <form class="panel" onSubmit={submit}>
        <SubjectFields idPrefix="consent" kind={kind} setKind={setKind} value={value} setValue={setValue} />
        <button type="submit" disabled={busy}>{busy ? "Looking up…" : "Look up"}</button>
      </form>
      <ApiErrorBox error={error} />
      {out ? (
        <div id="consent-history">
          <RowsTable caption="Consent statements, newest first" rows={out.history as unknown as { [k: string]: unknown }[]}
            columns={["at", "purpose", "granted", "source", "channel", "gpc", "policy_version"]}
            empty="No consent statement about this person." />
        </div>
      ) : null}
    </section>
  );
}

export function ConsentTab() {
  return (
    <>
      <h2>Consent</h2>
      <Figures />
      <PersonHistory />
    </>
  );
}
