// Serves the built keygate worker (edge-worker/build) straight from workerd through the miniflare API, with
// its KV namespace, until stopped: the edge `make bench` replicates to for P5 (revocation propagation),
// without `wrangler dev` and its proxy. Prints the URL once the worker answers.
//
//   node bench/workerd/serve.mjs --port 8787 --var ORIGIN_URL=http://127.0.0.1:9000 --var SYNC_SECRET=...
//
// Needs KEYGATE_NODE_MODULES (eval scripts/tools.sh). The worker's log goes to stderr.

import { parseArgs } from "node:util";

import { keygateWorker, served, workerdBench } from "./common.mjs";

const { values } = parseArgs({
  options: { port: { type: "string" }, var: { type: "string", multiple: true, default: [] } },
});
const bindings = {};
for (const pair of values.var) {
  const at = pair.indexOf("=");
  if (at < 1) throw new Error(`--var wants NAME=VALUE, not ${pair}`);
  bindings[pair.slice(0, at)] = pair.slice(at + 1);
}

const { Miniflare, compatibilityDate, built } = workerdBench("SERVE", { warmup: 0, needsBench: false });
const options = await served(compatibilityDate);
if (values.port) options.port = Number(values.port);
const mf = new Miniflare({
  ...options,
  ...keygateWorker(built, bindings),
  handleRuntimeStdio: (stdout, stderr) => {
    stdout.resume();
    stderr.on("data", (chunk) => process.stderr.write(chunk));
  },
  handleStructuredLogs: ({ level, message }) => process.stderr.write(`[${level}] ${message}\n`),
});
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, async () => {
    await mf.dispose().catch(() => {});
    process.exit(0);
  });
}
process.stdout.write(`${new URL(await mf.ready).origin}\n`);
