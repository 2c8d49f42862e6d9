// <ScrollRegion label>: the box a wide table scrolls sideways in (.table-scroll); a named
// region that takes the focus, so the keyboard can scroll it as well as the mouse.
import type { ComponentChildren } from "preact";

export function ScrollRegion({ label, children }: { label: string; children: ComponentChildren }) {
  return <div class="table-scroll" tabIndex={0} role="region" aria-label={label}>{children}</div>;
}
