// Small pieces the admin page's panels share: a secret shown once (with a copy button and
// a warning), dates, and the API's shapes.
import { useEffect, useRef, useState } from "preact/hooks";

export interface SourceRow {
  id: string;
  name: string;
  key_hint: string;
  created_at: number;
  origins: string[];
  rate_limit: number;
  historical: boolean;
  purposes: Record<string, string>;
  mode: string;
  controller: string | null;
  scope: string;
  server_key: boolean;
}

export interface CreatedSource extends SourceRow {
  write_key: string;
  server_key_secret?: string;
}

export interface KeyRow {
  id: string;
  name: string;
  role: string;
  created_at: number;
  revoked_at: number | null;
}

export interface CreatedKey extends KeyRow {
  key: string;
}

export const BASES = ["consent", "legitimate_interest", "contract", "legal_obligation"] as const;

/** A Unix time (seconds) as "YYYY-MM-DD HH:MM UTC". */
export function when(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined) return "";
  return new Date(seconds * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

/** "analytics:consent, ads:legitimate_interest" → {analytics: "consent", …}; a purpose
 * given without a basis takes `basis`. Throws on an empty purpose id. */
export function parsePurposes(text: string, basis: string): Record<string, string> | undefined {
  const items = text.split(/[,\n]/).map((s) => s.trim()).filter((s) => s.length > 0);
  if (items.length === 0) return undefined;
  const out: Record<string, string> = {};
  for (const item of items) {
    const [id, own] = item.split(":", 2).map((s) => s.trim());
    if (!id) throw new Error(`"${item}": a purpose needs an id before the colon`);
    out[id] = own || basis;
  }
  return out;
}

export function purposesText(p: Record<string, string>): string {
  return Object.entries(p).map(([id, basis]) => `${id}:${basis}`).join(", ");
}

/** One origin per line (or comma): an empty list means any origin. */
export function parseOrigins(text: string): string[] {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter((s) => s.length > 0);
}

/** A secret the server answers once: shown read-only, with a copy button and a warning. */
export function ShownOnce({ label, value, kind, onDone }: {
  label: string; value: string; kind: string; onDone: () => void;
}) {
  const [copied, setCopied] = useState<string | null>(null);
  const input = useRef<HTMLInputElement>(null);
  useEffect(() => input.current?.focus(), [value]); // keyboard and screen-reader users land on it
  const id = `secret-${kind}`;
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(value);
      setCopied("Copied.");
    } catch {
      setCopied("The browser did not allow copying: select the text and copy it by hand.");
    }
  };
  return (
    <div class="panel shown-once" role="status" data-secret={kind}>
      <p class="warning">
        This is shown once. Copy it now and keep it somewhere safe: AAP keeps only a digest
        of it and cannot show it again.
      </p>
      <label for={id}>{label}</label>
      <div class="copy-row">
        <input ref={input} id={id} type="text" readOnly value={value} size={48} spellcheck={false}
          autocomplete="off" onFocus={(e) => (e.currentTarget as HTMLInputElement).select()} />
        <button type="button" onClick={copy}>Copy</button>
        <button type="button" class="secondary" onClick={onDone}>I have saved it</button>
      </div>
      <p aria-live="polite" class="muted">{copied ?? ""}</p>
    </div>
  );
}
