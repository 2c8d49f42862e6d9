// Stub: the privacy page's owner replaces this body.
export default function Page() {
  return (
    <section aria-labelledby="page-title">
      <h1 id="page-title">Privacy</h1>
      <p>This page is coming.</p>
    </section>
  );
}
