// The privacy portal (/portal/{source name}): one public page per source for the people
// being measured. The purposes in plain language with the person's current choice, each
// changed in one click (the same consent ledger as the SDK's consent.set); a copy of
// their data (zip) and erasure; the status of their own requests. The person is named by
// the subject token in the link their site gave them; without one, the purposes and how
// to get a link. Every text from the server is rendered as text, never as markup.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "../app.css";
import "./portal.css";
import { ScrollRegion } from "../components/scroll";
import * as client from "./client";
import type { Choices, Info, OwnRequest, Purpose } from "./client";
import { PortalError } from "./client";
import { WORDS, pickLang } from "./i18n";

const lang = pickLang(navigator.language);
const w = WORDS[lang];
document.documentElement.lang = lang;
const source = decodeURIComponent(location.pathname.replace(/^\/portal\//, "").replace(/\/$/, ""));
document.title = `${w.title} · ${source}`;

const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

function Toggle({ p, choice, token, onSaved, onError }: {
  p: Purpose; choice: boolean; token: string;
  onSaved: (granted: boolean) => void; onError: (e: unknown) => void;
}) {
  const [busy, setBusy] = useState(false);
  const click = async () => {
    if (busy) return; // one statement at a time (not `disabled`: that would drop the focus)
    setBusy(true);
    try {
      await client.setChoice(token, p.id, !choice);
      onSaved(!choice);
    } catch (e) {
      onError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <button type="button" class="toggle" aria-pressed={choice} aria-labelledby={`t-${p.id} s-${p.id}`}
      data-purpose={p.id} aria-busy={busy} onClick={click}>
      <span class="knob" aria-hidden="true" />
      <span id={`s-${p.id}`}>{choice ? w.allowed : w.notAllowed}</span>
    </button>
  );
}

function Purposes({ info, choices, token, onChange, onError }: {
  info: Info; choices: Choices | null; token: string | null;
  onChange: (id: string, granted: boolean) => void; onError: (e: unknown) => void;
}) {
  return (
    <section class="panel" aria-labelledby="purposes-h">
      <h2 id="purposes-h">{w.purposes}</h2>
      <ul class="purposes">
        {info.purposes.map((p) => {
          const text = p.texts[lang] ?? p.texts.en;
          const c = choices?.purposes[p.id];
          return (
            <li key={p.id} class="purpose" data-purpose-row={p.id}>
              <div class="purpose-text">
                <h3 id={`t-${p.id}`}>{text.title}</h3>
                <p>{text.description}</p>
                <p class="muted">{p.consent ? w.consentAsked : (w.basis[p.basis] ?? p.basis)}</p>
              </div>
              {token && c && p.consent && (
                <Toggle p={p} choice={c.granted} token={token}
                  onSaved={(g) => onChange(p.id, g)} onError={onError} />
              )}
            </li>
          );
        })}
      </ul>
    </section>
  );
}

const when = (s: number | null) => (s ? new Date(s * 1000).toLocaleString(lang) : "");

function Requests({ list, token, onError }: { list: OwnRequest[]; token: string; onError: (e: unknown) => void }) {
  return (
    <section class="panel" aria-labelledby="requests-h">
      <h2 id="requests-h">{w.requests}</h2>
      {list.length === 0 ? <p class="muted">{w.noRequests}</p> : (
        <ScrollRegion label={w.requests}>
          <table class="requests">
            <thead><tr>
              <th scope="col">{w.cols.type}</th><th scope="col">{w.cols.filed}</th>
              <th scope="col">{w.cols.status}</th><th scope="col">{w.cols.file}</th>
            </tr></thead>
            <tbody>
              {list.map((r) => (
                <tr key={r.id} data-request={r.id} data-type={r.type} data-status={r.status}>
                  <td>{w.type[r.type] ?? r.type}</td>
                  <td>{when(r.created_at)}</td>
                  <td>{w.status[r.status] ?? r.status}{r.error ? ` (${r.error})` : ""}</td>
                  <td>{r.type === "access" && r.status === "done" && (
                    <button type="button" class="secondary" data-download={r.id}
                      onClick={() => client.downloadExport(token, r.id).catch(onError)}>
                      {w.download}</button>)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </ScrollRegion>
      )}
    </section>
  );
}

function Rights({ token, onFiled, onError }: {
  token: string; onFiled: (type: string) => void; onError: (e: unknown) => void;
}) {
  const [confirming, setConfirming] = useState(false);
  const file = async (type: "access" | "erasure") => {
    try {
      await client.fileRequest(token, type);
      setConfirming(false);
      onFiled(type);
    } catch (e) {
      onError(e);
    }
  };
  return (
    <section class="panel" aria-labelledby="rights-h">
      <h2 id="rights-h">{w.rights}</h2>
      <div class="right">
        <button type="button" id="file-access" onClick={() => file("access")}>{w.access}</button>
        <p class="muted">{w.accessHelp}</p>
      </div>
      <div class="right">
        {!confirming ? (
          <button type="button" id="file-erasure" class="danger" onClick={() => setConfirming(true)}>{w.erase}</button>
        ) : (
          <div class="confirm" role="group" aria-labelledby="confirm-erase">
            <p id="confirm-erase"><strong>{w.confirmErase}</strong></p>
            <button type="button" id="confirm-erasure" class="danger" ref={(b) => b?.focus()}
              onClick={() => file("erasure")}>{w.yesErase}</button>
            <button type="button" class="secondary" onClick={() => setConfirming(false)}>{w.cancel}</button>
          </div>
        )}
        <p class="muted">{w.eraseHelp}</p>
      </div>
    </section>
  );
}

function Portal() {
  const [token, setToken] = useState<string | null>(() => client.takeToken(source));
  const [info, setInfo] = useState<Info | null>(null);
  const [choices, setChoices] = useState<Choices | null>(null);
  const [list, setList] = useState<OwnRequest[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [status, setStatus] = useState("");
  const [missing, setMissing] = useState(false);

  const onError = (e: unknown) => {
    if (e instanceof PortalError && e.status === 401) {
      client.forgetToken(source);
      setToken(null);
      setChoices(null);
      setError(w.expired);
    } else {
      setError(message(e));
    }
  };
  const refreshRequests = (t: string) => client.requests(t).then((r) => setList(r.requests), onError);

  useEffect(() => {
    client.info(source).then(setInfo, (e) => {
      if (e instanceof PortalError && e.status === 404) setMissing(true);
      else setError(message(e));
    });
  }, []);
  useEffect(() => {
    if (!token) return;
    client.choices(token).then(setChoices, onError);
    refreshRequests(token);
  }, [token]);
  const busy = list.some((r) => r.status === "pending" || r.status === "running");
  useEffect(() => {
    if (!token || !busy) return;
    const id = setInterval(() => refreshRequests(token), 1000);
    return () => clearInterval(id);
  }, [token, busy]);

  if (missing) {
    return <main id="main"><h1>{w.title}</h1><p class="error" role="alert">{w.unknownSource}</p></main>;
  }
  const changed = (id: string, granted: boolean) => {
    setChoices((c) => c && { ...c, purposes: { ...c.purposes, [id]: { ...c.purposes[id], granted } } });
    const p = info?.purposes.find((x) => x.id === id);
    setStatus(w.saved((p?.texts[lang] ?? p?.texts.en)?.title ?? id, granted));
    setError(null);
  };
  return (
    <main id="main" class="portal">
      <h1>{w.title}{info ? ` · ${info.source}` : ""}</h1>
      {info && <p>{w.intro(info.source)}</p>}
      <p class="visually-hidden" role="status" aria-live="polite">{status}</p>
      {error && <p class="error" role="alert">{error}</p>}
      {!token && <p class="panel notice" data-no-token="">{w.noToken(info?.source ?? source)}</p>}
      {!info ? <p class="loading">{w.loading}</p> : (
        <Purposes info={info} choices={choices} token={token} onChange={changed} onError={onError} />
      )}
      {token && (
        <Rights token={token} onError={onError} onFiled={(type) => {
          setStatus(w.filed(w.type[type] ?? type));
          refreshRequests(token);
        }} />
      )}
      {token && <Requests list={list} token={token} onError={onError} />}
    </main>
  );
}

const root = document.getElementById("portal");
if (root) render(<Portal />, root);
