// The portal's calls to the collector's public endpoints (same origin). The person is
// named by the subject token their site signed (`Authorization: Subject <token>`): it
// arrives in the link's fragment (#token=…), is kept in sessionStorage for this tab and
// taken out of the address bar at once.

import type { Lang } from "./i18n";

export interface Text { title: string; description: string }
export interface Purpose { id: string; basis: string; consent: boolean; texts: Record<Lang, Text> }
export interface Info { source: string; purposes: Purpose[]; languages: string[] }
export interface Choice { granted: boolean; basis: string; consent: boolean; at_ms: number | null }
export interface Choices { source: string; purposes: Record<string, Choice> }
export interface OwnRequest {
  id: string; type: string; status: string; created_at: number; finished_at: number | null;
  error?: string;
}

export class PortalError extends Error {
  constructor(public status: number, public code: string, message: string) { super(message); }
}

const KEY = (source: string) => "aap_portal_token:" + source;

/** The token from the fragment (kept, and stripped from the address) or from this tab. */
export function takeToken(source: string): string | null {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    const token = decodeURIComponent(m[1]);
    try { sessionStorage.setItem(KEY(source), token); } catch { /* storage off: this view only */ }
    history.replaceState(null, "", location.pathname + location.search);
    return token;
  }
  try { return sessionStorage.getItem(KEY(source)); } catch { return null; }
}

export function forgetToken(source: string): void {
  try { sessionStorage.removeItem(KEY(source)); } catch { /* nothing kept */ }
}

async function call(method: string, path: string, token: string | null, body?: unknown): Promise<Response> {
  const headers: Record<string, string> = {};
  if (token) headers["Authorization"] = "Subject " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                credentials: "omit", cache: "no-store" });
  if (!r.ok) {
    let code = "http_" + r.status, message = r.statusText;
    try {
      const e = await r.json() as { code?: string; message?: string };
      code = e.code ?? code;
      message = e.message ?? message;
    } catch { /* not JSON */ }
    throw new PortalError(r.status, code, message);
  }
  return r;
}

const json = async <T>(r: Promise<Response>): Promise<T> => (await r).json() as Promise<T>;

export const info = (source: string) =>
  json<Info>(call("GET", "/v1/portal/" + encodeURIComponent(source), null));
export const choices = (token: string) => json<Choices>(call("GET", "/v1/consent", token));
export const setChoice = (token: string, purpose: string, granted: boolean) =>
  json<{ recorded: number }>(call("POST", "/v1/consent", token,
    { purposes: { [purpose]: granted }, channel: "portal" }));
export const requests = (token: string) =>
  json<{ requests: OwnRequest[] }>(call("GET", "/v1/privacy/requests", token));
export const fileRequest = (token: string, type: "access" | "erasure") =>
  json<{ id: string; status: string }>(call("POST", "/v1/privacy/requests", token, { type }));

/** Downloads an access request's zip (a blob URL and a link the browser follows). */
export async function downloadExport(token: string, id: string): Promise<void> {
  const blob = await (await call("GET", `/v1/privacy/requests/${encodeURIComponent(id)}/export`, token)).blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = `${id}.zip`;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
