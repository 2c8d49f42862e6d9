// Small labelled form controls for the builder (every input has a label).
import type { ComponentChildren } from "preact";
import { useEffect, useState } from "preact/hooks";

/** What the user is typing, kept across re-renders (an answer arriving must not reset a
 * field being edited), and replaced when the document's value changes from elsewhere. */
function useDraft(value: string): [string, (v: string) => void] {
  const [draft, setDraft] = useState(value);
  useEffect(() => setDraft(value), [value]);
  return [draft, setDraft];
}

export function Field({ id, label, children }: { id: string; label: string; children: ComponentChildren }) {
  return (
    <div class="field">
      <label for={id}>{label}</label>
      {children}
    </div>
  );
}

/** A text input; `live`: every keystroke reaches onChange (else on change: blur or Enter). */
export function Text({ id, label, value, onChange, placeholder, list, live }: {
  id: string; label: string; value: string; onChange: (v: string) => void; placeholder?: string; list?: string; live?: boolean;
}) {
  const [draft, setDraft] = useDraft(value);
  const handler = (e: Event) => onChange((e.target as HTMLInputElement).value);
  return (
    <Field id={id} label={label}>
      <input id={id} type="text" value={live ? value : draft} placeholder={placeholder} list={list}
        onChange={live ? undefined : handler}
        onInput={live ? handler : (e) => setDraft((e.target as HTMLInputElement).value)} />
    </Field>
  );
}

export function Num({ id, label, value, onChange, min, max }: {
  id: string; label: string; value: number; onChange: (v: number) => void; min?: number; max?: number;
}) {
  const [draft, setDraft] = useDraft(String(value));
  return (
    <Field id={id} label={label}>
      <input id={id} type="number" value={draft} min={min} max={max}
        onInput={(e) => setDraft((e.target as HTMLInputElement).value)}
        onChange={(e) => {
          const v = Number((e.target as HTMLInputElement).value);
          if (Number.isFinite(v)) onChange(v);
        }} />
    </Field>
  );
}

export function Select<T extends string>({ id, label, value, options, onChange }: {
  id: string; label: string; value: T; options: readonly (T | [T, string])[]; onChange: (v: T) => void;
}) {
  return (
    <Field id={id} label={label}>
      <select id={id} value={value} onChange={(e) => onChange((e.target as HTMLSelectElement).value as T)}>
        {options.map((o) => {
          const [v, text] = Array.isArray(o) ? o : [o, o];
          return <option key={v} value={v}>{text}</option>;
        })}
      </select>
    </Field>
  );
}

export function Check({ id, label, checked, onChange }: { id: string; label: string; checked: boolean; onChange: (v: boolean) => void }) {
  return (
    <div class="field check">
      <input id={id} type="checkbox" checked={checked} onChange={(e) => onChange((e.target as HTMLInputElement).checked)} />
      <label for={id}>{label}</label>
    </div>
  );
}
