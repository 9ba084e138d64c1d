// Gives the built worker (edge-worker/build/index.js, worker-build 0.8.7's bundle) a plain module entry:
// `export default { fetch }`, calling the wasm's fetch handler, instead of worker-build's
// `WorkerEntrypoint` class behind a Proxy. For that class the runtime constructs an entrypoint object per
// request, and the Proxy wraps the handler in a new Proxy and an extra async step on every call: about
// 45 µs a request in workerd on this machine (BENCHMARKS.md, P1). What the class's wrapper does is kept:
// the wasm instance is rebuilt after a trap before the next request, and a trap marks it for that.
//
//   node scripts/plain-entry.mjs edge-worker/build/index.js
//
// The bundle is minified, so the names are found by the shapes worker-build's shim gives them; when a
// shape is not there (another worker-build), this stops with an error rather than write a broken worker.

import { readFileSync, writeFileSync } from "node:fs";

const file = process.argv[2];
const bundle = readFileSync(file, "utf8");
if (bundle.includes("__keygate_entry")) process.exit(0); // already done

// The shapes of worker-build 0.8.7's shim (src/js/shim.js), minified: the entrypoint class and its fetch,
// the reinitializing check run before each call, the trap handler, and the class's export as default.
// `I` stands for a minified identifier (esbuild's may hold `$`).
const I = "[\\w$]+";
const shapes = {
  handler: new RegExp(`var (${I})=class extends ${I}\\{\\};\\1\\.prototype\\.fetch=function\\(${I}\\)\\{return (${I})\\.call\\(this,${I},this\\.env,this\\.ctx\\)\\}`),
  reinitialize: new RegExp(`function (${I})\\(\\)\\{${I}\\.criticalError&&\\(console\\.log\\("Reinitializing Wasm application"\\)`),
  trap: new RegExp(`function (${I})\\(${I}\\)\\{${I} instanceof WebAssembly\\.RuntimeError&&\\(console\\.error\\("Critical",${I}\\)`),
};
const found = {};
for (const [name, shape] of Object.entries(shapes)) {
  const match = bundle.match(shape);
  if (!match) throw new Error(`${file}: worker-build's ${name} is not where it was (another worker-build?): cannot give the worker a plain entry`);
  found[name] = match;
}
const entryClass = found.handler[1];
const handler = found.handler[2];
const escape = (name) => name.replace(/\$/g, "\\$");
const classExport = bundle.match(new RegExp(`(${I})=new Proxy\\(${escape(entryClass)},${I}\\)`));
const defaultExport = classExport && new RegExp(`(?<![\\w$])${escape(classExport[1])} as default\\b`);
if (!defaultExport || !defaultExport.test(bundle)) throw new Error(`${file}: worker-build's default export is not where it was`);

const entry = `
var __keygate_entry = {
  async fetch(request, env, ctx) {
    ${found.reinitialize[1]}();
    try {
      return await ${handler}(request, env, ctx);
    } catch (error) {
      ${found.trap[1]}(error);
      throw error;
    }
  },
};
`;
writeFileSync(file, `${bundle.replace(defaultExport, "__keygate_entry as default")}${entry}`);
