// Render chat templates with @huggingface/jinja for test_jinja.lua.
// usage: node ref.mjs --modules DIR CASES.json OUT.json
// CASES.json: [{ "template": "...", "context": {...} }, ...]
// OUT.json:   [{ "text": "..." } or { "error": "..." }, ...] in the same order
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const args = process.argv.slice(2);
const mods = args[args.indexOf("--modules") + 1];
const [casesPath, outPath] = args.filter((a, i) => a !== "--modules" && args[i - 1] !== "--modules");
const require = createRequire(path.join(path.resolve(mods), "noop.js"));
const { Template } = await import(require.resolve("@huggingface/jinja"));
const cases = JSON.parse(readFileSync(casesPath, "utf8"));
const out = cases.map((c) => {
  try {
    return { text: new Template(c.template).render(c.context) };
  } catch (e) {
    return { error: String(e && e.message ? e.message : e) };
  }
});
writeFileSync(outPath, JSON.stringify(out));
