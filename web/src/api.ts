// The REST API, same origin, with the session cookie: api<T>(method, path, body?) on
// /api/v1 + path. Every call other than GET/HEAD sends the session's CSRF token.
import { signal } from "@preact/signals";

export type Role = "viewer" | "analyst" | "privacy" | "admin";
export const ROLES: readonly Role[] = ["viewer", "analyst", "privacy", "admin"];

export interface Session {
  role: Role;
  csrf: string;
  key_id: string;
  name: string;
}

/** The signed-in session, or null (signed out); undefined while the first check runs. */
export const session = signal<Session | null | undefined>(undefined);

export function roleAtLeast(role: Role | string | undefined | null, needed: Role): boolean {
  if (!role) return false;
  return ROLES.indexOf(role as Role) >= ROLES.indexOf(needed);
}

export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
    public detail: unknown = null,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export const API_PREFIX = "/api/v1";

async function errorOf(r: Response): Promise<ApiError> {
  let code = "http_" + r.status;
  let message = r.statusText || `HTTP ${r.status}`;
  let detail: unknown = null;
  try {
    const body = (await r.json()) as { code?: unknown; message?: unknown; detail?: unknown };
    if (typeof body.code === "string") code = body.code;
    if (typeof body.message === "string") message = body.message;
    detail = body.detail ?? null;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(r.status, code, message, detail);
}

/** Calls the API; answers the parsed JSON (or the Blob of a non-JSON answer). */
export async function api<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  const upper = method.toUpperCase();
  if (upper !== "GET" && upper !== "HEAD") {
    const s = session.value;
    if (s) headers["X-CSRF-Token"] = s.csrf;
  }
  let payload: string | undefined;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let r: Response;
  try {
    r = await fetch(API_PREFIX + path, { method: upper, headers, body: payload, credentials: "same-origin" });
  } catch (e) {
    throw new ApiError(0, "network_error", "the server could not be reached", String(e));
  }
  if (!r.ok) {
    const err = await errorOf(r);
    if (r.status === 401 && path !== "/session") session.value = null;
    throw err;
  }
  const ctype = r.headers.get("content-type") ?? "";
  if (ctype.startsWith("application/json")) return (await r.json()) as T;
  return (await r.blob()) as unknown as T;
}

/** Reads the current session (null when there is none). */
export async function loadSession(): Promise<Session | null> {
  try {
    session.value = await api<Session>("GET", "/session");
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 401) throw e;
    session.value = null;
  }
  return session.value;
}

export async function signIn(cred: { key: string } | { link: string }): Promise<Session> {
  const s = await api<Session>("POST", "/session", cred);
  session.value = s;
  return s;
}

export async function signOut(): Promise<void> {
  try {
    await api("DELETE", "/session");
  } finally {
    session.value = null;
  }
}
