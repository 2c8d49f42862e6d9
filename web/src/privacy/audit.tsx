// The audit log: filters (action, actor, time range), paging newest first, and the
// verdict of verifying the hash chain.
import { useState } from "preact/hooks";
import { api } from "../api";
import { ApiErrorBox } from "../components/errors";
import { text, useLoad } from "./common";

interface Entry {
  seq: number;
  at: string;
  actor: string;
  action: string;
  detail: { [k: string]: unknown };
}

interface Verdict {
  ok: boolean;
  entries: number;
  message: string;
  checked_at: string;
}

function Verify() {
  const [v, setV] = useState<Verdict | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const run = async () => {
    setBusy(true);
    setError(null);
    try {
      setV(await api<Verdict>("GET", "/audit/verify"));
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <section aria-labelledby="verify-title" class="panel">
      <h3 id="verify-title">Verify the chain</h3>
      <button type="button" onClick={run} disabled={busy}>{busy ? "Verifying…" : "Verify"}</button>
      <ApiErrorBox error={error} />
      {v ? (
        <p id="verify-result" class={v.ok ? "ok" : "error"} data-ok={String(v.ok)} role="status">
          <strong>{v.ok ? "Intact" : "Tampered"}</strong>: {v.message} ({v.entries} entries, checked {v.checked_at})
        </p>
      ) : null}
    </section>
  );
}

export function AuditTab() {
  const [form, setForm] = useState({ action: "", actor: "", from: "", to: "" });
  const [filters, setFilters] = useState(form);
  const [pages, setPages] = useState<(number | null)[]>([null]);
  const before = pages[pages.length - 1];
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
  if (before) q.set("before", String(before));
  q.set("limit", "50");
  const { data, error, loading } = useLoad(
    () => api<{ entries: Entry[]; next: number | null }>("GET", `/audit?${q}`), [q.toString()]);
  const field = (name: keyof typeof form, label: string, date = false) => {
    const onInput = (e: Event) => setForm({ ...form, [name]: (e.target as HTMLInputElement).value });
    return (
      <div class="field">
        <label for={`audit-${name}`}>{label}</label>
        {date ? <input id={`audit-${name}`} type="date" value={form[name]} onInput={onInput} />
          : <input id={`audit-${name}`} type="text" value={form[name]} onInput={onInput} />}
      </div>
    );
  };
  return (
    <>
      <h2>Audit log</h2>
      <Verify />
      <form class="panel" onSubmit={(e) => {
        e.preventDefault();
        setFilters(form);
        setPages([null]);
      }}>
        <h3>Filters</h3>
        <div class="field-row">
          {field("action", "Action (prefix)")}
          {field("actor", "Actor (contains)")}
          {field("from", "From", true)}
          {field("to", "To", true)}
        </div>
        <button type="submit">Apply</button>
      </form>
      <ApiErrorBox error={error} />
      {loading && !data ? <p class="loading">Loading the audit log…</p> : null}
      {data ? (
        <section aria-labelledby="entries-title">
          <h3 id="entries-title">Entries</h3>
          {data.entries.length ? (
            <div class="table-scroll" tabIndex={0} role="region" aria-label="Audit entries">
              <table class="plain" id="audit-table">
                <caption class="visually-hidden">Audit entries, newest first</caption>
                <thead>
                  <tr><th scope="col">#</th><th scope="col">At</th><th scope="col">Actor</th>
                    <th scope="col">Action</th><th scope="col">Detail</th></tr>
                </thead>
                <tbody>
                  {data.entries.map((e) => (
                    <tr key={e.seq} data-seq={e.seq} data-action={e.action}>
                      <td>{e.seq}</td><td>{e.at}</td><td>{e.actor}</td><td>{e.action}</td>
                      <td><code class="detail">{Object.entries(e.detail).map(([k, v]) => `${k}: ${text(v)}`).join("; ")}</code></td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          ) : <p class="muted">No entry matches.</p>}
          <div class="pager">
            <button type="button" class="secondary" disabled={pages.length < 2}
              onClick={() => setPages((p) => p.slice(0, -1))}>Newer</button>
            <button type="button" class="secondary" disabled={!data.next}
              onClick={() => setPages((p) => [...p, data.next])}>Older</button>
          </div>
        </section>
      ) : null}
    </>
  );
}
