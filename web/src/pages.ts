// The page registry: each page's path, title, the least role that may see it (the nav
// shows only these; the server enforces roles on every call anyway) and its lazy module.
import type { ComponentType } from "preact";
import type { Role } from "./api";

export interface PageDef {
  path: string;
  title: string;
  role: Role;
  load: () => Promise<{ default: ComponentType }>;
}

export const PAGES: PageDef[] = [
  { path: "/", title: "Overview", role: "analyst", load: () => import("./pages/overview") },
  { path: "/insights", title: "Insights", role: "analyst", load: () => import("./pages/insights") },
  { path: "/sql", title: "SQL", role: "analyst", load: () => import("./pages/sql") },
  { path: "/live", title: "Live", role: "analyst", load: () => import("./pages/live") },
  { path: "/dashboards", title: "Dashboards", role: "viewer", load: () => import("./pages/dashboards") },
  { path: "/privacy", title: "Privacy", role: "privacy", load: () => import("./pages/privacy") },
  { path: "/admin", title: "Admin", role: "admin", load: () => import("./pages/admin") },
];

export function pageFor(pathname: string): PageDef | undefined {
  const path = pathname.length > 1 ? pathname.replace(/\/+$/, "") : pathname;
  return PAGES.find((p) => p.path === path);
}
