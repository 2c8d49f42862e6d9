// API keys: the list with roles, a form that creates one (the key shown once), and
// revocation after a confirmation (its sessions end with it).
import { useEffect, useRef, useState } from "preact/hooks";
import { ROLES, api, session } from "../api";
import { ApiErrorBox } from "../components/errors";
import { type CreatedKey, type KeyRow, ShownOnce, when } from "./common";

function KeyRowView({ k, onRevoked }: { k: KeyRow; onRevoked: () => void }) {
  const [confirming, setConfirming] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const own = session.value?.key_id === k.id;
  const cancel = useRef<HTMLButtonElement>(null);
  const ask = useRef<HTMLButtonElement>(null);
  useEffect(() => { if (confirming) cancel.current?.focus(); }, [confirming]);
  const stop = () => {
    setConfirming(false);
    setTimeout(() => ask.current?.focus(), 0); // back where the keyboard was
  };
  const revoke = async () => {
    setError(null);
    try {
      await api("DELETE", `/keys/${encodeURIComponent(k.id)}`);
      setConfirming(false);
      onRevoked();
    } catch (err) {
      setError(err);
    }
  };
  return (
    <tr data-key-id={k.id}>
      <td><code>{k.id}</code></td>
      <td class="key-name wrap">{k.name}</td>
      <td>{k.role}</td>
      <td>{when(k.created_at)}</td>
      <td>{k.revoked_at ? `revoked ${when(k.revoked_at)}` : own ? "active (this session)" : "active"}</td>
      <td class="wrap">
        {k.revoked_at ? null : confirming ? (
          <div class="confirm" role="group" aria-label={`Confirm revoking key ${k.name}`}>
            <span>{own ? "This is the key you are signed in with. " : ""}Revoke {k.name}? Its sessions end at once.</span>{" "}
            <button type="button" class="danger" onClick={revoke}>Yes, revoke</button>{" "}
            <button ref={cancel} type="button" class="secondary" onClick={stop}>Cancel</button>
          </div>
        ) : (
          <button ref={ask} type="button" class="secondary" onClick={() => setConfirming(true)}
            aria-label={`Revoke key ${k.name} (${k.id})`}>Revoke</button>
        )}
        <ApiErrorBox error={error} />
      </td>
    </tr>
  );
}

function CreateKey({ onCreated }: { onCreated: (k: CreatedKey) => void }) {
  const [name, setName] = useState("");
  const [role, setRole] = useState<string>("viewer");
  const [error, setError] = useState<unknown>(null);
  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    try {
      onCreated(await api<CreatedKey>("POST", "/keys", { role, name }));
      setName("");
    } catch (err) {
      setError(err);
    }
  };
  return (
    <form class="panel admin-form" onSubmit={submit} aria-labelledby="new-key-title">
      <h3 id="new-key-title">New API key</h3>
      <div class="field">
        <label for="new-key-name">Name</label>
        <input id="new-key-name" type="text" value={name} placeholder="who or what uses it"
          onInput={(e) => setName(e.currentTarget.value)} />
      </div>
      <div class="field">
        <label for="new-key-role">Role</label>
        <select id="new-key-role" value={role} onChange={(e) => setRole(e.currentTarget.value)}>
          {ROLES.map((r) => <option key={r} value={r}>{r}</option>)}
        </select>
      </div>
      <button type="submit">Create key</button>
      <ApiErrorBox error={error} />
    </form>
  );
}

export function KeysPanel() {
  const [keys, setKeys] = useState<KeyRow[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [created, setCreated] = useState<CreatedKey | null>(null);
  const load = async () => {
    try {
      setKeys((await api<{ keys: KeyRow[] }>("GET", "/keys")).keys);
      setError(null);
    } catch (err) {
      setError(err);
    }
  };
  useEffect(() => { void load(); }, []);
  return (
    <section aria-labelledby="keys-title" class="admin-section">
      <h2 id="keys-title">API keys</h2>
      <ApiErrorBox error={error} />
      {keys === null && error === null ? <p class="loading">Loading keys…</p> : null}
      {keys !== null ? (
        <div class="table-scroll" role="region" aria-label="API keys (scrolls sideways)" tabIndex={0}>
          <table class="admin-table" data-testid="keys-table">
            <caption class="visually-hidden">API keys</caption>
            <thead>
              <tr>
                <th scope="col">Id</th><th scope="col">Name</th><th scope="col">Role</th>
                <th scope="col">Created</th><th scope="col">Status</th>
                <th scope="col"><span class="visually-hidden">Actions</span></th>
              </tr>
            </thead>
            <tbody>
              {keys.map((k) => <KeyRowView key={k.id} k={k} onRevoked={load} />)}
            </tbody>
          </table>
        </div>
      ) : null}
      {created ? (
        <ShownOnce kind="api_key" label={`API key ${created.name} (role ${created.role})`}
          value={created.key} onDone={() => setCreated(null)} />
      ) : null}
      {keys !== null ? <CreateKey onCreated={(k) => { setCreated(k); void load(); }} /> : null}
    </section>
  );
}
