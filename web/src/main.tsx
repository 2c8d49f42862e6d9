// The web app's shell: sign-in (an API key, or a one-time link in #signin=…), the
// frame, and the page of location.pathname, loaded lazily from the registry.
import { render } from "preact";
import type { ComponentType } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ApiError, loadSession, roleAtLeast, session, signIn } from "./api";
import { ApiErrorBox } from "./components/errors";
import { Layout } from "./components/layout";
import { pageFor, type PageDef } from "./pages";
import { navigate, route } from "./router";
import "uplot/dist/uPlot.min.css";
import "./app.css";

/** A viewer may not see the overview: one who lands on / goes to the dashboards. */
function land(): void {
  const s = session.value;
  if (s && route.value.path === "/" && !roleAtLeast(s.role, "analyst")) navigate("/dashboards", true);
}

function SignIn({ initialError }: { initialError?: unknown }) {
  const [key, setKey] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(initialError ?? null);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await signIn({ key: key.trim() });
      land();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <section class="signin" aria-labelledby="signin-title">
      <h1 id="signin-title">Sign in</h1>
      <p>Sign in with an API key (<code>aap keys create --role analyst</code>). Its role decides what you see.</p>
      <form onSubmit={submit}>
        <label for="api-key">API key</label>
        <input id="api-key" name="key" type="password" autoComplete="off" spellcheck={false}
          required value={key} onInput={(e) => setKey((e.target as HTMLInputElement).value)} />
        <button type="submit" disabled={busy}>{busy ? "Signing in…" : "Sign in"}</button>
      </form>
      <ApiErrorBox error={error} />
    </section>
  );
}

const loaded = new Map<string, ComponentType>();

function PageView({ page }: { page: PageDef }) {
  const [, setTick] = useState(0);
  const [error, setError] = useState<unknown>(null);
  const Comp = loaded.get(page.path);
  useEffect(() => {
    document.title = `${page.title} · AAP`;
    if (loaded.has(page.path)) return;
    let live = true;
    page.load().then((m) => {
      loaded.set(page.path, m.default);
      if (live) setTick((t) => t + 1);
    }, (e: unknown) => live && setError(e));
    return () => {
      live = false;
    };
  }, [page.path]);
  if (error) return <ApiErrorBox error={error} />;
  if (!Comp) return <p class="loading" aria-live="polite">Loading {page.title}…</p>;
  return <Comp />;
}

function NotFound() {
  return (
    <section>
      <h1>Not found</h1>
      <p>There is no page at {route.value.path}.</p>
    </section>
  );
}

function App({ linkError }: { linkError: unknown }) {
  const s = session.value;
  if (s === undefined) return <Layout><p class="loading">Loading…</p></Layout>;
  if (s === null) return <Layout><SignIn initialError={linkError} /></Layout>;
  const page = pageFor(route.value.path);
  return <Layout>{page ? <PageView key={page.path} page={page} /> : <NotFound />}</Layout>;
}

/** A one-time sign-in link (#signin=TOKEN): exchanged once, and gone from the URL first. */
async function start(): Promise<unknown> {
  const m = /^#signin=([A-Za-z0-9_-]{16,128})$/.exec(location.hash);
  if (m) {
    history.replaceState(null, "", location.pathname + location.search);
    try {
      await signIn({ link: m[1] });
      return null;
    } catch (e) {
      session.value = null;
      return e;
    }
  }
  try {
    await loadSession();
  } catch (e) {
    session.value = null;
    return e instanceof ApiError ? e : null;
  }
  return null;
}

const root = document.getElementById("app");
if (root) {
  root.textContent = "";
  start().then((linkError) => {
    land();
    render(<App linkError={linkError} />, root);
  });
}
