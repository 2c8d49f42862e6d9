// The overview's panels asked for separately and in parallel (POST /overview with
// `panels: [one]`, a few at a time), each kept with the body it answers, so that each panel shows its own
// answer as soon as it arrives, its own error, or that it is loading.
import { useEffect, useState } from "preact/hooks";
import { api, ApiError } from "../api";
import type { Overview, OverviewBody } from "./types";

export interface Panel {
  /** The body this answers (a panel of another body is not shown). */
  key: string;
  data?: Overview;
  error?: unknown;
  /** performance.now() when the answer arrived. */
  since: number;
}

/** Requests in flight at once: the server runs 2 queries of a key at a time and queues
 *  8 more (AAP_QUERY_CONCURRENCY_PER_KEY, AAP_QUERY_QUEUE_PER_KEY); 4 keeps it busy and
 *  leaves room for the current visitors' poll and other tabs. */
const IN_FLIGHT = 4;

/** One panel; a 429 (the key's queue is full: another tab) is asked again a little later. */
async function ask(body: OverviewBody, id: string, live: () => boolean): Promise<Overview> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await api<Overview>("POST", "/overview", { ...body, panels: [id] });
    } catch (e: unknown) {
      if (!(e instanceof ApiError && e.status === 429) || attempt >= 5 || !live()) throw e;
      await new Promise((ok) => setTimeout(ok, 1000 * (attempt + 1)));
    }
  }
}

/** Each of `ids` (the API's `panels`) asked for in its own request, `IN_FLIGHT` at once,
 *  in the order given. */
export function usePanels(body: OverviewBody, ids: string[]): { key: string; panels: Record<string, Panel> } {
  const key = JSON.stringify(body);
  const [panels, setPanels] = useState<Record<string, Panel>>({});
  useEffect(() => {
    let live = true;
    const done = (id: string, p: Omit<Panel, "key" | "since">) => {
      if (live) setPanels((all) => ({ ...all, [id]: { key, since: performance.now(), ...p } }));
    };
    const queue = [...ids];
    const next = async (): Promise<void> => {
      for (let id = queue.shift(); id !== undefined && live; id = queue.shift()) {
        try {
          done(id, { data: await ask(body, id, () => live) });
        } catch (error: unknown) {
          done(id, { error });
        }
      }
    };
    for (let i = 0; i < IN_FLIGHT; i++) void next();
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
