// The SQL editor: CodeMirror (its own lazy chunk) with the documented views and their
// columns beside it (GET /sql/views), run → the answer's table and CSV. Limits and errors
// are shown as the API gives them (row limit: truncated; timeout; forbidden statements).
import { useEffect, useRef, useState } from "preact/hooks";
import { api } from "../api";
import { ApiErrorBox } from "../components/errors";
import { DataTable } from "../components/table";
import type { Editor } from "../insights/editor";
import { type SqlResult, toTable } from "../insights/series";

interface View { name: string; columns: { name: string; type: string | null }[]; hidden: string[] }

const START = "SELECT event, count(*) AS events\nFROM events\nGROUP BY event\nORDER BY events DESC";

export default function Page() {
  const host = useRef<HTMLDivElement>(null);
  const editor = useRef<Editor | null>(null);
  const [views, setViews] = useState<View[] | null>(null);
  const [viewsError, setViewsError] = useState<unknown>(null);
  const [limit, setLimit] = useState(10000);
  const [result, setResult] = useState<SqlResult | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [running, setRunning] = useState(false);
  const [ready, setReady] = useState(false);
  const [timeout, setTimeoutS] = useState(30);
  const limitRef = useRef(limit);
  limitRef.current = limit;
  const timeoutRef = useRef(timeout);
  timeoutRef.current = timeout;

  const run = async () => {
    const query = editor.current?.text() ?? "";
    setRunning(true);
    setError(null);
    try {
      setResult(await api<SqlResult>("POST", "/query", { kind: "sql", query, limit: limitRef.current, timeout_s: timeoutRef.current }));
    } catch (e) {
      setResult(null);
      setError(e);
    } finally {
      setRunning(false);
    }
  };

  useEffect(() => {
    let live = true;
    let ed: Editor | null = null;
    const schemaOf = (vs: View[]) => Object.fromEntries(vs.map((v) => [v.name, v.columns.map((c) => c.name)]));
    const vsP = api<{ views: View[] }>("GET", "/sql/views").then((r) => r.views, (e: unknown) => {
      if (live) setViewsError(e);
      return [] as View[];
    });
    Promise.all([import("../insights/editor"), vsP]).then(([m, vs]) => {
      if (!live || !host.current) return;
      setViews(vs);
      ed = m.makeEditor(host.current, START, schemaOf(vs), () => void run(), "SQL query");
      editor.current = ed;
      setReady(true);
    }, (e: unknown) => live && setError(e));
    return () => {
      live = false;
      ed?.destroy();
    };
  }, []);

  const table = result ? toTable(result) : null;
  return (
    <section class="sql-page" aria-labelledby="page-title">
      <h1 id="page-title">SQL</h1>
      <div class="sql-layout">
        <div class="sql-main">
          <div class="panel">
            <p id="sql-label" class="label">Query (read-only SELECT on the views; Ctrl+Enter runs it)</p>
            <div id="sql-editor" class="sql-editor" ref={host} aria-labelledby="sql-label" />
            {!ready ? <p class="loading">Loading the editor…</p> : null}
            <div class="row">
              <div class="field">
                <label for="sql-limit">Row limit</label>
                <input id="sql-limit" type="number" min={1} max={100000} value={limit}
                  onInput={(e) => setLimit(Number((e.target as HTMLInputElement).value) || 1)} />
              </div>
              <div class="field">
                <label for="sql-timeout">Time limit (s)</label>
                <input id="sql-timeout" type="number" min={0.1} max={300} step="any" value={timeout}
                  onInput={(e) => setTimeoutS(Number((e.target as HTMLInputElement).value) || 30)} />
              </div>
              <div class="field"><button type="button" onClick={() => void run()} disabled={running || !ready}>
                {running ? "Running…" : "Run"}</button></div>
            </div>
          </div>
          <div aria-live="polite">
            <ApiErrorBox error={error} />
            {result && table ? (
              <div class="panel sql-result" data-columns={JSON.stringify(result.columns)} data-rows={result.rows.length}>
                {result.truncated ? (
                  <p class="notice" role="status">The answer was cut at the row limit: the first {result.rows.length} rows (truncated).</p>
                ) : null}
                <DataTable columns={table.columns} rows={table.rows} name="sql" caption="Query result" />
              </div>
            ) : null}
          </div>
        </div>
        <aside class="panel sql-views" aria-labelledby="views-title">
          <h2 id="views-title">Views</h2>
          <ApiErrorBox error={viewsError} />
          {views ? views.map((v) => (
            <details key={v.name} open={v.name === "events"}>
              <summary><code>{v.name}</code></summary>
              <ul>
                {v.columns.map((c) => <li key={c.name}><code>{c.name}</code>{c.type ? <span class="muted"> {c.type}</span> : null}</li>)}
              </ul>
              {v.hidden.length ? <p class="muted">Personal, needs role privacy: {v.hidden.join(", ")}</p> : null}
            </details>
          )) : !viewsError ? <p class="loading">Loading…</p> : null}
        </aside>
      </div>
    </section>
  );
}
