// Saved insights and dashboards: a grid of saved insights (each run through
// GET /insights/{id} and drawn with the builder's renderers), refreshed by a button and
// every 60 s; the dashboards list, and (analyst) dashboard create / delete. A viewer
// reads everything here, read-only. ?id=N shows dashboard N.
import { useEffect, useState } from "preact/hooks";
import { api, roleAtLeast, session } from "../api";
import { ApiErrorBox } from "../components/errors";
import { Link } from "../components/layout";
import { navigate, params, route } from "../router";
import type { Doc, Result } from "../insights/series";
import { InsightView } from "../insights/view";

interface SavedItem { id: number; name: string }
interface Dashboard { id: number; name: string; insights: SavedItem[] }
interface DashboardRow { id: number; name: string; insights: number[] }
interface Run { id: number; name: string; query: Doc; result: Result }

// one saved insight at a time: a grid must not fill the key's query queue (429)
let queue: Promise<unknown> = Promise.resolve();
function runSaved(id: number): Promise<Run> {
  const p = queue.then(() => api<Run>("GET", `/insights/${id}`));
  queue = p.catch(() => undefined);
  return p;
}

function Tile({ item, tick }: { item: SavedItem; tick: number }) {
  const [run, setRun] = useState<{ r: Run; since: number } | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let live = true;
    runSaved(item.id).then((r) => {
      const since = performance.now();
      if (live) {
        setError(null);
        setRun({ r, since });
      }
    }, (e: unknown) => live && setError(e));
    return () => {
      live = false;
    };
  }, [item.id, tick]);
  const analyst = roleAtLeast(session.value?.role, "analyst");
  return (
    <article class="tile panel" aria-labelledby={`tile-${item.id}`} data-insight={item.id}>
      <h3 id={`tile-${item.id}`}>{item.name}</h3>
      {analyst ? <p class="tile-links"><Link href={`/insights?id=${item.id}`}>Open in the builder</Link></p> : null}
      <ApiErrorBox error={error} />
      {run ? <InsightView doc={run.r.query} result={run.r.result} since={run.since} name={item.name} compact />
        : !error ? <p class="loading">Running…</p> : null}
    </article>
  );
}

function CreateDashboard({ saved, made }: { saved: SavedItem[]; made: (id: number) => void }) {
  const [name, setName] = useState("");
  const [chosen, setChosen] = useState<number[]>([]);
  const [error, setError] = useState<unknown>(null);
  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    try {
      const out = await api<DashboardRow>("POST", "/dashboards", { name, insights: chosen });
      setName("");
      setChosen([]);
      made(out.id);
    } catch (err) {
      setError(err);
    }
  };
  return (
    <form class="panel" onSubmit={submit} aria-labelledby="create-title">
      <h2 id="create-title">New dashboard</h2>
      <div class="field">
        <label for="dashboard-name">Name</label>
        <input id="dashboard-name" type="text" value={name} required maxLength={200}
          onInput={(e) => setName((e.target as HTMLInputElement).value)} />
      </div>
      <fieldset>
        <legend>Saved insights on it</legend>
        {saved.length ? saved.map((s) => (
          <div class="field check" key={s.id}>
            <input id={`pick-${s.id}`} type="checkbox" checked={chosen.includes(s.id)}
              onChange={(e) => setChosen((c) => ((e.target as HTMLInputElement).checked ? [...c, s.id] : c.filter((x) => x !== s.id)))} />
            <label for={`pick-${s.id}`}>{s.name}</label>
          </div>
        )) : <p class="muted">No saved insight yet: save one in <Link href="/insights">Insights</Link>.</p>}
      </fieldset>
      <button type="submit">Create dashboard</button>
      <ApiErrorBox error={error} />
    </form>
  );
}

export default function Page() {
  const [saved, setSaved] = useState<SavedItem[] | null>(null);
  const [dashboards, setDashboards] = useState<DashboardRow[]>([]);
  const [board, setBoard] = useState<Dashboard | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [tick, setTick] = useState(0);
  const [updated, setUpdated] = useState(() => new Date());
  const analyst = roleAtLeast(session.value?.role, "analyst");
  const id = params().get("id");

  const load = async () => {
    try {
      const [ins, ds] = await Promise.all([
        api<{ insights: SavedItem[] }>("GET", "/insights"),
        api<{ dashboards: DashboardRow[] }>("GET", "/dashboards"),
      ]);
      setSaved(ins.insights.map((i) => ({ id: i.id, name: i.name })));
      setDashboards(ds.dashboards);
      setBoard(id ? await api<Dashboard>("GET", `/dashboards/${encodeURIComponent(id)}`) : null);
      setError(null);
    } catch (e) {
      setError(e);
    }
  };
  useEffect(() => {
    void load();
  }, [route.value.search]);
  useEffect(() => {
    const t = setInterval(() => {
      setTick((x) => x + 1);
      setUpdated(new Date());
    }, 60_000);
    return () => clearInterval(t);
  }, []);
  const refresh = () => {
    setTick((x) => x + 1);
    setUpdated(new Date());
    void load();
  };
  const remove = async (d: DashboardRow) => {
    try {
      await api("DELETE", `/dashboards/${d.id}`);
      await load();
    } catch (e) {
      setError(e);
    }
  };
  const tiles = board ? board.insights : saved ?? [];
  return (
    <section class="dashboards" aria-labelledby="page-title">
      <h1 id="page-title">{board ? board.name : "Dashboards"}</h1>
      <ApiErrorBox error={error} />
      <div class="row toolbar">
        {board ? <Link href="/dashboards">All saved insights</Link> : null}
        <button type="button" class="secondary" onClick={refresh}>Refresh</button>
        <span class="muted" role="status">Updated {updated.toLocaleTimeString()}; refreshes every 60 s.</span>
      </div>
      <nav class="panel" aria-labelledby="list-title">
        <h2 id="list-title">Dashboards</h2>
        {dashboards.length ? (
          <ul class="dashboard-list">
            {dashboards.map((d) => (
              <li key={d.id}>
                <Link href={`/dashboards?id=${d.id}`}>{d.name}</Link>{" "}
                <span class="muted">({d.insights.length} insight{d.insights.length === 1 ? "" : "s"})</span>
                {analyst ? <> <button type="button" class="secondary" aria-label={`Delete dashboard ${d.name}`}
                  onClick={() => void remove(d)}>Delete</button></> : null}
              </li>
            ))}
          </ul>
        ) : <p class="muted">No dashboard yet.</p>}
      </nav>
      <h2>{board ? "Insights on this dashboard" : "Saved insights"}</h2>
      {saved === null && !error ? <p class="loading">Loading…</p> : null}
      {saved !== null && tiles.length === 0 ? <p class="muted">Nothing saved here yet.</p> : null}
      <div class="tile-grid">
        {tiles.map((t) => <Tile key={t.id} item={t} tick={tick} />)}
      </div>
      {analyst && saved ? <CreateDashboard saved={saved} made={(nid) => {
        navigate(`/dashboards?id=${nid}`);
      }} /> : null}
    </section>
  );
}
