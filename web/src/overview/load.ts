// The overview's panels asked for separately and in parallel (POST /overview with
// `panels: [one]`), each kept with the body it answers, so that each panel shows its own
// answer as soon as it arrives, its own error, or that it is loading.
import { useEffect, useState } from "preact/hooks";
import { api } from "../api";
import type { Overview, OverviewBody } from "./types";

export interface Panel {
  /** The body this answers (a panel of another body is not shown). */
  key: string;
  data?: Overview;
  error?: unknown;
  /** performance.now() when the answer arrived. */
  since: number;
}

/** Each of `ids` (the API's `panels`) asked for in its own request, all at once. */
export function usePanels(body: OverviewBody, ids: string[]): { key: string; panels: Record<string, Panel> } {
  const key = JSON.stringify(body);
  const [panels, setPanels] = useState<Record<string, Panel>>({});
  useEffect(() => {
    let live = true;
    const done = (id: string, p: Omit<Panel, "key" | "since">) => {
      if (live) setPanels((all) => ({ ...all, [id]: { key, since: performance.now(), ...p } }));
    };
    for (const id of ids) {
      api<Overview>("POST", "/overview", { ...body, panels: [id] })
        .then((data) => done(id, { data }))
        .catch((error: unknown) => done(id, { error }));
    }
    return () => { live = false; };
  }, [key]);
  // only the answers to the body at hand
  const current: Record<string, Panel> = {};
  for (const [id, p] of Object.entries(panels)) if (p.key === key) current[id] = p;
  return { key, panels: current };
}

/** The ISO days from `from` to `to`, inclusive (the series' labels). */
export function daysOf(from: string, to: string): string[] {
  const out: string[] = [];
  const end = Date.parse(to);
  for (let t = Date.parse(from); t <= end && out.length < 3660; t += 86400000) {
    out.push(new Date(t).toISOString().slice(0, 10));
  }
  return out;
}
