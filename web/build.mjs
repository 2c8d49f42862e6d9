// Builds AAP's web app and the privacy portal with esbuild: ES modules with code
// splitting (each page a lazy chunk), minified, into src/aap/web/static/. Measures the
// initial JS of each entry (the entry and every chunk it imports statically, gzipped)
// and fails over the budget (250 KB; AAP_WEB_BUDGET=<bytes> lowers it, for a test).
//
//   node web/build.mjs [--out DIR]   → DIR (default src/aap/web/static/), DIR/size.json
import { build } from "esbuild";
import { appendFileSync, copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const outArg = process.argv.indexOf("--out");
const out = outArg > 0 ? process.argv[outArg + 1]
  : join(here, "..", "src", "aap", "web", "static");
const BUDGET = Number(process.env.AAP_WEB_BUDGET || 250 * 1024);
const ENTRIES = { main: join(here, "src", "main.tsx"), portal: join(here, "src", "portal", "main.tsx") };

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const result = await build({
  entryPoints: ENTRIES,
  bundle: true,
  splitting: true,
  format: "esm",
  minify: true,
  target: ["es2022"],
  jsx: "automatic",
  jsxImportSource: "preact",
  outdir: out,
  entryNames: "[name]",
  chunkNames: "chunks/[name]-[hash]",
  assetNames: "assets/[name]-[hash]",
  metafile: true,
  legalComments: "none",
  logLevel: "warning",
});
// CSS that lazy chunks import (a page's own styles): esbuild writes it beside the chunk
// but does not load it, so it is appended to main.css, which the shell links.
const lazyCss = Object.keys(result.metafile.outputs).filter((k) => k.endsWith(".css")
  && !/\/(main|portal)\.css$/.test(k));
for (const k of lazyCss) {
  appendFileSync(join(out, "main.css"), "\n" + readFileSync(k, "utf8"));
  rmSync(k);
  delete result.metafile.outputs[k];
}
for (const shell of ["index.html", "portal.html"]) {
  copyFileSync(join(here, shell), join(out, shell));
}

// initial JS: an entry and, transitively, every chunk it imports statically
const outputs = result.metafile.outputs;
const key = (file) => relative(process.cwd(), join(out, file)).split("\\").join("/");
const byKey = new Map(Object.entries(outputs));
function initial(file) {
  const seen = new Set();
  const walk = (k) => {
    if (seen.has(k)) return;
    seen.add(k);
    for (const imp of byKey.get(k)?.imports ?? []) {
      if (imp.kind === "import-statement" && !imp.external) walk(imp.path);
    }
  };
  walk(key(file));
  return [...seen];
}
const size = { budget: BUDGET, entries: {} };
let over = [];
for (const name of Object.keys(ENTRIES)) {
  const files = initial(`${name}.js`);
  let raw = 0, gz = 0;
  for (const f of files) {
    const bytes = readFileSync(f);
    raw += bytes.length;
    gz += gzipSync(bytes, { level: 9 }).length;
  }
  const css = byKey.has(key(`${name}.css`)) ? readFileSync(join(out, `${name}.css`)) : null;
  size.entries[name] = {
    files: files.map((f) => basename(f)), minified: raw, gzipped: gz,
    css_gzipped: css ? gzipSync(css, { level: 9 }).length : 0,
  };
  console.log(`${name}.js: initial JS ${raw} bytes minified, ${gz} bytes gzipped (${files.length} files; budget ${BUDGET})`);
  if (gz > BUDGET) over.push(`${name}.js: initial JS is ${gz} bytes gzipped, over the budget of ${BUDGET} bytes`);
}
const chunks = Object.keys(outputs).filter((k) => k.endsWith(".js"));
size.chunks = chunks.length;
writeFileSync(join(out, "size.json"), JSON.stringify(size, null, 1) + "\n");
if (over.length) {
  for (const line of over) console.error(line);
  process.exit(1);
}
