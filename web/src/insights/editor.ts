// CodeMirror 6 with SQL highlighting: loaded only by the SQL page (a lazy chunk).
import { sql, SQLite } from "@codemirror/lang-sql";
import { basicSetup, EditorView } from "codemirror";
import { keymap } from "@codemirror/view";

export interface Editor { view: EditorView; text: () => string; destroy: () => void }

export function makeEditor(parent: HTMLElement, doc: string, schema: Record<string, string[]>,
  onRun: () => void, label: string): Editor {
  const view = new EditorView({
    doc,
    parent,
    extensions: [
      keymap.of([{ key: "Mod-Enter", run: () => { onRun(); return true; } }]),
      basicSetup,
      sql({ dialect: SQLite, schema, upperCaseKeywords: true }),
      EditorView.contentAttributes.of({ "aria-label": label }),
      EditorView.lineWrapping,
      // the page's CSP admits CodeMirror's <style> elements by the shell's nonce
      EditorView.cspNonce.of(document.querySelector<HTMLMetaElement>('meta[name="csp-nonce"]')?.content ?? ""),
    ],
  });
  return { view, text: () => view.state.doc.toString(), destroy: () => view.destroy() };
}
