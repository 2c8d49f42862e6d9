// Requests: file access, erasure, rectification, restriction and objection for a userId
// or anonymousId; follow a request until it is done; download an access export; read an
// erasure's receipt; the queue with its statuses, filtered and paged.
import { useEffect, useState } from "preact/hooks";
import { api } from "../api";
import { ApiErrorBox } from "../components/errors";
import {
  Notice, Pairs, type PrivacyRequest, saveBlob, subject, SubjectFields, text, useLoad, when,
} from "./common";

const TYPES = ["access", "erasure", "rectification", "restriction", "objection"] as const;
const STATUSES = ["pending", "running", "done", "failed"] as const;
const POLL_MS = 1000;

function summary(r: PrivacyRequest): string {
  if (r.error) return r.error;
  const res = r.result;
  if (!res) return "";
  if (r.type === "erasure") return `receipt ${text(res.id)}: ${text(res.persons)} person(s)`;
  if (r.type === "access") {
    return `${text(res.events)} events, ${text(res.sessions)} sessions, ${text(res.orders)} orders`;
  }
  return `${text(res.persons)} person(s)`;
}

/** One request: its status (polled until it is done or failed) and its result. */
export function RequestDetail({ id, onDone }: { id: string; onDone?: () => void }) {
  const [req, setReq] = useState<PrivacyRequest | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [downloadError, setDownloadError] = useState<unknown>(null);
  useEffect(() => {
    let live = true;
    let timer: number | undefined;
    const poll = async () => {
      try {
        const r = await api<PrivacyRequest>("GET", `/privacy/requests/${id}`);
        if (!live) return;
        setReq(r);
        if (r.status === "pending" || r.status === "running") timer = window.setTimeout(poll, POLL_MS);
        else onDone?.();
      } catch (e) {
        if (live) setError(e);
      }
    };
    void poll();
    return () => {
      live = false;
      if (timer !== undefined) clearTimeout(timer);
    };
  }, [id]);
  const download = async () => {
    setDownloadError(null);
    try {
      saveBlob(`${id}-export`, "zip", await api<Blob>("GET", `/privacy/requests/${id}/export`));
    } catch (e) {
      setDownloadError(e);
    }
  };
  if (error) return <ApiErrorBox error={error} />;
  if (!req) return <p class="loading">Loading request {id}…</p>;
  const receipt = req.type === "erasure" && req.status === "done" ? req.result : undefined;
  return (
    <div class="request-detail" data-request={req.id} data-status={req.status}>
      <p>
        Request <code>{req.id}</code> ({req.type}):{" "}
        <strong class={`status status-${req.status}`} aria-live="polite">{req.status}</strong>
        {req.finished_at ? ` at ${when(req.finished_at)}` : ""}
      </p>
      {req.error ? <p class="error">{req.error}</p> : null}
      {req.type === "access" && req.status === "done" ? (
        <p>
          <button type="button" onClick={download}>Download the export (zip)</button>
        </p>
      ) : null}
      <ApiErrorBox error={downloadError} />
      {receipt ? (
        <section class="receipt" aria-labelledby={`receipt-${req.id}`}>
          <h4 id={`receipt-${req.id}`}>Erasure receipt</h4>
          <Pairs label="Receipt" data={{
            receipt: receipt.id, digest: receipt.digest, persons: receipt.persons,
            identifiers_suppressed: receipt.identifiers_suppressed,
            data_keys_destroyed: receipt.data_keys_destroyed, started_at: receipt.started_at,
            finished_at: receipt.finished_at, seconds: receipt.seconds,
          }} />
          <h5>Rows removed</h5>
          <Pairs label="Rows removed" data={(receipt.removed ?? {}) as { [k: string]: unknown }} />
          <button type="button" class="secondary" onClick={() => saveBlob(`${text(receipt.id)}-receipt`,
            "json", new Blob([JSON.stringify(receipt, null, 1)], { type: "application/json" }))}>
            Download the receipt (JSON)
          </button>
        </section>
      ) : req.result && req.status === "done" ? (
        <Pairs label="Result" data={req.result} />
      ) : null}
    </div>
  );
}

function FileRequest({ onFiled }: { onFiled: (id: string) => void }) {
  const [type, setType] = useState<string>("access");
  const [kind, setKind] = useState<"userId" | "anonymousId">("userId");
  const [value, setValue] = useState("");
  const [traits, setTraits] = useState("{}");
  const [lift, setLift] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    const body: Record<string, unknown> = { type, subject: subject(kind, value) };
    if (type === "rectification") {
      try {
        body.traits = JSON.parse(traits) as unknown;
      } catch {
        setError(new Error("the traits must be a JSON object, e.g. {\"plan\": \"pro\"}"));
        return;
      }
    }
    if ((type === "restriction" || type === "objection") && lift) body.lift = true;
    setBusy(true);
    try {
      const r = await api<{ id: string }>("POST", "/privacy/requests", body);
      onFiled(r.id);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="panel" onSubmit={submit} aria-labelledby="file-title">
      <h3 id="file-title">File a request</h3>
      <div class="field">
        <label for="req-type">Request type</label>
        <select id="req-type" value={type} onChange={(e) => setType((e.target as HTMLSelectElement).value)}>
          {TYPES.map((t) => <option key={t} value={t}>{t}</option>)}
        </select>
      </div>
      <SubjectFields idPrefix="req" kind={kind} setKind={setKind} value={value} setValue={setValue} />
      {type === "rectification" ? (
        <div class="field">
          <label for="req-traits">Corrected traits (JSON object)</label>
          <textarea id="req-traits" rows={3} value={traits}
            onInput={(e) => setTraits((e.target as HTMLTextAreaElement).value)} />
        </div>
      ) : null}
      {type === "restriction" || type === "objection" ? (
        <div class="field check">
          <input id="req-lift" type="checkbox" checked={lift}
            onChange={(e) => setLift((e.target as HTMLInputElement).checked)} />
          <label for="req-lift">Lift it (the {type} is withdrawn)</label>
        </div>
      ) : null}
      <button type="submit" disabled={busy}>{busy ? "Filing…" : "File the request"}</button>
      <ApiErrorBox error={error} />
    </form>
  );
}

function Queue({ refresh, onShow }: { refresh: number; onShow: (id: string) => void }) {
  const [status, setStatus] = useState("");
  const [type, setType] = useState("");
  const [pages, setPages] = useState<(string | null)[]>([null]);
  const before = pages[pages.length - 1];
  const q = new URLSearchParams();
  if (status) q.set("status", status);
  if (type) q.set("type", type);
  if (before) q.set("before", before);
  q.set("limit", "25");
  const { data, error, loading } = useLoad(
    () => api<{ requests: PrivacyRequest[]; next: string | null }>("GET", `/privacy/requests?${q}`),
    [q.toString(), refresh]);
  const filter = (set: (v: string) => void) => (e: Event) => {
    set((e.target as HTMLSelectElement).value);
    setPages([null]);
  };
  return (
    <section aria-labelledby="queue-title">
      <h3 id="queue-title">The queue</h3>
      <div class="field-row">
        <div class="field">
          <label for="queue-status">Status</label>
          <select id="queue-status" value={status} onChange={filter(setStatus)}>
            <option value="">any</option>
            {STATUSES.map((s) => <option key={s} value={s}>{s}</option>)}
          </select>
        </div>
        <div class="field">
          <label for="queue-type">Type</label>
          <select id="queue-type" value={type} onChange={filter(setType)}>
            <option value="">any</option>
            {TYPES.map((t) => <option key={t} value={t}>{t}</option>)}
          </select>
        </div>
      </div>
      <ApiErrorBox error={error} />
      {loading && !data ? <p class="loading">Loading the queue…</p> : null}
      {data ? (
        <>
          {data.requests.length ? (
            <div class="table-scroll" tabIndex={0} role="region" aria-label="Privacy requests">
              <table class="plain" id="queue-table">
                <caption class="visually-hidden">Privacy requests, newest first</caption>
                <thead>
                  <tr>
                    <th scope="col">Request</th><th scope="col">Type</th><th scope="col">Status</th>
                    <th scope="col">Filed</th><th scope="col">Finished</th><th scope="col">Filed by</th>
                    <th scope="col">Result</th><th scope="col"><span class="visually-hidden">Actions</span></th>
                  </tr>
                </thead>
                <tbody>
                  {data.requests.map((r) => (
                    <tr key={r.id} data-request={r.id}>
                      <td><code>{r.id}</code></td>
                      <td>{r.type}{r.lift ? " (lifted)" : ""}</td>
                      <td><span class={`status status-${r.status}`}>{r.status}</span></td>
                      <td>{when(r.created_at)}</td>
                      <td>{when(r.finished_at)}</td>
                      <td>{r.filed_by ?? ""}{r.scope ? ` (${r.scope})` : ""}</td>
                      <td>{summary(r)}</td>
                      <td>
                        <button type="button" class="secondary" onClick={() => onShow(r.id)}
                          aria-label={`Show request ${r.id}`}>Show</button>
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          ) : <p class="muted">No request{status || type ? " matches" : " yet"}.</p>}
          <div class="pager">
            <button type="button" class="secondary" disabled={pages.length < 2}
              onClick={() => setPages((p) => p.slice(0, -1))}>Newer</button>
            <button type="button" class="secondary" disabled={!data.next}
              onClick={() => setPages((p) => [...p, data.next])}>Older</button>
          </div>
        </>
      ) : null}
    </section>
  );
}

export function RequestsTab() {
  const [shown, setShown] = useState<string | null>(null);
  const [refresh, setRefresh] = useState(0);
  return (
    <>
      <h2>Requests</h2>
      <Notice>The server works requests off one at a time. Each request worked off, and each export downloaded, is recorded in the audit log.</Notice>
      <FileRequest onFiled={(id) => {
        setShown(id);
        setRefresh((n) => n + 1);
      }} />
      {shown ? (
        <section class="panel" aria-labelledby="shown-title">
          <h3 id="shown-title">Request {shown}</h3>
          <RequestDetail key={shown} id={shown} onDone={() => setRefresh((n) => n + 1)} />
        </section>
      ) : null}
      <Queue refresh={refresh} onShow={setShown} />
    </>
  );
}
