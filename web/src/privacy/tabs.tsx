// Tabs in the WAI-ARIA pattern: a tablist of buttons (arrow keys, Home and End move
// between them and select), one tabpanel for the selected tab. The selection lives in
// the query string (?tab=…), so it survives a reload and can be linked to.
import type { ComponentChildren } from "preact";
import { useRef } from "preact/hooks";

export interface TabDef {
  id: string;
  label: string;
}

export function Tabs({ tabs, selected, onSelect, label, children }: {
  tabs: TabDef[]; selected: string; onSelect: (id: string) => void; label: string;
  children: ComponentChildren;
}) {
  const list = useRef<HTMLDivElement>(null);
  const focusTab = (i: number) => {
    const n = tabs.length;
    const next = tabs[(i + n) % n];
    onSelect(next.id);
    const el = list.current?.querySelector<HTMLButtonElement>(`#tab-${next.id}`);
    el?.focus();
  };
  const onKey = (e: KeyboardEvent, i: number) => {
    const moves: Record<string, number> = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 };
    if (e.key in moves) {
      e.preventDefault();
      focusTab(moves[e.key]);
    }
  };
  return (
    <>
      <div class="tablist" role="tablist" aria-label={label} ref={list}>
        {tabs.map((t, i) => (
          <button key={t.id} type="button" role="tab" id={`tab-${t.id}`}
            aria-selected={t.id === selected} aria-controls={`panel-${t.id}`}
            tabIndex={t.id === selected ? 0 : -1}
            onClick={() => onSelect(t.id)} onKeyDown={(e) => onKey(e, i)}>
            {t.label}
          </button>
        ))}
      </div>
      <div class="tabpanel" role="tabpanel" id={`panel-${selected}`} aria-labelledby={`tab-${selected}`}
        tabIndex={0}>
        {children}
      </div>
    </>
  );
}
