// The app's location as a signal: pages are paths, page state is the query string.
import { signal } from "@preact/signals";

export const route = signal({ path: location.pathname, search: location.search });

/** Goes to a path (with its query string) without reloading the page. */
export function navigate(to: string, replace = false): void {
  const url = new URL(to, location.href);
  if (url.origin !== location.origin) {
    location.assign(url.href);
    return;
  }
  if (replace) history.replaceState(null, "", url.pathname + url.search + url.hash);
  else history.pushState(null, "", url.pathname + url.search + url.hash);
  route.value = { path: url.pathname, search: url.search };
}

/** The query string's parameters of the current location. */
export function params(): URLSearchParams {
  return new URLSearchParams(route.value.search);
}

/** Replaces the query string (page state) without a new history entry. */
export function setParams(values: Record<string, string | null | undefined>): void {
  const p = params();
  for (const [k, v] of Object.entries(values)) {
    if (v === null || v === undefined || v === "") p.delete(k);
    else p.set(k, v);
  }
  const q = p.toString();
  navigate(route.value.path + (q ? "?" + q : ""), true);
}

addEventListener("popstate", () => {
  route.value = { path: location.pathname, search: location.search };
});
