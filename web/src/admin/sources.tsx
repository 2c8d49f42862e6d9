// Sources: the list (never a key: only its first characters), a form that creates one
// (its write key shown once) and a form per source that changes origins, rate limit,
// purposes and bases, CNIL mode and controller group.
import { useEffect, useRef, useState } from "preact/hooks";
import { api } from "../api";
import { ApiErrorBox } from "../components/errors";
import {
  BASES, type CreatedSource, type SourceRow, ShownOnce, parseOrigins, parsePurposes,
  purposesText, when,
} from "./common";

interface SourceForm {
  origins: string;
  rateLimit: string;
  purposes: string;
  basis: string;
  mode: string;
  controller: string;
}

function formOf(s: SourceRow): SourceForm {
  return {
    origins: s.origins.filter((o) => o !== "*").join("\n"),
    rateLimit: String(s.rate_limit),
    purposes: purposesText(s.purposes),
    basis: "consent",
    mode: s.mode,
    controller: s.controller ?? "",
  };
}

const EMPTY: SourceForm = { origins: "", rateLimit: "", purposes: "", basis: "consent", mode: "standard", controller: "" };

/** The fields both forms share; `prefix` keeps their ids apart. */
function Fields({ form, set, prefix }: {
  form: SourceForm; set: (f: SourceForm) => void; prefix: string;
}) {
  const on = (k: keyof SourceForm) => (e: Event) =>
    set({ ...form, [k]: (e.currentTarget as HTMLInputElement).value });
  return (
    <>
      <div class="field">
        <label for={`${prefix}-origins`}>Allowed origins</label>
        <textarea id={`${prefix}-origins`} rows={2} value={form.origins} onInput={on("origins")}
          placeholder="https://www.example.com" aria-describedby={`${prefix}-origins-hint`} />
        <span id={`${prefix}-origins-hint`} class="muted">One per line; empty: any origin.</span>
      </div>
      <div class="field">
        <label for={`${prefix}-rate`}>Rate limit (events/s, 0: unlimited)</label>
        <input id={`${prefix}-rate`} type="number" min="0" step="any" value={form.rateLimit}
          onInput={on("rateLimit")} placeholder="default" />
      </div>
      <div class="field">
        <label for={`${prefix}-purposes`}>Purposes (id:basis, …)</label>
        <input id={`${prefix}-purposes`} type="text" value={form.purposes} onInput={on("purposes")}
          placeholder="analytics:consent" aria-describedby={`${prefix}-purposes-hint`} />
        <span id={`${prefix}-purposes-hint`} class="muted">Empty: the mode's default.</span>
      </div>
      <div class="field">
        <label for={`${prefix}-basis`}>Basis of purposes given without one</label>
        <select id={`${prefix}-basis`} value={form.basis} onChange={on("basis")}>
          {BASES.map((b) => <option key={b} value={b}>{b}</option>)}
        </select>
      </div>
      <div class="field">
        <label for={`${prefix}-mode`}>Mode</label>
        <select id={`${prefix}-mode`} value={form.mode} onChange={on("mode")}>
          <option value="standard">standard</option>
          <option value="cnil">cnil (consent-exempt audience measurement)</option>
        </select>
      </div>
      <div class="field">
        <label for={`${prefix}-controller`}>Controller group</label>
        <input id={`${prefix}-controller`} type="text" value={form.controller}
          onInput={on("controller")} placeholder="none: its own controller" />
      </div>
    </>
  );
}

function rateOf(text: string): number | undefined {
  if (text.trim() === "") return undefined;
  const n = Number(text);
  if (!Number.isFinite(n)) throw new Error("the rate limit is a number");
  return n;
}

function CreateSource({ onCreated }: { onCreated: (s: CreatedSource) => void }) {
  const [name, setName] = useState("");
  const [form, setForm] = useState<SourceForm>(EMPTY);
  const [historical, setHistorical] = useState(false);
  const [serverKey, setServerKey] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    setBusy(true);
    try {
      const body: Record<string, unknown> = { name, historical, server_key: serverKey, mode: form.mode };
      const origins = parseOrigins(form.origins);
      if (origins.length) body.origins = origins;
      const rate = rateOf(form.rateLimit);
      if (rate !== undefined) body.rate_limit = rate;
      const purposes = parsePurposes(form.purposes, form.basis);
      if (purposes) body.purposes = purposes;
      if (form.controller.trim()) body.controller = form.controller.trim();
      onCreated(await api<CreatedSource>("POST", "/sources", body));
      setName("");
      setForm(EMPTY);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="panel admin-form" onSubmit={submit} aria-labelledby="new-source-title">
      <h3 id="new-source-title">New source</h3>
      <div class="field">
        <label for="new-source-name">Name</label>
        <input id="new-source-name" type="text" required value={name}
          onInput={(e) => setName(e.currentTarget.value)} />
      </div>
      <Fields form={form} set={setForm} prefix="new-source" />
      <div class="field check">
        <input id="new-source-historical" type="checkbox" checked={historical}
          onChange={(e) => setHistorical(e.currentTarget.checked)} />
        <label for="new-source-historical">Historical import (keep timestamps as sent)</label>
      </div>
      <div class="field check">
        <input id="new-source-server-key" type="checkbox" checked={serverKey}
          onChange={(e) => setServerKey(e.currentTarget.checked)} />
        <label for="new-source-server-key">Also make a server (secret) key</label>
      </div>
      <button type="submit" disabled={busy}>Create source</button>
      <ApiErrorBox error={error} />
    </form>
  );
}

/** Replace the source's server key, after a confirmation; the new one is shown once. */
function ServerKey({ source }: { source: SourceRow }) {
  const [asking, setAsking] = useState(false);
  const [secret, setSecret] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const make = async () => {
    setError(null);
    try {
      const out = await api<CreatedSource>("POST", `/sources/${encodeURIComponent(source.id)}/server_key`);
      setSecret(out.server_key_secret ?? null);
      setAsking(false);
    } catch (err) {
      setError(err);
    }
  };
  const label = source.server_key ? "Replace the server key" : "Make a server key";
  return (
    <div class="server-key">
      {asking ? (
        <div class="confirm" role="group" aria-label="Confirm the new server key">
          <span>{source.server_key ? "The old server key stops working within seconds. " : ""}Go on?</span>
          <button type="button" class="danger" onClick={make}>Yes, {label.toLowerCase()}</button>
          <button type="button" class="secondary" onClick={() => setAsking(false)}>Cancel</button>
        </div>
      ) : (
        <button type="button" class="secondary" onClick={() => setAsking(true)}>{label}</button>
      )}
      {secret ? (
        <ShownOnce kind="server_key" label={`Server key of source ${source.name} (secret: for the site's backend only)`}
          value={secret} onDone={() => setSecret(null)} />
      ) : null}
      <ApiErrorBox error={error} />
    </div>
  );
}

function EditSource({ source, onSaved, onCancel }: {
  source: SourceRow; onSaved: (s: SourceRow) => void; onCancel: () => void;
}) {
  const [form, setForm] = useState<SourceForm>(formOf(source));
  const [error, setError] = useState<unknown>(null);
  const heading = useRef<HTMLHeadingElement>(null);
  useEffect(() => heading.current?.focus(), []); // the form opens below the table
  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    try {
      const before = formOf(source);
      const body: Record<string, unknown> = {};
      if (form.origins !== before.origins) body.origins = parseOrigins(form.origins);
      if (form.rateLimit !== before.rateLimit) body.rate_limit = rateOf(form.rateLimit) ?? 0;
      if (form.purposes !== before.purposes) body.purposes = parsePurposes(form.purposes, form.basis);
      if (form.mode !== before.mode) body.mode = form.mode;
      if (form.controller !== before.controller) body.controller = form.controller.trim() || null;
      onSaved(await api<SourceRow>("PATCH", `/sources/${encodeURIComponent(source.id)}`, body));
    } catch (err) {
      setError(err);
    }
  };
  return (
    <form class="panel admin-form" onSubmit={submit} aria-labelledby="edit-source-title">
      <h3 id="edit-source-title" ref={heading} tabIndex={-1}>Edit source {source.name}</h3>
      <Fields form={form} set={setForm} prefix="edit-source" />
      <div class="buttons">
        <button type="submit">Save changes</button>
        <button type="button" class="secondary" onClick={onCancel}>Close</button>
      </div>
      <ApiErrorBox error={error} />
      <ServerKey source={source} />
    </form>
  );
}

function SourceTable({ sources, onEdit }: { sources: SourceRow[]; onEdit: (s: SourceRow) => void }) {
  return (
    <div class="table-scroll" role="region" aria-label="Sources (scrolls sideways)" tabIndex={0}>
      <table class="admin-table" data-testid="sources-table">
        <caption class="visually-hidden">Sources</caption>
        <thead>
          <tr>
            <th scope="col">Name</th><th scope="col">Id</th><th scope="col">Write key</th>
            <th scope="col">Origins</th><th scope="col">Rate limit</th>
            <th scope="col">Purposes</th><th scope="col">Mode</th>
            <th scope="col">Controller</th><th scope="col">Created</th>
            <th scope="col"><span class="visually-hidden">Actions</span></th>
          </tr>
        </thead>
        <tbody>
          {sources.map((s) => (
            <tr key={s.id} data-source-id={s.id}>
              <td class="source-name wrap">{s.name}</td>
              <td><code>{s.id}</code></td>
              <td><code>{s.key_hint}</code>{s.server_key ? " (+ server key)" : ""}</td>
              <td class="wrap">{s.origins.join(" ")}</td>
              <td class="num">{s.rate_limit ? `${s.rate_limit}/s` : "unlimited"}</td>
              <td class="wrap">{purposesText(s.purposes)}</td>
              <td>{s.mode}</td>
              <td>{s.controller ?? "—"}</td>
              <td>{when(s.created_at)}</td>
              <td>
                <button type="button" class="secondary" onClick={() => onEdit(s)}
                  aria-label={`Edit source ${s.name}`}>Edit</button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function SourcesPanel() {
  const [sources, setSources] = useState<SourceRow[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [created, setCreated] = useState<CreatedSource | null>(null);
  const [editing, setEditing] = useState<SourceRow | null>(null);
  const load = async () => {
    try {
      setSources((await api<{ sources: SourceRow[] }>("GET", "/sources")).sources);
      setError(null);
    } catch (err) {
      setError(err);
    }
  };
  useEffect(() => { void load(); }, []);
  return (
    <section aria-labelledby="sources-title" class="admin-section">
      <h2 id="sources-title">Sources</h2>
      <ApiErrorBox error={error} />
      {sources === null && error === null ? <p class="loading">Loading sources…</p> : null}
      {sources !== null ? <SourceTable sources={sources} onEdit={setEditing} /> : null}
      {editing ? (
        <EditSource key={editing.id} source={editing} onCancel={() => setEditing(null)}
          onSaved={() => { setEditing(null); void load(); }} />
      ) : null}
      {created ? (
        <>
          <ShownOnce kind="write_key" label={`Write key of source ${created.name}`}
            value={created.write_key} onDone={() => setCreated(null)} />
          {created.server_key_secret ? (
            <ShownOnce kind="server_key" label={`Server key of source ${created.name} (secret: for the site's backend only)`}
              value={created.server_key_secret} onDone={() => setCreated(null)} />
          ) : null}
        </>
      ) : null}
      {sources !== null ? <CreateSource onCreated={(s) => { setCreated(s); void load(); }} /> : null}
    </section>
  );
}
