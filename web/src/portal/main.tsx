// The privacy portal's entry (stub: the portal helper fills it).
import { render } from "preact";
import "../app.css";

function Portal() {
  const source = decodeURIComponent(location.pathname.replace(/^\/portal\//, ""));
  return (
    <main id="main">
      <h1>Your data</h1>
      <p>Privacy portal for {source}: coming.</p>
    </main>
  );
}

const root = document.getElementById("portal");
if (root) render(<Portal />, root);
