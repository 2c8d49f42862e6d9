// Shared pieces of the privacy center: the API's shapes, a loader hook, a subject form
// (userId or anonymousId), small renderers of values (always as text, never markup) and
// a blob download.
import type { ComponentChildren } from "preact";
import { useEffect, useState } from "preact/hooks";
import { fileName } from "../components/download";

export type Json = string | number | boolean | null | Json[] | { [k: string]: Json };

export interface PrivacyRequest {
  id: string;
  type: string;
  status: "pending" | "running" | "done" | "failed";
  created_at: number;
  finished_at: number | null;
  result?: { [k: string]: Json };
  error?: string;
  filed_by?: string;
  scope?: string | null;
  lift?: boolean;
}

export interface Subject {
  userId?: string;
  anonymousId?: string;
}

/** Runs `load` when `deps` change; `reload()` runs it again. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[]) {
  const [state, setState] = useState<{ data: T | null; error: unknown; loading: boolean }>(
    { data: null, error: null, loading: true });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true, error: null }));
    load().then((data) => live && setState({ data, error: null, loading: false }),
      (error: unknown) => live && setState({ data: null, error, loading: false }));
    return () => {
      live = false;
    };
  }, [...deps, tick]);
  return { ...state, reload: () => setTick((t) => t + 1) };
}

export function when(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined) return "";
  return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

/** A value as text: strings as they are, anything else as JSON. */
export function text(v: unknown): string {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

export function saveBlob(name: string, ext: string, blob: Blob): void {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = fileName(name, ext);
  a.style.display = "none";
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** A key → value list (definition list), values as text. */
export function Pairs({ data, label }: { data: { [k: string]: unknown }; label?: string }) {
  const keys = Object.keys(data);
  if (!keys.length) return <p class="muted">None.</p>;
  return (
    <dl class="pairs" aria-label={label}>
      {keys.map((k) => (
        <div key={k} class="pair">
          <dt>{k}</dt>
          <dd>{text(data[k])}</dd>
        </div>
      ))}
    </dl>
  );
}

/** A plain table of rows (objects), values as text; `columns` picks and orders them. */
export function RowsTable({ rows, columns, caption, empty = "None." }: {
  rows: { [k: string]: unknown }[]; columns: string[]; caption: string; empty?: string;
}) {
  if (!rows.length) return <p class="muted">{empty}</p>;
  return (
    <div class="table-scroll" tabIndex={0} role="region" aria-label={caption}>
      <table class="plain">
        <caption class="visually-hidden">{caption}</caption>
        <thead>
          <tr>{columns.map((c) => <th scope="col" key={c}>{c}</th>)}</tr>
        </thead>
        <tbody>
          {rows.map((r, i) => (
            <tr key={i}>{columns.map((c) => <td key={c}>{text(r[c])}</td>)}</tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

/** The userId / anonymousId form of a lookup or a request. */
export function SubjectFields({ idPrefix, kind, setKind, value, setValue }: {
  idPrefix: string; kind: "userId" | "anonymousId"; setKind: (k: "userId" | "anonymousId") => void;
  value: string; setValue: (v: string) => void;
}) {
  return (
    <div class="field-row">
      <div class="field">
        <label for={`${idPrefix}-kind`}>Identifier kind</label>
        <select id={`${idPrefix}-kind`} value={kind}
          onChange={(e) => setKind((e.target as HTMLSelectElement).value as "userId" | "anonymousId")}>
          <option value="userId">userId</option>
          <option value="anonymousId">anonymousId</option>
        </select>
      </div>
      <div class="field grow">
        <label for={`${idPrefix}-id`}>Identifier</label>
        <input id={`${idPrefix}-id`} type="text" required autoComplete="off" spellcheck={false}
          value={value} onInput={(e) => setValue((e.target as HTMLInputElement).value)} />
      </div>
    </div>
  );
}

export function subject(kind: "userId" | "anonymousId", value: string): Subject {
  return kind === "userId" ? { userId: value.trim() } : { anonymousId: value.trim() };
}

export function Notice({ children }: { children: ComponentChildren }) {
  return <p class="notice" role="note">{children}</p>;
}
