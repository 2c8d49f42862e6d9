// Cohorts beside the builder: the saved ones (pick one as the insight's filter) and a
// form that creates a behavioural cohort (did an event at least n times in d days).
import { useState } from "preact/hooks";
import { api } from "../api";
import { ApiErrorBox } from "../components/errors";
import { Num, Text } from "./fields";
import { EVENTS_LIST } from "./builder";

export interface CohortItem { id: number; name: string; kind: string }

export function CohortPanel({ cohorts, reload, use }: {
  cohorts: CohortItem[]; reload: () => Promise<void>; use: (id: number) => void;
}) {
  const [name, setName] = useState("");
  const [event, setEvent] = useState("$page");
  const [minCount, setMinCount] = useState(2);
  const [days, setDays] = useState(30);
  const [error, setError] = useState<unknown>(null);
  const [made, setMade] = useState<string | null>(null);
  const create = async (e: Event) => {
    e.preventDefault();
    setError(null);
    setMade(null);
    try {
      const out = await api<CohortItem>("POST", "/cohorts", {
        name, behavioural: { event: event || null, min_count: minCount, days },
      });
      await reload();
      use(out.id);
      setMade(`Cohort “${out.name}” created (#${out.id}) and used as the filter.`);
    } catch (err) {
      setError(err);
    }
  };
  return (
    <section class="panel cohorts" aria-labelledby="cohorts-title">
      <h2 id="cohorts-title">Cohorts</h2>
      {cohorts.length ? (
        <ul class="cohort-list">
          {cohorts.map((c) => (
            <li key={c.id}>
              <span>{c.name}</span> <span class="muted">({c.kind}, #{c.id})</span>{" "}
              <button type="button" class="secondary" onClick={() => use(c.id)} aria-label={`Use cohort ${c.name}`}>Use</button>
            </li>
          ))}
        </ul>
      ) : <p class="muted">No cohort yet.</p>}
      <form onSubmit={create} class="row">
        <Text id="cohort-name" label="New cohort name" value={name} onChange={setName} live />
        <Text id="cohort-event" label="Did event" value={event} list={EVENTS_LIST} onChange={setEvent} live />
        <Num id="cohort-min" label="At least (times)" value={minCount} min={1} onChange={setMinCount} />
        <Num id="cohort-days" label="In the last (days)" value={days} min={1} max={3650} onChange={setDays} />
        <div class="field"><button type="submit">Create cohort</button></div>
      </form>
      {made ? <p role="status">{made}</p> : null}
      <ApiErrorBox error={error} />
    </section>
  );
}
