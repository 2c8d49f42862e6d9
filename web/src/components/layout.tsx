// The app's frame: skip link, header with the nav filtered by role, who is signed in,
// sign-out, and the <main> landmark the page renders into.
import type { ComponentChildren } from "preact";
import { roleAtLeast, session, signOut } from "../api";
import { PAGES } from "../pages";
import { navigate, route } from "../router";

export function Link({ href, children, class: cls }: { href: string; children: ComponentChildren; class?: string }) {
  const current = route.value.path === href;
  return (
    <a href={href} class={cls} aria-current={current ? "page" : undefined}
      onClick={(e) => {
        if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
        e.preventDefault();
        navigate(href);
      }}>
      {children}
    </a>
  );
}

export function Layout({ children }: { children: ComponentChildren }) {
  const s = session.value;
  return (
    <>
      <a class="skip-link" href="#main">Skip to content</a>
      <header class="app-header">
        <a class="brand" href="/">AAP</a>
        {s ? (
          <nav aria-label="Pages">
            <ul>
              {PAGES.filter((p) => roleAtLeast(s.role, p.role)).map((p) => (
                <li key={p.path}><Link href={p.path}>{p.title}</Link></li>
              ))}
            </ul>
          </nav>
        ) : null}
        {s ? (
          <div class="who">
            <span class="who-name" title={`key ${s.key_id}`}>{s.name}</span>{" "}
            <span class="role-badge" data-role={s.role}>{s.role}</span>
            <button type="button" class="secondary" onClick={() => void signOut()}>Sign out</button>
          </div>
        ) : null}
      </header>
      <main id="main" tabIndex={-1}>{children}</main>
    </>
  );
}
