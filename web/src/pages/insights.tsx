// The insight builder: a form per kind editing the insight document, its JSON (editable),
// the answer rendered (chart, table, CSV/PNG), cohorts, and save. ?id=N opens a saved
// insight. Every number shown is the API's answer to the document shown.
import { useEffect, useRef, useState } from "preact/hooks";
import { api } from "../api";
import { ApiErrorBox } from "../components/errors";
import { Link } from "../components/layout";
import { params, setParams } from "../router";
import { Common, EVENTS_LIST, KINDS, type Kind, KindForm, defaultDoc } from "../insights/builder";
import { type CohortItem, CohortPanel } from "../insights/cohorts";
import { Select, Text } from "../insights/fields";
import type { Doc, Result } from "../insights/series";
import { InsightView } from "../insights/view";

interface Answer { doc: Doc; result: Result; since: number }
interface Saved { id: number; name: string; query: Doc; result: Result }

const pretty = (d: Doc) => JSON.stringify(d, null, 2);

export default function Page() {
  const [doc, setDocState] = useState<Doc>(() => defaultDoc("trends"));
  const [json, setJson] = useState(() => pretty(defaultDoc("trends")));
  const [jsonError, setJsonError] = useState<string | null>(null);
  const [answer, setAnswer] = useState<Answer | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [running, setRunning] = useState(false);
  const [chart, setChart] = useState<"line" | "bar">("line");
  const [name, setName] = useState("");
  const [saved, setSaved] = useState<{ id: number; name: string } | null>(null);
  const [saveError, setSaveError] = useState<unknown>(null);
  const [cohorts, setCohorts] = useState<CohortItem[]>([]);
  const [events, setEvents] = useState<string[]>([]);
  const seq = useRef(0);

  const run = async (d: Doc) => {
    const n = ++seq.current;
    setRunning(true);
    setError(null);
    try {
      const result = await api<Result>("POST", "/query", d);
      const since = performance.now();
      if (n === seq.current) setAnswer({ doc: d, result, since });
    } catch (e) {
      if (n === seq.current) {
        setError(e);
        setAnswer(null);
      }
    } finally {
      if (n === seq.current) setRunning(false);
    }
  };
  const setDoc = (d: Doc) => {
    setDocState(d);
    setJson(pretty(d));
    setJsonError(null);
    void run(d);
  };
  const loadCohorts = async () => {
    try {
      setCohorts((await api<{ cohorts: CohortItem[] }>("GET", "/cohorts")).cohorts);
    } catch {
      setCohorts([]); // shown by the query's own error when the role is too low
    }
  };

  useEffect(() => {
    const id = params().get("id");
    if (id) {
      const n = ++seq.current;
      setRunning(true);
      api<Saved>("GET", `/insights/${encodeURIComponent(id)}`).then((s) => {
        const since = performance.now();
        if (n !== seq.current) return;
        setDocState(s.query);
        setJson(pretty(s.query));
        setName(s.name);
        setSaved({ id: s.id, name: s.name });
        setAnswer({ doc: s.query, result: s.result, since });
      }, (e: unknown) => n === seq.current && setError(e)).finally(() => n === seq.current && setRunning(false));
    } else {
      void run(doc);
    }
    void loadCohorts();
    api<{ rows: [string, number][] }>("POST", "/query", {
      kind: "sql", query: "SELECT event, count(*) AS n FROM events WHERE event IS NOT NULL GROUP BY event ORDER BY n DESC LIMIT 200",
    }).then((r) => setEvents(r.rows.map((x) => x[0])), () => setEvents([]));
  }, []);

  const applyJson = (e: Event) => {
    e.preventDefault();
    let parsed: unknown;
    try {
      parsed = JSON.parse(json);
    } catch (err) {
      setJsonError(`Invalid JSON: ${err instanceof Error ? err.message : String(err)}`);
      return;
    }
    if (!parsed || typeof parsed !== "object" || Array.isArray(parsed) || typeof (parsed as Doc).kind !== "string") {
      setJsonError("Invalid insight: the document is a JSON object with a \"kind\".");
      return;
    }
    setDoc(parsed as Doc);
  };
  const save = async (e: Event) => {
    e.preventDefault();
    setSaveError(null);
    try {
      const out = await api<{ id: number; name: string }>("POST", "/insights", { name, query: doc });
      setSaved(out);
      setParams({ id: String(out.id) });
    } catch (err) {
      setSaveError(err);
    }
  };
  const kind = (KINDS as readonly string[]).includes(doc.kind) ? (doc.kind as Kind) : null;

  return (
    <section class="insights" aria-labelledby="page-title">
      <h1 id="page-title">Insights</h1>
      <datalist id={EVENTS_LIST}>{events.map((ev) => <option key={ev} value={ev} />)}</datalist>
      <div class="panel builder">
        <h2>Build</h2>
        <div class="row">
          <Select id="insight-kind" label="Kind" value={kind ?? ("" as Kind)} options={kind ? KINDS : ["" as Kind, ...KINDS]}
            onChange={(k) => setDoc(defaultDoc(k))} />
        </div>
        <KindForm doc={doc} set={setDoc} chart={chart} setChart={setChart} />
        {doc.kind !== "sql" ? <Common doc={doc} set={setDoc} cohorts={cohorts} /> : null}
        <button type="button" onClick={() => void run(doc)} disabled={running}>{running ? "Running…" : "Run"}</button>
      </div>
      <div class="panel result" aria-live="polite" aria-busy={running}>
        <h2>Result</h2>
        <ApiErrorBox error={error} />
        {answer ? (
          <InsightView doc={answer.doc} result={answer.result} since={answer.since}
            name={name || `${answer.result.kind} insight`} chartType={chart} />
        ) : running ? <p class="loading">Running…</p> : null}
      </div>
      <form class="panel json" onSubmit={applyJson}>
        <h2>Document</h2>
        <label for="insight-json">Insight document (JSON)</label>
        <textarea id="insight-json" rows={12} spellcheck={false} value={json}
          onInput={(e) => setJson((e.target as HTMLTextAreaElement).value)} />
        {jsonError ? <p class="error" role="alert">{jsonError}</p> : null}
        <button type="submit">Apply JSON and run</button>
      </form>
      <form class="panel save" onSubmit={save}>
        <h2>Save</h2>
        <div class="row">
          <Text id="insight-name" label="Name" value={name} onChange={setName} live />
          <div class="field"><button type="submit" disabled={!name.trim()}>Save insight</button></div>
        </div>
        {saved ? <p role="status">Saved as “{saved.name}” (#{saved.id}). It is listed in <Link href="/dashboards">Dashboards</Link>.</p> : null}
        <ApiErrorBox error={saveError} />
      </form>
      <CohortPanel cohorts={cohorts} reload={loadCohorts} use={(id) => setDoc({ ...doc, cohort: id })} />
    </section>
  );
}
