// The page's CSP nonce (a fresh one per page load, in <meta name="csp-nonce">): for a
// library that adds <style> elements, e.g. CodeMirror's EditorView.cspNonce.of(cspNonce()).
export function cspNonce(): string {
  return document.querySelector<HTMLMetaElement>('meta[name="csp-nonce"]')?.content ?? "";
}
