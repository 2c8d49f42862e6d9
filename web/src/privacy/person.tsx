// Person lookup (role privacy): one person's timeline, sessions, orders, flags, ids and
// the traits the keystore opens for this view. Every lookup is audited (person.viewed).
import { useState } from "preact/hooks";
import { api } from "../api";
import { ApiErrorBox } from "../components/errors";
import { Notice, Pairs, RowsTable, subject, SubjectFields } from "./common";

type Row = { [k: string]: unknown };

interface PersonView {
  persons: number;
  erased: boolean;
  identifiers: { userIds: string[]; anonymousIds: string[]; other: string[] };
  traits_opened: { [k: string]: unknown };
  profile: Row[];
  flags: Row[];
  events: { total: number; shown: number; rows: Row[] };
  sessions: Row[];
  orders: Row[];
}

function Result({ v }: { v: PersonView }) {
  return (
    <div id="person-result" data-events-total={v.events.total}>
      <h3>Identifiers</h3>
      <Pairs label="Identifiers" data={{
        userIds: v.identifiers.userIds.join(", ") || "none",
        anonymousIds: v.identifiers.anonymousIds.join(", ") || "none",
        other: v.identifiers.other.join(", ") || "none",
      }} />
      <h3>Traits (opened for this view)</h3>
      <div id="person-traits"><Pairs label="Traits" data={v.traits_opened} /></div>
      <h3>Flags</h3>
      <RowsTable caption="Flags" rows={v.flags} columns={["flag", "set_at"]}
        empty="No flag: not restricted, no objection." />
      <h3>Profile</h3>
      <RowsTable caption="Profile" rows={v.profile.map((p) => ({ ...p, traits: p.traits }))}
        columns={["person_id", "first_seen", "last_seen", "identified", "traits"]} />
      <h3>Timeline</h3>
      <p class="muted">{v.events.total} events; the newest {v.events.shown} shown.</p>
      <div id="person-timeline">
        <RowsTable caption="Events, newest first" rows={v.events.rows}
          columns={["timestamp", "type", "event", "name", "source", "path", "session_id", "purposes", "properties"]} />
      </div>
      <h3>Sessions</h3>
      <RowsTable caption="Sessions" rows={v.sessions}
        columns={["session_id", "started_at", "ended_at", "events", "views", "entry_path", "exit_path", "referrer_domain"]} />
      <h3>Orders</h3>
      <RowsTable caption="Orders" rows={v.orders}
        columns={["order_id", "timestamp", "revenue", "currency", "items", "source"]} empty="No order." />
    </div>
  );
}

export function PersonTab() {
  const [kind, setKind] = useState<"userId" | "anonymousId">("userId");
  const [value, setValue] = useState("");
  const [view, setView] = useState<PersonView | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    setBusy(true);
    try {
      setView(await api<PersonView>("POST", "/privacy/persons/lookup", subject(kind, value)));
    } catch (err) {
      setView(null);
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <>
      <h2>Person lookup</h2>
      <Notice>
        This view shows personal data. Each lookup is recorded in the audit log (person.viewed),
        with your key and a keyed hash of the identifier.
      </Notice>
      <form class="panel" onSubmit={submit}>
        <SubjectFields idPrefix="person" kind={kind} setKind={setKind} value={value} setValue={setValue} />
        <button type="submit" disabled={busy}>{busy ? "Looking up…" : "Look up"}</button>
      </form>
      <ApiErrorBox error={error} />
      {view ? <Result v={view} /> : null}
    </>
  );
}
