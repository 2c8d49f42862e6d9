// Builds the browser SDK with esbuild, measures it minified and gzipped, and fails
// when it is over the budget. Also bundles @segment/analytics-next into one script for
// the browser tests (posthog-js ships one: dist/array.full.js).
//
//   node sdk/js/build.mjs        → src/aap/collect/static/aap.min.js, build/size.json
//                                  and aap-banner.min.js (the consent banner, 8 KB budget)
import { build } from "esbuild";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const BUDGET = 5 * 1024;
const out = join(here, "..", "..", "src", "aap", "collect", "static", "aap.min.js");
mkdirSync(dirname(out), { recursive: true });
mkdirSync(join(here, "build"), { recursive: true });

await build({
  entryPoints: [join(here, "src", "aap.js")],
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020"],
  outfile: out,
  legalComments: "none",
  logLevel: "warning",
});
const js = readFileSync(out);
const gz = gzipSync(js, { level: 9 }).length;
const size = { file: "aap.min.js", minified: js.length, gzipped: gz, budget: BUDGET };
writeFileSync(join(here, "build", "size.json"), JSON.stringify(size) + "\n");
console.log(`aap.min.js: ${js.length} bytes minified, ${gz} bytes gzipped (budget ${BUDGET})`);

// The consent banner: its own bundle, loaded by aap.consent.show() on first use.
const BANNER_BUDGET = 8 * 1024;
const bannerOut = join(dirname(out), "aap-banner.min.js");
await build({
  entryPoints: [join(here, "src", "banner.js")],
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020"],
  outfile: bannerOut,
  legalComments: "none",
  logLevel: "warning",
});
const bannerJs = readFileSync(bannerOut);
const bannerGz = gzipSync(bannerJs, { level: 9 }).length;
writeFileSync(join(here, "build", "banner-size.json"),
  JSON.stringify({ file: "aap-banner.min.js", minified: bannerJs.length, gzipped: bannerGz, budget: BANNER_BUDGET }) + "\n");
console.log(`aap-banner.min.js: ${bannerJs.length} bytes minified, ${bannerGz} bytes gzipped (budget ${BANNER_BUDGET})`);

await build({
  stdin: {
    contents: 'import { AnalyticsBrowser } from "@segment/analytics-next"; window.AnalyticsBrowser = AnalyticsBrowser;',
    resolveDir: here,
  },
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020"],
  outfile: join(here, "build", "analytics-next.js"),
  logLevel: "error",
});

if (bannerGz > BANNER_BUDGET) {
  console.error(`aap-banner.min.js is ${bannerGz} bytes gzipped: over the budget of ${BANNER_BUDGET}`);
  process.exit(1);
}
if (gz > BUDGET) {
  console.error(`aap.min.js is ${gz} bytes gzipped: over the budget of ${BUDGET}`);
  process.exit(1);
}
