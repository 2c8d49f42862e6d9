// /admin (role admin): sources (created with the write key shown once; origins, rate
// limit, purposes and bases, CNIL mode, controller group), API keys and roles (create,
// revoke) and health (log lag, tier sizes, disk, processor state).
import "../admin/admin.css";
import { HealthPanel } from "../admin/health";
import { KeysPanel } from "../admin/keys";
import { SourcesPanel } from "../admin/sources";

export default function Page() {
  return (
    <section aria-labelledby="page-title" class="admin-page">
      <h1 id="page-title">Admin</h1>
      <nav aria-label="Admin sections" class="admin-toc">
        <a href="#sources-title">Sources</a> · <a href="#keys-title">API keys</a> ·{" "}
        <a href="#health-title">Health</a>
      </nav>
      <SourcesPanel />
      <KeysPanel />
      <HealthPanel />
    </section>
  );
}
