// Builds the faas console into ../faas/console/static/: index.html, assets/app.js,
// assets/app.css, and the lazily loaded chunk of the run page's DAG view.
// `node build.mjs --watch` rebuilds on change (with the mock server: npm run mock).
import * as esbuild from "esbuild";
import { mkdirSync, rmSync, writeFileSync, readdirSync, statSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "faas", "console", "static");
const watch = process.argv.includes("--watch");

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "assets"), { recursive: true });

const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>faas console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="assets/app.css">
<script type="module" src="assets/app.js"></script>
</head>
<body>
<div id="app"></div>
<noscript>The faas console needs JavaScript.</noscript>
</body>
</html>
`;
writeFileSync(join(out, "index.html"), html);

const options = {
  entryPoints: { app: join(here, "src", "main.js") },
  bundle: true,
  splitting: true,
  format: "esm",
  target: ["es2020", "chrome100", "firefox100", "safari15"],
  minify: true,
  legalComments: "none",
  outdir: join(out, "assets"),
  entryNames: "[name]",
  chunkNames: "[name]-[hash]",
  assetNames: "[name]-[hash]",
  loader: { ".woff": "file", ".woff2": "file", ".ttf": "file", ".svg": "file", ".png": "file" },
  logLevel: "info",
  metafile: true,
};

if (watch) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
} else {
  await esbuild.build(options);
  for (const f of readdirSync(join(out, "assets"))) {
    const kb = (statSync(join(out, "assets", f)).size / 1024).toFixed(0);
    console.log(`  ${f}  ${kb} KiB`);
  }
}
