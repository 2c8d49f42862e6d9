// The privacy center (role privacy): requests, consent, record of processing, audit
// log and person lookup, as tabs (?tab=…). Every figure is the API's answer; the server
// decides who may see what (an analyst sees its 403 in each tab).
import { useEffect, useState } from "preact/hooks";
import { api } from "../api";
import { ApiErrorBox } from "../components/errors";
import { AuditTab } from "../privacy/audit";
import { ConsentTab } from "../privacy/consent";
import { PersonTab } from "../privacy/person";
import "../privacy/privacy.css";
import { RecordTab } from "../privacy/record";
import { RequestsTab } from "../privacy/requests";
import { Tabs, type TabDef } from "../privacy/tabs";
import { params, route, setParams } from "../router";

const TABS: TabDef[] = [
  { id: "requests", label: "Requests" },
  { id: "consent", label: "Consent" },
  { id: "record", label: "Record of processing" },
  { id: "audit", label: "Audit log" },
  { id: "person", label: "Person lookup" },
];

/** The server's answer to a privacy call, before any tab renders: a 403 for a role too
 * low is shown once, as the server gave it. */
function useAccess() {
  const [error, setError] = useState<unknown>(null);
  const [ok, setOk] = useState(false);
  useEffect(() => {
    api("GET", "/audit/verify").then(() => setOk(true), (e: unknown) => setError(e));
  }, []);
  return { ok, error };
}

export default function Page() {
  void route.value; // re-render on navigation
  const tab = params().get("tab") ?? "requests";
  const selected = TABS.some((t) => t.id === tab) ? tab : "requests";
  const access = useAccess();
  const panels: Record<string, () => preact.JSX.Element> = {
    requests: () => <RequestsTab />,
    consent: () => <ConsentTab />,
    record: () => <RecordTab />,
    audit: () => <AuditTab />,
    person: () => <PersonTab />,
  };
  return (
    <section aria-labelledby="page-title" class="privacy-center">
      <h1 id="page-title">Privacy center</h1>
      {access.error ? <ApiErrorBox error={access.error} /> : null}
      {access.ok ? (
        <Tabs tabs={TABS} selected={selected} label="Privacy center"
          onSelect={(id) => setParams({ tab: id === "requests" ? null : id })}>
          {panels[selected]()}
        </Tabs>
      ) : access.error ? null : <p class="loading">Loading…</p>}
    </section>
  );
}
